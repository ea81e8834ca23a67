"""``hf`` extractor: transformers vision / video / text models from a local directory or the HF cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import _hub
from ._base import BLOCK_LAYERS, Extractor, ExtractorInfo, WeightsNotFoundError
from ..._provenance import sha256_files
from ._spec import Option, choice, int_range, layer_or, text
from ._util import check_pil_image, hub_offline
from ._registry import register

VIDEO_TYPES = {"videomae", "vivit", "timesformer", "vjepa2"}
CLS_IMAGE_TYPES = {"vit", "deit", "beit", "data2vec-vision", "vit_msn", "vit_mae", "dinov2",
                   "dinov2_with_registers", "clip", "clip_vision_model"}


def resolve_model_dir(model: str, cache_dir: str | None, marker: str = "config.json") -> tuple[str, str | None]:
    """``(directory, repo id or None)`` for a local directory or a repo id cached in the HF cache."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, marker)):
            raise WeightsNotFoundError(f"{path} has no {marker}; expected a save_pretrained() directory", [path])
        return os.path.abspath(path), None
    looks_like_repo = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_repo:
        d = _hub.snapshot_dir(model, marker, cache_dir)
        if d is not None:
            return d, model
        where = _hub.repo_cache_path(model, cache_dir)
        raise WeightsNotFoundError(
            f"model {model!r} is not in the HF cache (looked for {where}/snapshots/<rev>/{marker}; nothing is "
            f"downloaded)\nTo fix: run `brainstore weights pull hf:model={model}` where the hub can be reached (it "
            f"fills the cache HF_HOME names; on a cluster, the shared one), or `huggingface-cli download {model}` on a "
            "machine with internet and copy the cache (set HF_HOME/HF_HUB_CACHE or cache_dir=), or pass "
            "model=/path/to/save_pretrained_dir", [where])
    raise WeightsNotFoundError(f"model directory not found: {path}\nTo fix: pass model=<directory written by "
                               "save_pretrained()> or a repo id (org/name) present in the HF cache", [path])


def _hidden_index(layer: int) -> int:
    """``outputs.hidden_states`` index of block ``layer``'s output (index 0 holds the embeddings)."""
    return layer + 1 if layer >= 0 else layer


@register
class HFExtractor(Extractor):
    """A ``transformers`` ``AutoModel`` (ViT, DINOv2, VideoMAE, BERT-like ...), hidden state pooled to a vector.

    ``layer=<i>`` is the output of transformer block ``i``, numbered as in the ``clip``
    extractor: 0 = the first block (``outputs.hidden_states[1]``; the embedding output
    ``hidden_states[0]`` is not offered), -1 = the last block, before any final norm;
    ``final`` = ``last_hidden_state``.
    ``preprocess`` returns float32 ``(C, H, W)`` for images (the model's
    image processor, PIL backend), float32 ``(T, C, H, W)`` for videos
    (``T = frames``, uniformly sampled, video processor), ``str`` for text.
    """

    name = "hf"
    DESCRIPTION = "transformers AutoModel hidden states (image, video or text), local files only"
    PACKAGES = ("transformers", "huggingface_hub", "safetensors", "tokenizers", "torchvision")
    OPTIONS = {
        "model": Option(None, text, "save_pretrained() directory or org/name present in the HF cache"),
        "layer": Option(-1, layer_or("final"), f"{BLOCK_LAYERS}; final = last_hidden_state (after the final norm)"),
        "pooling": Option("auto", choice("auto", "cls", "mean"), "cls token | mean over tokens (auto by model)"),
        "modality": Option("auto", choice("auto", "image", "text", "video"), "override the inferred modality"),
        "frames": Option(None, int_range(1, 1024), "video frames per clip (default: config num_frames)"),
        "max_length": Option(None, int_range(1, 1 << 20), "text truncation length (default: tokenizer's, <= 512)"),
        "cache_dir": Option(None, text, "HF hub cache to search", in_version=False),
    }

    def _setup(self) -> None:
        o = self.options
        if not o["model"]:
            raise ValueError("extractor 'hf' needs option 'model' (a save_pretrained() directory or cached org/name)")
        self._dir, self._repo = resolve_model_dir(o["model"], o["cache_dir"])
        cfg = json.loads(Path(self._dir, "config.json").read_text())
        self._model_type = cfg.get("model_type", "unknown")
        mod = o["modality"]
        if mod == "auto":
            if self._model_type in VIDEO_TYPES:
                mod = "video"
            elif "vision_config" in cfg and "text_config" in cfg:
                raise ValueError(f"{self._dir} is a multimodal {self._model_type!r} model: set modality=image|text")
            elif "vision_config" in cfg or "num_channels" in cfg or "image_size" in cfg:
                mod = "image"
            elif "vocab_size" in cfg or "text_config" in cfg:
                mod = "text"
            else:
                raise ValueError(f"cannot infer the modality of {self._model_type!r} at {self._dir}: set modality=")
        self.modality = mod
        self._sub = {"image": "vision_config", "video": "vision_config", "text": "text_config"}[mod]
        sub = cfg.get(self._sub, cfg) if self._sub in cfg else cfg
        self._sub_attr = ("vision_model" if mod != "text" else "text_model") if self._sub in cfg else None
        n_layers = sub.get("num_hidden_layers") or (len(sub["hidden_sizes"]) if "hidden_sizes" in sub else None)
        layer = o["layer"]
        if layer != "final" and n_layers is not None:
            if not -n_layers <= layer < n_layers:
                raise ValueError(f"bad value for option 'layer': {layer} out of range for {n_layers} blocks "
                                 f"(valid: final, 0..{n_layers - 1} or -{n_layers}..-1)")
            o["layer"] = layer = layer % n_layers
        if o["pooling"] == "auto":
            o["pooling"] = "cls" if (mod == "image" and self._model_type in CLS_IMAGE_TYPES) else "mean"
        if "hidden_size" in sub:
            self._dim = int(sub["hidden_size"])
        elif "hidden_sizes" in sub:
            dims = [sub.get("embedding_size", sub["hidden_sizes"][0])] + list(sub["hidden_sizes"])
            self._dim = int(dims[-1] if layer == "final" else dims[_hidden_index(layer)])
        if mod == "video" and o["frames"] is None:
            o["frames"] = int(sub.get("num_frames", 16))
        self._cfg = sub

    def _weights(self) -> list[str]:
        files = _hub.hf_weight_files(self._dir)
        if not files:
            raise WeightsNotFoundError(f"no weight files (model*.safetensors / pytorch_model*.bin) in {self._dir}",
                                       [self._dir])
        return files

    def resolve_weights(self) -> str:
        return f"{self._dir} ({', '.join(os.path.basename(f) for f in self._weights())})"

    def _version_parts(self) -> list[Any]:
        o = self.options
        layer = "final" if o["layer"] == "final" else f"l{o['layer']}"
        frames = [f"{o['frames']}f"] if self.modality == "video" else []
        trunc = [f"len{o['max_length']}"] if o["max_length"] else []
        name = self._repo or Path(self._dir).name
        return [name, sha256_files(self._weights())[:8], self.modality, layer, o["pooling"], *frames, *trunc]

    # -- preprocessing -------------------------------------------------------
    def _processor(self) -> Any:
        if "processor" not in self._rt:
            import transformers as tf

            with hub_offline():
                if self.modality == "video":
                    try:
                        proc = tf.AutoVideoProcessor.from_pretrained(self._dir, local_files_only=True)
                        kind = "video"
                    except (OSError, ValueError):
                        proc, kind = self._image_processor(tf), "image"
                else:
                    proc, kind = self._image_processor(tf), "image"
            self._rt["processor"], self._rt["processor_kind"] = proc, kind
        return self._rt["processor"]

    def _image_processor(self, tf: Any) -> Any:
        try:
            return tf.AutoImageProcessor.from_pretrained(self._dir, local_files_only=True, backend="pil")
        except (OSError, ValueError) as e:
            if "backend" in str(e):
                return tf.AutoImageProcessor.from_pretrained(self._dir, local_files_only=True)
            raise ValueError(f"no usable image processor in {self._dir} ({e}); save one with "
                             "processor.save_pretrained(dir)") from e

    def preprocess(self, item: Any) -> np.ndarray | str:
        """Image -> float32 ``(C, H, W)``; video path -> float32 ``(T, C, H, W)``; caption -> ``str``."""
        if self.modality == "text":
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"hf text model: expected a non-empty caption string, got {item!r:.80}")
            return item
        proc = self._processor()
        if self.modality == "image":
            img = check_pil_image(item, "hf")
            return np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0], dtype=np.float32)
        from ._video import read_frames

        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"hf video model: expected a video file path, got {type(item).__name__}")
        frames = read_frames(item, self.options["frames"])
        if self._rt["processor_kind"] == "video":
            try:  # frames are already sampled; stop processors that would sample again
                out = proc(videos=[np.stack(frames)], return_tensors="np", do_sample_frames=False)
            except (TypeError, ValueError):
                out = proc(videos=[np.stack(frames)], return_tensors="np")
            arr = out.get("pixel_values", out.get("pixel_values_videos"))[0]
        else:
            arr = np.stack([proc(images=f, return_tensors="np")["pixel_values"][0] for f in frames])
        return np.asarray(arr, dtype=np.float32)

    # -- model ---------------------------------------------------------------
    def _load(self, device: str) -> None:
        import transformers as tf

        tf.utils.logging.disable_progress_bar()  # its per-actor "Loading weights" bar would cut through ours
        with hub_offline():
            model, info = tf.AutoModel.from_pretrained(self._dir, local_files_only=True, output_loading_info=True)
            tok = tf.AutoTokenizer.from_pretrained(self._dir, local_files_only=True) if self.modality == "text" else None
        missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
        if missing:
            raise RuntimeError(f"{self._dir}: weights missing for {missing[:8]} ({len(missing)} keys); refusing to "
                               "use randomly initialised parameters")
        sub = getattr(model, self._sub_attr) if self._sub_attr else model
        self._rt.update(model=sub.eval().to(device), tokenizer=tok)

    def _embed(self, batch: Any) -> Any:
        o, model = self.options, self._rt["model"]
        mask = None
        if self.modality == "text":
            tok = self._rt["tokenizer"]
            max_len = o["max_length"] or min(int(getattr(tok, "model_max_length", 512) or 512), 512)
            enc = tok(list(batch), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            enc = {k: v.to(self._rt["device"]) for k, v in enc.items()}
            out = model(**enc, output_hidden_states=True)
            mask = enc["attention_mask"]
        else:
            x = self.to_tensor(batch)
            out = model(pixel_values=x, output_hidden_states=True)
        hs = out.last_hidden_state if o["layer"] == "final" else out.hidden_states[_hidden_index(o["layer"])]
        hs = hs.float()
        if hs.ndim == 4:  # convolutional feature map (n, C, H, W)
            if o["pooling"] == "cls":
                raise ValueError(f"pooling=cls needs a token sequence; {self._model_type!r} gives feature maps")
            return hs.mean(dim=(2, 3))
        if o["pooling"] == "cls":
            return hs[:, 0]
        if mask is not None:
            m = mask.unsqueeze(-1).to(hs.dtype)
            return (hs * m).sum(1) / m.sum(1).clamp(min=1)
        return hs[:, self._n_prefix(hs, batch):].mean(dim=1)

    def _n_prefix(self, hs: Any, batch: Any) -> int:
        """Class/register tokens before the patch tokens (0 for video models and unknown layouts)."""
        p = self._cfg.get("patch_size")
        if self.modality != "image" or not p:
            return 0
        p = p if isinstance(p, int) else p[0]
        h, w = np.asarray(batch).shape[-2:]
        extra = hs.shape[1] - (h // p) * (w // p)
        return extra if extra > 0 else 0

    def _metadata(self) -> dict[str, Any]:
        o = self.options
        sha = sha256_files(self._weights())
        pre: dict[str, Any] = {"source": "tokenizer (AutoTokenizer)"} if self.modality == "text" else {}
        for fname in ("preprocessor_config.json", "video_preprocessor_config.json"):
            if self.modality != "text" and Path(self._dir, fname).is_file():
                pre[fname] = json.loads(Path(self._dir, fname).read_text())
        if self.modality == "video":
            pre["frame_sampling"] = f"{o['frames']} frames, np.linspace(0, n-1, frames).round() (PyAV rgb24)"
        if self.modality == "text":
            pre["max_length"] = o["max_length"] or "tokenizer model_max_length (<= 512)"
        return {
            "architecture": f"{self._model_type} (transformers AutoModel"
                            + (f".{self._sub_attr})" if self._sub_attr else ")"),
            "pretrained": f"local:{self._dir} sha256:{sha}", "hf_repo": self._repo or "none",
            "weights_source": self._dir, "weights_sha256": sha, "random_init": "false",
            "random_init_note": "weights read from files; files cannot show whether they were ever trained",
            "layer": str(o["layer"]),
            "layer_detail": "last_hidden_state (after final norm)" if o["layer"] == "final"
                            else f"output of block {o['layer']} = hidden_states[{_hidden_index(o['layer'])}] "
                                 "(0 = first block)",
            "pooling": {"cls": "first token", "mean": ("attention-masked mean" if self.modality == "text"
                                                       else "mean over patch tokens (prefix tokens excluded)")}[o["pooling"]],
            "preprocessing": pre,
        }

    @classmethod
    def info(cls) -> ExtractorInfo:
        return ExtractorInfo(
            name=cls.name, modalities=("image", "text", "video"), default_spec="hf:model=<dir or org/name>",
            default_dim=None, layers=f"{BLOCK_LAYERS} | final (last_hidden_state)",
            poolings=("cls", "mean"), options=cls.option_docs(),
            weights="model=<save_pretrained dir> or org/name already in the HF cache (local_files_only=True)",
            offline=False, offline_detail="needs model=<local directory or cached repo>; usable offline once given",
            description=cls.DESCRIPTION)

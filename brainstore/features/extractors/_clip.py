"""``clip`` extractor: open_clip image or text tower, final embedding or an intermediate block."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import _hub
from ._base import BLOCK_LAYERS, Extractor, ExtractorInfo, WeightsNotFoundError
from ._clip_configs import (_PP_KEYS, OPENAI_MEAN, OPENAI_STD, _ensure_open_clip_config, _is_torchscript,
                            _load_torchscript_weights, _tag_cfg, clip_model_config, list_clip_archs)
from ._imaging import clip_geometry, normalize_chw
from ._registry import register
from ..._provenance import sha256_file
from ._spec import Option, boolean, choice, int_range, layer_or, text
from ._util import check_pil_image, hub_offline, weights_dir


@register
class ClipExtractor(Extractor):
    """open_clip image tower (images) or text tower (captions).

    ``layer=final`` gives the projected embedding; ``layer=<i>`` the output of
    block ``i`` of the image transformer (``model.visual.forward_intermediates``; 0 = the
    first block, -1 = the last, numbered as in the ``hf`` extractor),
    pooled as the class token (``cls``) or the mean of the patch tokens (``mean``).
    ``preprocess`` returns float32 ``(3, H, W)`` for images (open_clip eval
    transform re-implemented with PIL+numpy) and the caption ``str`` for text.
    """

    name = "clip"
    DESCRIPTION = "open_clip CLIP image/text towers (final projection or intermediate image blocks)"
    PACKAGES = ("open_clip_torch", "torchvision", "huggingface_hub", "safetensors")
    OPTIONS = {
        "arch": Option("ViT-B-32", text, "open_clip architecture name (see open_clip.list_models())"),
        "pretrained": Option("openai", text, "open_clip tag | none (random init) | hf-hub:org/repo | local open_clip dir"),
        "checkpoint": Option(None, text, "local weights file (.pt/.bin/.safetensors) for arch"),
        "tower": Option("image", choice("image", "text"), "image tower for images, text tower for captions"),
        "layer": Option("final", layer_or("final"), f"final (projected embedding) or image {BLOCK_LAYERS}"),
        "pooling": Option("cls", choice("cls", "mean"), "token pooling for intermediate layers"),
        "normalize": Option(False, boolean, "L2-normalize the output"),
        "quick_gelu": Option("auto", choice("auto", "true", "false"), "force QuickGELU (auto: from the tag)"),
        "seed": Option(0, int_range(0), "torch seed for pretrained=none (random init)"),
        "cache_dir": Option(None, text, "HF hub cache / open_clip URL cache to search", in_version=False),
    }

    # -- construction --------------------------------------------------------
    def _setup(self) -> None:
        o, explicit = self.options, self.explicit
        pre, ckpt = o["pretrained"] or "openai", o["checkpoint"]
        self._tag: str | None = None
        self._dir: str | None = None
        if ckpt:
            if "pretrained" in explicit and (pre.lower() == "none" or pre.startswith("hf-hub:") or os.sep in pre):
                raise ValueError("checkpoint= combines only with an open_clip tag in pretrained= (or none given)")
            self._source, self._tag = "checkpoint", (pre if "pretrained" in explicit else None)
        elif pre.lower() == "none":
            self._source = "random"
        elif pre.startswith("hf-hub:"):
            self._source, self._repo = "hf-hub", pre[len("hf-hub:"):]
        elif pre.startswith("local-dir:") or os.sep in pre or pre.startswith((".", "~")):
            path = os.path.expanduser(pre[len("local-dir:"):] if pre.startswith("local-dir:") else pre)
            if os.path.isfile(path):
                self._source, o["checkpoint"] = "checkpoint", path
            else:
                self._source, self._dir = "local-dir", path
        else:
            self._source, self._tag = "tag", pre
        self._cfg, self._json_pp = self._read_config()
        self.modality = o["tower"]
        layer = o["layer"]
        if layer != "final":
            if o["tower"] != "image":
                raise ValueError("bad value for option 'layer': intermediate layers need tower=image; use layer=final")
            if self._cfg is not None:
                vc = self._cfg["vision_cfg"]
                if "timm_model_name" in vc or not isinstance(vc.get("layers"), int):
                    raise ValueError(f"bad value for option 'layer': arch {o['arch']!r} is not an open_clip "
                                     "VisionTransformer; only layer=final is supported")
                n = vc["layers"]
                if not -n <= layer < n:
                    raise ValueError(f"bad value for option 'layer': {layer} out of range for {n} blocks "
                                     f"(valid: final, 0..{n - 1} or -{n}..-1)")
                o["layer"] = layer % n
        if self._cfg is not None:
            self._dim = int(self._cfg["embed_dim"] if layer == "final" else self._cfg["vision_cfg"]["width"])
        self._pp: dict | None = None
        self._weights: tuple[str | None, str] | None = None

    def _read_config(self) -> tuple[dict | None, dict]:
        """Model config (and JSON preprocess cfg) without importing torch."""
        if self._source in ("hf-hub", "local-dir"):
            if self._source == "hf-hub":
                d = _hub.snapshot_dir(self._repo, "open_clip_config.json", self.options["cache_dir"])
            else:
                d = self._dir if os.path.isfile(os.path.join(self._dir, "open_clip_config.json")) else None
            if d is not None:
                js = json.loads(Path(d, "open_clip_config.json").read_text())
                self._dir = d
                return js.get("model_cfg", js), js.get("preprocess_cfg", {})
            if self._source == "hf-hub":
                return None, {}  # resolve_weights() raises WeightsNotFoundError
        arch = self.options["arch"]
        cfg = clip_model_config(arch)
        if cfg is None:
            archs = list_clip_archs()
            raise ValueError(f"bad value for option 'arch': unknown open_clip architecture {arch!r}; "
                             f"{len(archs)} known, e.g. {archs[:12]} (register more with register_clip_config)")
        return cfg, {}

    def _version_parts(self) -> list[Any]:
        o = self.options
        if self._source in ("hf-hub", "local-dir"):
            path, _ = self._resolve()
            name = ["hf", self._repo] if self._source == "hf-hub" else ["dir", Path(self._dir).name]
            src: list[Any] = [*name, sha256_file(path)[:8]]
        else:
            src = [o["arch"]]
            if self._source == "random":
                src.append(f"random-s{o['seed']}")
            elif self._source == "tag":
                src.append(self._tag)
            else:
                src += [self._tag, "ckpt", Path(o["checkpoint"]).stem, sha256_file(o["checkpoint"])[:8]]
        layer = "final" if o["layer"] == "final" else f"l{o['layer']}-{o['pooling']}"
        extra = (["l2"] if o["normalize"] else []) + ([f"qgelu-{o['quick_gelu']}"] if "quick_gelu" in self.explicit else [])
        return [*src, o["tower"], layer, *extra]

    # -- weights -------------------------------------------------------------
    def _resolve(self) -> tuple[str | None, str]:
        """``(weights file or None for random init, human-readable source)``."""
        if self._weights is not None:
            return self._weights
        o, cache = self.options, self.options["cache_dir"]
        how = (f"run `brainstore weights pull {self.spec}` where the hub can be reached (it fills the cache "
               "HF_HOME names; on a cluster, the shared one), or pass checkpoint=/path/to/open_clip_pytorch_model.bin "
               "(or .safetensors), or pre-populate the HF cache (e.g. `huggingface-cli download <repo>` elsewhere, "
               "then copy it and set HF_HOME/HF_HUB_CACHE or cache_dir=), or use pretrained=none for an explicitly "
               "random-initialised baseline")
        if self._source == "random":
            self._weights = (None, f"random-init (torch seed {o['seed']})")
        elif self._source == "checkpoint":
            if not os.path.isfile(o["checkpoint"]):
                raise WeightsNotFoundError(f"clip checkpoint file not found: {o['checkpoint']}\nTo fix: {how}",
                                           [o["checkpoint"]])
            self._weights = (o["checkpoint"], o["checkpoint"])
        elif self._source in ("hf-hub", "local-dir"):
            where = _hub.repo_cache_path(self._repo, cache) if self._source == "hf-hub" else self._dir
            ckpt = _hub.find_checkpoint_in_dir(self._dir) if self._dir else None
            if ckpt is None:
                raise WeightsNotFoundError(
                    f"open_clip weights for pretrained={o['pretrained']!r} not found offline; looked in {where} "
                    f"(open_clip_config.json + open_clip_model.safetensors/open_clip_pytorch_model.bin)\nTo fix: {how}",
                    [where])
            self._weights = (ckpt, ckpt)
        else:
            self._weights = self._resolve_tag(how)
        return self._weights

    def _resolve_tag(self, how: str) -> tuple[str, str]:
        arch, cache = self.options["arch"], self.options["cache_dir"]
        cfg = _tag_cfg(arch, self._tag)
        searched = []
        if cfg.get("file"):
            searched.append(cfg["file"])
            if os.path.isfile(cfg["file"]):
                return cfg["file"], f"open_clip:{self._tag} ({cfg['file']})"
        if cfg.get("hf_hub"):
            repo, fname = os.path.split(cfg["hf_hub"])  # open_clip's convention: "org/repo/" or "org/repo/file"
            fname = fname or "open_clip_pytorch_model.bin"
            if fname == "open_clip_pytorch_model.bin":
                alts = ["open_clip_model.safetensors"]
            else:
                alts = [fname[:-4] + ".safetensors"] if fname.endswith((".bin", ".pth")) else []
            for fn in alts + [fname]:
                hit = _hub.cached_file(repo, fn, cache)
                if hit:
                    return hit, f"open_clip:{self._tag} (HF cache {hit})"
            searched.append(f"HF cache {_hub.repo_cache_path(repo, cache)} (files {alts + [fname]})")
            how = how.replace("<repo>", repo)
        if cfg.get("url"):  # cache_dir=, else brainstore's weights folder (what `weights pull` fills), else open_clip's
            dirs = [cache] if cache else [str(weights_dir() / "open_clip"), "~/.cache/clip"]
            paths = [os.path.join(os.path.expanduser(d), os.path.basename(cfg["url"])) for d in dirs]
            for p in paths:
                if os.path.isfile(p):
                    return p, f"open_clip:{self._tag} ({p})"
            searched.append(f"open_clip URL cache {' or '.join(paths)} (from {cfg['url']})")
        raise WeightsNotFoundError(
            f"open_clip weights for arch={arch!r} pretrained={self._tag!r} are not available offline; looked in: "
            + "; ".join(searched) + f"\nTo fix: {how}", searched)

    def resolve_weights(self) -> str:
        return self._resolve()[1]

    # -- preprocessing -------------------------------------------------------
    def preprocess_config(self) -> dict:
        """Resize/crop/normalization settings (open_clip ``PreprocessCfg`` semantics)."""
        if self._pp is None:
            if self._cfg is None:
                self._resolve()  # raises WeightsNotFoundError for an uncached hf-hub repo
            pp = {"size": self._cfg["vision_cfg"].get("image_size", 224), "mode": "RGB", "mean": OPENAI_MEAN,
                  "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
            pp.update({k: v for k, v in self._json_pp.items() if k in _PP_KEYS and v is not None})
            if self._tag is not None:
                pp.update({k: v for k, v in _tag_cfg(self.options["arch"], self._tag).items()
                           if k in _PP_KEYS and k != "size" and v is not None})
            pp["size"] = self._cfg["vision_cfg"].get("image_size", pp["size"])
            self._pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
        return self._pp

    def __getstate__(self) -> dict[str, Any]:
        if self._pp is None and self.modality == "image" and "open_clip" in sys.modules:
            try:  # ship the resolved preprocessing so CPU workers need not import open_clip/torch
                self.preprocess_config()
            except Exception:  # noqa: BLE001 - unresolvable here; workers will raise the real error
                pass
        return super().__getstate__()

    def preprocess(self, item: Any) -> np.ndarray | str:
        """PIL image -> uint8 ``(3, H, W)`` resized/cropped pixels (tower=image); caption -> ``str`` (tower=text).

        Normalization (``/255``, ``mean``, ``std``) happens in :meth:`to_tensor`, on the model's
        device: batches travel between processes as uint8, a quarter of the bytes of float32.
        ``normalize(preprocess(img))`` equals ``open_clip.image_transform(eval)(img)``.
        """
        if self.modality == "text":
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"clip text tower: expected a non-empty caption string, got {item!r:.80}")
            return item
        pp = self.preprocess_config()
        return clip_geometry(check_pil_image(item, "clip"), pp["size"], pp["interpolation"], pp["resize_mode"],
                             pp["fill_color"])

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 ``(..., 3, H, W)`` pixels from :meth:`preprocess` -> float32 model input (numpy)."""
        x = np.asarray(batch)
        if x.dtype != np.uint8:
            return np.asarray(x, dtype=np.float32)
        pp = self.preprocess_config()
        flat = x.reshape(-1, *x.shape[-3:])
        out = np.stack([normalize_chw(c.transpose(1, 2, 0), pp["mean"], pp["std"], scale=255.0) for c in flat])
        return out.reshape(x.shape).astype(np.float32, copy=False)

    def to_tensor(self, batch: Any) -> Any:
        """Batch -> float32 model input on the loaded device.

        uint8 pixels (what :meth:`preprocess` returns) are normalized here, with the same float32
        arithmetic as open_clip's ``ToTensor`` + ``Normalize``; float arrays are taken as already
        normalized.
        """
        import torch

        x = np.asarray(batch)
        if x.dtype != np.uint8:
            return super().to_tensor(x)
        pp = self.preprocess_config()
        dev = self._rt["device"]
        mean = torch.tensor(pp["mean"], dtype=torch.float32, device=dev).view(-1, 1, 1)
        std = torch.tensor(pp["std"], dtype=torch.float32, device=dev).view(-1, 1, 1)
        t = torch.from_numpy(np.ascontiguousarray(x)).to(dev, non_blocking=True).float()
        return (t / 255.0 - mean) / std

    # -- model ---------------------------------------------------------------
    def _quick_gelu(self) -> bool | None:
        q = self.options["quick_gelu"]
        if q != "auto":
            return q == "true"
        if self._tag is not None and _tag_cfg(self.options["arch"], self._tag).get("quick_gelu"):
            return True
        return None

    def _load(self, device: str) -> None:
        import logging

        import open_clip
        import torch

        path, _ = self._resolve()
        if self._source in ("hf-hub", "local-dir"):
            name, pretrained = "local-dir:" + self._dir, None
        else:
            _ensure_open_clip_config(self.options["arch"], self._cfg)
            name, pretrained = self.options["arch"], path
        jit = _is_torchscript(path)
        kwargs = {} if self._quick_gelu() is None else {"quick_gelu": self._quick_gelu()}
        with hub_offline(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options["seed"])
            # silence open_clip's "initialized randomly": with a TorchScript checkpoint the weights are
            # loaded right below; with pretrained=none random weights are the request, recorded in the
            # table's metadata (random_init) and said by `brainstore extract` and the demo
            if jit or path is None:
                logging.disable(logging.WARNING)
            try:
                model = open_clip.create_model(
                    name, pretrained=None if jit else pretrained, precision="fp32", device="cpu",
                    pretrained_image=False, pretrained_text=False, require_pretrained=path is not None and not jit,
                    cache_dir=self.options["cache_dir"], **kwargs)
            finally:
                logging.disable(logging.NOTSET)
            if jit:
                _load_torchscript_weights(model, path)
            tokenizer = open_clip.get_tokenizer(name) if self.modality == "text" else None
        self._rt["model"] = model.eval().to(device)
        self._rt["tokenizer"] = tokenizer

    def _embed(self, batch: Any) -> Any:
        import torch.nn.functional as F

        model, o = self._rt["model"], self.options
        if self.modality == "text":
            tokens = self._rt["tokenizer"](list(batch)).to(self._rt["device"])
            out = model.encode_text(tokens)
        elif o["layer"] == "final":
            out = model.encode_image(self.to_tensor(batch))
        else:
            res = model.visual.forward_intermediates(
                self.to_tensor(batch), indices=[o["layer"]], stop_early=True, intermediates_only=True,
                output_fmt="NLC", output_extra_tokens=True)
            if o["pooling"] == "cls":
                out = res["image_intermediates_prefix"][0][:, 0]
            else:
                out = res["image_intermediates"][0].mean(dim=1)
        out = out.float()
        return F.normalize(out, dim=-1) if o["normalize"] else out

    # -- provenance ----------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        o = self.options
        try:
            path, source = self._resolve()
            sha = sha256_file(path) if path else "none"
        except WeightsNotFoundError as e:
            path, source, sha = None, f"unresolved: {str(e).splitlines()[0]}", "unresolved"
        pretrained = {"random": "none", "tag": self._tag, "checkpoint": f"sha256:{sha}",
                      "hf-hub": f"hf-hub:{getattr(self, '_repo', '')} sha256:{sha}",
                      "local-dir": f"local:{self._dir} sha256:{sha}"}[self._source]
        arch = o["arch"] if self._source not in ("hf-hub", "local-dir") else f"open_clip_config.json of {self._dir}"
        if self.modality == "image":
            pre = dict(self.preprocess_config(), implementation="PIL+numpy, equals open_clip image_transform (eval)")
        else:
            pre = {"tokenizer": "open_clip.get_tokenizer", "context_length": self._cfg["text_cfg"].get("context_length", 77)}
        layer = o["layer"]
        return {
            "architecture": arch, "pretrained": pretrained, "pretrained_tag": self._tag or "none",
            "weights_source": source, "weights_sha256": sha,
            "random_init": "true" if self._source == "random" else "false",
            "seed": str(o["seed"]) if self._source == "random" else "none",
            "tower": o["tower"], "layer": str(layer),
            "layer_detail": ("projected embedding (encode_image/encode_text)" if layer == "final"
                             else f"output of model.visual.transformer.resblocks[{layer}] (forward_intermediates)"),
            "pooling": ("model head (open_clip pool + projection)" if layer == "final"
                        else {"cls": "cls token", "mean": "mean over patch tokens (cls excluded)"}[o["pooling"]]),
            "normalize": str(o["normalize"]).lower(), "quick_gelu": str(self._quick_gelu_safe()).lower(),
            "preprocessing": pre,
        }

    def _quick_gelu_safe(self) -> bool | None:
        try:
            q = self._quick_gelu()
        except ValueError:
            return None
        return q if q is not None else bool((self._cfg or {}).get("quick_gelu", False))

    @classmethod
    def info(cls) -> ExtractorInfo:
        ok, detail = cls.offline_status()
        cfg = clip_model_config("ViT-B-32")
        return ExtractorInfo(
            name=cls.name, modalities=("image", "text"),
            default_spec="clip:arch=ViT-B-32,pretrained=openai,tower=image,layer=final",
            default_dim=int(cfg["embed_dim"]) if cfg else None,
            layers=f"final (projected embedding) | image-transformer {BLOCK_LAYERS}",
            poolings=("cls", "mean"), options=cls.option_docs(),
            weights=("open_clip tags from the HF cache ($HF_HUB_CACHE / $HF_HOME/hub), $BRAINSTORE_WEIGHTS_DIR/"
                     "open_clip or ~/.cache/clip (`brainstore weights pull` fills them); "
                     "checkpoint=<file>; pretrained=hf-hub:org/repo (cached) or an open_clip dir; pretrained=none"),
            offline=ok, offline_detail=detail, description=cls.DESCRIPTION)

"""Tiny models for tests, demos and benchmarks (random weights, seconds to build, fully offline).

``register_tiny_models()`` makes a small open_clip architecture available to
the ``clip`` extractor (``clip:arch=brainstore-tiny-clip,pretrained=none``);
the ``make_*`` helpers write tiny checkpoints / model directories / videos;
:class:`FaultyTextExtractor` is a caption extractor whose forward pass can be made to fail.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Extractor
from ._spec import Option, int_range, text

TINY_CLIP = "brainstore-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_models(with_open_clip: bool = True) -> list[str]:
    """Register the tiny open_clip config; return the architecture names (``[TINY_CLIP]``).

    With ``with_open_clip`` (default) it is also added to open_clip's own
    registry (``open_clip.add_model_config``; imports torch), so
    ``open_clip.create_model(TINY_CLIP)`` works.  The ``clip`` extractor
    re-registers it wherever it loads (e.g. in Ray workers), so
    ``with_open_clip=False`` is enough for extractor use without importing torch.
    """
    from ._clip_configs import _ensure_open_clip_config, register_clip_config

    register_clip_config(TINY_CLIP, TINY_CLIP_CONFIG)
    if with_open_clip:
        _ensure_open_clip_config(TINY_CLIP, TINY_CLIP_CONFIG)
    return [TINY_CLIP]


def make_tiny_clip_checkpoint(path: str | os.PathLike, seed: int = 1) -> str:
    """Save a randomly initialised tiny CLIP ``state_dict`` (``.pt`` or ``.safetensors``) to ``path``."""
    import open_clip
    import torch

    register_tiny_models()
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    else:
        torch.save(model.state_dict(), path)
    return path


def make_tiny_sam_checkpoint(path: str | os.PathLike, seed: int = 1, img_size: int = 64) -> str:
    """Save a tiny SAM image encoder in the official layout (``image_encoder.*`` keys)."""
    import torch

    from ._sam import build_image_encoder

    torch.manual_seed(seed)
    enc = build_image_encoder("tiny", img_size)
    torch.save({f"image_encoder.{k}": v for k, v in enc.state_dict().items()}, str(path))
    return str(path)


def make_tiny_hf_models(root: str | os.PathLike, seed: int = 1) -> dict[str, str]:
    """Write tiny ViT, DINOv2, VideoMAE and BERT ``save_pretrained`` directories under ``root``.

    Returns
    -------
    dict[str, str]
        ``{"vit": dir, "dinov2": dir, "videomae": dir, "bert": dir}``.
    """
    import torch
    import transformers as tf
    from transformers.models.videomae.video_processing_videomae import VideoMAEVideoProcessor
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    root = Path(root)
    out = {k: str(root / k) for k in ("vit", "dinov2", "videomae", "bert")}
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(seed)
    tf.ViTModel(tf.ViTConfig(**tiny, intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(out["vit"])
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out["vit"])
    tf.Dinov2Model(tf.Dinov2Config(**tiny, mlp_ratio=2, image_size=32, patch_size=8)).save_pretrained(out["dinov2"])
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(out["dinov2"])
    tf.VideoMAEModel(tf.VideoMAEConfig(**tiny, intermediate_size=64, image_size=32, patch_size=8, num_frames=4,
                                       tubelet_size=2)).save_pretrained(out["videomae"])
    VideoMAEVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        out["videomae"])
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "cat", "dog", "sat", "on", "mat", "car",
             "red", "blue", "runs", "##s", "is", "big", "small"]
    os.makedirs(out["bert"], exist_ok=True)
    vocab = Path(out["bert"]) / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tf.BertTokenizer(vocab_file=str(vocab)).save_pretrained(out["bert"])
    tf.BertModel(tf.BertConfig(vocab_size=len(words), intermediate_size=64, max_position_embeddings=64,
                               **tiny)).save_pretrained(out["bert"])
    return out


def write_tiny_video(path: str | os.PathLike, n_frames: int = 16, height: int = 48, width: int = 64,
                     fps: int = 8, codec: str = "mpeg4") -> str:
    """Write a small synthetic video (moving bar, changing colour) with PyAV."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            a = np.zeros((height, width, 3), np.uint8)
            a[..., 0] = (i * 255) // max(1, n_frames - 1)
            x0 = (i * width) // n_frames
            a[:, x0 : x0 + max(2, width // 8), 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


class FaultyTextExtractor(Extractor):
    """Captions -> 8 hashed values; the forward pass raises on a batch holding ``fail_on``
    (every time, or only ``fail_times`` times: a transient fault).

    Not registered (the registry lists real extractors): build it directly,
    ``FaultyTextExtractor(fail_on="giraffe")``, and pass the object to ``extract``. The
    failure imitates a CUDA fault, so tests can check that a failing model stops the job
    instead of marking stimuli bad. The options change neither the version nor any identity
    field: a table made with and without them is the same feature version.
    """

    name = "testing-faulty"
    OPTIONS = {
        "fail_on": Option(None, text, "raise in the forward pass on a batch with a caption containing this",
                          in_version=False),
        "fail_times": Option(0, int_range(0), "raise only that many times per process (0: every time)",
                             in_version=False),
    }

    def _setup(self) -> None:
        self.modality, self._dim = "text", 8

    def _version_parts(self) -> list[Any]:
        return ["sha256"]

    def preprocess(self, item: Any) -> str:
        """Caption -> the same ``str`` (validated)."""
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"testing-faulty: expected a non-empty caption string, got {item!r:.80}")
        return item

    def _load(self, device: str) -> None:
        self._rt["model"] = hashlib.sha256

    def _embed(self, batch: Any) -> np.ndarray:
        marker, times = self.options["fail_on"], self.options["fail_times"]
        failures = self._rt.get("failures", 0)
        if marker and any(marker in c for c in batch) and (not times or failures < times):
            self._rt["failures"] = failures + 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return np.stack([np.frombuffer(self._rt["model"](c.encode()).digest()[:8], np.uint8) for c in batch]) / 255.0

    def _metadata(self) -> dict[str, Any]:
        return {"architecture": "sha256 of the caption", "pretrained": "none", "weights_source": "none",
                "weights_sha256": "none", "random_init": "false", "layer": "final", "pooling": "none",
                "preprocessing": "none"}

"""Tiny models for tests, demos and benchmarks (random weights, seconds to build, fully offline).

``register_tiny_models()`` makes a small open_clip architecture available to
the ``clip`` extractor (``clip:arch=brainstore-tiny-clip,pretrained=none``);
the ``make_*`` helpers write tiny checkpoints / model directories / videos.
"""

from __future__ import annotations

import os
from pathlib import Path

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

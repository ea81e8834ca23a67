"""What the extractor tests share: the tiny CLIP architecture, test images and captions, and one spec per
registry entry (``CASES``; ``{clip}``, ``{sam}``, ``{vit}`` ... filled from the ``assets`` fixture)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from brainstore.features.extractors import testing as _testing  # noqa: E402

TINY = _testing.register_tiny_models()[0]


def _images(n=3):
    rng = np.random.RandomState(0)
    sizes = [(40, 52), (64, 48), (33, 33), (20, 90)]
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)) for h, w in sizes[:n]]


CAPTIONS = ["a red cat sat on the mat", "the blue car", "a small dog runs"]

# id -> (spec template, random_init); {clip}, {sam}, {vit}, ... are filled from the assets
CASES = {
    "clip-random": (f"clip:arch={TINY},pretrained=none", True),
    "clip-checkpoint": (f"clip:arch={TINY},checkpoint={{clip}}", False),
    "clip-layer-mean": (f"clip:arch={TINY},pretrained=none,layer=0,pooling=mean", True),
    "clip-text": (f"clip:arch={TINY},checkpoint={{clip}},tower=text", False),
    "sam-checkpoint": ("sam:variant=tiny,checkpoint={sam}", False),
    "sam-random-grid": ("sam:variant=tiny,pretrained=none,pooling=grid,grid=2", True),
    "hf-vit": ("hf:model={vit}", False),
    "hf-dinov2-mean": ("hf:model={dinov2},layer=1,pooling=mean", False),
    "hf-videomae": ("hf:model={videomae}", False),
    "hf-bert": ("hf:model={bert}", False),
    "text": ("text", False),
    "video-clip": (f"video:image=[clip:arch={TINY},checkpoint={{clip}}],frames=4", False),
    "motion-energy": ("motion-energy:size=32,sf=[0,2,4,8]", False),
    "motion-energy-video": ("motion-energy:modality=video,size=16,sf=[0,2],tf=[0,2],fps=8,max_frames=64", False),
}


def _spec(case, a):
    return CASES[case][0].format(clip=a.clip_ckpt, sam=a.sam_ckpt, **a.hf)


def _items(ext, a):
    return {"image": _images(3), "text": CAPTIONS, "video": [a.video, a.video2, a.video]}[ext.modality]


def _stack(ext, xs):
    return list(xs) if ext.modality == "text" else np.stack(xs)

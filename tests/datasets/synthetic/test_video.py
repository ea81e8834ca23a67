"""The synthetic video fMRI dataset: layout, determinism, the HRF, the haemodynamic lag and the repeats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainstore.datasets.synthetic import _video as vs
from brainstore.datasets.synthetic._video import hrf, make_video_dataset

_TINY = dict(n_train_runs=2, trs_per_run=10, n_test_repeats=2, fps=2, frame_size=32, n_vertices=100, progress=False)
_ROIS = {"visual": {1: "V1", 2: "V2"}, "motion": {1: "MT"}, "categories": {1: "FFA", 2: "EBA", 3: "cars", 4: "animals"},
         "places": {1: "PPA"}}
_PREFERRED = {1: "face", 2: "body", 3: "car", 4: "animal"}  # category of each `categories` label (FFA, EBA, cars, animals)
_KW = dict(n_subjects=2, n_train_runs=3, trs_per_run=40, n_test_repeats=3, tr=2.0, fps=4, frame_size=32, n_vertices=300,
           seed=1, progress=False)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """2 subjects, 3 training clips + 1 test clip (3 repeats) of 40 TRs, ~300 vertices per hemisphere (read-only)."""
    return make_video_dataset(tmp_path_factory.mktemp("video") / "v", **_KW)


def _csv(path):
    import pyarrow.csv as pcsv

    return pcsv.read_csv(path).to_pydict()


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "synthetic.json")


def test_deterministic_by_seed(tmp_path):
    a = make_video_dataset(tmp_path / "a", seed=5, **_TINY)
    b = make_video_dataset(tmp_path / "b", seed=5, **_TINY)
    c = make_video_dataset(tmp_path / "c", seed=6, **_TINY)
    assert _files(a) == _files(b) == _files(c)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for rel in ("stimuli/frames.npy", "responses/subj01/lh.npy", "rois/subj01/lh.motion.npy"):
        assert (a / rel).read_bytes() != (c / rel).read_bytes(), rel


def test_layout_and_shapes(video):
    import pyarrow.parquet as pq
    import yaml

    k = _KW
    n_frames = k["trs_per_run"] * int(k["tr"] * k["fps"])
    frames = np.load(video / "stimuli" / "frames.npy", mmap_mode="r")
    assert frames.dtype == np.uint8 and frames.shape == (4 * n_frames, 32, 32, 3)
    clips = _csv(video / "clips.csv")
    assert clips["clip"] == ["run-01", "run-02", "run-03", "test"]
    assert clips["split"] == ["train"] * 3 + ["test"]
    assert clips["n_frames"] == [n_frames] * 4
    # the clips tile the frame brick exactly, in order
    assert clips["first_frame"] == list(np.cumsum([0] + clips["n_frames"][:-1]))
    assert clips["first_frame"][-1] + clips["n_frames"][-1] == len(frames)
    truth = pq.read_table(video / "truth" / "frames.parquet").to_pydict()
    assert len(truth["frame"]) == len(frames)
    assert truth["frame"][:n_frames] == list(range(n_frames))
    assert set(truth["category"]) == set(vs.CATEGORIES) and set(truth["place"]) <= set(vs.PLACES)
    assert min(truth["speed"]) == 0 and max(truth["speed"]) > 0

    n_trs = k["trs_per_run"]
    for s in ("subj01", "subj02"):
        t = _csv(video / "trials" / f"{s}.csv")
        assert list(t) == ["stimulus_id", "session", "run", "split", "onset"]
        assert len(t["stimulus_id"]) == (3 + 3) * n_trs
        assert t["stimulus_id"][:2] == ["run-01/tr0000", "run-01/tr0001"] and t["stimulus_id"][-1] == f"test/tr{n_trs - 1:04d}"
        assert list(dict.fromkeys(t["run"])) == ["run-01", "run-02", "run-03", "test-1", "test-2", "test-3"]
        assert set(t["session"]) == {"ses-01"} and t["split"].count("test") == 3 * n_trs
        assert t["onset"][:3] == [0, 2, 4] and t["onset"][n_trs] == 0
        for hemi in ("lh", "rh"):
            y = np.load(video / "responses" / s / f"{hemi}.npy")
            nv = y.shape[1]
            assert y.dtype == np.float32 and y.shape[0] == len(t["stimulus_id"]) and 270 <= nv <= 330
            gt = np.load(video / "ground_truth" / s / f"{hemi}_pred_test.npy")
            tr_gt = np.load(video / "ground_truth" / s / f"{hemi}_train_noiseless.npy")
            assert gt.dtype == tr_gt.dtype == np.float32 and gt.shape == (n_trs, nv) and tr_gt.shape == (3 * n_trs, nv)
            inside = np.zeros(nv, int)
            for fam, mapping in _ROIS.items():
                frac = {"visual": 0.1, "motion": 0.15, "categories": 0.05, "places": 0.08}[fam]
                lab = np.load(video / "rois" / s / f"{hemi}.{fam}.npy")
                assert lab.dtype == np.int32 and lab.shape == (nv,)
                assert set(np.unique(lab)) == {0, *mapping}, fam
                for v in mapping:
                    assert abs((lab == v).mean() - frac) < 0.02, (fam, v)
                inside += lab > 0
            assert inside.max() == 1  # families do not overlap
    counts = {np.load(video / "responses" / s / f"{h}.npy").shape[1] for s in ("subj01", "subj02") for h in ("lh", "rh")}
    assert len(counts) > 1  # each subject and hemisphere its own vertices

    d = yaml.safe_load((video / "brainstore-dataset.yaml").read_text())
    assert d["name"] == "synthetic-video" and d["zscore"] == "run" and d["noise_ceiling"] == "from_repeats"
    assert d["timeseries"] == {"tr": 2.0, "fps": 4, "frames": {"array": "stimuli/frames.npy"}, "clips": "clips.csv"}
    assert d["trials"] == "trials/{subject}.csv" and d["ground_truth"] == "ground_truth"
    assert d["responses"] == {"lh": "responses/{subject}/lh.npy", "rh": "responses/{subject}/rh.npy"}
    assert d["subjects"] == ["subj01", "subj02"]
    assert list(d["rois"]) == list(_ROIS)
    for fam, mapping in _ROIS.items():
        assert d["rois"][fam] == {"lh": f"rois/{{subject}}/lh.{fam}.npy", "rh": f"rois/{{subject}}/rh.{fam}.npy",
                                  "mapping": mapping}
        assert (video / d["rois"][fam]["rh"].format(subject="subj02")).is_file()
    assert d["space"] == {"surface": "fsaverage",
                          "vertices": {"lh": "space/{subject}/lh.vertices.npy", "rh": "space/{subject}/rh.vertices.npy"}}
    assert set(p.name for p in video.iterdir()) == {"brainstore-dataset.yaml", "synthetic.json", "stimuli", "clips.csv",
                                                    "truth", "trials", "responses", "rois", "space", "ground_truth"}
    assert not list(video.parent.glob(".*tmp-*"))


def test_fractional_frames_per_tr(tmp_path):
    """7.5 frames per TR: the clip holds every frame of its last TR (frames in [k tr, (k + 1) tr)), where
    round(11 * 7.5) = 82 would cut the last TR short."""
    root = make_video_dataset(tmp_path / "f", **{**_TINY, "trs_per_run": 11, "tr": 1.5, "fps": 5})
    n = _csv(root / "clips.csv")["n_frames"][0]
    assert n == math.ceil(11 * 1.5 * 5) == 83
    assert math.floor(n / 7.5 + 1e-9) == 11  # the reader's TR count
    t = _csv(root / "trials" / "subj01.csv")
    assert len(t["onset"]) == (2 + 2) * 11 and t["onset"][1] == 1.5


def test_hrf_is_spm_double_gamma():
    dt = 0.01
    h = hrf(dt)
    t = np.arange(len(h)) * dt
    assert len(h) == 3201 and h[0] == 0.0
    assert 4.0 <= t[np.argmax(h)] <= 6.0
    assert abs(h.sum() * dt - 1.0) < 2e-3
    assert t[np.argmin(h)] == pytest.approx(15.0, abs=1.5) and h.min() < 0  # the undershoot

    def spm(x):  # gamma(6) - gamma(16) / 6 by hand, normalized by its integral over [0, inf) (5/6)
        return (x**5 * math.exp(-x) / math.factorial(5) - x**15 * math.exp(-x) / math.factorial(15) / 6) / (5 / 6)

    h2 = hrf(2.0)
    assert len(h2) == 17
    for j in (1, 2, 3, 5, 8):
        assert h2[j] == pytest.approx(spm(2.0 * j), rel=1e-3, abs=1e-6)
    assert h2 == pytest.approx(hrf(0.5)[::4], abs=1e-12)
    with pytest.raises(ValueError, match="tr"):
        hrf(0)


def _motion_per_tr(root, clip_rows, n_frames, per_tr):
    """TR averages of the frames' mean absolute luminance change (computed here from the frames)."""
    f = np.load(root / "stimuli" / "frames.npy", mmap_mode="r")
    out = []
    for first in clip_rows:
        lum = f[first : first + n_frames].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        d = np.abs(np.diff(lum, axis=0)).mean((1, 2))
        out.append(np.concatenate([d[:1], d]).reshape(-1, per_tr).mean(1))
    return np.array(out)  # (clips, TRs)


def test_mt_bold_lags_motion_by_the_hrf_delay(video):
    n_trs, per_tr = _KW["trs_per_run"], int(_KW["tr"] * _KW["fps"])
    clips = _csv(video / "clips.csv")
    motion = _motion_per_tr(video, clips["first_frame"][:3], clips["n_frames"][0], per_tr)
    for s in ("subj01", "subj02"):
        for hemi in ("lh", "rh"):
            mt = np.load(video / "rois" / s / f"{hemi}.motion.npy") == 1
            bold = np.load(video / "ground_truth" / s / f"{hemi}_train_noiseless.npy").reshape(3, n_trs, -1)[:, :, mt]
            cc = []
            for lag in range(7):  # within runs: BOLD at TR k + lag against motion at TR k
                x = motion[:, : n_trs - lag].ravel()
                y = bold[:, lag:].reshape(-1, mt.sum())
                x, y = (x - x.mean()) / x.std(), (y - y.mean(0)) / y.std(0)
                cc.append(float((x[:, None] * y).mean(0).mean()))
            assert int(np.argmax(cc)) in (2, 3), (s, hemi, np.round(cc, 2))
            assert max(cc) > 0.4 and max(cc) - cc[0] > 0.2, np.round(cc, 2)
            # causal: every run starts from rest (hrf(0) = 0), so its first noiseless TR is exactly zero
            assert not bold[:, 0].any()


def test_test_repeats_differ_only_by_noise(video):
    n_trs = _KW["trs_per_run"]
    for s in ("subj01", "subj02"):
        for hemi in ("lh", "rh"):
            y = np.load(video / "responses" / s / f"{hemi}.npy")
            oracle = np.load(video / "ground_truth" / s / f"{hemi}_pred_test.npy")
            train = np.load(video / "ground_truth" / s / f"{hemi}_train_noiseless.npy")
            reps = y[3 * n_trs :].reshape(3, n_trs, -1)
            noise = reps - oracle[None]
            assert not oracle[0].any()
            # the residuals of different repeats are independent noise of one per-vertex size
            for i, j in ((0, 1), (0, 2), (1, 2)):
                r = np.mean([np.corrcoef(noise[i, :, v], noise[j, :, v])[0, 1] for v in range(noise.shape[2])])
                assert abs(r) < 0.05, r
            sd = noise.std((0, 1))  # per vertex, over the 3 x 40 test TRs
            sd_train = (y[: 3 * n_trs] - train).std(0)
            ratio = sd / sd_train  # 120 TRs each: sampling error ~ 9 %
            assert abs(np.median(ratio) - 1) < 0.05 and np.mean(np.abs(ratio - 1)) < 0.12, ratio
            assert sd.min() > 0.2 and sd.max() < 1.3  # noise sd = 1 / sqrt(1 + snr**2) in [0.32, 1]
            # the mean of the repeats tracks the oracle where the signal is strong
            strong = oracle.std(0) > sd
            assert strong.sum() > 20
            m = reps.mean(0)
            r = np.array([np.corrcoef(m[:, v], oracle[:, v])[0, 1] for v in np.flatnonzero(strong)])
            assert r.mean() > 0.85, r.mean()
            # some vertices carry almost no signal
            assert (oracle.std(0) < 0.05).sum() >= 1


def test_category_and_place_rois_prefer_their_content(video):
    import pyarrow.parquet as pq

    n_trs, per_tr = _KW["trs_per_run"], int(_KW["tr"] * _KW["fps"])
    truth = pq.read_table(video / "truth" / "frames.parquet", columns=["clip", "category", "place"]).to_pydict()
    n_train = 3 * n_trs * per_tr  # the training clips come first in the brick

    def per_tr_share(col, value):
        x = np.array([v == value for v in truth[col][:n_train]], float)
        return x.reshape(3, n_trs, per_tr).mean(2)

    lag = 3  # ~ the HRF peak (5 s at tr = 2 s)
    for hemi in ("lh", "rh"):
        bold = np.load(video / "ground_truth" / "subj01" / f"{hemi}_train_noiseless.npy").reshape(3, n_trs, -1)
        lab = np.load(video / "rois" / "subj01" / f"{hemi}.categories.npy")
        for label, cat in _PREFERRED.items():
            y = bold[:, lag:, lab == label].mean(2).ravel()
            r = {c: np.corrcoef(y, per_tr_share("category", c)[:, : n_trs - lag].ravel())[0, 1] for c in vs.CATEGORIES}
            assert max(r, key=r.get) == cat and r[cat] > 0.6, (label, r)
        ppa = np.load(video / "rois" / "subj01" / f"{hemi}.places.npy") == 1
        y = bold[:, lag:, ppa].mean(2).ravel()
        r_tex = np.corrcoef(y, per_tr_share("place", "texture")[:, : n_trs - lag].ravel())[0, 1]
        assert r_tex < -0.3, r_tex  # PPA prefers places to textures


def test_static_segments_change_only_by_pixel_noise(video):
    import pyarrow.parquet as pq

    t = pq.read_table(video / "truth" / "frames.parquet", columns=["clip", "segment", "speed"]).to_pydict()
    f = np.load(video / "stimuli" / "frames.npy", mmap_mode="r").astype(np.float32)
    seg = np.array([hash((c, s)) for c, s in zip(t["clip"], t["segment"])])
    same = seg[1:] == seg[:-1]
    diff = np.abs(f[1:] - f[:-1]).mean((1, 2, 3))
    static, moving = same & (np.array(t["speed"][1:]) == 0), same & (np.array(t["speed"][1:]) > 0)
    assert static.sum() > 10 and moving.sum() > 10
    assert diff[static].max() < 4.5  # |n1 - n2| of noise sd 3: ~3.4 grey levels
    assert diff[moving].mean() > diff[static].mean() + 0.3


def test_overwrite_errors_and_no_leftovers(tmp_path, monkeypatch):
    root = tmp_path / "d"
    root.mkdir()
    make_video_dataset(root, **_TINY)  # an empty folder is fine
    (root / "marker").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_video_dataset(root, **_TINY)
    assert (root / "marker").exists()
    make_video_dataset(root, overwrite=True, **_TINY)
    assert not (root / "marker").exists() and (root / "brainstore-dataset.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(vs, "_write_hemisphere", boom)
    with pytest.raises(KeyboardInterrupt):
        make_video_dataset(tmp_path / "e", **_TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # nothing half written, no temporary folder


@pytest.mark.parametrize("arg,value", [
    ("n_subjects", 0), ("n_train_runs", 1), ("trs_per_run", 5), ("n_test_repeats", 1), ("frame_size", 16),
    ("n_vertices", 10), ("seed", -1), ("tr", 0), ("tr", 20.0), ("fps", 0), ("fps", 0.25), ("n_vertices", 100.5),
])
def test_bad_sizes_name_the_argument(tmp_path, arg, value):
    with pytest.raises(ValueError, match=arg):
        make_video_dataset(tmp_path / "x", **{**_TINY, arg: value})
    assert not list(tmp_path.iterdir())

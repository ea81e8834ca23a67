"""The synthetic benchmark dataset: layout, determinism, and the oracle check."""

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, make_dataset
from brainstore.fitting import score_submission
from brainstore.scoring import nnmc, pearson_r


def test_oracle_scores_near_100_and_shuffled_near_0(small_dataset):
    ds = AlgonautsDataset(small_dataset)
    res = score_submission(ds, small_dataset / "ground_truth")
    for s, out in res.items():
        assert out["both"]["roi"]["all"] > 80, out["both"]["roi"]
        for hemi in ("lh", "rh"):
            gt = np.load(small_dataset / "ground_truth" / s / f"{hemi}_pred_test.npy")
            test = ds.responses(s, hemi, "test")
            nc = ds.noise_ceiling(s, hemi)
            # Calibration without the clip at 100: mean r^2 / NC over reliable vertices is ~1.
            r = pearson_r(gt, test)
            ok = nc > 0.3
            ratio = np.mean(np.maximum(r[ok], 0) ** 2 / nc[ok])
            assert 0.85 < ratio < 1.15, ratio
            shuffled = gt[np.random.default_rng(0).permutation(len(gt))]
            assert nnmc(shuffled, test, nc) < 10


def test_default_size_oracle_is_near_100(tmp_path):
    """At the default test size (100 images) the oracle's NNMC is within sampling error of 100."""
    root = make_dataset(tmp_path / "d", n_subjects=1, n_train=40, n_test=100, n_vertices=1500, seed=11,
                        image_size=48, progress=False)
    ds = AlgonautsDataset(root)
    res = score_submission(ds, root / "ground_truth")["subj01"]["both"]["roi"]
    assert res["all"] > 88, res  # clipping at 100 and r<0 -> 0 bias the mean slightly below 100
    for fam in ("prf-visualrois", "floc-faces", "floc-places"):
        assert res[fam] > 85, res


def test_deterministic_by_seed(tmp_path):
    kw = dict(n_subjects=1, n_train=20, n_test=5, n_vertices=60, image_size=32, progress=False)
    a = make_dataset(tmp_path / "a", seed=5, **kw)
    b = make_dataset(tmp_path / "b", seed=5, **kw)
    c = make_dataset(tmp_path / "c", seed=6, **kw)
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "synthetic.json")
    assert fa == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "synthetic.json")
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    ya = np.load(a / "subj01/training_split/training_fmri/lh_training_fmri.npy")
    yc = np.load(c / "subj01/training_split/training_fmri/lh_training_fmri.npy")
    assert ya.shape != yc.shape or not np.allclose(ya, yc)


def test_roi_structure_and_tuning(small_dataset):
    """Category ROIs respond to their category; vertex counts differ across subjects/hemispheres."""
    import pyarrow.csv as pcsv

    ds = AlgonautsDataset(small_dataset)
    counts = {(s, h): ds.n_vertices(s, h) for s in ds.subjects for h in ("lh", "rh")}
    assert len(set(counts.values())) > 1
    caps = {r["image"]: r["caption"] for r in pcsv.read_csv(small_dataset / "captions.csv").to_pylist()}
    files = ds.image_files("subj01", "train")
    has_face = np.array(["face" in caps[f.name] for f in files])
    gt_like = ds.responses("subj01", "lh", "train")
    faces = ds.roi_masks("subj01", "lh")["floc-faces"]
    places = ds.roi_masks("subj01", "lh")["floc-places"]
    face_effect = gt_like[has_face][:, faces].mean() - gt_like[~has_face][:, faces].mean()
    place_face_effect = gt_like[has_face][:, places].mean() - gt_like[~has_face][:, places].mean()
    assert face_effect > 0.3 and face_effect > place_face_effect + 0.2


def test_refuses_non_empty_target(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_dataset(tmp_path / "x", n_subjects=1, n_train=10, n_test=2, n_vertices=50, progress=False)
    assert (tmp_path / "x" / "file").read_text() == "keep me"


def test_scales_in_chunks_without_holding_everything(tmp_path, monkeypatch):
    """Responses are produced in image chunks (1,024 rows): a run over 1,100 train images works."""
    root = make_dataset(tmp_path / "big", n_subjects=1, n_train=1100, n_test=10, n_vertices=80, image_size=24,
                        progress=False, workers=1)
    y = np.load(root / "subj01/training_split/training_fmri/lh_training_fmri.npy", mmap_mode="r")
    assert y.shape[0] == 1100 and np.isfinite(y[1024:]).all() and y[1024:].std() > 0


def test_test_split_scoring_with_and_without_noise_ceiling(dataset_copy):
    """score_test_split matches scipy's r and the NNMC formula; without a noise ceiling it raises
    (submission scoring) or reports r alone (fit-time metrics)."""
    from scipy import stats

    from brainstore.datasets import DatasetError
    from brainstore.fitting import score_test_split

    ds = AlgonautsDataset(dataset_copy)
    pred = np.load(dataset_copy / "ground_truth" / "subj01" / "lh_pred_test.npy")
    true = np.asarray(ds.responses("subj01", "lh", "test"))
    out = score_test_split(ds, "subj01", "lh", pred)
    ref_r = np.array([stats.pearsonr(pred[:, j], true[:, j])[0] for j in range(0, pred.shape[1], 97)])
    np.testing.assert_allclose(out["r"][::97], ref_r, atol=1e-5)
    nc = ds.noise_ceiling("subj01", "lh")
    expect = np.where(nc > 0, np.minimum(np.maximum(out["r"], 0) ** 2 / np.where(nc > 0, nc, 1), 1), 0) * 100
    np.testing.assert_allclose(out["score"], expect, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        score_test_split(ds, "subj01", "lh", pred[:, :-1])
    (dataset_copy / "subj01" / "test_split" / "noise_ceiling" / "lh_noise_ceiling.npy").unlink()
    ds = AlgonautsDataset(dataset_copy)
    with pytest.raises(DatasetError, match="noise ceiling"):
        score_test_split(ds, "subj01", "lh", pred)
    bare = score_test_split(ds, "subj01", "lh", pred, require_noise_ceiling=False)
    assert bare["score"] is None
    np.testing.assert_array_equal(bare["r"], out["r"])


def test_noiseless_training_responses_are_the_signal_under_the_noise(small_dataset):
    """``ground_truth/subjNN/{hemi}_train_noiseless.npy``: train responses = noiseless + independent,
    zero-mean noise (variances add, residuals uncorrelated with the signal)."""
    ds = AlgonautsDataset(small_dataset)
    for s in ds.subjects:
        for hemi in ("lh", "rh"):
            clean = np.load(small_dataset / "ground_truth" / s / f"{hemi}_train_noiseless.npy")
            noisy = np.asarray(ds.responses(s, hemi, "train"))
            assert clean.shape == noisy.shape
            resid = noisy - clean
            # independent noise: variances add (to sampling error over 120 images), residual mean ~ 0
            total = noisy.var(0).mean()
            assert abs(clean.var(0).mean() + resid.var(0).mean() - total) < 0.1 * total
            assert abs(resid.mean()) < 0.05
            assert np.mean([np.corrcoef(clean[:, j], resid[:, j])[0, 1] for j in range(0, clean.shape[1], 7)]) < 0.05


def test_alignment_puts_subjects_in_one_vertex_space(tmp_path):
    """alignment > 0: same vertices and ROI labels in every subject, and a vertex's noiseless test response
    correlates across subjects more the higher the alignment (identical tuning at 1)."""
    kw = dict(n_subjects=2, n_train=30, n_test=60, n_vertices=200, image_size=32, seed=4, progress=False)

    def across(a):
        root = make_dataset(tmp_path / f"a{a}", alignment=a, **kw)
        ds = AlgonautsDataset(root)
        for h in ("lh", "rh"):
            assert ds.n_vertices("subj01", h) == ds.n_vertices("subj02", h) == 200
            for fam in ("prf-visualrois", "floc-faces", "streams"):
                m1, m2 = (np.load(root / s / "roi_masks" / f"{h}.{fam}_challenge_space.npy") for s in ("subj01", "subj02"))
                assert np.array_equal(m1, m2), fam
        g1, g2 = (np.load(root / "ground_truth" / s / "lh_pred_test.npy") for s in ("subj01", "subj02"))
        r = [np.corrcoef(g1[:, v], g2[:, v])[0, 1] for v in range(g1.shape[1]) if g1[:, v].std() > 0 and g2[:, v].std() > 0]
        return float(np.median(r))

    r5, r9, r1 = across(0.5), across(0.9), across(1.0)
    assert r1 > 0.97, r1  # same tuning: the subjects differ only by their normalization over their own images
    assert r1 > r9 > r5 > 0.2, (r5, r9, r1)
    with pytest.raises(ValueError, match="alignment must be in"):
        make_dataset(tmp_path / "bad", alignment=1.5, **kw)

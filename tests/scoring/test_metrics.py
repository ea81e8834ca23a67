"""Encoding scores (``scoring/_metrics.py``) against scipy/numpy references and hand-computed cases:
Pearson r, noise-normalized scores, NNMC, ROI summaries, noise ceilings."""

import numpy as np
import pytest
from scipy import stats

from brainstore.scoring import nnmc, noise_ceiling_from_ncsnr, noise_normalized_score, pearson_r, roi_summary


def test_pearson_matches_scipy_per_column():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 37))
    b = a * rng.normal(size=37) + rng.normal(size=(50, 37))
    ref = np.array([stats.pearsonr(a[:, j], b[:, j])[0] for j in range(37)])
    np.testing.assert_allclose(pearson_r(a, b), ref, rtol=1e-10, atol=1e-12)
    # chunking over columns does not change anything
    np.testing.assert_allclose(pearson_r(a, b, chunk=5), ref, rtol=1e-10, atol=1e-12)


def test_pearson_constant_column_is_zero_and_shape_errors():
    a = np.ones((10, 2))
    b = np.random.default_rng(1).normal(size=(10, 2))
    assert np.all(pearson_r(a, b) == 0)
    with pytest.raises(ValueError, match="shape"):
        pearson_r(np.ones((10, 2)), np.ones((10, 3)))


def test_noise_normalized_score_hand_cases():
    r = np.array([0.5, -0.3, 0.9, 0.2, 0.0])
    nc = np.array([0.5, 0.5, 0.5, 0.0, 0.0])
    s = noise_normalized_score(r, nc)
    # 100 * 0.25 / 0.5 = 50; r<0 -> 0; 100*0.81/0.5 = 162 -> clipped 100; NC=0 -> 1e-14 -> 100; r=0 -> 0
    np.testing.assert_allclose(s, [50.0, 0.0, 100.0, 100.0, 0.0])


def test_noise_ceiling_must_be_a_fraction():
    with pytest.raises(ValueError, match="fraction"):
        noise_normalized_score(np.array([0.5]), np.array([45.0]))


def test_nnmc_is_mean_of_scores():
    rng = np.random.default_rng(2)
    true = rng.normal(size=(30, 8))
    pred = true + rng.normal(size=(30, 8))
    nc = rng.uniform(0.2, 0.9, 8)
    r = np.array([stats.pearsonr(pred[:, j], true[:, j])[0] for j in range(8)])
    ref = np.mean(np.minimum(100 * np.maximum(r, 0) ** 2 / nc, 100))
    assert nnmc(pred, true, nc) == pytest.approx(ref, rel=1e-10)


def test_roi_summary():
    vals = np.array([1.0, 2.0, 3.0, 4.0])
    out = roi_summary(vals, {"a": np.array([1, 1, 0, 0], bool), "empty": np.zeros(4, bool)})
    assert out["all"] == 2.5 and out["a"] == 1.5 and np.isnan(out["empty"])


def test_noise_ceiling_formula():
    ncsnr = np.array([0.0, 0.5, 1.0, 2.0])
    # all images shown 3 times: ncsnr^2 / (ncsnr^2 + 1/3)
    np.testing.assert_allclose(noise_ceiling_from_ncsnr(ncsnr, 10), ncsnr**2 / (ncsnr**2 + 1 / 3))
    # mixed repeats: A=2 (3x), B=1 (2x), C=1 (1x): k = (2/3 + 1/2 + 1) / 4
    k = (2 / 3 + 1 / 2 + 1) / 4
    np.testing.assert_allclose(noise_ceiling_from_ncsnr(ncsnr, 2, 1, 1), ncsnr**2 / (ncsnr**2 + k))
    with pytest.raises(ValueError):
        noise_ceiling_from_ncsnr(ncsnr, 0, 0, 0)


def test_noise_ceilings_are_fractions_in_the_release_the_readers_and_the_docs(dataset_copy):
    """The dataset stores noise ceilings as fractions in [0, 1], the reader refuses a file above 1, and the
    score's docstring says so (it said the release stores [0, 100] and readers convert)."""
    from brainstore.datasets import AlgonautsDataset, DatasetError

    f = dataset_copy / "subj01" / "test_split" / "noise_ceiling" / "lh_noise_ceiling.npy"
    stored = np.load(f)
    assert 0.0 <= stored.min() and stored.max() <= 1.0
    np.save(f, stored * 100)
    with pytest.raises(DatasetError, match="divide a percent ceiling by 100"):
        AlgonautsDataset(dataset_copy).noise_ceiling("subj01", "lh")
    doc = " ".join(noise_normalized_score.__doc__.split())
    assert "stores it in [0, 100]" not in doc and "readers convert" not in doc
    assert "a fraction in [0, 1], as the dataset release stores it and the readers return it" in doc

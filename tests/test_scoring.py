"""Scoring contract, against scipy/numpy references and hand-computed cases."""

import numpy as np
import pytest
from scipy import stats

from brainstore.scoring import (
    nnmc,
    noise_ceiling_from_ncsnr,
    noise_normalized_score,
    pearson_r,
    retrieval_from_similarity,
    retrieval_metrics,
    roi_summary,
)


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


def test_retrieval_directions_differ_on_a_constructed_matrix():
    """Rows are decoded embeddings, columns stimuli; the two directions give different answers."""
    sim = np.array([[0.9, 0.95, 0.99],   # decoded 0 prefers stimulus 2: a brain->stimulus miss
                    [0.1, 0.8, 0.0],
                    [0.0, 0.0, 0.5]])
    out = retrieval_from_similarity(sim, n_candidates=3, n_draws=4)
    # brain -> stimulus: row argmax = [2, 1, 2] -> rows 1 and 2 right
    assert out["top1_brain_to_stimulus"] == pytest.approx(2 / 3)
    # stimulus -> brain: column argmax = [0, 0, 0] -> only column 0 right
    assert out["top1_stimulus_to_brain"] == pytest.approx(1 / 3)
    # two-way: row 0 loses both pairs, rows 1 and 2 win both
    assert out["two_way"] == pytest.approx(4 / 6)
    assert out["chance"] == pytest.approx(1 / 3) and out["n_candidates"] == 3 and out["n_draws"] == 4
    assert out["top1_brain_to_stimulus_ci95"] == pytest.approx([2 / 3, 2 / 3])  # every draw is the whole set
    # the transpose swaps the directions
    tr = retrieval_from_similarity(sim.T, n_candidates=3, n_draws=1)
    assert tr["top1_brain_to_stimulus"] == pytest.approx(1 / 3) and tr["top1_stimulus_to_brain"] == pytest.approx(2 / 3)


def test_retrieval_draws_against_brute_force():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(400, 16))
    dec = true + rng.normal(scale=2.0, size=true.shape)
    out = retrieval_metrics(dec, true, n_candidates=300, n_draws=30, seed=5)
    # brute force: the same draws, each similarity block from scratch with sklearn's cosine
    from sklearn.metrics.pairwise import cosine_similarity as sk_cos

    draws = np.random.default_rng(5)
    b2s, s2b, own = [], [], np.arange(300)
    for _ in range(30):
        idx = draws.choice(400, size=300, replace=False)
        sim = sk_cos(dec[idx], true[idx])
        b2s.append(np.mean(sim.argmax(1) == own))
        s2b.append(np.mean(sim.argmax(0) == own))
    assert out["top1_brain_to_stimulus"] == pytest.approx(np.mean(b2s))
    assert out["top1_stimulus_to_brain"] == pytest.approx(np.mean(s2b))
    assert out["top1_brain_to_stimulus_ci95"] == pytest.approx(list(np.percentile(b2s, [2.5, 97.5])))
    full = sk_cos(dec, true)
    pairs = [full[i, i] > full[i, j] for i in range(400) for j in range(400) if i != j]
    assert out["two_way"] == pytest.approx(np.mean(pairs))
    # chance level: independent embeddings retrieve at about 1 / 300
    rand = retrieval_metrics(rng.normal(size=(400, 16)), true)
    assert rand["top1_brain_to_stimulus"] < 0.015 and abs(rand["two_way"] - 0.5) < 0.02
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(dec[:10], true[:11])


def test_caption_metrics_hand_computed():
    from brainstore.scoring import caption_metrics

    out = caption_metrics(["a cat on a mat"], ["a cat is on the mat"])
    # unigram precision 4/5 (the second 'a' is clipped), brevity penalty exp(1 - 6/5)
    assert out["bleu1"] == pytest.approx(100 * np.exp(-0.2) * 0.8, rel=1e-6)
    # LCS a-cat-on-mat = 4: P = 4/5, R = 4/6
    assert out["rougeL"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6), rel=1e-6)
    # case-insensitive (COCO caption evaluation): a capital first word is the same word
    assert caption_metrics(["A Cat on a MAT"], ["a cat is on the mat"]) == pytest.approx(out)
    same = caption_metrics(["the dog runs in the park"], ["the dog runs in the park"])
    assert same["bleu4"] == pytest.approx(100.0) and same["rougeL"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one reference per predicted caption"):
        caption_metrics(["a"], ["a", "b"])


def _mindeye2_fwd_bwd(brain: np.ndarray, clip: np.ndarray) -> tuple[float, float]:
    """MindEye2's evaluation, transcribed to numpy (its utils.batchwise_cosine_similarity returns the
    transpose, and topk ranks along axis 1): ``fwd_sim = bcs(brain, clip)``, ``bwd_sim = bcs(clip, brain)``."""
    def batchwise_cosine_similarity(Z, B):
        B = B.T
        Z_norm = np.linalg.norm(Z, axis=1, keepdims=True)
        B_norm = np.linalg.norm(B, axis=0, keepdims=True)
        return ((Z @ B) / (Z_norm @ B_norm)).T

    def top1(similarities, labels):
        return float(np.mean(np.argsort(similarities, axis=1)[:, -1] == labels))

    labels = np.arange(len(brain))
    return (top1(batchwise_cosine_similarity(brain, clip), labels),
            top1(batchwise_cosine_similarity(clip, brain), labels))


def test_mindeye_fwd_is_our_stimulus_to_brain_and_the_docs_say_so():
    """On embeddings where the two directions differ, MindEye2's "fwd" equals our stimulus_to_brain and its
    "bwd" our brain_to_stimulus; the docstring and the README map them so (they called brain_to_stimulus
    MindEye's "forward"), and say the 95 % interval is the spread of the draws, not an interval of the mean."""
    from pathlib import Path

    import brainstore.scoring._retrieval as retrieval

    rng = np.random.default_rng(0)
    clip = rng.normal(size=(60, 12))
    hub = rng.normal(size=12)
    brain = clip + rng.normal(scale=1.5, size=clip.shape)
    brain[:10] = 0.3 * brain[:10] + 2.0 * hub  # "hubs": decoded embeddings near one direction attract many images
    clip = clip + 0.8 * hub
    fwd, bwd = _mindeye2_fwd_bwd(brain, clip)
    ours = retrieval_metrics(brain, clip, n_candidates=60, n_draws=1)
    assert fwd != bwd  # the directions really differ here
    assert ours["top1_stimulus_to_brain"] == pytest.approx(fwd)
    assert ours["top1_brain_to_stimulus"] == pytest.approx(bwd)

    doc = " ".join(retrieval.__doc__.split())
    assert "MindEye's published \"forward\" (``fwd``) top-1 compares with our ``stimulus_to_brain``" in doc
    assert "spread of the draws" in doc and "not an interval of the mean" in doc
    readme = " ".join((Path(__file__).resolve().parents[1] / "docs" / "decoding.md").read_text().split())
    assert "MindEye's published \"fwd\" numbers compare with our `top1_stimulus_to_brain`" in readme
    assert "MindEye's \"forward\")" not in readme and "spread of the draws" in readme


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

"""Retrieval (``scoring/_retrieval.py``): both directions, draws against brute force, MindEye2's
"fwd" / "bwd" mapped to ours."""

import numpy as np
import pytest

from brainstore.scoring import retrieval_from_similarity, retrieval_metrics


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
    readme = " ".join((Path(__file__).resolve().parents[2] / "docs" / "decoding.md").read_text().split())
    assert "MindEye's published \"fwd\" numbers compare with our `top1_stimulus_to_brain`" in readme
    assert "MindEye's \"forward\")" not in readme and "spread of the draws" in readme

"""Retrieval metrics of decoders (the MindEye protocol), with both directions named.

A decoder maps each test response to an embedding; retrieval asks whether the decoded embedding
finds its own stimulus among candidates (cosine similarity). The two directions differ and papers
mix them up, so both are named by what is ranked:

* ``brain_to_stimulus``: for each decoded embedding (a row of the similarity matrix), is its own
  stimulus the most similar of the candidate stimuli?
* ``stimulus_to_brain``: for each stimulus (a column), is its own decoded embedding the most
  similar of the candidate decoded embeddings?

**MindEye's names are the other way round from what they suggest.** MindEye2's evaluation computes
``fwd_sim = batchwise_cosine_similarity(brain, clip)``, and that helper returns the *transpose* of
``brain @ clip.T``: its rows are the images. ``topk(fwd_sim, labels, k=1)`` then ranks, for each
image, the decoded brain embeddings. So MindEye's published "forward" (``fwd``) top-1 compares with
our ``stimulus_to_brain``, and its "backward" (``bwd``) with our ``brain_to_stimulus``.

Top-1 is taken among ``n_candidates`` test items drawn at random without replacement, ``n_draws``
times, all from one similarity matrix computed once; the mean over draws and a 95 % interval are
reported, with chance = 1 / n_candidates. The interval is the **spread of the draws** (the 2.5 and
97.5 percentiles of the per-draw top-1: where a single 300-way draw falls), not an interval of the
mean as MindEye reports (that one is about sqrt(n_draws) times narrower): compare means with
MindEye's, not interval widths. Two-way identification is the fraction of ordered pairs (i, j),
i != j, with ``sim[i, i] > sim[i, j]`` (chance 0.5).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_similarity", "retrieval_from_similarity", "retrieval_metrics", "two_way_identification"]


def cosine_similarity(decoded: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(n_decoded, n_true) cosine similarities, float64 (zero vectors give 0)."""
    d = np.asarray(decoded, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if d.ndim != 2 or t.ndim != 2 or d.shape[1] != t.shape[1]:
        raise ValueError(f"decoded {d.shape} and true {t.shape} embeddings must be 2-D with the same dimension")
    dn = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    tn = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return dn @ tn.T


def two_way_identification(sim: np.ndarray) -> float:
    """Fraction of ordered pairs i != j with ``sim[i, i] > sim[i, j]`` (rows: decoded; chance 0.5)."""
    sim = np.asarray(sim, dtype=np.float64)
    n = _check_square(sim)
    diag = np.diag(sim)[:, None]
    wins = (diag > sim).sum()  # the diagonal never beats itself (strict)
    return float(wins / (n * (n - 1)))


def retrieval_from_similarity(sim: np.ndarray, *, n_candidates: int = 300, n_draws: int = 30,
                              seed: int = 0) -> dict:
    """Top-1 retrieval both ways from a square similarity matrix (rows: decoded, columns: stimuli).

    Item ``i``'s decoded embedding and stimulus are row ``i`` and column ``i``. Ties count as
    misses unless the own item is the first maximum (``argmax``).

    Returns
    -------
    dict
        ``top1_brain_to_stimulus``, ``top1_stimulus_to_brain`` (means over draws; MindEye's "fwd" is
        ``top1_stimulus_to_brain``, see the module docstring), their ``..._ci95`` ([2.5, 97.5]
        percentiles of the draws: their spread, not an interval of the mean), ``two_way`` (over the whole matrix),
        ``n_candidates`` (capped at the number of items), ``n_draws``, ``chance``, ``n_items``.
    """
    sim = np.asarray(sim, dtype=np.float64)
    n = _check_square(sim)
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 test items, got {n}")
    if n_candidates < 2 or n_draws < 1:
        raise ValueError(f"n_candidates must be >= 2 and n_draws >= 1, got {n_candidates} and {n_draws}")
    k = min(int(n_candidates), n)
    rng = np.random.default_rng(seed)
    b2s, s2b = np.empty(n_draws), np.empty(n_draws)
    own = np.arange(k)
    for d in range(n_draws):
        idx = rng.choice(n, size=k, replace=False)
        sub = sim[np.ix_(idx, idx)]
        b2s[d] = np.mean(sub.argmax(axis=1) == own)
        s2b[d] = np.mean(sub.argmax(axis=0) == own)
    return {
        "top1_brain_to_stimulus": float(b2s.mean()),
        "top1_brain_to_stimulus_ci95": [float(x) for x in np.percentile(b2s, [2.5, 97.5])],
        "top1_stimulus_to_brain": float(s2b.mean()),
        "top1_stimulus_to_brain_ci95": [float(x) for x in np.percentile(s2b, [2.5, 97.5])],
        "two_way": two_way_identification(sim),
        "n_candidates": k,
        "n_draws": int(n_draws),
        "chance": 1.0 / k,
        "n_items": n,
    }


def retrieval_metrics(decoded: np.ndarray, true: np.ndarray, *, n_candidates: int = 300, n_draws: int = 30,
                      seed: int = 0) -> dict:
    """MindEye retrieval of decoded embeddings against the true ones (row ``i`` of each is item ``i``).

    See :func:`retrieval_from_similarity`; the cosine similarity matrix is computed once.
    """
    d, t = np.asarray(decoded), np.asarray(true)
    if d.shape != t.shape:
        raise ValueError(f"decoded {d.shape} and true {t.shape} embeddings must have the same shape "
                         "(one row per test item, in the same order)")
    return retrieval_from_similarity(cosine_similarity(d, t), n_candidates=n_candidates, n_draws=n_draws, seed=seed)


def _check_square(sim: np.ndarray) -> int:
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"the similarity matrix must be square (decoded x stimuli, same items), got {sim.shape}")
    return sim.shape[0]

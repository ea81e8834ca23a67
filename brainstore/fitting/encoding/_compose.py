"""Derived models from their members' predictions: per-ROI choice and weighted ensembles.

Voxelwise ridge (one alpha per vertex) is separable over vertices, so a per-ROI model (SAM
features for early visual cortex, CLIP elsewhere) is exactly the vertex-wise selection of the
predictions of members fitted on all vertices, and an ensemble is a weighted average of them.

This is the one composition path: at fit time the members' predictions are memory-mapped files
and the result is written into a file, one vertex block at a time (bounded memory whatever the
number of vertices); at load time they are in-memory arrays. Both call :func:`compose`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["compose", "normalized_weights", "VERTEX_BLOCK"]

#: Vertices combined at once (4,096 vertices x 2,000 rows x float32 = 33 MB per member).
VERTEX_BLOCK = 4096


def normalized_weights(weights: Sequence[float] | None, n_members: int) -> np.ndarray:
    """Ensemble weights summing to one (equal weights when ``weights`` is None)."""
    w = np.ones(n_members) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_members,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights {list(w)} must be {n_members} non-negative numbers with a positive sum")
    return w / w.sum()


def compose(kind: str, members: Sequence[np.ndarray], *, choice: np.ndarray | None = None,
            weights: np.ndarray | None = None, out: np.ndarray | None = None,
            block: int = VERTEX_BLOCK) -> np.ndarray:
    """Combine members' predictions into a per-ROI model's or an ensemble's predictions.

    Parameters
    ----------
    kind : {"per-roi", "ensemble"}
    members : sequence of arrays of shape (n_samples, n_vertices)
        Each member's predictions (arrays or memory maps), in member order.
    choice : int array of shape (n_vertices,)
        ``per-roi``: index of the member whose prediction each vertex takes.
    weights : array of shape (n_members,)
        ``ensemble``: weights (see :func:`normalized_weights`).
    out : array of shape (n_samples, n_vertices), optional
        Where to write (e.g. a memory-mapped file); a new float32 array by default.
    block : int
        Vertices combined at once.

    Returns
    -------
    out : array of shape (n_samples, n_vertices), float32
    """
    if not members:
        raise ValueError("compose needs at least one member")
    shape = members[0].shape
    bad = [i for i, m in enumerate(members) if m.shape != shape]
    if bad:
        raise ValueError(f"members {bad} have shapes {[members[i].shape for i in bad]}, member 0 has {shape}")
    if kind == "per-roi":
        if choice is None or np.shape(choice) != (shape[1],):
            raise ValueError(f"per-roi composition needs a choice of shape ({shape[1]},)")
        if len(choice) and (choice.min() < 0 or choice.max() >= len(members)):
            raise ValueError(f"choice holds member indices outside [0, {len(members)})")
    elif kind == "ensemble":
        if weights is None or np.shape(weights) != (len(members),):
            raise ValueError(f"an ensemble of {len(members)} members needs {len(members)} weights")
    else:
        raise ValueError(f"kind must be 'per-roi' or 'ensemble', not {kind!r}")
    out = np.empty(shape, dtype=np.float32) if out is None else out
    for start in range(0, shape[1], block):
        cols = slice(start, start + block)
        if kind == "per-roi":
            part = np.empty((shape[0], len(range(*cols.indices(shape[1])))), dtype=np.float32)
            for k, m in enumerate(members):
                sel = np.flatnonzero(choice[cols] == k)
                if len(sel):
                    part[:, sel] = np.asarray(m[:, cols])[:, sel]
        else:
            part = sum(float(w) * np.asarray(m[:, cols], dtype=np.float64) for w, m in zip(weights, members))
        out[:, cols] = part
    return out

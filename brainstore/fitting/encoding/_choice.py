"""Model choice on held-out data: per-ROI choice and the validation score every choice uses.

Why a held-out validation fold. A base model's hyperparameters (an alpha per vertex) are chosen
by K-fold CV; the CV score at the chosen alpha is the maximum over alphas of noisy estimates, so
it is optimistic (on pure-noise targets, +0.05 in mean r at n = 120). Choosing among models on it
compounds the bias. So every model also gets predictions for a **validation fold** (the last of
the K contiguous folds of the training split) from a copy fitted on the other folds, with its
hyperparameters chosen by CV on those folds only: scores on that fold were used for nothing.

The validation score of a vertex is the mean over the fold's two halves of the per-half Pearson r
(:func:`validation_r`). A per-ROI model chooses, per ROI, the member with the best mean validation
score; its own reported score is cross-fitted: each half's predictions follow the choice made on
the other half, so the choice never sees the data it is scored on (:func:`cross_fitted_choices`).
On pure-noise targets every reported validation score is therefore centred on 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ...scoring import pearson_r

__all__ = ["validation_halves", "validation_r", "choose_per_region", "cross_fitted_choices", "rule_choice",
           "resolve_regions"]


def validation_halves(n_val: int) -> tuple[slice, slice]:
    """The two contiguous halves of a validation fold of ``n_val`` rows."""
    if n_val < 4:
        raise ValueError(f"the validation fold has {n_val} rows; at least 4 are needed (2 per half): "
                         "use more training samples or fewer folds")
    h = n_val // 2
    return slice(0, h), slice(h, n_val)


def validation_r(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-vertex validation score: mean over the two halves of the per-half Pearson r.

    Parameters
    ----------
    pred, true : arrays of shape (n_val, n_vertices) (memory maps are read in column chunks)

    Returns
    -------
    r : array of shape (n_vertices,), float64
    """
    a, b = validation_halves(pred.shape[0])
    return 0.5 * (pearson_r(pred[a], true[a]) + pearson_r(pred[b], true[b]))


def choose_per_region(scores: np.ndarray, regions: Sequence[np.ndarray], default: int = 0) -> np.ndarray:
    """Per region, the member with the best mean score over the region's vertices.

    Parameters
    ----------
    scores : array of shape (n_members, n_vertices)
    regions : sequence of boolean arrays of shape (n_vertices,)
        In priority order: a vertex in several regions takes the choice of the first.
    default : int
        Member of vertices outside every region.

    Returns
    -------
    choice : int32 array of shape (n_vertices,)
    """
    scores = np.asarray(scores, dtype=np.float64)
    masks = [np.asarray(m, dtype=bool) for m in regions]
    # a region's choice uses all its vertices; only its still-free vertices take it
    best = [int(np.argmax(scores[:, m].mean(1))) if m.any() else default for m in masks]
    return _first_wins(masks, best, scores.shape[1], default)


def cross_fitted_choices(half_scores: tuple[np.ndarray, np.ndarray], regions: Sequence[np.ndarray],
                         default: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choices for each half of the validation fold made on the other half, and the final choice.

    Parameters
    ----------
    half_scores : (scores on half 1, scores on half 2), each of shape (n_members, n_vertices)

    Returns
    -------
    choice_half1, choice_half2, choice : int32 arrays of shape (n_vertices,)
        The first applies to half 1 (chosen on half 2), the second to half 2 (chosen on half 1);
        the final choice (the registered model's) uses the mean of both.
    """
    s1, s2 = half_scores
    return (choose_per_region(s2, regions, default), choose_per_region(s1, regions, default),
            choose_per_region(0.5 * (s1 + s2), regions, default))


def rule_choice(regions: Mapping[str, np.ndarray], rules: Mapping[str, int], n_vertices: int,
                default: int = 0) -> np.ndarray:
    """Member per vertex from ``rules`` (region -> member index); the first rule naming a vertex wins.

    Parameters
    ----------
    regions : mapping region name -> boolean array of shape (n_vertices,)
    rules : mapping region name -> member index, in priority order
    """
    return _first_wins([regions[name] for name in rules], list(rules.values()), n_vertices, default)


def _first_wins(masks: Sequence[np.ndarray], members: Sequence[int], n_vertices: int, default: int) -> np.ndarray:
    """Member per vertex: each mask gives its member to the vertices no earlier mask took; the rest get ``default``."""
    choice = np.full(n_vertices, default, dtype=np.int32)
    taken = np.zeros(n_vertices, dtype=bool)
    for mask, member in zip(masks, members):
        free = mask & ~taken
        choice[free] = member
        taken |= free
    return choice


def resolve_regions(available: Mapping[str, np.ndarray], names: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """The masks of ``names`` among ``available`` regions; an unknown name is an error listing them."""
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"{where}: ROI {missing} not in the dataset; available ROIs: {', '.join(available)}")
    return {n: np.asarray(available[n], dtype=bool) for n in names}

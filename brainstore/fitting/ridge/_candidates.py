"""Candidate band weightings of banded ridge (numpy only: the fit driver and spec checks import it
without torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["banded_candidates", "default_n_candidates", "check_gammas"]

#: Log10 span of the band-weight ratios of the default 2-band candidates.
RATIO_DECADES = 2.0
#: Dirichlet concentrations cycled through for more than 2 bands (as himalaya).
CONCENTRATIONS = (0.1, 1.0)


def banded_candidates(n_bands: int, n: int | None = None, *,
                      random_state: int = 0) -> np.ndarray:
    """Default candidate weightings of the bands, rows on the simplex.

    In order: the uniform weighting (first, so that ties keep equal
    weights), every corner (one band alone: each single-band ridge is a
    candidate), then weightings in between. For 2 bands these have
    log10(gamma_1 / gamma_2) evenly spaced in [-2, 2] decades (steps of
    2/3 decade for ``n=9``, the spacing of ``np.logspace(0, 6, 10)``); for
    more bands they are seeded Dirichlet samples with concentrations
    alternating 0.1 and 1 (as ``himalaya``).

    Parameters
    ----------
    n_bands : int
        Number of bands (feature spaces).
    n : int or None
        Number of candidates, at least ``n_bands + 1``; None gives
        :func:`default_n_candidates` (5 for 2 bands, ``4 * n_bands + 1``
        for more). A single band has the one candidate ``[[1.0]]``.
    random_state : int
        Seed of the Dirichlet samples (more than 2 bands).

    Returns
    -------
    gammas : ndarray of shape (n, n_bands)
        Non-negative weights, each row summing to 1.
    """
    if not isinstance(n_bands, (int, np.integer)) or n_bands < 1:
        raise ValueError(f"n_bands must be a positive integer, got {n_bands!r}.")
    if n_bands == 1:
        return np.ones((1, 1))
    n = default_n_candidates(n_bands) if n is None else n
    if not isinstance(n, (int, np.integer)) or n < n_bands + 1:
        raise ValueError(f"n must be an integer >= n_bands + 1 = {n_bands + 1} "
                         f"(every corner and the uniform weighting), got {n!r}.")
    fixed = np.vstack([np.full(n_bands, 1.0 / n_bands), np.eye(n_bands)])
    n_rest = n - n_bands - 1
    if n_bands == 2:
        rest = _ratio_grid(n_rest)
    else:
        rng = np.random.default_rng(random_state)
        rest = np.array([rng.dirichlet([CONCENTRATIONS[i % 2]] * n_bands)
                         for i in range(n_rest)]).reshape(n_rest, n_bands)
    return np.vstack([fixed, rest])


def _ratio_grid(n_rest: int) -> np.ndarray:
    """``n_rest`` 2-band weightings, log10 ratios spaced over [-2, 2] without 0.

    The ratios are the grid of ``n_rest + 1`` points from -2 decades with
    step ``2 / ((n_rest + 1) // 2)`` (symmetric when ``n_rest`` is even),
    the uniform point (0) excluded.
    """
    half = (n_rest + 1) // 2
    if half == 0:
        return np.empty((0, 2))
    x = RATIO_DECADES * (np.arange(n_rest + 1) - half) / half
    x = x[x != 0]
    g1 = 1.0 / (1.0 + 10.0 ** -x)
    return np.column_stack([g1, 1.0 - g1])



def default_n_candidates(n_bands: int) -> int:
    """Number of default band weightings: 5 for 2 bands, ``4 * n_bands + 1`` for more.

    For 2 bands, 5 candidates (uniform, both corners, ratios of 100 either
    way) predicted held-out responses as well as 7 (ratios of 10 added) or
    9 (2/3-decade steps) on the subject-1-scale benchmark data: mean test r
    over 3,000 vertices 0.53160 / 0.53163 / 0.53163 (subject 1, lh) and
    0.52568 / 0.52570 (subject 2, rh, 5 / 7), per-vertex differences
    symmetric around 0, at 71% of the time of 7. Each candidate costs about
    one ridge CV on all features, so this is most of a union fit's time
    (benchmarks/RESULTS.md, "Encoding at NSD scale"); ``banded: {gammas: 9}``
    gives the finer grid.
    """
    return 5 if n_bands == 2 else 4 * n_bands + 1


def check_gammas(gammas, n_bands: int) -> np.ndarray:
    """Candidate weightings (n_candidates, n_bands), float64, rows on the simplex."""
    if gammas is None or isinstance(gammas, (int, np.integer)):
        return banded_candidates(n_bands, None if gammas is None else int(gammas))
    g = np.asarray(gammas, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != n_bands or g.shape[0] == 0:
        raise ValueError(f"gammas must have shape (n_candidates, n_bands={n_bands}), "
                         f"got {g.shape}.")
    if not np.isfinite(g).all() or (g < 0).any():
        raise ValueError("gammas must be finite and non-negative.")
    sums = g.sum(1)
    if not np.allclose(sums, 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"each row of gammas must sum to 1 (weights on the simplex), "
                         f"got row sums {np.unique(sums.round(6))[:5].tolist()}; "
                         f"divide by the row sums.")
    return g

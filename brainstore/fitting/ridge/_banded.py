"""Banded ridge regression: one regularization per feature space and per target.

Pure functions over torch tensors beside :mod:`._solvers`, whose machinery
they reuse, in the style of ``himalaya.ridge.solve_group_ridge_random_search``;
the scikit-learn estimator is :class:`~._ridge.BandedRidgeCVEncoder`.

``X`` is the concatenation of feature spaces ("bands"). Banded ridge solves,
for each target ``y``::

    min_w ||y - sum_b Z_b w_b||^2 + sum_b (alpha / gamma_b) ||w_b||^2

with ``Z`` the standardized features and ``gamma`` a weighting of the bands on
the simplex. Substituting ``w_b = sqrt(gamma_b) u_b`` turns it into plain
ridge (alpha) on the rescaled features ``Z S``, ``S = diag(sqrt(gamma))``.
Each target gets the (gamma, alpha) pair, among candidates times the alpha
grid, with the best validation score averaged over folds; it is then refit on
all samples with that pair. Why it is fast:

* the rescaled train Gram matrix is ``S (Z^T Z) S``: per candidate and fold
  only a p x p float64 eigendecomposition and the QR of ``Z_val S V``, all
  target independent; bands weighted 0 are left out of it, so a corner
  (one band alone) costs what a ridge on that band alone costs;
* the target-sized cross-products ``X_val^T Y_val`` (and ``X^T Y``, their
  sum) are computed once per fold and target batch and centered once; a
  candidate only rescales them (``S`` is folded into the eigenvectors),
  where himalaya recomputes ``n_alphas`` predictions of size
  ``n_val x n_targets`` per candidate and fold;
* validation scores come from sufficient statistics, as in
  :func:`~._solvers.solve_ridge_cv`, so a candidate costs about one plain
  ridge CV minus its cross-products: ``4 p q t + n_alphas q^2 t`` flops per
  fold for ``t`` targets (``q <= p`` eigenvectors); measured 0.6-0.85 of a
  plain ridge CV on all the features (n=4000, 256 + 192 features, t=5000);
* the refit is one product per candidate chosen by at least one target.

The bases of every candidate (eigenvectors and validation factors, about
``2 p^2`` numbers per fold) are computed once and kept for all target
batches: ``n_candidates * (n_folds + 1) * 2 p^2`` numbers in ``dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._batches import _auto_batch, _batch_cross, _cross_scores, _fold_cross, _full_cross, _load_batch, _refit
from ._candidates import banded_candidates, check_gammas
from ._fold_bases import _Basis, _basis_eigh, _fold_gram, _FoldGram, _grams, _inv_shifts, _lapack_threads
from ._problem import Array, FoldList, _Problem, _Scaling, _setup
from ._solvers import predict_ridge

__all__ = [
    "BandedRidgeCVResult",
    "banded_candidates",
    "predict_banded_split",
    "solve_banded_ridge_cv",
]

#: Band = (start, stop) column range, or an int64 array of column indices.
Band = tuple[int, int] | np.ndarray


# --------------------------------------------------------------------------
# Bands
# --------------------------------------------------------------------------

def _check_bands(bands: Sequence, n_features: int) -> list[np.ndarray]:
    """Column indices of each band; they must tile ``range(n_features)``.

    ``bands`` is a list of band sizes, or of slices / integer index arrays.
    """
    if isinstance(bands, np.ndarray) and bands.ndim == 1:
        bands = bands.tolist()  # band sizes
    if isinstance(bands, (str, bytes)) or not isinstance(bands, Sequence) or len(bands) == 0:
        raise ValueError("bands must be a non-empty list of band sizes, slices or "
                         f"index arrays, got {bands!r}.")
    if all(isinstance(b, (int, np.integer)) for b in bands):
        sizes = np.asarray(bands, dtype=np.int64)
        if (sizes < 1).any() or sizes.sum() != n_features:
            raise ValueError(f"band sizes {sizes.tolist()} must be positive and sum "
                             f"to the number of features ({n_features}).")
        ends = np.cumsum(sizes)
        return [np.arange(e - s, e) for s, e in zip(sizes, ends)]
    out = []
    for k, b in enumerate(bands):
        idx = (np.arange(n_features)[b] if isinstance(b, slice) else np.asarray(b))
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(f"band {k} must be a slice or a non-empty 1-D array of "
                             f"integer column indices, got {b!r}.")
        if idx.min() < 0 or idx.max() >= n_features:
            raise ValueError(f"band {k} has column indices out of range "
                             f"[0, {n_features}).")
        out.append(idx.astype(np.int64))
    counts = np.bincount(np.concatenate(out), minlength=n_features)
    if (counts > 1).any():
        raise ValueError(f"bands overlap: columns {np.flatnonzero(counts > 1)[:10].tolist()} "
                         f"are in more than one band.")
    if (counts == 0).any():
        raise ValueError(f"bands must cover every column: columns "
                         f"{np.flatnonzero(counts == 0)[:10].tolist()} are in no band.")
    return out


def _band_out(idx: np.ndarray) -> Band:
    """(start, stop) when the indices are a contiguous increasing range."""
    start = int(idx[0])
    if np.array_equal(idx, np.arange(start, start + len(idx))):
        return (start, start + len(idx))
    return idx


def _band_index(band: Band) -> np.ndarray:
    """Column indices of a band as given by :func:`_band_out`."""
    return np.arange(*band) if isinstance(band, tuple) else np.asarray(band)


def _feature_scale(gamma: np.ndarray, bands: list[np.ndarray], p: int,
                   device: torch.device) -> torch.Tensor:
    """Per-feature ``sqrt(gamma[band])`` of shape (p,), float64 on ``device``."""
    s = np.empty(p)
    for g, idx in zip(gamma, bands):
        s[idx] = np.sqrt(g)
    return torch.as_tensor(s, device=device)


# --------------------------------------------------------------------------
# Results and prediction
# --------------------------------------------------------------------------

def predict_banded_split(X: Array, coef: Array, x_mean: Array, x_scale: Array,
                         bands: Sequence[Band], *,
                         device: str | torch.device = "cpu") -> torch.Tensor:
    """Per-band contributions of a standardized-space linear model.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Raw features.
    coef : array of shape (n_features, n_targets)
        Weights on standardized features.
    x_mean, x_scale : arrays of shape (n_features,)
        Standardization applied to ``X`` before ``coef``.
    bands : list of (start, stop) or index arrays
        Columns of each band.
    device : str or torch.device
        Device of the computation; the output is returned on CPU.

    Returns
    -------
    Y_split : tensor of shape (n_bands, n_samples, n_targets)
        ``Z[:, band] @ coef[band]`` for each band; their sum plus the
        intercept is the prediction.
    """
    coef = torch.as_tensor(coef)
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[1] != coef.shape[0]:
        raise ValueError(f"X must have shape (n_samples, {coef.shape[0]}), got "
                         f"{tuple(X.shape)}.")
    zero = torch.zeros(coef.shape[1], dtype=coef.dtype)
    x_mean, x_scale = torch.as_tensor(x_mean), torch.as_tensor(x_scale)
    out = []
    for band in bands:
        idx = torch.as_tensor(_band_index(band))
        out.append(predict_ridge(X[:, idx], coef[idx], zero, x_mean[idx],
                                 x_scale[idx], device=device))
    return torch.stack(out)


@dataclass
class BandedRidgeCVResult:
    """Output of :func:`solve_banded_ridge_cv`. All tensors live on CPU.

    Attributes
    ----------
    coef : tensor of shape (n_features, n_targets)
        Weights on standardized features (as :class:`~._solvers.RidgeCVResult`,
        so :func:`~._solvers.predict_ridge` applies); exactly zero on a band
        whose chosen gamma is 0.
    intercept : tensor of shape (n_targets,)
    x_mean, x_scale : tensors of shape (n_features,)
        Feature standardization.
    alphas : tensor of shape (n_targets,)
        Chosen alpha of each target.
    gammas : tensor of shape (n_targets, n_bands)
        Chosen band weighting of each target.
    band_alphas : tensor of shape (n_targets, n_bands)
        Equivalent per-band regularization ``alpha / gamma`` (inf where
        gamma is 0); himalaya's ``deltas_`` are ``-log(band_alphas).T``.
    best_scores : tensor of shape (n_targets,)
        Validation score (mean over folds) of the chosen pair.
    candidate_scores : tensor of shape (n_candidates, n_targets)
        Best validation score over alphas of each candidate (himalaya's
        ``cv_scores_``).
    candidates : tensor of shape (n_candidates, n_bands)
        The band weightings searched.
    alpha_grid : tensor of shape (n_alphas,)
        The alphas searched.
    bands : list of (start, stop) or int64 arrays
        Columns of each band.
    score : str
        Validation score, "pearson" or "r2".
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    x_mean: torch.Tensor
    x_scale: torch.Tensor
    alphas: torch.Tensor
    gammas: torch.Tensor
    band_alphas: torch.Tensor
    best_scores: torch.Tensor
    candidate_scores: torch.Tensor
    candidates: torch.Tensor
    alpha_grid: torch.Tensor
    bands: list[Band]
    score: str

    def predict(self, X: Array, *, device: str | torch.device = "cpu",
                target_batch_size: int | None = None) -> torch.Tensor:
        """Predictions of shape (n_samples, n_targets); see :func:`~._solvers.predict_ridge`."""
        return predict_ridge(X, self.coef, self.intercept, self.x_mean,
                             self.x_scale, device=device,
                             target_batch_size=target_batch_size)

    def predict_split(self, X: Array, *,
                      device: str | torch.device = "cpu") -> torch.Tensor:
        """Per-band contributions of shape (n_bands, n_samples, n_targets).

        Their sum over bands plus ``intercept`` equals :meth:`predict`.
        """
        return predict_banded_split(X, self.coef, self.x_mean, self.x_scale,
                                    self.bands, device=device)


# --------------------------------------------------------------------------
# Solver
# --------------------------------------------------------------------------

@dataclass
class _Candidate:
    """Target-independent bases of one band weighting."""

    scale: torch.Tensor        # (p,) float64, sqrt(gamma) of each feature's band
    bases: list[_Basis]        # per fold, of the rescaled standardized features
    Ds: list[torch.Tensor]     # per fold (n_alphas, q), 1 / (eigvals + alpha)
    full: _Basis               # all samples
    D_full: torch.Tensor       # (n_alphas, q)


def _candidate(pb: _Problem, scale: torch.Tensor, fold_grams: list[_FoldGram],
               fit_intercept: bool, scaling: _Scaling) -> _Candidate:
    """Eigenbases of the rescaled train Grams of every fold and of all samples.

    ``fold_grams``: :func:`_fold_gram` of every fold, then of all samples.
    """
    def basis(fold, fg):
        return _basis_eigh(pb.X64, pb.Xw, fold, None, None, fit_intercept, scaling,
                           pb.pearson, pb.dtype, feature_scale=scale, fold_gram=fg)

    bases = [basis(f, fg) for f, fg in zip(pb.folds, fold_grams)]
    full = basis(None, fold_grams[-1])
    return _Candidate(scale, bases, [_inv_shifts(b, pb) for b in bases], full,
                      _inv_shifts(full, pb))


def _solve_banded_batch(Yb: torch.Tensor, pb: _Problem, cands: list[_Candidate],
                        fit_intercept: bool) -> tuple[torch.Tensor, ...]:
    """Cross-validate every (candidate, alpha) and refit one target batch.

    Returns
    -------
    W : tensor of shape (n_features, n_targets_batch)
        Standardized-space weights at the chosen pairs.
    cy : tensor of shape (n_targets_batch,)
        Mean of the batch targets (zeros without intercept).
    cand_scores : tensor of shape (n_candidates, n_targets_batch)
        Best mean validation score over alphas of each candidate.
    best_cand, best_alpha : tensors of shape (n_targets_batch,)
        Indices of the chosen candidate and alpha.
    """
    bc = _batch_cross(Yb, pb.Xw, pb.folds, pb.partition)
    # centering depends on the fold only: take it from any candidate's basis
    crosses = []
    for k, f in enumerate(pb.folds):
        crosses.append(_fold_cross(f, cands[0].bases[k], bc.XtY, bc.XvYs[k], bc.sy,
                                   bc.stats[k][0], pb.Xw, Yb, fit_intercept, pb.pearson))
        bc.XvYs[k] = None
    t = Yb.shape[1]
    cand_scores = Yb.new_empty((len(cands), t))
    best = torch.full((t,), -torch.inf, dtype=Yb.dtype, device=Yb.device)
    best_cand = torch.zeros(t, dtype=torch.long, device=Yb.device)
    best_alpha = torch.zeros(t, dtype=torch.long, device=Yb.device)
    for c, cand in enumerate(cands):
        total = sum(_cross_scores(b, D, *cross, st, f.n_val, pb.pearson)
                    for f, b, D, cross, st in zip(pb.folds, cand.bases, cand.Ds,
                                                  crosses, bc.stats))
        score, alpha = (total / len(pb.folds)).max(0)  # first max: ties to the earlier alpha
        cand_scores[c] = score
        better = score > best  # strict: ties keep the earlier candidate
        best = torch.where(better, score, best)
        best_cand[better] = c
        best_alpha[better] = alpha[better]
    del crosses
    B, cy = _full_cross(bc, cands[0].full, Yb.shape[0], fit_intercept)
    W = torch.zeros_like(B)
    for c in best_cand.unique().tolist():
        cols = torch.nonzero(best_cand == c)[:, 0]
        cand = cands[c]
        Wc = _refit(cand.full, B[:, cols], cand.D_full.index_select(0, best_alpha[cols]))
        W[:, cols] = Wc * cand.scale.to(W.dtype)[:, None]  # weights on Z S -> weights on Z
    W[:, bc.gconst] = 0  # constant targets: zero weight
    return W, cy, cand_scores, best_cand, best_alpha


def solve_banded_ridge_cv(X: Array, Y: Array, bands: Sequence, alphas: Array,
                          gammas: Array | int | None = None, n_folds: int = 5, *,
                          folds: FoldList | None = None, score: str = "pearson",
                          device: str | torch.device = "cpu",
                          dtype: torch.dtype | str = torch.float32,
                          target_batch_size: int | None = None,
                          standardize: bool = True, fit_intercept: bool = True,
                          random_state: int | None = None) -> BandedRidgeCVResult:
    """Banded ridge with per-target band weightings and alphas chosen by K-fold CV.

    For each target, the pair (candidate weighting ``gamma``, ``alpha``)
    maximizing the validation score averaged over folds is selected (ties go
    to the earlier candidate, then the earlier alpha), then the target is
    refit on all samples with band ``b`` regularized by ``alpha / gamma_b``
    (a band with ``gamma_b = 0`` gets exactly zero weight). With
    ``standardize=False`` and ``fit_intercept=True`` this is
    ``himalaya.ridge.BandedRidgeCV(fit_intercept=True)`` with
    ``solver_params=dict(n_iter=gammas, alphas=alphas)`` on the same folds.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Concatenated features of all bands (numpy array or torch tensor).
    Y : array of shape (n_samples, n_targets)
        Targets; numpy arrays are copied to ``device`` one batch at a time.
    bands : list
        Band sizes (``[512, 384]``: consecutive columns), or one slice or
        integer index array per band. Bands must cover every column once.
    alphas : array of shape (n_alphas,)
        Positive regularization strengths.
    gammas : array of shape (n_candidates, n_bands), int or None
        Candidate band weightings, non-negative rows summing to 1 (not
        renormalized: only weightings on the simplex are accepted). An int
        gives that many default candidates, None the default number
        (5 for 2 bands, ``4 * n_bands + 1`` for more); see
        :func:`banded_candidates`.
        Each candidate costs 0.6-0.85 of a plain ridge CV on all features.
    n_folds : int
        Number of contiguous K-fold splits (ignored when ``folds`` is given).
    folds : list of (train, val) index pairs or None
        Explicit cross-validation splits.
    score : {"pearson", "r2"}
        Validation score, as in :func:`~._solvers.solve_ridge_cv`.
    device : str or torch.device
        Where to compute; outputs are on CPU.
    dtype : torch.float32 or torch.float64 (or their names)
        Working precision of the target-sized products.
    target_batch_size : int or None
        Targets processed together (None: about 1 GiB on CPU, 40% of the
        free GPU memory). Results do not depend on it (up to rounding).
    standardize : bool
        Z-score features with each training fold's statistics.
    fit_intercept : bool
        Center features and targets with the training mean.
    random_state : int or None
        None: contiguous folds; an int shuffles as ``KFold(shuffle=True)``.

    Returns
    -------
    result : BandedRidgeCVResult
    """
    pb = _setup(X, Y, alphas, n_folds, folds, score, device, dtype,
                target_batch_size, fit_intercept, random_state)
    band_idx = _check_bands(bands, pb.shape[1])
    candidates = check_gammas(gammas, len(band_idx))
    cands = _candidate_bases(pb, band_idx, candidates, standardize, fit_intercept)
    coef, intercept, cand_scores, best_cand, best_alpha = _solve_banded_batches(pb, cands, target_batch_size,
                                                                                fit_intercept)
    alpha_grid = pb.alpha_grid.to(pb.dtype)
    cand_t = torch.as_tensor(candidates, dtype=pb.dtype)
    sel_alphas, sel_gammas = alpha_grid[best_alpha], cand_t[best_cand]
    full = cands[0].full
    return BandedRidgeCVResult(
        coef=coef, intercept=intercept,
        x_mean=(pb.x_gmean + full.center).to(pb.dtype).cpu(),
        x_scale=full.scale.to(pb.dtype).cpu(), alphas=sel_alphas, gammas=sel_gammas,
        band_alphas=sel_alphas[:, None] / sel_gammas,  # alpha / 0 = inf
        best_scores=cand_scores.gather(0, best_cand[None, :])[0],
        candidate_scores=cand_scores, candidates=cand_t, alpha_grid=alpha_grid,
        bands=[_band_out(i) for i in band_idx], score=score)


def _candidate_bases(pb: _Problem, band_idx: list[np.ndarray], candidates: np.ndarray, standardize: bool,
                     fit_intercept: bool) -> list[_Candidate]:
    """The bases of every candidate band weighting, for every fold and all samples."""
    n, p, _ = pb.shape
    gram, gram_vals = _grams(pb)
    # standardization and standardized Grams depend on the fold only, not on the band weighting
    scaling = pb.scaling(standardize)
    fold_grams = [_fold_gram(pb.X64, f, gram, g, fit_intercept, scaling)
                  for f, g in zip([*pb.folds, None], [*gram_vals, None])]
    del gram, gram_vals
    with _lapack_threads(pb.device, min(n, p)):
        return [_candidate(pb, _feature_scale(g, band_idx, p, pb.device), fold_grams, fit_intercept, scaling)
                for g in candidates]


def _solve_banded_batches(pb: _Problem, cands: list[_Candidate], target_batch_size: int | None,
                          fit_intercept: bool) -> tuple[torch.Tensor, ...]:
    """Cross-validate and refit every target batch: ``(coef, intercept, candidate_scores, best_cand, best_alpha)``."""
    n, p, t = pb.shape
    dtype = pb.dtype
    q = max(b.V.shape[1] for c in cands for b in c.bases)
    # centered train and validation cross-products of every fold are kept: 2 * n_folds
    step = target_batch_size or _auto_batch(
        n, p, q, 2 * len(pb.folds), pb.alpha_grid.numel(),
        torch.finfo(dtype).bits // 8, pb.device)
    coef = torch.empty((p, t), dtype=dtype)
    intercept = torch.empty(t, dtype=dtype)
    cand_scores = torch.empty((len(cands), t), dtype=dtype)
    best_cand = torch.empty(t, dtype=torch.long)
    best_alpha = torch.empty(t, dtype=torch.long)
    for start in range(0, t, step):
        cols = slice(start, min(start + step, t))
        Yb, y_gmean = _load_batch(pb.Y, cols, dtype, pb.device, fit_intercept)
        W, cy, cs, bcand, balpha = _solve_banded_batch(Yb, pb, cands, fit_intercept)
        del Yb
        coef[:, cols] = W.cpu()
        intercept[cols] = (y_gmean + cy).cpu()
        cand_scores[:, cols] = cs.cpu()
        best_cand[cols] = bcand.cpu()
        best_alpha[cols] = balpha.cpu()
    return coef, intercept, cand_scores, best_cand, best_alpha

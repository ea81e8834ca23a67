"""Cross-validated ridge regression for voxelwise encoding models.

Pure functions over torch tensors, in the style of ``himalaya.ridge``.

The solver selects one regularization strength per target (voxel / vertex)
by K-fold cross-validation over a grid of alphas, then refits every target
on all samples with its own alpha. The algebra avoids everything that scales
with ``n_alphas * n_samples * n_targets``:

* one decomposition of the training features per fold (eigendecomposition of
  the float64 Gram matrix, or an SVD), never one linear solve per alpha;
* ``X_val^T Y_val`` is computed once per fold and ``X^T Y`` is their sum, so
  ``X_train^T Y_train = X^T Y - X_val^T Y_val`` costs nothing;
* validation scores come from sufficient statistics: with ``C = V^T Z_tr^T y``
  (train cross-products in the eigenbasis), ``E = V^T Z_val^T y_val`` and the
  upper-triangular ``R`` of a QR of ``Z_val V``, the prediction of alpha is
  ``Z_val V diag(d) C`` with ``d = 1 / (eigvals + alpha)``, so
  ``pred . y_val = d . (C * E)`` and ``||pred||^2 = ||R diag(d) C||^2``;
  predictions of size ``n_val x n_targets`` are never materialized and the
  triangular structure of ``R`` saves ~40% of the dominant product;
* the refit uses one matrix product for all targets, each with its own alpha.

Features are standardized inside each fold with the training fold's mean and
standard deviation (no leakage from the validation fold); targets are centered
with the training mean (intercept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ._batches import _auto_batch, _load_batch, _shared_alpha, _solve_batch, _val_stats
from ._fold_bases import _Basis, _basis_eigh, _basis_svd, _grams, _inv_shifts, _lapack_threads
from ._problem import Array, FoldList, _as_2d, _check_device, _Problem, _setup, kfold_indices

__all__ = [
    "RIDGE_SOLVERS",
    "RidgeCVResult",
    "kfold_indices",
    "predict_ridge",
    "solve_ridge_cv",
    "solve_ridge_cv_eigh",
    "solve_ridge_cv_svd",
]



@dataclass
class RidgeCVResult:
    """Output of :func:`solve_ridge_cv`.

    Predictions on raw features are ``((X - x_mean) / x_scale) @ coef +
    intercept`` (see :meth:`predict`). All tensors live on CPU.

    Attributes
    ----------
    coef : tensor of shape (n_features, n_targets)
        Ridge weights on standardized features (as ``Ridge.coef_.T`` inside
        ``Pipeline(StandardScaler(), Ridge())``). Zero for constant features.
    intercept : tensor of shape (n_targets,)
        Intercept (the target means when ``fit_intercept``, else zeros).
    alphas : tensor of shape (n_targets,)
        Selected alpha of each target.
    cv_scores : tensor of shape (n_alphas, n_targets)
        Validation score of each alpha, averaged over folds.
    best_scores : tensor of shape (n_targets,)
        ``cv_scores`` at the selected alpha.
    x_mean : tensor of shape (n_features,)
        Feature means used for standardization (zeros without intercept).
    x_scale : tensor of shape (n_features,)
        Feature standard deviations (ones when ``standardize=False``; one for
        constant features).
    alpha_grid : tensor of shape (n_alphas,)
        The alphas searched, in the order given.
    score : str
        Validation score used for the selection, "pearson" or "r2".
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    alphas: torch.Tensor
    cv_scores: torch.Tensor
    best_scores: torch.Tensor
    x_mean: torch.Tensor
    x_scale: torch.Tensor
    alpha_grid: torch.Tensor
    score: str

    def predict(self, X: Array, *, device: str | torch.device = "cpu",
                target_batch_size: int | None = None) -> torch.Tensor:
        """Predict targets from raw features; see :func:`predict_ridge`."""
        return predict_ridge(X, self.coef, self.intercept, self.x_mean,
                             self.x_scale, device=device,
                             target_batch_size=target_batch_size)


def predict_ridge(X: Array, coef: Array, intercept: Array, x_mean: Array,
                  x_scale: Array, *, device: str | torch.device = "cpu",
                  target_batch_size: int | None = None) -> torch.Tensor:
    """Predict with standardized-space ridge weights.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Raw features.
    coef : array of shape (n_features, n_targets)
        Weights on standardized features.
    intercept : array of shape (n_targets,)
        Intercept.
    x_mean, x_scale : arrays of shape (n_features,)
        Standardization applied to ``X`` before ``coef``.
    device : str or torch.device
        Device of the computation; the output is returned on CPU.
    target_batch_size : int or None
        Number of targets per matrix product (None: all at once).

    Returns
    -------
    Y_pred : tensor of shape (n_samples, n_targets)
        Predictions, on CPU, in the dtype of ``coef``.
    """
    device = _check_device(device)
    coef = torch.as_tensor(coef)
    dtype = coef.dtype
    if device.type == "cpu":  # numpy around one torch.mm: a served row in ~60 us, where torch's ops took ~80-250
        return torch.from_numpy(_predict_numpy(X, coef.numpy(), intercept, x_mean, x_scale))
    X = _as_2d(X, "X", dtype, device)
    if X.shape[1] != coef.shape[0]:
        raise ValueError(f"X has {X.shape[1]} features but coef was fit on "
                         f"{coef.shape[0]}.")
    mean = torch.as_tensor(x_mean, dtype=dtype, device=device)
    scale = torch.as_tensor(x_scale, dtype=dtype, device=device)
    Z = (X - mean) / scale
    n_targets = coef.shape[1]
    step = target_batch_size or n_targets
    out = torch.empty((X.shape[0], n_targets), dtype=dtype)
    for start in range(0, n_targets, max(step, 1)):
        cols = slice(start, start + step)
        W = coef[:, cols].to(device)
        b = torch.as_tensor(intercept[cols], dtype=dtype, device=device)
        out[:, cols] = torch.addmm(b, Z, W).cpu()
    return out

def _predict_numpy(X: Array, coef: np.ndarray, intercept: Array, x_mean: Array, x_scale: Array) -> np.ndarray:
    """:func:`predict_ridge` on the CPU: checks and standardization in numpy (the same checks as :func:`_as_2d`), the
    product by ``torch.mm``, in ``coef``'s dtype (``coef`` a tensor's view, so writeable as ``from_numpy`` wants)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_columns), got shape {tuple(X.shape)}.")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"X must be real-valued, got {X.dtype}.")
    dt = coef.dtype
    X = X.astype(dt, copy=False)
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values.")
    if X.shape[1] != coef.shape[0]:
        raise ValueError(f"X has {X.shape[1]} features but coef was fit on {coef.shape[0]}.")

    def vec(a):
        return (a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)).astype(dt, copy=False)

    with np.errstate(over="ignore", invalid="ignore"):  # callers refuse a non-finite answer (check_finite_output)
        Z = (X - vec(x_mean)) / vec(x_scale)
        # the product by torch, not numpy's OpenBLAS: OpenBLAS sums in an order that depends on its thread count
        # (a Ray worker runs one thread, a notebook several: up to 70k of 1M float32 values differ in the last
        # bit), torch's CPU product does not, so a prediction is the same bits wherever it is made (~25 us more)
        out = torch.mm(torch.from_numpy(Z), torch.from_numpy(coef)).numpy()
        out += vec(intercept)
    return out


def _solve_ridge_cv(X: Array, Y: Array, alphas: Array, n_folds: int,
                    folds: FoldList | None, score: str,
                    device: str | torch.device, dtype: torch.dtype | str,
                    target_batch_size: int | None, standardize: bool,
                    fit_intercept: bool, random_state: int | None,
                    make_basis: Callable[..., _Basis], alpha_per_target: bool = True) -> RidgeCVResult:
    """Shared driver of the ridge CV solvers (see :func:`solve_ridge_cv`)."""
    pb = _setup(X, Y, alphas, n_folds, folds, score, device, dtype,
                target_batch_size, fit_intercept, random_state)
    n, p, t = pb.shape
    dtype = pb.dtype
    if make_basis is _basis_eigh:
        gram, gram_vals = _grams(pb)
    else:
        gram, gram_vals = None, [None] * len(pb.folds)
    scaling = pb.scaling(standardize)
    with _lapack_threads(pb.device, min(n, p)):
        bases = [make_basis(pb.X64, pb.Xw, f, gram, g, fit_intercept, scaling,
                            pb.pearson, dtype) for f, g in zip(pb.folds, gram_vals)]
        full = make_basis(pb.X64, pb.Xw, None, gram, None, fit_intercept,
                          scaling, pb.pearson, dtype)
    del gram_vals, gram
    Ds = [_inv_shifts(b, pb) for b in bases]
    D_full = _inv_shifts(full, pb)

    n_alphas = pb.alpha_grid.numel()
    q = max(b.V.shape[1] for b in bases)
    step = target_batch_size or _auto_batch(
        n, p, q, len(pb.folds), n_alphas, torch.finfo(dtype).bits // 8, pb.device)
    coef = torch.empty((p, t), dtype=dtype)
    intercept = torch.empty(t, dtype=dtype)
    cv_scores = torch.empty((n_alphas, t), dtype=dtype)
    best_idx = torch.empty(t, dtype=torch.long)

    shared: int | str | None = None
    if not alpha_per_target:
        shared = "batch" if t <= step else _shared_alpha(
            _cv_pass(pb, bases, Ds, full, D_full, fit_intercept, step), _constant_targets(pb, step))
    for start in range(0, t, step):
        cols = slice(start, min(start + step, t))
        Yb, y_gmean = _load_batch(pb.Y, cols, dtype, pb.device, fit_intercept)
        W, cy, cv, best = _solve_batch(Yb, pb.Xw, pb.folds, pb.partition, bases,
                                       Ds, full, D_full, fit_intercept, pb.pearson, shared)
        del Yb
        coef[:, cols] = W.cpu()
        intercept[cols] = (y_gmean + cy).cpu()
        cv_scores[:, cols] = cv.cpu()
        best_idx[cols] = best.cpu()

    alpha_grid = pb.alpha_grid.to(dtype)
    best_scores = cv_scores.gather(0, best_idx[None, :])[0]
    x_mean = (pb.x_gmean + full.center).to(dtype).cpu()  # zeros without intercept
    return RidgeCVResult(coef=coef, intercept=intercept, alphas=alpha_grid[best_idx],
                         cv_scores=cv_scores, best_scores=best_scores,
                         x_mean=x_mean, x_scale=full.scale.to(dtype).cpu(),
                         alpha_grid=alpha_grid, score=score)


def _cv_pass(pb: _Problem, bases, Ds, full, D_full, fit_intercept: bool, step: int) -> torch.Tensor:
    """Validation scores (n_alphas, n_targets) of every target batch (a first pass for a shared alpha)."""
    out = []
    for start in range(0, pb.shape[2], step):
        Yb, _ = _load_batch(pb.Y, slice(start, min(start + step, pb.shape[2])), pb.dtype, pb.device, fit_intercept)
        out.append(_solve_batch(Yb, pb.Xw, pb.folds, pb.partition, bases, Ds, full, D_full,
                                fit_intercept, pb.pearson)[2])
    return torch.cat(out, 1)


def _constant_targets(pb: _Problem, step: int) -> torch.Tensor:
    """(n_targets,) bool: targets constant over all samples."""
    out = []
    for start in range(0, pb.shape[2], step):
        Yb, _ = _load_batch(pb.Y, slice(start, min(start + step, pb.shape[2])), pb.dtype, pb.device, False)
        out.append(_val_stats(Yb)[2])
    return torch.cat(out).to(pb.device)


_COMMON_DOC = """
    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Features (numpy array or torch tensor, any float dtype).
    Y : array of shape (n_samples, n_targets)
        Targets. Numpy arrays are copied to ``device`` one target batch at a
        time, so ``Y`` may be much larger than the device memory.
    alphas : array of shape (n_alphas,)
        Positive regularization strengths searched for every target.
    n_folds : int
        Number of contiguous K-fold splits (ignored when ``folds`` is given).
    folds : list of (train, val) index pairs or None
        Explicit cross-validation splits, e.g. ``list(KFold(5).split(X))``.
    score : {"pearson", "r2"}
        Validation score maximized (mean over folds) to pick each alpha.
        A constant validation target scores 0.
    device : str or torch.device
        Where to compute ("cpu", "cuda", "cuda:1"...). Outputs are on CPU.
    dtype : torch.float32 or torch.float64 (or "float32", "float64")
        Working precision of the target-sized products.
    target_batch_size : int or None
        Targets processed together; None picks a size that fits about 1 GiB
        on CPU or 40% of the free GPU memory. Results do not depend on it
        (up to floating point rounding).
    standardize : bool
        Z-score features with the training fold's mean and std (population
        std, as ``StandardScaler``). With ``fit_intercept``, constant
        features get exactly zero weight.
    fit_intercept : bool
        Center features and targets with the training mean. If False, no
        centering is done (``standardize`` then only scales).
    random_state : int or None
        None: contiguous folds; an int shuffles as ``KFold(shuffle=True)``.
    alpha_per_target : bool
        True: each target gets its own alpha. False: one alpha for all, the
        best mean validation score over the non-constant targets (as
        ``sklearn.linear_model.RidgeCV(alpha_per_target=False)`` with the
        given score; decoders into an embedding space use it). With more
        targets than one batch this takes a first pass over the batches.

    Returns
    -------
    result : RidgeCVResult
        Weights, intercept, selected alphas and cross-validation scores.
"""


def solve_ridge_cv_eigh(X: Array, Y: Array, alphas: Array, n_folds: int = 5, *,
                        folds: FoldList | None = None, score: str = "pearson",
                        device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32,
                        target_batch_size: int | None = None,
                        standardize: bool = True, fit_intercept: bool = True,
                        random_state: int | None = None,
                        alpha_per_target: bool = True) -> RidgeCVResult:
    """Ridge with per-target alphas by K-fold CV; float64 Gram eigendecomposition.

    Each fold's train Gram matrix is obtained by downdating the full Gram
    matrix (float64) and diagonalized with ``eigh``; only the
    target-sized products run in ``dtype``. Fastest choice when
    ``n_samples >> n_features``.
    """
    return _solve_ridge_cv(X, Y, alphas, n_folds, folds, score, device, dtype,
                           target_batch_size, standardize, fit_intercept,
                           random_state, _basis_eigh, alpha_per_target)


def solve_ridge_cv_svd(X: Array, Y: Array, alphas: Array, n_folds: int = 5, *,
                       folds: FoldList | None = None, score: str = "pearson",
                       device: str | torch.device = "cpu",
                       dtype: torch.dtype | str = torch.float32,
                       target_batch_size: int | None = None,
                       standardize: bool = True, fit_intercept: bool = True,
                       random_state: int | None = None,
                       alpha_per_target: bool = True) -> RidgeCVResult:
    """Ridge with per-target alphas by K-fold CV; SVD of each train fold.

    Decomposes the standardized train features with a thin SVD in ``dtype``
    (no float64 anywhere in the per-fold work), which suits GPUs with slow
    float64 arithmetic.
    """
    return _solve_ridge_cv(X, Y, alphas, n_folds, folds, score, device, dtype,
                           target_batch_size, standardize, fit_intercept,
                           random_state, _basis_svd, alpha_per_target)


solve_ridge_cv_eigh.__doc__ += _COMMON_DOC
solve_ridge_cv_svd.__doc__ += _COMMON_DOC

#: Dictionary with all ridge CV solvers (himalaya style).
RIDGE_SOLVERS: dict[str, Callable[..., RidgeCVResult]] = {
    "eigh": solve_ridge_cv_eigh,
    "svd": solve_ridge_cv_svd,
}


def solve_ridge_cv(X: Array, Y: Array, alphas: Array, n_folds: int = 5, *,
                   solver: str = "eigh", folds: FoldList | None = None,
                   score: str = "pearson", device: str | torch.device = "cpu",
                   dtype: torch.dtype | str = torch.float32,
                   target_batch_size: int | None = None,
                   standardize: bool = True, fit_intercept: bool = True,
                   random_state: int | None = None,
                   alpha_per_target: bool = True) -> RidgeCVResult:
    """Ridge regression with one alpha per target chosen by K-fold CV.

    For each target, the alpha maximizing the validation score averaged over
    folds is selected, then the target is refit on all samples with it.
    ``solver`` picks the decomposition in :data:`RIDGE_SOLVERS`
    ("eigh": float64 Gram eigendecomposition, default; "svd": thin SVD in
    ``dtype``).
    """
    if solver not in RIDGE_SOLVERS:
        raise ValueError(f"solver must be one of {sorted(RIDGE_SOLVERS)}, "
                         f"got {solver!r}.")
    return RIDGE_SOLVERS[solver](
        X, Y, alphas, n_folds, folds=folds, score=score, device=device,
        dtype=dtype, target_batch_size=target_batch_size,
        standardize=standardize, fit_intercept=fit_intercept,
        random_state=random_state, alpha_per_target=alpha_per_target)


solve_ridge_cv.__doc__ += _COMMON_DOC

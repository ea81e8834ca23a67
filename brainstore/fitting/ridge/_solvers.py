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

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ._scaling import input_eps, robust_scale

__all__ = [
    "RIDGE_SOLVERS",
    "RidgeCVResult",
    "kfold_indices",
    "predict_ridge",
    "solve_ridge_cv",
    "solve_ridge_cv_eigh",
    "solve_ridge_cv_svd",
]

Array = np.ndarray | torch.Tensor
FoldList = Sequence[tuple[np.ndarray, np.ndarray]]

SCORES = ("pearson", "r2")
#: Working-memory budget of one target batch on CPU (bytes).
CPU_BATCH_BYTES = 1 << 30
#: Fraction of the free GPU memory one target batch may use.
CUDA_BATCH_FRACTION = 0.4
#: Row blocks of the triangular factor (more blocks: fewer FLOPs, smaller GEMMs).
N_ROW_BLOCKS = 8


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


# --------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------

def kfold_indices(n_samples: int, n_folds: int = 5,
                  random_state: int | None = None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold (train, validation) index pairs from ``sklearn.model_selection.KFold``.

    Parameters
    ----------
    n_samples : int
        Number of samples.
    n_folds : int
        Number of folds (>= 2).
    random_state : int or None
        None gives contiguous folds (no shuffle); an int shuffles the samples
        (``KFold(n_folds, shuffle=True, random_state=random_state)``).

    Returns
    -------
    folds : list of (train, val) pairs of sorted int64 arrays
    """
    from sklearn.model_selection import KFold

    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}.")
    if n_folds > n_samples:
        raise ValueError(f"n_folds={n_folds} is larger than the number of "
                         f"samples ({n_samples}).")
    kf = KFold(n_folds, shuffle=random_state is not None, random_state=random_state)
    return [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in kf.split(np.zeros((n_samples, 1)))]


@dataclass
class _Fold:
    """Indices of one fold on the compute device."""

    train: torch.Tensor | slice
    val: torch.Tensor | slice
    n_train: int
    n_val: int
    complement: bool  # train is exactly the complement of val


def _as_index(idx: np.ndarray, device: torch.device) -> torch.Tensor | slice:
    """A slice when ``idx`` is a contiguous increasing range, else a tensor."""
    if len(idx) > 0 and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return torch.as_tensor(idx, dtype=torch.long, device=device)


def _check_folds(folds: FoldList, n_samples: int, device: torch.device
                 ) -> tuple[list[_Fold], bool]:
    """Validate (train, val) pairs; also tell whether the vals partition samples."""
    out, all_val = [], []
    if len(folds) < 1:
        raise ValueError("folds must contain at least one (train, val) pair.")
    for k, pair in enumerate(folds):
        if len(pair) != 2:
            raise ValueError(f"folds[{k}] must be a (train, val) pair.")
        train, val = (np.asarray(a).astype(np.int64).ravel() for a in pair)
        for name, idx in (("train", train), ("val", val)):
            if idx.size == 0:
                raise ValueError(f"folds[{k}] has an empty {name} set.")
            if idx.min() < 0 or idx.max() >= n_samples:
                raise ValueError(f"folds[{k}] {name} indices are out of "
                                 f"range [0, {n_samples}).")
        if train.size < 2:
            raise ValueError(f"folds[{k}] needs at least 2 training samples.")
        complement = (train.size + val.size == n_samples and
                      np.union1d(train, val).size == n_samples)
        out.append(_Fold(_as_index(train, device), _as_index(val, device),
                         int(train.size), int(val.size), bool(complement)))
        all_val.append(val)
    val_cat = np.sort(np.concatenate(all_val))
    partition = bool(val_cat.size == n_samples and
                     np.array_equal(val_cat, np.arange(n_samples)))
    return out, partition


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------

def _check_device(device: str | torch.device) -> torch.device:
    """Resolve a device, failing clearly when CUDA is requested but absent."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not "
                         "available; use device='cpu'.")
    return device


def _as_2d(A: Array, name: str, dtype: torch.dtype,
           device: torch.device) -> torch.Tensor:
    """Convert to a finite 2-D tensor on ``device``."""
    A = torch.as_tensor(A)
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_columns), got "
                         f"shape {tuple(A.shape)}.")
    if not (A.is_floating_point() or A.dtype in (torch.int32, torch.int64,
                                                  torch.int16, torch.uint8, torch.bool)):
        raise TypeError(f"{name} must be real-valued, got {A.dtype}.")
    A = A.to(device=device, dtype=dtype)
    if not torch.isfinite(A).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return A


def _check_alphas(alphas: Array) -> torch.Tensor:
    """Alphas as a 1-D float64 CPU tensor of positive finite values."""
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64)).reshape(-1)
    if a.numel() == 0:
        raise ValueError("alphas must contain at least one value.")
    if not torch.isfinite(a).all() or (a <= 0).any():
        raise ValueError(f"alphas must be positive and finite, got {a.tolist()}.")
    return a


def _check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept torch dtypes or the strings 'float32' / 'float64'."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}.")
    return dtype


# --------------------------------------------------------------------------
# Per-fold feature bases (target independent)
# --------------------------------------------------------------------------

@contextlib.contextmanager
def _lapack_threads(device: torch.device, n_features: int):
    """Run the per-fold CPU factorizations (eigh, QR, SVD) single-threaded
    when ``n_features <= 1024``, restoring the thread count afterwards.

    ``n_features`` is the size of the factorized matrices: min(n_samples,
    n_features) of the problem (wide problems factorize n x n, see
    :func:`_basis_eigh`). Measured on a shared 2-core machine: multi-threaded
    LAPACK on 512-1024 wide matrices was 2-20x slower than one thread under
    CPU contention and barely faster without it (a 480 x 2321 thin SVD: 0.4 s
    on one thread, 2-7 s on two under load); the large matrix products keep
    all threads.
    """
    n_threads = torch.get_num_threads()
    if device.type != "cpu" or n_threads == 1 or n_features > 1024:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


@dataclass
class _Basis:
    """Standardization and eigenbasis of one training set."""

    center: torch.Tensor      # (p,) float64, subtracted from features
    inv_scale: torch.Tensor   # (p,) float64, 0 for constant features
    scale: torch.Tensor       # (p,) float64, 1 for constant features
    V: torch.Tensor           # (p, q) working dtype, eigenvectors of Z^T Z
    eigvals: torch.Tensor     # (q,) float64, eigenvalues of Z^T Z (>= 0)
    R: torch.Tensor | None    # (r, q) working dtype, triangular factor of val
    sx_train: torch.Tensor    # (p,) float64, feature sums over train
    sx_val: torch.Tensor | None  # (p,) float64, feature sums over val


@dataclass(frozen=True)
class _Scaling:
    """How each fold scales its features (the rule of :mod:`._scaling`)."""

    standardize: bool     # divide by the std; False: scales of 1
    offset: torch.Tensor  # (p,) float64 the global means taken out of X64, added back to measure magnitudes
    eps: float            # machine epsilon of the caller's X (constant = no variation beyond its rounding)


def _standardization(X64: torch.Tensor, rows, fit_intercept: bool, scaling: _Scaling):
    """Train-set center, scale and inverse scale (0 for constant and near-constant features, see :mod:`._scaling`)."""
    Xt = X64[rows]
    var, mean = torch.var_mean(Xt, dim=0, correction=0)
    scale_np, const_np = robust_scale(var.sqrt().cpu().numpy(), (mean + scaling.offset).cpu().numpy(),
                                      scaling.eps, scaling.standardize)
    scale = torch.as_tensor(scale_np, dtype=torch.float64, device=X64.device)
    const = torch.as_tensor(const_np, device=X64.device)
    center = mean if fit_intercept else torch.zeros_like(mean)
    # once centered, a constant feature is identically zero: drop it exactly
    inv_scale = torch.where(const & fit_intercept, torch.zeros_like(scale), 1.0 / scale)
    return center, inv_scale, scale, Xt.sum(0)


def _val_factor(Zv: torch.Tensor, V: torch.Tensor, pearson: bool,
                dtype: torch.dtype) -> torch.Tensor:
    """Triangular R with R^T R = A^T A, A = Z_val V (centered for Pearson), in ``dtype``.

    Computed in the working dtype: R only enters the validation prediction
    norms ``||R diag(d) C||^2``, themselves a working-dtype product, and the
    QR is backward stable, so a float64 factor would add digits that the
    float32 product then drops (and cost twice the time).
    """
    A = Zv.to(dtype) @ V.to(dtype)
    if pearson:
        A = A - A.mean(0)
    return torch.linalg.qr(A, mode="r").R


def _eigh_active(G: torch.Tensor, active: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh`` of ``G`` restricted to the active rows/columns (the others are zero).

    Returns the eigenvalues (q,) and eigenvectors (p, q), zero on inactive
    rows, with ``q`` the number of active features.
    """
    idx = torch.nonzero(active)[:, 0]
    eigvals, U = torch.linalg.eigh(G[idx][:, idx])
    V = G.new_zeros((G.shape[0], idx.numel()))
    V[idx] = U
    return eigvals, V


@dataclass
class _FoldGram:
    """A fold's training standardization and standardized train Gram (shared by feature scalings)."""

    center: torch.Tensor     # (p,) float64
    inv_scale: torch.Tensor  # (p,) float64, 0 for constant features (with intercept)
    scale: torch.Tensor      # (p,) float64
    sx_train: torch.Tensor   # (p,) float64 train column sums
    gram: torch.Tensor | None  # (p, p) float64 Z_tr^T Z_tr; None with fewer train samples than features


def _fold_gram(X64: torch.Tensor, fold: _Fold | None, gram: torch.Tensor | None,
               gram_val: torch.Tensor | None, fit_intercept: bool,
               scaling: _Scaling) -> _FoldGram:
    """Standardization and standardized train Gram of ``fold`` (None: all samples)."""
    train = slice(None) if fold is None else fold.train
    n_tr = X64.shape[0] if fold is None else fold.n_train
    c, inv, scale, sx = _standardization(X64, train, fit_intercept, scaling)
    if n_tr < X64.shape[1]:
        return _FoldGram(c, inv, scale, sx, None)
    if fold is None:
        G = gram.clone()
    elif fold.complement and gram_val is not None:
        G = gram - gram_val  # X_tr^T X_tr by downdate
    else:
        G = X64[train].T @ X64[train]
    # (X - 1c^T)^T (X - 1c^T) = G - c s^T - s c^T + n c c^T
    G.addr_(c, sx - n_tr * c, alpha=-1).addr_(sx, c, alpha=-1)
    G *= inv[:, None] * inv[None, :]
    return _FoldGram(c, inv, scale, sx, G)


def _basis_eigh(X64: torch.Tensor, Xw: torch.Tensor, fold: _Fold | None,
                gram: torch.Tensor, gram_val: torch.Tensor | None,
                fit_intercept: bool, scaling: _Scaling, pearson: bool,
                dtype: torch.dtype,
                feature_scale: torch.Tensor | None = None,
                fold_gram: _FoldGram | None = None) -> _Basis:
    """Basis from the eigendecomposition of the float64 train Gram matrix.

    ``feature_scale`` (p,) float64, optional, multiplies the standardized
    features (banded ridge); it is folded into ``inv_scale``, so the basis
    and everything computed from it see the rescaled features. Features it
    zeroes are left out of the eigendecomposition (``q`` is then the number
    of the others), so a band weighted 0 costs nothing. ``fold_gram``, the
    fold's :func:`_fold_gram`, is computed here when not given (banded
    ridge computes it once per fold for all its feature scalings).

    With fewer training samples than features the Gram matrix has rank at
    most ``n_train``: its eigenpairs of non-zero eigenvalue come from the
    n x n matrix ``Z Z^T = U W U^T`` as ``V = Z^T U W^(-1/2)``, in O(n^2 p)
    instead of O(p^3) (same float64 squaring of the condition number as the
    p x p Gram). The null directions left out (eigenvalue below
    ``n * eps * max``) carry no weight (``Z^T y`` is orthogonal to them), so
    results are unchanged and ``q <= n_train``.
    """
    fg = fold_gram or _fold_gram(X64, fold, gram, gram_val, fit_intercept, scaling)
    c, scale, sx = fg.center, fg.scale, fg.sx_train
    inv = fg.inv_scale if feature_scale is None else fg.inv_scale * feature_scale
    if fg.gram is None:
        train = slice(None) if fold is None else fold.train
        n_tr = X64.shape[0] if fold is None else fold.n_train
        Z = (X64[train] - c) * inv
        w, U = torch.linalg.eigh(Z @ Z.T)
        keep = w > n_tr * torch.finfo(w.dtype).eps * w.max().clamp(min=0)
        V = (Z.T @ U[:, keep]) / w[keep].sqrt()
        return _finish_basis(X64, fold, c, inv, scale, sx, w[keep], V, pearson, dtype)
    G = fg.gram
    if feature_scale is not None:
        G = G * (feature_scale[:, None] * feature_scale[None, :])
    if feature_scale is not None and (feature_scale == 0).any():
        eigvals, V = _eigh_active(G, feature_scale != 0)
    else:
        eigvals, V = torch.linalg.eigh(G)
    return _finish_basis(X64, fold, c, inv, scale, sx, eigvals, V, pearson, dtype)


def _finish_basis(X64: torch.Tensor, fold: _Fold | None, c, inv, scale, sx, eigvals: torch.Tensor,
                  V: torch.Tensor, pearson: bool, dtype: torch.dtype) -> _Basis:
    """The :class:`_Basis` of float64 eigenpairs (with the validation factor for a fold)."""
    R, sxv = None, None
    if fold is not None:
        Xv = X64[fold.val]
        sxv = Xv.sum(0)
        R = _val_factor((Xv - c) * inv, V, pearson, dtype)
    return _Basis(c, inv, scale, V.to(dtype), eigvals.clamp(min=0), R, sx, sxv)


def _basis_svd(X64: torch.Tensor, Xw: torch.Tensor, fold: _Fold | None,
               gram: torch.Tensor, gram_val: torch.Tensor | None,
               fit_intercept: bool, scaling: _Scaling, pearson: bool,
               dtype: torch.dtype) -> _Basis:
    """Basis from the SVD of the standardized train features (working dtype)."""
    train = slice(None) if fold is None else fold.train
    c, inv, scale, sx = _standardization(X64, train, fit_intercept, scaling)
    cw, invw = c.to(dtype), inv.to(dtype)
    Z = (Xw[train] - cw) * invw
    _, s, Vh = torch.linalg.svd(Z, full_matrices=False)
    V = Vh.T.contiguous()
    R, sxv = None, None
    if fold is not None:
        Xv = Xw[fold.val]
        sxv = X64[fold.val].sum(0)
        R = _val_factor((Xv - cw) * invw, V, pearson, dtype)
    return _Basis(c, inv, scale, V, s.double() ** 2, R, sx, sxv)


# --------------------------------------------------------------------------
# Target-batch computations
# --------------------------------------------------------------------------

def _center_cross_(XtY: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor,
                   cx: torch.Tensor, cy: torch.Tensor, n: int) -> torch.Tensor:
    """In place: ``X^T Y`` becomes ``(X - 1 cx^T)^T (Y - 1 cy^T)``.

    ``sx`` and ``sy`` are the column sums of ``X`` and ``Y`` over the ``n`` rows.
    """
    return XtY.addr_(cx, sy - n * cy, alpha=-1).addr_(sx, cy, alpha=-1)


def _pred_sq_norms(R: torch.Tensor, D: torch.Tensor, C: torch.Tensor
                   ) -> torch.Tensor:
    """``||R diag(D[a]) C[:, j]||^2`` for all alphas a and targets j.

    Parameters
    ----------
    R : tensor of shape (r, q), upper triangular (trapezoidal if r < q)
    D : tensor of shape (n_alphas, q)
    C : tensor of shape (q, n_targets)

    Returns
    -------
    norms : tensor of shape (n_alphas, n_targets)
    """
    r, q = R.shape
    n_alphas, n_targets = D.shape[0], C.shape[1]
    out = torch.zeros((n_alphas, n_targets), dtype=C.dtype, device=C.device)
    n_blocks = max(1, min(N_ROW_BLOCKS, r // 32))
    bounds = np.linspace(0, r, n_blocks + 1).round().astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        # rows a:b of R are zero left of column a: skip those columns;
        # stacked row-major over (row, alpha) so the final sum runs over dim 0
        Rs = (R[a:b, a:].unsqueeze(1) * D[None, :, a:]).reshape(-1, q - a)
        M = (Rs @ C[a:]).view(b - a, n_alphas, n_targets)
        out += M.square_().sum(0)
    return out


def _fold_cross(fold: _Fold, basis: _Basis, XtY: torch.Tensor,
                XvY: torch.Tensor, sy: torch.Tensor, sy_val: torch.Tensor,
                Xw: torch.Tensor, Yb: torch.Tensor, fit_intercept: bool,
                pearson: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centered train and validation cross-products of one fold.

    They depend on the fold's centering only, not on any feature scaling.
    ``XvY`` (this fold's ``X_val^T Y_val``) is consumed: overwritten in place.

    Returns
    -------
    B_tr : tensor of shape (n_features, n_targets_batch)
        ``(X_tr - 1 c^T)^T (Y_tr - 1 cy_tr^T)``, ``c`` the train feature center.
    B_val : tensor of shape (n_features, n_targets_batch)
        ``(X_val - 1 c^T)^T (Y_val - 1 m^T)``, ``m`` the validation mean
        (Pearson) or ``cy_tr`` (R2).
    cy_tr : tensor of shape (n_targets_batch,)
        Train target means (zeros without intercept).
    """
    dt = Yb.dtype
    c = basis.center.to(dt)
    n_tr, n_val = fold.n_train, fold.n_val
    if fold.complement:
        XtrY = XtY - XvY  # train cross-products by downdate
        sy_tr = sy - sy_val
    else:
        XtrY = Xw[fold.train].T @ Yb[fold.train]
        sy_tr = Yb[fold.train].sum(0)
    cy_tr = sy_tr / n_tr if fit_intercept else torch.zeros_like(sy_tr)
    B_tr = _center_cross_(XtrY, basis.sx_train.to(dt), sy_tr, c, cy_tr, n_tr)
    # validation targets: centered on their own mean (Pearson) or the train mean (R2)
    cy_val = sy_val / n_val if pearson else cy_tr
    B_val = _center_cross_(XvY, basis.sx_val.to(dt), sy_val, c, cy_val, n_val)
    return B_tr, B_val, cy_tr


def _cross_scores(basis: _Basis, D: torch.Tensor, B_tr: torch.Tensor,
                  B_val: torch.Tensor, cy_tr: torch.Tensor,
                  stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  n_val: int, pearson: bool) -> torch.Tensor:
    """Validation scores of every alpha from a fold's centered cross-products.

    Parameters
    ----------
    basis : _Basis
        The fold's basis (its ``inv_scale`` may include a feature scaling).
    D : tensor of shape (n_alphas, q)
        ``1 / (eigvals + alpha)``.
    B_tr, B_val, cy_tr
        As returned by :func:`_fold_cross`.
    stats : (sy_val, ss_val, val_const)
        Validation target sums, centered sums of squares and constancy
        (:func:`_val_stats`).
    n_val : int
        Number of validation samples.
    pearson : bool
        Pearson r if True, else R2.

    Returns
    -------
    scores : tensor of shape (n_alphas, n_targets_batch)
    """
    sy_val, ss_val, val_const = stats
    Vs = basis.V * basis.inv_scale.to(B_tr.dtype)[:, None]  # fold the feature scaling into V
    C = Vs.T @ B_tr
    E = Vs.T @ B_val
    cross = D @ (C * E)  # sum_j d_j C_j E_j = pred . y_val
    norms = _pred_sq_norms(basis.R, D, C)  # ||pred||^2
    if pearson:
        denom = (norms.clamp(min=0) * ss_val).sqrt()
        ok = (denom > 0) & ~val_const
        return torch.where(ok, cross / torch.where(ok, denom, 1.0), 0.0)
    # ||y_val - cy_tr||^2 = ss_val + n_val (mean_val - cy_tr)^2
    ss_off = ss_val + n_val * (sy_val / n_val - cy_tr) ** 2
    sse = ss_off - 2 * cross + norms
    ok = ~val_const
    return torch.where(ok, 1 - sse / torch.where(ok, ss_val, 1.0), 0.0)


def _auto_batch(n: int, p: int, q: int, n_folds: int, n_alphas: int,
                itemsize: int, device: torch.device) -> int:
    """Number of targets per batch so the working set fits in memory."""
    per_target = itemsize * (2 * n + (n_folds + 8) * p
                             + n_alphas * math.ceil(q / N_ROW_BLOCKS)
                             + 8 * n_alphas)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = CUDA_BATCH_FRACTION * free
    else:
        budget = CPU_BATCH_BYTES
    return max(256, int(budget // per_target))


def _load_batch(Y: Array, cols: slice, dtype: torch.dtype, device: torch.device,
                center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Private copy of ``Y[:, cols]`` on ``device``, centered over samples.

    Returns
    -------
    Yb : tensor of shape (n_samples, n_cols)
        The batch minus its column means (a copy: ``Y`` is never modified).
    mean : tensor of shape (n_cols,)
        The column means subtracted (zeros when ``center`` is False).
    """
    if isinstance(Y, np.ndarray):
        with warnings.catch_warnings():  # read-only memmaps are fine: this view is never written to
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            view = torch.from_numpy(Y[:, cols])
    else:
        view = Y[:, cols]
    Yb = view.to(device=device, dtype=dtype)
    owned = Yb.device != view.device or Yb.data_ptr() != view.data_ptr()  # .to() copied
    mean = Yb.mean(0)
    # NaN / inf anywhere in a column propagates into its mean
    if not torch.isfinite(mean).all():
        raise ValueError(f"Y contains NaN or infinite values (in target "
                         f"columns {cols.start}:{cols.stop}).")
    if not center:
        mean.zero_()
    if owned:
        return Yb.sub_(mean), mean
    return Yb - mean, mean  # the subtraction makes the private copy


def _val_stats(Yv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column sums, centered sums of squares and constancy of validation targets.

    A column is constant when its spread is below the float resolution of its
    mean (exactly constant columns, up to the rounding of the mean).
    """
    n_v = Yv.shape[0]
    sy = Yv.sum(0)
    m = sy / n_v
    ss = (Yv - m).square_().sum(0)  # two-pass: exact zero for constant columns
    const = ss <= n_v * (16 * torch.finfo(Yv.dtype).eps * m) ** 2
    return sy, ss, const


@dataclass
class _BatchCross:
    """Target-batch quantities shared by all folds (and all feature scalings)."""

    XtY: torch.Tensor          # (p, t) X^T Y over all samples
    XvYs: list                 # per fold (p, t) X_val^T Y_val, None once consumed
    stats: list                # per fold (sy_val, ss_val, val_const), see _val_stats
    sy: torch.Tensor           # (t,) target sums over all samples
    gconst: torch.Tensor       # (t,) bool, target constant over all samples


def _batch_cross(Yb: torch.Tensor, Xw: torch.Tensor, folds: list[_Fold],
                 partition: bool) -> _BatchCross:
    """Cross-products and validation statistics of one batch of targets.

    ``X^T Y`` is the sum of the folds' ``X_val^T Y_val`` when the validation
    sets partition the samples.
    """
    dt = Yb.dtype
    XtY = None if partition else Xw.T @ Yb
    XvYs, stats = [], []
    for f in folds:
        Yv = Yb[f.val]
        XvY = Xw[f.val].T @ Yv
        XvYs.append(XvY)
        if partition:  # the validation sets tile the samples: sum to X^T Y
            XtY = XvY.clone() if XtY is None else XtY.add_(XvY)
        stats.append(_val_stats(Yv))
        del Yv
    sy = torch.stack([st[0] for st in stats]).sum(0) if partition else Yb.sum(0)
    if partition:
        # constant over all samples: constant in every fold, at one value
        means = torch.stack([st[0] / f.n_val for st, f in zip(stats, folds)])
        spread = means.amax(0) - means.amin(0)
        gconst = (torch.stack([st[2] for st in stats]).all(0) &
                  (spread <= 16 * torch.finfo(dt).eps * means.abs().amax(0)))
    else:
        gconst = _val_stats(Yb)[2]
    return _BatchCross(XtY, XvYs, stats, sy, gconst)


def _refit(full: _Basis, B: torch.Tensor, D_sel: torch.Tensor) -> torch.Tensor:
    """Refit weights, each target with its own alpha, in one product.

    Parameters
    ----------
    full : _Basis
        Basis of all samples.
    B : tensor of shape (n_features, n_targets)
        Centered cross-products ``(X - 1 c^T)^T (Y - 1 cy^T)``.
    D_sel : tensor of shape (n_targets, q)
        ``1 / (eigvals + alpha_j)`` of each target's alpha.

    Returns
    -------
    W : tensor of shape (n_features, n_targets)
        Weights on the features of the basis (standardized, times any
        feature scaling); exactly zero for constant features.
    """
    inv = full.inv_scale.to(B.dtype)
    Cf = (full.V * inv[:, None]).T @ B
    Cf *= D_sel.T  # column j scaled by 1 / (eigvals + alpha_j)
    W = full.V @ Cf
    W *= (inv != 0).to(B.dtype)[:, None]  # constant features: exactly zero weight
    return W


def _full_cross(bc: _BatchCross, full: _Basis, n: int,
                fit_intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Centered cross-products of all samples (consumes ``bc.XtY``) and target means."""
    dt = bc.XtY.dtype
    cy = bc.sy / n if fit_intercept else torch.zeros_like(bc.sy)
    B = _center_cross_(bc.XtY, full.sx_train.to(dt), bc.sy, full.center.to(dt), cy, n)
    bc.XtY = None
    return B, cy


def _solve_batch(Yb: torch.Tensor, Xw: torch.Tensor, folds: list[_Fold],
                 partition: bool, bases: list[_Basis], Ds: list[torch.Tensor],
                 full: _Basis, D_full: torch.Tensor, fit_intercept: bool,
                 pearson: bool, shared: int | str | None = None) -> tuple[torch.Tensor, ...]:
    """Cross-validate and refit one batch of (globally centered) targets.

    ``shared``: None picks each target's alpha; ``"batch"`` one alpha for the whole batch (the best
    mean validation score over its non-constant targets); an int, that alpha index for every target.

    Returns
    -------
    W : tensor of shape (n_features, n_targets_batch)
        Standardized-space weights at the selected alphas.
    cy : tensor of shape (n_targets_batch,)
        Mean of the batch targets (zeros without intercept).
    cv : tensor of shape (n_alphas, n_targets_batch)
        Validation scores averaged over folds.
    best : tensor of shape (n_targets_batch,)
        Index of the selected alpha.
    """
    bc = _batch_cross(Yb, Xw, folds, partition)
    total = torch.zeros((Ds[0].shape[0], Yb.shape[1]), dtype=Yb.dtype, device=Yb.device)
    for k, (f, b) in enumerate(zip(folds, bases)):
        total += _cross_scores(b, Ds[k], *_fold_cross(
            f, b, bc.XtY, bc.XvYs[k], bc.sy, bc.stats[k][0], Xw, Yb,
            fit_intercept, pearson), bc.stats[k], f.n_val, pearson)
        bc.XvYs[k] = None  # free as we go
    total /= len(folds)
    if shared is None:
        best = total.argmax(0)  # first maximum: ties go to the earlier alpha
    else:
        a = _shared_alpha(total, bc.gconst) if shared == "batch" else int(shared)
        best = torch.full((Yb.shape[1],), a, dtype=torch.long, device=Yb.device)
    B, cy = _full_cross(bc, full, Yb.shape[0], fit_intercept)
    W = _refit(full, B, D_full.index_select(0, best))
    W[:, bc.gconst] = 0  # constant targets: zero weight
    return W, cy, total, best


def _shared_alpha(cv: torch.Tensor, const: torch.Tensor) -> int:
    """Index of the alpha with the best mean validation score over the non-constant targets."""
    keep = ~const
    mean = (cv[:, keep] if keep.any() else cv).mean(1)
    return int(mean.argmax())  # first maximum: ties go to the earlier alpha


# --------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------

@dataclass
class _Problem:
    """Validated inputs of a cross-validated solve."""

    X64: torch.Tensor         # (n, p) float64 features minus x_gmean (a copy)
    Xw: torch.Tensor          # (n, p) X64 in the working dtype
    x_gmean: torch.Tensor     # (p,) float64 global feature means (zeros without intercept)
    Y: Array                  # (n, t) targets as given (never modified)
    folds: list[_Fold]
    partition: bool           # the validation sets tile the samples
    alpha_grid: torch.Tensor  # (n_alphas,) float64 on CPU
    device: torch.device
    dtype: torch.dtype
    pearson: bool
    eps: float                # machine epsilon of the caller's X

    def scaling(self, standardize: bool) -> _Scaling:
        """The feature-scaling rule of this problem's folds."""
        return _Scaling(bool(standardize), self.x_gmean, self.eps)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_samples, n_features, n_targets)."""
        return (*self.X64.shape, self.Y.shape[1])


def _setup(X: Array, Y: Array, alphas: Array, n_folds: int,
           folds: FoldList | None, score: str, device: str | torch.device,
           dtype: torch.dtype | str, target_batch_size: int | None,
           fit_intercept: bool, random_state: int | None) -> _Problem:
    """Check the arguments shared by the CV solvers and center ``X`` globally."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}.")
    device, dtype = _check_device(device), _check_dtype(dtype)
    alpha_grid = _check_alphas(alphas)
    eps = input_eps(X)
    X64 = _as_2d(X, "X", torch.float64, device)
    if not isinstance(Y, (np.ndarray, torch.Tensor)):
        Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (n_samples, n_targets), got shape "
                         f"{tuple(Y.shape)}.")
    n = X64.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"X and Y must have the same number of rows (samples)"
                         f": X has {n}, Y has {Y.shape[0]}.")
    if target_batch_size is not None and target_batch_size < 1:
        raise ValueError(f"target_batch_size must be >= 1 or None, got "
                         f"{target_batch_size}.")
    if folds is None:
        folds = kfold_indices(n, n_folds, random_state)
    fold_list, partition = _check_folds(folds, n, device)
    # global centering: exact no-op for the fits, keeps cross-products well scaled
    x_gmean = X64.mean(0) if fit_intercept else X64.new_zeros(X64.shape[1])
    X64 = X64 - x_gmean  # new tensor: never modify the caller's X
    Xw = X64 if dtype == torch.float64 else X64.to(dtype)
    return _Problem(X64, Xw, x_gmean, Y, fold_list, partition, alpha_grid,
                    device, dtype, score == "pearson", eps)


def _grams(pb: _Problem) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Full float64 Gram matrix and per-fold validation Grams.

    A fold's validation Gram is computed only when its train set is the
    complement of its validation set (the train Gram is then a downdate);
    their sum is the full Gram when the validation sets partition the samples.
    With fewer samples than features every basis comes from a thin SVD
    (see :func:`_basis_eigh`) and no Gram is needed: ``(None, [None, ...])``.
    """
    X64 = pb.X64
    if X64.shape[0] < X64.shape[1]:
        return None, [None] * len(pb.folds)
    gram_vals = [X64[f.val].T @ X64[f.val] if f.complement else None
                 for f in pb.folds]
    tiled = pb.partition and all(g is not None for g in gram_vals)
    gram = torch.stack(gram_vals).sum(0) if tiled else X64.T @ X64
    return gram, gram_vals


def _inv_shifts(basis: _Basis, pb: _Problem) -> torch.Tensor:
    """``D[a, j] = 1 / (eigvals_j + alpha_a)`` of shape (n_alphas, q), working dtype."""
    a = pb.alpha_grid.to(pb.device)
    return (1.0 / (basis.eigvals[None, :] + a[:, None])).to(pb.dtype)


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

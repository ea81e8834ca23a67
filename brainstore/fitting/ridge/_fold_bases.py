"""Per-fold feature bases, target independent: each fold's standardization (training statistics only; the
rule of :mod:`._scaling`), its eigenbasis from the float64 train Gram (a downdate of the full Gram; from
the n x n Gram when there are fewer samples than features) or from an SVD in the working dtype, and the
triangular factor of the validation features that the validation scores need (see :mod:`._solvers`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ._problem import _Fold, _Problem, _Scaling
from ._scaling import robust_scale


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

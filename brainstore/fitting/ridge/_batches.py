"""Target-batch computations of the ridge CV solvers: cross-products once per fold and batch of targets,
validation scores of every alpha from sufficient statistics (never a prediction of size
``n_val x n_targets``), the choice of alphas and the refit in one product; the batch size that fits
the memory (see :mod:`._solvers`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ._fold_bases import _Basis
from ._problem import Array, _Fold

#: Working-memory budget of one target batch on CPU (bytes).
CPU_BATCH_BYTES = 1 << 30
#: Fraction of the free GPU memory one target batch may use.
CUDA_BATCH_FRACTION = 0.4
#: Row blocks of the triangular factor (more blocks: fewer FLOPs, smaller GEMMs).
N_ROW_BLOCKS = 8


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

"""The validated inputs of a cross-validated ridge solve, shared by :mod:`._solvers` and :mod:`._banded`.

Folds (K-fold ``(train, val)`` index pairs; a contiguous range becomes a slice), the device, dtype
and alpha checks, the feature-scaling rule of the folds (:mod:`._scaling`), and the problem itself:
``X`` centered globally in float64 and its working-dtype copy, ``Y`` as given, the folds and the
alpha grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._scaling import input_eps

__all__ = ["kfold_indices", "SCORES", "Array", "FoldList"]

Array = np.ndarray | torch.Tensor
FoldList = Sequence[tuple[np.ndarray, np.ndarray]]

SCORES = ("pearson", "r2")



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


@dataclass(frozen=True)
class _Scaling:
    """How each fold scales its features (the rule of :mod:`._scaling`)."""

    standardize: bool     # divide by the std; False: scales of 1
    offset: torch.Tensor  # (p,) float64 the global means taken out of X64, added back to measure magnitudes
    eps: float            # machine epsilon of the caller's X (constant = no variation beyond its rounding)

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

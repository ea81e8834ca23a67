"""Feature scales that cannot explode: the one standardization rule of every fitted model.

A model standardizes its inputs, ``z = (x - mean) / scale``, with the training rows' statistics.
A column that hardly varies over those rows has a tiny standard deviation, and dividing by it
turns any new input's deviation in that column into an enormous ``z``: MiniLM caption embeddings,
for example, have dimensions that are zero up to 1e-33 on every stored caption, so a new caption
(or a stored one plus noise of 1e-4) gave predictions of 1e28. Such a column carries rounding
noise, not signal, so it is treated as constant:

* **constant**: ``std == 0``, or ``std <= 16 eps |mean|`` with ``eps`` the machine epsilon of the
  input's dtype (no variation beyond the rounding of its own values, as scikit-learn's
  ``StandardScaler`` decides);
* **near-constant**: ``std`` below :data:`NEAR_CONSTANT_RTOL` times the median ``std`` of the
  table's other columns (MiniLM's dead dimensions sit at 1e-32 and 1.4e-7 of the median).

Both get a scale of 1, and a model with an intercept drops them (weight 0: a new input's value there
changes nothing), as scikit-learn's ``StandardScaler`` and ``Ridge`` do for constant features. Real
feature columns sit far above the threshold (measured on this project's tables: the smallest ``std``
over the median is 0.23 for CLIP, 0.27 for motion energy, 0.45 for MiniLM's live dimensions).

Functions take and return numpy arrays; the torch solvers call them on their ``(p,)`` statistics.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEAR_CONSTANT_RTOL", "CONSTANT_EPS_MULT", "robust_scale", "input_eps", "unstable_scales"]

#: A column varying less than this fraction of the table's median column std is near-constant.
NEAR_CONSTANT_RTOL = 1e-4
#: A column whose std is within this many machine epsilons of its mean's magnitude is constant.
CONSTANT_EPS_MULT = 16.0


def input_eps(x) -> float:
    """Machine epsilon of the dtype of ``x`` (a numpy array or torch tensor); float64's for integers."""
    dtype = getattr(x, "dtype", None)
    try:
        if dtype is not None and type(dtype).__module__ == "torch":
            import torch

            return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(np.finfo(np.float64).eps)
        dt = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
    except TypeError:
        return float(np.finfo(np.float64).eps)
    return float(np.finfo(dt).eps) if np.issubdtype(dt, np.floating) else float(np.finfo(np.float64).eps)


def robust_scale(std, mean, eps: float, standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Feature scales, and the mask of constant (or near-constant) columns.

    Parameters
    ----------
    std, mean : arrays of shape (n_features,)
        The columns' standard deviation and mean over the training rows (``mean`` of the raw values:
        it measures the column's magnitude).
    eps : float
        Machine epsilon of the input's dtype (:func:`input_eps`).
    standardize : bool
        False: every scale is 1 (only the constant mask is computed).

    Returns
    -------
    scale : ndarray of shape (n_features,), float64
        The std; 1 for constant and near-constant columns (and everywhere without ``standardize``).
    const : ndarray of shape (n_features,), bool
        Constant and near-constant columns (see the module docstring): a model with an intercept drops them.
    """
    std = np.asarray(std, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    const = ~(std > CONSTANT_EPS_MULT * eps * np.abs(mean))  # (NaN std counts as constant too)
    varying = std[~const]
    if varying.size:
        const |= std < NEAR_CONSTANT_RTOL * float(np.median(varying))
    scale = np.where(const | (not standardize), 1.0, std)
    return scale, const


def unstable_scales(scale, tol: float = 0.5) -> np.ndarray:
    """Indices of saved scales of near-constant columns (below ``tol`` times :data:`NEAR_CONSTANT_RTOL` times
    the median of the scales other than 1).

    A model fitted with :func:`robust_scale` has none (those columns got a scale of 1). A model registered
    before this rule may have some, and then amplifies new inputs by ``median / scale`` (1e30 for MiniLM's
    dead dimensions).
    """
    scale = np.asarray(scale, dtype=np.float64).ravel()
    varying = scale[scale != 1.0]  # scales of exactly 1: constant columns, or no standardization
    if varying.size == 0:
        return np.zeros(0, dtype=np.int64)
    med = float(np.median(varying))
    return np.nonzero(~(scale >= tol * NEAR_CONSTANT_RTOL * med))[0]

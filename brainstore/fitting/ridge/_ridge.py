"""Scikit-learn estimators around the ridge solvers: :class:`RidgeCVEncoder` (:func:`~._solvers.solve_ridge_cv`)
and its subclass :class:`BandedRidgeCVEncoder` (:func:`~._banded.solve_banded_ridge_cv`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .._errors import check_finite_output
from ._banded import Band, _band_index, _band_out, predict_banded_split, solve_banded_ridge_cv
from ._estimator import EncoderBase, resolve_device
from ._problem import SCORES
from ._solvers import RIDGE_SOLVERS, predict_ridge, solve_ridge_cv

__all__ = ["RidgeCVEncoder", "BandedRidgeCVEncoder", "DEFAULT_ALPHAS"]

#: Default alpha grid, ``np.logspace(0, 6, 10)`` as a tuple (arrays as
#: defaults break scikit-learn's estimator repr).
DEFAULT_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 6, 10).tolist())

#: Fitted attributes saved by :meth:`RidgeCVEncoder.state_dict`.
_STATE_KEYS = ("coef_", "intercept_", "alpha_", "cv_scores_", "best_scores_",
               "x_mean_", "x_scale_", "alphas_")


class RidgeCVEncoder(EncoderBase):
    """Voxelwise ridge encoding model with one alpha per target, chosen by K-fold CV.

    Features are standardized inside each training fold (and on all samples
    for the final fit), alphas are scored by mean validation Pearson r (or
    R^2) over contiguous folds, and each target is refit with its best alpha.

    Parameters
    ----------
    alphas : array of shape (n_alphas,)
        Positive regularization strengths searched for every target.
    n_folds : int
        Number of contiguous K-fold splits.
    scoring : {"pearson", "r2"}
        Validation score used to select alphas. (Named ``scoring`` as in
        scikit-learn because ``score`` is the evaluation method.)
    device : {"auto", "cpu", "cuda", ...}
        Compute device; "auto" uses CUDA when available.
    dtype : {"float32", "float64"}
        Working precision.
    target_batch_size : int or None
        Targets solved together (None: automatic, from memory).
    standardize : bool
        Z-score features with training statistics.
    fit_intercept : bool
        Center features and targets (fit an intercept).
    solver : {"eigh", "svd"}
        Decomposition used per fold, see ``RIDGE_SOLVERS``.
    alpha_per_target : bool
        True: one alpha per target. False: one alpha for all targets (the
        best mean CV score over targets), as decoders into an embedding use.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_targets)
        Weights on standardized features (himalaya layout, not sklearn's
        (n_targets, n_features)).
    intercept_ : ndarray of shape (n_targets,)
    alpha_ : ndarray of shape (n_targets,)
        Selected alpha of each target.
    cv_scores_ : ndarray of shape (n_alphas, n_targets)
        Validation scores averaged over folds.
    best_scores_ : ndarray of shape (n_targets,)
        ``cv_scores_`` at the selected alphas.
    x_mean_, x_scale_ : ndarrays of shape (n_features,)
        Feature standardization; predictions are
        ``((X - x_mean_) / x_scale_) @ coef_ + intercept_``.
    alphas_ : ndarray of shape (n_alphas,)
        The grid that was searched.
    n_features_in_ : int
    """

    #: Fitted attributes saved by :meth:`state_dict` (subclasses name their own).
    _STATE_KEYS: tuple[str, ...] = _STATE_KEYS

    def __init__(self, alphas: Any = DEFAULT_ALPHAS, n_folds: int = 5,
                 scoring: str = "pearson", device: str = "auto",
                 dtype: str = "float32", target_batch_size: int | None = None,
                 standardize: bool = True, fit_intercept: bool = True,
                 solver: str = "eigh", alpha_per_target: bool = True):
        self.alphas = alphas
        self.n_folds = n_folds
        self.scoring = scoring
        self.device = device
        self.dtype = dtype
        self.target_batch_size = target_batch_size
        self.standardize = standardize
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.alpha_per_target = alpha_per_target

    def fit(self, X: np.ndarray, Y: np.ndarray, folds=None) -> "RidgeCVEncoder":
        """Select per-target alphas by cross-validation and refit.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        Y : array of shape (n_samples, n_targets) or (n_samples,)
            Memory maps stay on disk: targets are copied one batch at a time.
        folds : list of (train, val) index arrays, optional
            Explicit CV splits (default: ``n_folds`` contiguous folds).

        Returns
        -------
        self : RidgeCVEncoder
        """
        if self.scoring not in SCORES:
            raise ValueError(f"scoring must be one of {SCORES}, got "
                             f"{self.scoring!r}.")
        if self.solver not in RIDGE_SOLVERS:
            raise ValueError(f"solver must be one of {sorted(RIDGE_SOLVERS)}, "
                             f"got {self.solver!r}.")
        X = np.asarray(X)
        Y = np.asarray(Y)
        self._y_1d = Y.ndim == 1
        res = solve_ridge_cv(
            X, Y[:, None] if self._y_1d else Y, self.alphas, self.n_folds,
            folds=folds, solver=self.solver, score=self.scoring,
            device=resolve_device(self.device), dtype=self.dtype,
            target_batch_size=self.target_batch_size,
            standardize=self.standardize, fit_intercept=self.fit_intercept,
            alpha_per_target=self.alpha_per_target)
        self.coef_ = res.coef.numpy()
        self.intercept_ = res.intercept.numpy()
        self.alpha_ = res.alphas.numpy()
        self.cv_scores_ = res.cv_scores.numpy()
        self.best_scores_ = res.best_scores.numpy()
        self.x_mean_ = res.x_mean.numpy()
        self.x_scale_ = res.x_scale.numpy()
        self.alphas_ = res.alpha_grid.numpy()
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict targets.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        Y_pred : ndarray of shape (n_samples, n_targets), or (n_samples,)
            when fit on a 1-D ``Y``.
        """
        Y = predict_ridge(self._check_X(X), torch.from_numpy(self.coef_), self.intercept_,
                          self.x_mean_, self.x_scale_,
                          device=resolve_device(self.device),
                          target_batch_size=self.target_batch_size).numpy()
        check_finite_output(Y, model=type(self).__name__, field="X")
        return self._as_fitted(Y)

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        """``X`` as an array of shape (n_samples, n_features_in_), once fitted."""
        if not hasattr(self, "coef_"):  # (sklearn's check_is_fitted reads the estimator's tags: ~20 us a call)
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n_samples, "
                             f"{self.n_features_in_}), got {X.shape}.")
        if X.dtype.kind not in "biuf":
            raise ValueError(f"X must be numeric, got dtype {X.dtype}")
        finite = np.isfinite(X).all(1)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise ValueError(f"X has NaN or inf values in {len(rows)} row(s) (first: {rows[:5].tolist()}); "
                             "send finite features")
        return X

    def state_dict(self) -> dict[str, np.ndarray]:
        """Fitted arrays by name (numpy), e.g. for ``safetensors.numpy.save_file``.

        Hyper-parameters are not included; keep them with ``get_params()``.
        """
        check_is_fitted(self, "coef_")
        out = {k: np.ascontiguousarray(getattr(self, k)) for k in self._STATE_KEYS}
        out["y_1d"] = self._y_1d_state()
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray],
                        **params: Any) -> "RidgeCVEncoder":
        """Rebuild a fitted encoder from :meth:`state_dict` output.

        Parameters
        ----------
        state : dict of str to array
            As returned by :meth:`state_dict` (numpy or torch arrays).
        **params
            Constructor hyper-parameters (e.g. ``device="cpu"``).

        Returns
        -------
        encoder : an instance of this class
        """
        missing = [k for k in cls._STATE_KEYS if k not in state]
        if missing:
            raise KeyError(f"state is missing {missing}.")
        est = cls(**params)
        for k in cls._STATE_KEYS:
            setattr(est, k, np.asarray(state[k]))
        est.n_features_in_ = est.coef_.shape[0]
        est._y_1d = cls._read_y_1d(state)
        return est


#: Fitted attributes saved by :meth:`BandedRidgeCVEncoder.state_dict`.
_BANDED_STATE_KEYS = ("coef_", "intercept_", "alpha_", "gamma_", "band_alphas_",
               "best_scores_", "candidate_scores_", "candidates_", "x_mean_",
               "x_scale_", "alphas_", "band_labels_")


def _band_labels(bands: Sequence[Band], n_features: int) -> np.ndarray:
    """Band number of each feature, int64 of shape (n_features,)."""
    labels = np.empty(n_features, dtype=np.int64)
    for k, band in enumerate(bands):
        labels[_band_index(band)] = k
    return labels


class BandedRidgeCVEncoder(RidgeCVEncoder):
    """Voxelwise banded ridge encoding model: per target, a band weighting and an alpha by K-fold CV.

    Thin wrapper of :func:`solve_banded_ridge_cv`; prediction, scoring and
    ``state_dict`` / ``from_state_dict`` are :class:`RidgeCVEncoder`'s.

    Parameters
    ----------
    bands : list or None
        Band sizes (``[512, 384]``), or slices / index arrays, covering the
        columns of ``X``; None: one band (plain ridge).
    alphas : array of shape (n_alphas,)
        Positive regularization strengths.
    gammas : array of shape (n_candidates, n_bands), int or None
        Candidate band weightings (rows on the simplex), or a number of
        default candidates (None: 5 for 2 bands, ``4 * n_bands + 1`` for
        more); see :func:`banded_candidates`.
    n_folds : int
        Number of contiguous K-fold splits.
    scoring : {"pearson", "r2"}
        Validation score used to select the hyperparameters.
    device : {"auto", "cpu", "cuda", ...}
    dtype : {"float32", "float64"}
    target_batch_size : int or None
    standardize : bool
    fit_intercept : bool

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_targets)
        Weights on standardized features.
    intercept_ : ndarray of shape (n_targets,)
    alpha_ : ndarray of shape (n_targets,)
        Chosen alpha of each target.
    gamma_ : ndarray of shape (n_targets, n_bands)
        Chosen band weighting of each target.
    band_alphas_ : ndarray of shape (n_targets, n_bands)
        ``alpha_ / gamma_`` (inf where gamma is 0).
    best_scores_ : ndarray of shape (n_targets,)
    candidate_scores_ : ndarray of shape (n_candidates, n_targets)
    candidates_ : ndarray of shape (n_candidates, n_bands)
    x_mean_, x_scale_ : ndarrays of shape (n_features,)
    alphas_ : ndarray of shape (n_alphas,)
    band_labels_ : ndarray of shape (n_features,), int64
        Band of each feature.
    n_features_in_ : int
    """

    _STATE_KEYS = _BANDED_STATE_KEYS

    def __init__(self, bands: Any = None, alphas: Any = DEFAULT_ALPHAS,
                 gammas: Any = None, n_folds: int = 5, scoring: str = "pearson",
                 device: str = "auto", dtype: str = "float32",
                 target_batch_size: int | None = None, standardize: bool = True,
                 fit_intercept: bool = True):
        self.bands = bands
        self.alphas = alphas
        self.gammas = gammas
        self.n_folds = n_folds
        self.scoring = scoring
        self.device = device
        self.dtype = dtype
        self.target_batch_size = target_batch_size
        self.standardize = standardize
        self.fit_intercept = fit_intercept

    def fit(self, X: np.ndarray, Y: np.ndarray, folds=None) -> "BandedRidgeCVEncoder":
        """Select per-target band weightings and alphas by cross-validation, then refit.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        Y : array of shape (n_samples, n_targets) or (n_samples,)
        folds : list of (train, val) index arrays, optional

        Returns
        -------
        self : BandedRidgeCVEncoder
        """
        if self.scoring not in SCORES:
            raise ValueError(f"scoring must be one of {SCORES}, got {self.scoring!r}.")
        X, Y = np.asarray(X), np.asarray(Y)
        self._y_1d = Y.ndim == 1
        bands = [X.shape[1]] if self.bands is None else list(self.bands)
        gammas = self.gammas if self.gammas is None or isinstance(
            self.gammas, (int, np.integer)) else np.asarray(self.gammas, dtype=np.float64)
        res = solve_banded_ridge_cv(
            X, Y[:, None] if self._y_1d else Y, bands, self.alphas, gammas,
            self.n_folds, folds=folds, score=self.scoring,
            device=resolve_device(self.device), dtype=self.dtype,
            target_batch_size=self.target_batch_size,
            standardize=self.standardize, fit_intercept=self.fit_intercept)
        for key, value in (("coef_", res.coef), ("intercept_", res.intercept),
                           ("alpha_", res.alphas), ("gamma_", res.gammas),
                           ("band_alphas_", res.band_alphas),
                           ("best_scores_", res.best_scores),
                           ("candidate_scores_", res.candidate_scores),
                           ("candidates_", res.candidates), ("x_mean_", res.x_mean),
                           ("x_scale_", res.x_scale), ("alphas_", res.alpha_grid)):
            setattr(self, key, value.numpy())
        self.band_labels_ = _band_labels(res.bands, X.shape[1])
        self.n_features_in_ = X.shape[1]
        return self

    def _bands(self) -> list[Band]:
        """Columns of each band, from ``band_labels_``."""
        return [_band_out(np.flatnonzero(self.band_labels_ == k))
                for k in range(int(self.band_labels_.max()) + 1)]

    def predict_split(self, X: np.ndarray) -> np.ndarray:
        """Per-band contributions; their sum over bands plus ``intercept_`` is :meth:`predict`.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        Y_split : ndarray of shape (n_bands, n_samples, n_targets), or
            (n_bands, n_samples) when fit on a 1-D ``Y``.
        """
        Y = predict_banded_split(self._check_X(X), torch.from_numpy(self.coef_),
                                 self.x_mean_, self.x_scale_, self._bands(),
                                 device=resolve_device(self.device)).numpy()
        check_finite_output(Y.sum(0), model=type(self).__name__, field="X")
        return self._as_fitted(Y)

"""What every encoding estimator shares (:class:`~._ridge.RidgeCVEncoder`, its subclass
:class:`~._banded.BandedRidgeCVEncoder`, :class:`~._mlp.MLPEncoder`): scikit-learn's estimator API
(``get_params`` / ``set_params`` / ``clone``), ``score`` as the mean Pearson r over targets (not R^2),
predictions of a model fitted on a 1-D ``Y`` in 1-D (recorded as ``y_1d`` in its state), and the
compute device ("auto": CUDA when available)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from ...scoring import pearson_r

__all__ = ["EncoderBase", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class EncoderBase(RegressorMixin, BaseEstimator):
    """Base class of the encoding estimators: ``score`` by correlation, 1-D targets kept 1-D."""

    def score(self, X: np.ndarray, Y: np.ndarray) -> float:
        """Mean over targets of the Pearson correlation between predictions and ``Y``.

        This overrides ``RegressorMixin.score`` (R^2): encoding models are
        conventionally evaluated by correlation. A target that is constant in
        ``Y`` or predicted as a constant counts as r = 0.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        Y : array of shape (n_samples, n_targets) or (n_samples,)

        Returns
        -------
        score : float
        """
        P = self.predict(X).reshape(len(X), -1)
        return float(pearson_r(P, self._score_targets(Y, P)).mean())

    def _score_targets(self, Y: np.ndarray, P: np.ndarray) -> np.ndarray:
        """``Y`` as float64 with one column per target of the predictions ``P``."""
        return np.asarray(Y, dtype=np.float64).reshape(len(P), -1)

    def _as_fitted(self, Y: np.ndarray) -> np.ndarray:
        """Predictions ``(..., n_targets)`` as the model was fitted: the last axis dropped for a 1-D ``Y``."""
        return Y[..., 0] if getattr(self, "_y_1d", False) else Y

    def _y_1d_state(self) -> np.ndarray:
        """The ``y_1d`` entry of a state dict."""
        return np.asarray([int(getattr(self, "_y_1d", False))], dtype=np.int64)

    @staticmethod
    def _read_y_1d(state: dict) -> bool:
        """Whether a state dict's model was fitted on a 1-D ``Y`` (states without the entry: no)."""
        return bool(np.asarray(state.get("y_1d", [0])).reshape(-1)[0])

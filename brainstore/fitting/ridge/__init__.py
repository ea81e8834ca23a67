"""brainstore.fitting.ridge: the solvers and estimators of encoding models.

Cross-validated ridge (:func:`solve_ridge_cv`, one alpha per target), banded ridge
(:func:`solve_banded_ridge_cv`, a weighting of the feature spaces per target) and their thin
scikit-learn estimators (:class:`RidgeCVEncoder`, :class:`BandedRidgeCVEncoder`, :class:`MLPEncoder`).
The solvers and estimators need torch and are imported on first use (PEP 562); the feature-scale rule
(``_scaling``) and the band-weighting candidates (``_candidates``) are numpy only, so spec checks and
fit drivers use them without torch.
"""

from ..._lazy import lazy_names

from ._candidates import banded_candidates, check_gammas, default_n_candidates
from ._scaling import CONSTANT_EPS_MULT, NEAR_CONSTANT_RTOL, input_eps, robust_scale, unstable_scales

#: Public names whose modules import torch: loaded on first access.
_LAZY = {
    "RIDGE_SOLVERS": "._solvers", "RidgeCVResult": "._solvers", "kfold_indices": "._solvers",
    "predict_ridge": "._solvers", "solve_ridge_cv": "._solvers", "solve_ridge_cv_eigh": "._solvers",
    "solve_ridge_cv_svd": "._solvers",
    "RidgeCVEncoder": "._ridge", "DEFAULT_ALPHAS": "._ridge", "MLPEncoder": "._mlp",
    "solve_banded_ridge_cv": "._banded", "BandedRidgeCVResult": "._banded", "BandedRidgeCVEncoder": "._ridge",
    "predict_banded_split": "._banded",
}

__all__ = [
    # solvers (torch)
    "solve_ridge_cv", "solve_ridge_cv_eigh", "solve_ridge_cv_svd", "RIDGE_SOLVERS", "RidgeCVResult", "predict_ridge",
    "kfold_indices", "solve_banded_ridge_cv", "BandedRidgeCVResult", "predict_banded_split",
    # estimators (torch)
    "RidgeCVEncoder", "BandedRidgeCVEncoder", "MLPEncoder", "DEFAULT_ALPHAS",
    # numpy only
    "banded_candidates", "default_n_candidates", "check_gammas",
    "robust_scale", "input_eps", "unstable_scales", "NEAR_CONSTANT_RTOL", "CONSTANT_EPS_MULT",
]


__getattr__ = lazy_names(__name__, _LAZY, globals())

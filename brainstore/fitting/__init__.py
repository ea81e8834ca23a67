"""brainstore.fitting: encoding models (ridge, MLP, per-ROI, ensembles), evaluation, registry.

Scoring functions are re-exported from :mod:`brainstore.scoring`.
"""

from ..scoring import (
    nnmc,
    noise_ceiling_from_ncsnr,
    noise_normalized_score,
    pearson_r,
    retrieval_accuracy,
    roi_summary,
)
from ._encoding import BaseFit, design_matrix, fit_base, oof_ridge_predictions, subject_stimuli
from ._evaluate import score_submission, score_subject
from ._mlp import MLPEncoder
from ._registry import ModelRecord, ModelRegistry, RegistryError, safe_name
from ._report import comparison_rows, evaluate_registered, write_predictions, write_report
from ._ridge import RidgeCVEncoder
from ._run import FitRun, best_model, covering_features, default_spec, fit_encoding_models, predict_model
from ._solvers import (
    RIDGE_SOLVERS,
    RidgeCVResult,
    kfold_indices,
    predict_ridge,
    solve_ridge_cv,
    solve_ridge_cv_eigh,
    solve_ridge_cv_svd,
)
from ._spec import EnsembleSpec, FitSpec, ModelSpec, PerRoiSpec, SpecError, load_spec

__all__ = [
    # scoring
    "pearson_r", "noise_normalized_score", "nnmc", "roi_summary", "noise_ceiling_from_ncsnr",
    "retrieval_accuracy", "score_subject", "score_submission",
    # ridge solvers and estimators
    "solve_ridge_cv", "solve_ridge_cv_eigh", "solve_ridge_cv_svd", "RIDGE_SOLVERS", "RidgeCVResult",
    "predict_ridge", "kfold_indices", "RidgeCVEncoder", "MLPEncoder",
    # encoding models
    "FitSpec", "ModelSpec", "PerRoiSpec", "EnsembleSpec", "SpecError", "load_spec", "default_spec",
    "fit_encoding_models", "FitRun", "fit_base", "BaseFit", "design_matrix", "subject_stimuli",
    "oof_ridge_predictions", "covering_features", "predict_model", "best_model",
    # registry and reports
    "ModelRegistry", "ModelRecord", "RegistryError", "safe_name",
    "comparison_rows", "write_report", "write_predictions", "evaluate_registered",
]

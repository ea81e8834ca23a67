"""brainstore.fitting.encoding: encoding models from feature tables to responses.

The Ray fan-out of base fits (:func:`fit_encoding_models`: one task per subject x hemisphere x model,
then one assembly task per subject), the base fit itself (design matrix, folds, estimator by
method), the choice on held-out data, the composition of per-ROI models and ensembles, the test
scores recorded at fit time, and the registered model that predicts (:class:`EncodingModel`).
"""

from ._assemble import assemble_subject, per_roi_members
from ._choice import (choose_per_region, cross_fitted_choices, resolve_regions, rule_choice, validation_halves,
                      validation_r)
from ._compose import compose, normalized_weights
from ._encoding import (design_matrix, fit_base, group_folds, limit_threads, load_estimator, make_estimator,
                        subject_stimuli, validation_folds)
from ._insilico import PREDICTED_KIND, InSilicoRun, predict_to_table
from ._predict import BASE_KINDS, EncodingModel, best_model, predict_model
from ._run import (FitRun, check_responses, covering_features, default_spec, fit_encoding_models, plan_fit_cpus,
                   task_error_text)
from ._scores import pooled_roi_summary, pooled_split_scores, pooled_test_scores, score_test_split

__all__ = [
    # the fan-out and the base fit
    "fit_encoding_models", "FitRun", "default_spec", "covering_features", "check_responses", "plan_fit_cpus",
    "task_error_text", "fit_base", "design_matrix", "subject_stimuli", "validation_folds", "group_folds",
    "make_estimator", "load_estimator", "limit_threads",
    # choice, composition, assembly
    "validation_r", "validation_halves", "choose_per_region", "cross_fitted_choices", "rule_choice",
    "resolve_regions", "compose", "normalized_weights", "assemble_subject", "per_roi_members",
    # scores
    "score_test_split", "pooled_roi_summary", "pooled_test_scores", "pooled_split_scores",
    # registered models
    "EncodingModel", "predict_model", "best_model", "BASE_KINDS",
    # in-silico experiments: many stimuli through a model into a store table
    "predict_to_table", "InSilicoRun", "PREDICTED_KIND",
]

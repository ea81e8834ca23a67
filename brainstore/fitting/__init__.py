"""brainstore.fitting: encoding models (ridge, banded ridge, MLP, per-ROI, ensembles), decoders, evaluation, registry.

Scoring functions are re-exported from :mod:`brainstore.scoring`. The solvers and estimators
need torch; they are imported on first use (``from brainstore.fitting import solve_ridge_cv``),
so ``import brainstore.fitting`` itself does not import torch.
"""

import importlib

from ..scoring import (
    nnmc,
    noise_ceiling_from_ncsnr,
    noise_normalized_score,
    pearson_r,
    retrieval_metrics,
    roi_summary,
)
from ._adaptor import ADAPTOR_KIND, AdaptorModel, AdaptorRun, fit_adaptor
from ._fit import FitResult, as_fit_spec, fit
from ._fit_decoder import add_store_retrieval, check_decoder_specs, fit_decoder
from ._captioner import Captioner, make_tiny_lm, train_captioner
from ._choice import validation_r
from ._compose import compose
from ._decoding import (DECODER_KIND, DecodeRun, Decoder, check_decoding_inputs, decode_subject, decoder_name,
                        decoder_records, decoding_models, evaluate_decoders, fit_decoders, response_matrix,
                        retrieved_captions, select_voxels, store_top_k)
from ._explain import ExplainedStimulus, Explanation, explain_roi, write_contact_sheet
from ._errors import NonFiniteOutputError, check_finite_output
from ._encoding import design_matrix, fit_base, subject_stimuli, validation_folds
from ._evaluate import mean_noise_ceiling, pooled_roi_summary, score_submission, score_subject
from ._evaluation import Evaluation, evaluate
from ._submission import DecodedSubject, check_encoder_name, decode_test, predict
from ._html import write_html_report
from ._predict import EncodingModel, best_model, predict_model
from ._registry import NON_ENCODER_KINDS, ModelRecord, ModelRegistry, RegistryError, safe_name
from ._report import (comparison_rows, evaluate_registered, report_families, row_families, split_rows,
                      write_decoding_plot, write_predictions, write_report, write_split_plot)
from ._run import FitRun, covering_features, default_spec, fit_encoding_models
from ._runfiles import run_dir
from ._spec import AdaptorParams, BandedParams, DecoderSpec, EnsembleSpec, FitSpec, MLPParams, ModelSpec, PerRoiSpec, SpecError, load_spec

#: Public names whose modules import torch: loaded on first access (PEP 562).
_LAZY = {
    "RIDGE_SOLVERS": "._solvers", "RidgeCVResult": "._solvers", "kfold_indices": "._solvers",
    "predict_ridge": "._solvers", "solve_ridge_cv": "._solvers", "solve_ridge_cv_eigh": "._solvers",
    "solve_ridge_cv_svd": "._solvers",
    "RidgeCVEncoder": "._ridge", "MLPEncoder": "._mlp",
    "solve_banded_ridge_cv": "._banded", "BandedRidgeCVResult": "._banded", "BandedRidgeCVEncoder": "._banded",
    "banded_candidates": "._banded", "predict_banded_split": "._banded",
}

__all__ = [
    # scoring
    "pearson_r", "noise_normalized_score", "nnmc", "roi_summary", "noise_ceiling_from_ncsnr",
    "retrieval_metrics", "score_subject", "score_submission", "validation_r", "pooled_roi_summary",
    # ridge and banded ridge solvers and estimators (lazy: torch)
    "solve_ridge_cv", "solve_ridge_cv_eigh", "solve_ridge_cv_svd", "RIDGE_SOLVERS", "RidgeCVResult",
    "predict_ridge", "kfold_indices", "RidgeCVEncoder", "MLPEncoder",
    "solve_banded_ridge_cv", "BandedRidgeCVResult", "BandedRidgeCVEncoder", "banded_candidates", "predict_banded_split",
    # encoding models
    "FitSpec", "ModelSpec", "PerRoiSpec", "EnsembleSpec", "MLPParams", "BandedParams", "SpecError", "load_spec",
    "fit", "FitResult", "as_fit_spec", "default_spec", "fit_encoding_models", "FitRun", "fit_base", "design_matrix", "subject_stimuli",
    "validation_folds", "covering_features", "compose",
    # registered models
    "EncodingModel", "predict_model", "NonFiniteOutputError", "check_finite_output", "best_model", "ModelRegistry", "ModelRecord", "RegistryError", "safe_name",
    "NON_ENCODER_KINDS",
    # decoders
    "fit_decoder", "add_store_retrieval", "check_decoder_specs",
    "fit_decoders", "evaluate_decoders", "Decoder", "DecodeRun", "select_voxels", "DECODER_KIND", "DecoderSpec",
    "check_decoding_inputs", "response_matrix", "decoder_name", "decoder_records", "decoding_models", "decode_subject",
    "store_top_k", "retrieved_captions",
    # adaptors (one network, an adapter per subject; Ray Train)
    "fit_adaptor", "AdaptorModel", "AdaptorRun", "ADAPTOR_KIND", "AdaptorParams",
    # caption generation (prefix of a frozen causal LM)
    "train_captioner", "Captioner", "make_tiny_lm",
    # selectivity
    "explain_roi", "write_contact_sheet", "Explanation", "ExplainedStimulus",
    # reports
    "evaluate", "Evaluation", "write_html_report", "mean_noise_ceiling", "predict", "decode_test", "DecodedSubject",
    "check_encoder_name",
    "comparison_rows", "write_report", "write_predictions", "evaluate_registered", "run_dir",
    "report_families", "row_families", "split_rows", "write_split_plot", "write_decoding_plot",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

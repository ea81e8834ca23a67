"""brainstore.fitting: encoding models (ridge, banded ridge, MLP, per-ROI, ensembles), decoders, evaluation, registry.

Scoring functions are re-exported from :mod:`brainstore.scoring`. The solvers and estimators
need torch; they are imported on first use (``from brainstore.fitting import solve_ridge_cv``),
so ``import brainstore.fitting`` itself does not import torch.
"""

from .._lazy import lazy_names

from ..scoring import (
    nnmc,
    noise_ceiling_from_ncsnr,
    noise_normalized_score,
    pearson_r,
    retrieval_metrics,
    roi_summary,
)
from ._errors import NonFiniteOutputError, check_finite_output
from ._fit import FitResult, as_fit_spec, fit
from ._spec import (SEARCH_SPACE, AdaptorParams, BandedParams, DecoderSpec, EnsembleSpec, FitSpec, MLPParams, ModelSpec,
                    PerRoiSpec, SearchParams, SpecError, load_spec)
from .decoding import (ADAPTOR_KIND, DECODER_KIND, AdaptorModel, AdaptorRun, Captioner, DecodeRun, Decoder,
                       add_store_retrieval, check_decoder_specs, check_decoding_inputs, decode_subject, decoder_name,
                       decoder_records, decoding_models, evaluate_decoders, fit_adaptor, fit_decoder, fit_decoders,
                       make_tiny_lm, response_matrix, retrieved_captions, select_voxels, store_top_k, train_captioner)
from .encoding import (EncodingModel, FitRun, best_model, compose, covering_features, default_spec, design_matrix,
                       fit_base, fit_encoding_models, pooled_roi_summary, predict_model, predict_to_table,
                       score_test_split,
                       subject_stimuli, validation_folds, validation_r)
from .registry import (NON_ENCODER_KINDS, GcReport, ModelRecord, ModelRegistry, RegistryError, collect_garbage,
                       model_base, model_ref, parse_ref, run_dir, safe_name)
from .reports import (CortexMaps, DecodedSubject, Evaluation, ExplainedStimulus, Explanation, Lineage,
                      LineageLink, check_encoder_name, comparison_rows, decode_test, evaluate, evaluate_registered,
                      explain_roi, lineage, mean_noise_ceiling,
                      predict, read_cortex_maps, report_families, row_families, score_submission, score_subject,
                      split_rows, write_contact_sheet, write_cortex_maps, write_decoding_plot, write_html_report,
                      write_predictions, write_report, write_split_plot)

#: Public names whose modules import torch: loaded on first access (PEP 562) from :mod:`.ridge`.
_LAZY = {name: ".ridge" for name in (
    "RIDGE_SOLVERS", "RidgeCVResult", "kfold_indices", "predict_ridge", "solve_ridge_cv", "solve_ridge_cv_eigh",
    "solve_ridge_cv_svd", "RidgeCVEncoder", "MLPEncoder", "solve_banded_ridge_cv", "BandedRidgeCVResult",
    "BandedRidgeCVEncoder", "banded_candidates", "predict_banded_split")}

__all__ = [
    # scoring
    "pearson_r", "noise_normalized_score", "nnmc", "roi_summary", "noise_ceiling_from_ncsnr",
    "retrieval_metrics", "score_subject", "score_submission", "score_test_split", "validation_r", "pooled_roi_summary",
    # ridge and banded ridge solvers and estimators (lazy: torch)
    "solve_ridge_cv", "solve_ridge_cv_eigh", "solve_ridge_cv_svd", "RIDGE_SOLVERS", "RidgeCVResult",
    "predict_ridge", "kfold_indices", "RidgeCVEncoder", "MLPEncoder",
    "solve_banded_ridge_cv", "BandedRidgeCVResult", "BandedRidgeCVEncoder", "banded_candidates", "predict_banded_split",
    # encoding models
    "FitSpec", "ModelSpec", "PerRoiSpec", "EnsembleSpec", "MLPParams", "BandedParams", "SpecError", "load_spec",
    "fit", "FitResult", "as_fit_spec", "default_spec", "fit_encoding_models", "FitRun", "fit_base", "design_matrix", "subject_stimuli",
    "validation_folds", "covering_features", "compose",
    # registered models
    "EncodingModel", "predict_model", "predict_to_table", "NonFiniteOutputError", "check_finite_output", "best_model", "ModelRegistry", "ModelRecord", "RegistryError", "safe_name",
    "collect_garbage", "GcReport", "model_base", "model_ref", "parse_ref",
    "NON_ENCODER_KINDS",
    # decoders
    "fit_decoder", "add_store_retrieval", "check_decoder_specs",
    "fit_decoders", "evaluate_decoders", "Decoder", "DecodeRun", "select_voxels", "DECODER_KIND", "DecoderSpec",
    "check_decoding_inputs", "response_matrix", "decoder_name", "decoder_records", "decoding_models", "decode_subject",
    "store_top_k", "retrieved_captions",
    # adaptors (one network, an adapter per subject; Ray Train)
    "fit_adaptor", "AdaptorModel", "AdaptorRun", "ADAPTOR_KIND", "AdaptorParams", "SearchParams", "SEARCH_SPACE",
    # caption generation (prefix of a frozen causal LM)
    "train_captioner", "Captioner", "make_tiny_lm",
    # selectivity
    "explain_roi", "write_contact_sheet", "Explanation", "ExplainedStimulus",
    # reports
    "evaluate", "Evaluation", "write_html_report", "write_cortex_maps", "read_cortex_maps", "CortexMaps",
    "mean_noise_ceiling", "predict", "decode_test", "DecodedSubject",
    "check_encoder_name",
    "comparison_rows", "write_report", "write_predictions", "evaluate_registered", "run_dir",
    "report_families", "row_families", "split_rows", "write_split_plot", "write_decoding_plot",
    # lineage: dataset -> feature table version -> fit -> model version -> aliases -> services
    "lineage", "Lineage", "LineageLink",
]


__getattr__ = lazy_names(__name__, _LAZY, globals())

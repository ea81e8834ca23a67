"""brainstore.fitting.reports: what is made of registered models after fitting.

Scores of submissions (:func:`score_submission`), comparison tables and plots (:func:`write_report`),
:func:`evaluate` (every registered model of a dataset: metrics, tables, plots, the HTML report),
:func:`predict` / :func:`decode_test` (submission files, decoded test embeddings), the maps on the cortex
(:func:`write_cortex_maps`, :class:`CortexMaps`, :func:`read_cortex_maps`), the HTML report, ROI selectivity
(:func:`explain_roi`) and the lineage of a model version (:func:`lineage`: dataset -> features -> fit -> version ->
aliases -> services).
"""

from ._evaluate import mean_noise_ceiling, score_subject, score_submission
from ._evaluation import Evaluation, evaluate
from ._explain import ExplainedStimulus, Explanation, explain_roi, sheet_size, write_contact_sheet
from ._html import write_html_report
from ._lineage import Lineage, LineageLink, lineage
from ._maps import CortexMaps, read_cortex_maps, write_cortex_maps
from ._report import (comparison_rows, evaluate_registered, named_rows, report_families, row_families, split_rows,
                      write_decoding_plot, write_predictions, write_report, write_split_plot)
from ._submission import DecodedSubject, check_encoder_name, decode_test, predict

__all__ = [
    "score_subject", "score_submission", "mean_noise_ceiling",
    "comparison_rows", "named_rows", "report_families", "row_families", "split_rows", "write_report",
    "write_predictions", "write_split_plot", "write_decoding_plot", "evaluate_registered",
    "evaluate", "Evaluation", "predict", "decode_test", "DecodedSubject", "check_encoder_name",
    "write_html_report", "write_cortex_maps", "read_cortex_maps", "CortexMaps",
    "explain_roi", "write_contact_sheet", "sheet_size", "Explanation", "ExplainedStimulus",
    "lineage", "Lineage", "LineageLink",
]

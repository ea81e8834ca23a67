"""brainstore.scoring: the scoring contract (Pearson r, Algonauts score, NNMC, retrieval).

A base library with no dependency beyond numpy, shared by ``datasets``, ``fitting`` and
``serving``.
"""

from ._metrics import (
    correlation_split,
    nnmc,
    noise_ceiling_from_ncsnr,
    noise_normalized_score,
    pearson_r,
    r2_split,
    roi_summary,
)
from ._captions import caption_metrics
from ._retrieval import cosine_similarity, retrieval_from_similarity, retrieval_metrics, two_way_identification

__all__ = [
    "pearson_r",
    "correlation_split",
    "r2_split",
    "noise_normalized_score",
    "nnmc",
    "roi_summary",
    "noise_ceiling_from_ncsnr",
    "caption_metrics",
    "cosine_similarity",
    "retrieval_metrics",
    "retrieval_from_similarity",
    "two_way_identification",
]

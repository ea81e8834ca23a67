"""brainstore.fitting: encoding/decoding model fitting, scoring and the model registry."""

from ..scoring import (
    nnmc,
    noise_ceiling_from_ncsnr,
    noise_normalized_score,
    pearson_r,
    retrieval_accuracy,
    roi_summary,
)

__all__ = [
    # scoring
    "pearson_r",
    "noise_normalized_score",
    "nnmc",
    "roi_summary",
    "noise_ceiling_from_ncsnr",
    "retrieval_accuracy",
]

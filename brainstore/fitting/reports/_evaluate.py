"""Scoring of a submission folder (or a subject's predictions) against a dataset's test responses, per
subject, hemisphere and ROI, and the mean noise ceilings the reports show beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...datasets import HEMISPHERES, AlgonautsDataset, DatasetError
from ...scoring import roi_summary
from ..encoding import pooled_roi_summary, score_test_split

__all__ = ["score_subject", "score_submission", "mean_noise_ceiling"]


def score_subject(ds: AlgonautsDataset, subject: str, preds: dict[str, np.ndarray]) -> dict[str, dict]:
    """Score one subject's test predictions.

    Parameters
    ----------
    ds : AlgonautsDataset with test responses and noise ceilings.
    subject : str
    preds : dict hemisphere -> array of shape (n_test_images, n_vertices) (one or both hemispheres)

    Returns
    -------
    dict with, per hemisphere, ``r`` (n_vertices,), ``score`` (n_vertices,) and ``roi`` (per-ROI
    family mean noise-normalized score, with ``all``); and ``roi`` for both hemispheres pooled
    (vertex-weighted, as the challenge averages over all vertices).
    """
    out: dict[str, dict] = {}
    for hemi in (h for h in HEMISPHERES if h in preds):
        t = score_test_split(ds, subject, hemi, preds[hemi])
        out[hemi] = {"r": t["r"], "score": t["score"], "roi": roi_summary(t["score"], ds.roi_masks(subject, hemi))}
    out["both"] = {"roi": pooled_roi_summary(ds, subject, {h: v["score"] for h, v in out.items()})}
    return out


def score_submission(ds: AlgonautsDataset, pred_dir: str | Path) -> dict[str, dict]:
    """Score a folder in the submission layout (``subjNN/{lh,rh}_pred_test.npy``) for every subject."""
    pred_dir = Path(pred_dir)
    out = {}
    for s in ds.subjects:
        preds = {}
        for h in HEMISPHERES:
            f = pred_dir / s / f"{h}_pred_test.npy"
            if not f.exists():
                raise DatasetError(f"missing prediction file {f}; the submission layout is subjNN/{{lh,rh}}_pred_test.npy")
            preds[h] = np.load(f, mmap_mode="r")
        out[s] = score_subject(ds, s, preds)
    return out


def mean_noise_ceiling(ds: AlgonautsDataset, subject: str) -> dict[str, float]:
    """Mean noise ceiling (%) of ``subject`` per ROI family and named ROI, hemispheres pooled (as reports show it)."""
    return pooled_roi_summary(ds, subject, {h: ds.noise_ceiling(subject, h) * 100 for h in HEMISPHERES})

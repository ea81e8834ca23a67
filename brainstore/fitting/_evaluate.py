"""Scoring of predictions against a dataset's test responses, per subject, hemisphere and ROI."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets import HEMISPHERES, AlgonautsDataset, DatasetError
from ..scoring import noise_normalized_score, pearson_r, roi_summary

__all__ = ["score_subject", "score_submission", "pooled_roi_summary"]


def pooled_roi_summary(ds: AlgonautsDataset, subject: str, per_vertex: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-ROI-family means of a per-vertex quantity with the hemispheres pooled (vertex-weighted).

    Parameters
    ----------
    per_vertex : dict hemisphere -> array of shape (n_vertices,) (one or both hemispheres)
    """
    hemis = [h for h in HEMISPHERES if h in per_vertex]
    by_hemi = {h: ds.roi_masks(subject, h) for h in hemis}
    masks = {f: np.concatenate([by_hemi[h][f] for h in hemis]) for f in by_hemi[hemis[0]]}
    return roi_summary(np.concatenate([per_vertex[h] for h in hemis]), masks)


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
        true = ds.responses(subject, hemi, "test")
        nc = ds.noise_ceiling(subject, hemi)
        if nc is None:
            raise DatasetError(f"{ds.root}/{subject} has no {hemi} noise ceiling; NNMC needs test_split/noise_ceiling/")
        pred = np.asarray(preds[hemi])
        if pred.shape != true.shape:
            raise ValueError(f"{subject} {hemi} predictions have shape {pred.shape}, test responses {true.shape}")
        r = pearson_r(pred, true)
        score = noise_normalized_score(r, nc)
        masks = ds.roi_masks(subject, hemi)
        out[hemi] = {"r": r, "score": score, "roi": roi_summary(score, masks)}
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

"""Scores of an encoding model's test predictions, per subject, hemisphere and ROI (hemispheres pooled,
vertex-weighted): what assembly records for every model at fit time and the reports show."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...datasets import HEMISPHERES, AlgonautsDataset, DatasetError
from ...scoring import noise_normalized_score, pearson_r, roi_summary

__all__ = ["score_test_split", "pooled_roi_summary", "pooled_test_scores", "pooled_split_scores"]


def score_test_split(ds: AlgonautsDataset, subject: str, hemi: str, pred: np.ndarray, *,
                require_noise_ceiling: bool = True) -> dict[str, np.ndarray | None]:
    """Per-vertex test Pearson r and noise-normalized score (NNMC terms) of one hemisphere.

    Parameters
    ----------
    pred : array of shape (n_test_images, n_vertices), rows in the dataset's test order.
    require_noise_ceiling : raise when the dataset has no noise ceiling for ``hemi``; otherwise
        ``score`` is None there (test r is still reported).

    Returns
    -------
    dict with ``r`` and ``score`` (n_vertices,) (``score`` None without a noise ceiling).
    """
    true = ds.responses(subject, hemi, "test")
    pred = np.asarray(pred)
    if pred.shape != true.shape:
        raise ValueError(f"{subject} {hemi} predictions have shape {pred.shape}, test responses {true.shape}")
    nc = ds.noise_ceiling(subject, hemi)
    if nc is None and require_noise_ceiling:
        raise DatasetError(f"{ds.root}/{subject} has no {hemi} noise ceiling; NNMC needs test_split/noise_ceiling/")
    r = pearson_r(pred, true)
    return {"r": r, "score": None if nc is None else noise_normalized_score(r, nc)}


def pooled_roi_summary(ds: AlgonautsDataset, subject: str, per_vertex: dict[str, np.ndarray],
                       level: str = "family") -> dict[str, float]:
    """Per-ROI means of a per-vertex quantity with the hemispheres pooled (vertex-weighted).

    Parameters
    ----------
    per_vertex : dict hemisphere -> array of shape (n_vertices,) (one or both hemispheres)
    level : "family" (the five reported ROI families) or "roi" (their named ROIs: V1v ... VWFA-2)
    """
    hemis = [h for h in HEMISPHERES if h in per_vertex]
    by_hemi = {h: ds.roi_masks(subject, h, level=level) for h in hemis}
    masks = {f: np.concatenate([by_hemi[h][f] for h in hemis]) for f in by_hemi[hemis[0]]}
    return roi_summary(np.concatenate([per_vertex[h] for h in hemis]), masks)


def pooled_test_scores(ds: AlgonautsDataset, subject: str, score: dict[str, np.ndarray]) -> dict[str, Any]:
    """A model's pooled test NNMC: ``test_nnmc`` (all vertices), ``test_nnmc_roi`` (per family) and
    ``test_nnmc_named`` (per named ROI), from per-hemisphere noise-normalized scores."""
    roi = pooled_roi_summary(ds, subject, score)
    return {"test_nnmc": roi["all"], "test_nnmc_roi": roi,
            "test_nnmc_named": pooled_roi_summary(ds, subject, score, level="roi")}


def pooled_split_scores(ds: AlgonautsDataset, subject: str, split: dict[str, np.ndarray],
                        names: list[str]) -> dict[str, dict[str, float]]:
    """Per-ROI means, hemispheres pooled, of each feature space's share of the test r.

    ``split`` maps hemisphere -> array (n_bands, n_vertices) (``correlation_split``); ``names``
    names the bands in order.
    """
    return {name: pooled_roi_summary(ds, subject, {h: split[h][k] for h in split}) for k, name in enumerate(names)}

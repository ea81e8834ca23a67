"""Scoring: per-vertex Pearson r, the Algonauts 2023 noise-normalized score, NNMC, retrieval.

Everything follows the scoring contract in ARCHITECTURE.md:

* per vertex, Pearson r over test stimuli; r < 0 -> 0;
* score = 100 * r**2 / NC, NC in [0, 1] (NC = 0 -> 1e-14), clipped at 100;
* NNMC = mean score over vertices (per subject/hemisphere), per-ROI = mean over the ROI's vertices;
* NC from ncsnr: ncsnr**2 / (ncsnr**2 + (A/3 + B/2 + C/1) / (A + B + C));
* retrieval (MindEye): cosine similarity, forward and backward top-1 among 300 random test
  candidates, averaged over 30 draws.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

__all__ = [
    "pearson_r",
    "correlation_split",
    "r2_split",
    "noise_normalized_score",
    "nnmc",
    "roi_summary",
    "noise_ceiling_from_ncsnr",
]

_NC_FLOOR = 1e-14


def pearson_r(pred: np.ndarray, true: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """Pearson correlation per column, vectorized and chunked over columns.

    Parameters
    ----------
    pred : array of shape (n_samples, n_vertices)
    true : array of shape (n_samples, n_vertices)
    chunk : int
        Number of columns processed at once (bounds memory for memory-mapped inputs).

    Returns
    -------
    r : array of shape (n_vertices,), float64
        A column with zero variance in either input gets r = 0.
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.ndim == 1:
        pred, true = pred[:, None], np.asarray(true).reshape(-1, 1)
    if pred.shape != true.shape:
        raise ValueError(f"pred has shape {pred.shape} but true has shape {true.shape}; they must match")
    if pred.shape[0] < 2:
        raise ValueError("Pearson r needs at least 2 samples per column")
    out = np.empty(pred.shape[1], dtype=np.float64)
    for start in range(0, pred.shape[1], chunk):
        p = np.asarray(pred[:, start : start + chunk], dtype=np.float64)
        t = np.asarray(true[:, start : start + chunk], dtype=np.float64)
        p = p - p.mean(0)
        t = t - t.mean(0)
        num = (p * t).sum(0)
        den = np.sqrt((p * p).sum(0) * (t * t).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        out[start : start + chunk] = np.clip(r, -1.0, 1.0)
    return out


def _as_split(pred_split: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate split predictions (n_bands, n_samples, n_vertices) against true (n_samples, n_vertices).

    A 1-D ``true`` (one vertex) goes with a 2-D ``pred_split`` (n_bands, n_samples).
    """
    pred_split = np.asarray(pred_split)
    true = np.asarray(true)
    if true.ndim == 1:
        pred_split, true = pred_split[..., None], true[:, None]
    if pred_split.ndim != 3 or pred_split.shape[1:] != true.shape:
        raise ValueError(
            f"pred_split has shape {pred_split.shape} but true has shape {true.shape}; expected "
            "(n_bands, n_samples, n_vertices) and (n_samples, n_vertices)"
        )
    if true.shape[0] < 2:
        raise ValueError("split scores need at least 2 samples per column")
    return pred_split, true


def _split_chunks(
    pred_split: np.ndarray, true: np.ndarray, chunk: int
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Column chunks: (columns, predictions (n_bands, n_samples, n_cols), centered targets), float64."""
    for start in range(0, true.shape[1], chunk):
        cols = slice(start, start + chunk)
        y = np.asarray(true[:, cols], dtype=np.float64)
        yield cols, np.asarray(pred_split[:, :, cols], dtype=np.float64), y - y.mean(0)


def correlation_split(pred_split: np.ndarray, true: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """Share of each band (feature space) in the Pearson r of a summed prediction.

    With ``P = pred_split.sum(0)``, band ``b`` gets ``cov(p_b, y) / (std(P) std(y))`` (the
    product measure of ``himalaya.scoring.correlation_score_split``), so the shares sum over
    bands to ``pearson_r(P, true)``.

    Parameters
    ----------
    pred_split : array of shape (n_bands, n_samples, n_vertices)
        Per-band contributions to the prediction (e.g. ``predict_split``).
    true : array of shape (n_samples, n_vertices)
    chunk : int
        Number of columns processed at once.

    Returns
    -------
    r_split : array of shape (n_bands, n_vertices), float64
        Zeros for a column where ``P`` or ``true`` has zero variance (as :func:`pearson_r`).
    """
    one = np.ndim(true) == 1
    pred_split, true = _as_split(pred_split, true)
    out = np.empty((pred_split.shape[0], true.shape[1]))
    for cols, p, y in _split_chunks(pred_split, true, chunk):
        p = p - p.mean(1, keepdims=True)
        total = p.sum(0)
        den = np.sqrt((total * total).sum(0) * (y * y).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, cols] = np.where(den > 0, (p * y).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return out[:, 0] if one else out


def r2_split(pred_split: np.ndarray, true: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """Share of each band (feature space) in the R^2 of a summed prediction.

    ``true`` is centered first: its mean plays the part of the intercept, which no band gets
    credit for. With ``y`` the centered targets and ``P = pred_split.sum(0)``, band ``b`` gets
    ``(2 p_b . y - p_b . P) / ||y||^2`` (the product measure of
    ``himalaya.scoring.r2_score_split``, which expects zero-mean targets), so the shares sum
    over bands to ``1 - ||y - P||^2 / ||y||^2``: the R^2 of ``P + true.mean(0)``, i.e. the
    R^2 of ``P`` when ``true`` has zero mean.

    Parameters
    ----------
    pred_split : array of shape (n_bands, n_samples, n_vertices)
        Per-band contributions to the prediction, without the intercept.
    true : array of shape (n_samples, n_vertices)
    chunk : int
        Number of columns processed at once.

    Returns
    -------
    r2_split : array of shape (n_bands, n_vertices), float64
        Zeros for a column where ``true`` has zero variance.
    """
    one = np.ndim(true) == 1
    pred_split, true = _as_split(pred_split, true)
    out = np.empty((pred_split.shape[0], true.shape[1]))
    for cols, p, y in _split_chunks(pred_split, true, chunk):
        sst = (y * y).sum(0)
        num = 2 * (p * y).sum(1) - (p * p.sum(0)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, cols] = np.where(sst > 0, num / np.where(sst > 0, sst, 1.0), 0.0)
    return out[:, 0] if one else out


def noise_normalized_score(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """Algonauts 2023 per-vertex score: 100 * max(r, 0)**2 / NC, clipped at 100.

    Parameters
    ----------
    r : array of shape (n_vertices,)
        Pearson correlation per vertex.
    noise_ceiling : array of shape (n_vertices,)
        Noise ceiling as a fraction in [0, 1], as the dataset release stores it and the readers
        return it (they refuse a file with values above 1: a ceiling in percent must be divided by
        100 first, and so must one given here). NC = 0 is replaced by 1e-14.

    Returns
    -------
    score : array of shape (n_vertices,), in [0, 100]
    """
    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(noise_ceiling, dtype=np.float64)
    if r.shape != nc.shape:
        raise ValueError(f"r has shape {r.shape} but noise_ceiling has shape {nc.shape}")
    if np.nanmax(nc, initial=0.0) > 1.0 + 1e-9 or np.nanmin(nc, initial=0.0) < 0.0:
        raise ValueError(
            "noise_ceiling must be a fraction in [0, 1]; values in percent should be divided by 100"
        )
    r = np.where(r < 0, 0.0, r)
    nc = np.where(nc == 0, _NC_FLOOR, nc)
    return np.minimum(100.0 * r**2 / nc, 100.0)


def nnmc(pred: np.ndarray, true: np.ndarray, noise_ceiling: np.ndarray) -> float:
    """Noise-normalized mean correlation: mean over vertices of :func:`noise_normalized_score`.

    Parameters
    ----------
    pred, true : arrays of shape (n_samples, n_vertices)
    noise_ceiling : array of shape (n_vertices,), fraction in [0, 1]
    """
    return float(noise_normalized_score(pearson_r(pred, true), noise_ceiling).mean())


def roi_summary(
    values: np.ndarray, rois: Mapping[str, np.ndarray], *, include_all: bool = True
) -> dict[str, float]:
    """Mean of a per-vertex quantity over each ROI.

    Parameters
    ----------
    values : array of shape (n_vertices,)
        e.g. noise-normalized scores or Pearson r.
    rois : mapping ROI name -> boolean mask of shape (n_vertices,)
    include_all : bool
        Add an ``"all"`` entry with the mean over every vertex.

    Returns
    -------
    dict ROI name -> mean (NaN for an empty ROI).
    """
    values = np.asarray(values, dtype=np.float64)
    out: dict[str, float] = {}
    if include_all:
        out["all"] = float(values.mean()) if values.size else float("nan")
    for name, mask in rois.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"ROI {name!r} mask has shape {mask.shape}, values have {values.shape}")
        out[name] = float(values[mask].mean()) if mask.any() else float("nan")
    return out


def noise_ceiling_from_ncsnr(
    ncsnr: np.ndarray, n_three: int, n_two: int = 0, n_one: int = 0
) -> np.ndarray:
    """Noise ceiling (fraction) from the noise-ceiling SNR (NSD / Algonauts formula).

    NC = ncsnr**2 / (ncsnr**2 + (A/3 + B/2 + C/1) / (A + B + C)), with A, B, C the numbers of
    test images shown 3, 2 and 1 times.

    Parameters
    ----------
    ncsnr : array of shape (n_vertices,)
    n_three, n_two, n_one : int
        A, B, C above.

    Returns
    -------
    nc : array of shape (n_vertices,), fraction in [0, 1]
    """
    total = n_three + n_two + n_one
    if total <= 0 or min(n_three, n_two, n_one) < 0:
        raise ValueError("image repeat counts must be non-negative and not all zero")
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    k = (n_three / 3.0 + n_two / 2.0 + n_one / 1.0) / total
    s2 = ncsnr**2
    return s2 / (s2 + k)

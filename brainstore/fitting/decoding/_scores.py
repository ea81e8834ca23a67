"""Figures of decoded embeddings beside retrieval (:mod:`brainstore.scoring`): row-wise cosine, and the
captions of the nearest training stimuli scored against the true test captions."""

from __future__ import annotations

import numpy as np

from ...datasets import AlgonautsDataset

__all__ = ["row_cosine", "retrieved_captions", "retrieved_caption_metrics", "validation_top1", "validation_directions",
           "beats_kept", "holds_floor", "replaces_kept", "both_ways"]


def _margin(v: float, n: int, min_delta: float | None) -> float:
    """``min_delta``; None: one standard error of a top-1 ``v`` over ``n`` rankings, ``sqrt(v (1 - v) / n)``."""
    import math

    return min_delta if min_delta is not None else (math.sqrt(v * (1 - v) / n) if n else 0.0)


def beats_kept(new: float, kept: float, n: int, min_delta: float | None = None) -> bool:
    """Whether a validation top-1 ``new`` replaces the ``kept`` one (an epoch's, or a search trial's): higher by
    more than ``min_delta``; None: one standard error of the kept figure, ``sqrt(v (1 - v) / n)`` over the ``n``
    validation rankings (the best of many candidates on a few images is otherwise partly chance)."""
    return new > kept + _margin(kept, n, min_delta)


def replaces_kept(new: float, new_held: bool, kept: float, kept_held: bool, n: int,
                  min_delta: float | None = None) -> bool:
    """The keep rule of epochs and of search trials: a candidate that holds the ridge floor (:func:`holds_floor`)
    replaces a kept one that does not, never the other way round; otherwise it must :func:`beats_kept`."""
    if new_held != kept_held:
        return new_held
    return beats_kept(new, kept, n, min_delta)


def validation_directions(decoded: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Top-1 among a validation split's images (300 of them at most, one draw) each way: ``b2s`` brain ->
    stimulus, ``s2b`` stimulus -> brain."""
    from ...scoring import retrieval_metrics

    m = retrieval_metrics(decoded, true, n_draws=1)
    return {"b2s": float(m["top1_brain_to_stimulus"]), "s2b": float(m["top1_stimulus_to_brain"])}


def validation_top1(decoded: np.ndarray, true: np.ndarray) -> float:
    """The mean of both directions the report shows (:func:`validation_directions`): the figure an adaptor's
    epochs, its search and the ridge comparison are judged by. (Judged on brain -> stimulus alone, the kept
    adaptors gained there and lost up to 0.12 top-1 stimulus -> brain against ridge: benchmarks/RESULTS.md,
    decoding regimes.)"""
    return both_ways(validation_directions(decoded, true))


def both_ways(d: dict) -> float:
    """The mean of a ``{"b2s", "s2b"}`` pair of top-1 figures: what validation judges by."""
    return (d["b2s"] + d["s2b"]) / 2


def holds_floor(metrics: dict, floor: dict | None, min_delta: float | None = None) -> bool:
    """Whether an epoch's validation figures (``val_b2s_<subject>``, ``val_s2b_<subject>``) are nowhere below the
    ``floor`` (``{subject: {"b2s", "s2b", "n"}}``: the ridge decoder's on the same rows) by more than ``min_delta``
    (None: one standard error of the floor's figure over its ``n`` images). True without a floor. (Judged on the
    mean of both directions alone, the kept adaptors gained brain -> stimulus and trailed ridge by up to 0.041
    stimulus -> brain: benchmarks/RESULTS.md, decoding regimes, run 2.)"""
    for s, f in (floor or {}).items():
        for d in ("b2s", "s2b"):
            v = metrics.get(f"val_{d}_{s}")
            if v is not None and v < f[d] - _margin(f[d], max(f["n"], 1), min_delta):
                return False
    return True


def retrieved_captions(ds: AlgonautsDataset, subject: str, decoded: np.ndarray, train_emb: np.ndarray,
                       train_ids: list[str]) -> tuple[list[int], list[str]]:
    """For each decoded embedding, the nearest (cosine) training stimulus and its caption.

    Only training stimuli are candidates: the test images' own captions are never retrieved, so
    the caption metrics measure what the decoder recovered, not a lookup of the answer.

    ``decoded``: (n, dim); ``train_emb``: (n_train, dim), the target table's rows of ``train_ids``.
    Returns, per decoded row, the nearest row of ``train_emb`` and its stimulus's caption (``""`` if none).
    """
    from ...scoring import cosine_similarity

    t = ds.stimuli([subject], splits=("train",))
    caption = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
    best = cosine_similarity(decoded, train_emb).argmax(1).tolist()
    return best, [caption.get(train_ids[b]) or "" for b in best]


def retrieved_caption_metrics(ds: AlgonautsDataset, subject: str, decoded: np.ndarray, train_emb: np.ndarray,
                              test_emb: np.ndarray, train_ids: list[str], test_ids: list[str]) -> dict:
    """``caption_bleu1..4``, ``caption_rougeL`` of the retrieved training captions against the true test
    captions, and ``caption_cosine`` between their embeddings; {} when the dataset has no captions."""
    from ...scoring import caption_metrics

    t = ds.stimuli([subject], splits=("test",))
    truth = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
    refs = [truth.get(i) for i in test_ids]
    if not all(refs):
        return {}
    best, pred = retrieved_captions(ds, subject, decoded, train_emb, train_ids)
    out = {f"caption_{k}": v for k, v in caption_metrics(pred, refs).items()}
    out["caption_cosine"] = float(row_cosine(train_emb[best], test_emb).mean())
    return out


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` (n, d) with the same row of ``b`` (n, d): (n,) float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(1) / den

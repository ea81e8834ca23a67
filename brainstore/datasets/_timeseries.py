"""TR timing of time-series (video fMRI) datasets: continuous runs with one response row per TR.

A described dataset with a ``timeseries:`` section (see the README, "Video fMRI") has clips whose
frames sit in a brick at ``fps`` frames per second, and acquisition runs that each show one clip.
The stimulus of a response row is one TR of a clip, ``{clip}/tr{k:04d}``: TR ``k`` covers the
clip's frames with time in ``[k tr, (k + 1) tr)`` seconds (frame ``j`` is at ``j / fps``). A clip
shown in several runs (a test clip repeated) has the same stimulus ids in each, so its TRs are
averaged over the repeats and give noise ceilings from repeats, as images do.

Everything downstream sees TRs as ordinary stimuli: per-TR feature tables (made by
:func:`brainstore.features.extract_timeseries`, delayed by :func:`brainstore.features.derive_delays`)
are keyed by these ids, and cross-validation folds hold whole clips (:meth:`cv_groups`).

This module holds the timing every stage shares (TR ids, a TR's frames, event weights, runs); the
clip and event tables of a description are read by :mod:`.described` (``_clips``).
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = ["tr_id", "split_tr_id", "n_trs", "frames_of_tr", "event_weights", "lanczos_kernel", "run_starts",
           "run_groups"]

_TR_ID = re.compile(r"^(?P<clip>.+)/tr(?P<k>\d{4,})$")
_EPS = 1e-9


def tr_id(clip: str, k: int) -> str:
    """The stimulus id of TR ``k`` of ``clip``."""
    return f"{clip}/tr{int(k):04d}"


def split_tr_id(sid: str) -> tuple[str, int]:
    """``(clip, k)`` of a TR stimulus id; ValueError for any other id."""
    m = _TR_ID.match(str(sid))
    if m is None:
        raise ValueError(f"{sid!r} is not a TR stimulus id (CLIP/trNNNN)")
    return m["clip"], int(m["k"])


def n_trs(n_frames: int, fps: float, tr: float) -> int:
    """Whole TRs a clip of ``n_frames`` frames at ``fps`` spans (a partial last TR is dropped)."""
    return int(math.floor(n_frames / (fps * tr) + _EPS))


def frames_of_tr(k: int, fps: float, tr: float) -> tuple[int, int]:
    """Frames ``[a, b)`` (within the clip) whose time ``j / fps`` is in ``[k tr, (k + 1) tr)``."""
    return int(math.ceil(k * tr * fps - _EPS)), int(math.ceil((k + 1) * tr * fps - _EPS))


def lanczos_kernel(x: np.ndarray, window: int = 3) -> np.ndarray:
    """Huth et al.'s ``lanczosfun`` at ``x`` (time differences times the cut-off frequency):
    ``window sin(pi x) sin(pi x / window) / (pi x)**2``, 1 at ``x = 0``, 0 for ``|x| > window``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi ** 2 * x ** 2)
    w[x == 0] = 1.0
    w[np.abs(x) > window] = 0.0
    return w


def run_starts(labels) -> list[int]:
    """Rows where a new run (a new label) begins, the first row included."""
    return [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]


def event_weights(events, n_tr: int, tr: float, method: str = "average", window: int = 3) -> np.ndarray:
    """``(n_tr, n_events)`` weights making a clip's per-TR features from its events' features.

    ``average``: TR ``k`` is the mean of the events overlapping ``[k tr, (k + 1) tr)`` weighted by the
    overlap in seconds (an instantaneous event weighs 1 in the TR holding its onset); a TR without
    events is 0. ``lanczos``: Huth et al.'s ``lanczosinterp2D`` from the onsets to the TR middles
    (cut-off at the TR's rate, ``window`` lobes), unnormalised: the sum of nearby events' features,
    so the event rate counts, as for words.
    """
    if method == "lanczos":
        return lanczos_kernel((((np.arange(n_tr) + 0.5) * tr)[:, None] - np.array([e.onset for e in events])[None, :])
                              / tr, window)
    W = np.zeros((n_tr, len(events)))
    for j, e in enumerate(events):
        if e.duration <= 0:
            k = int(math.floor(e.onset / tr + _EPS))
            if k < n_tr:
                W[k, j] = 1.0
            continue
        for k in range(int(e.onset // tr), min(n_tr, int(math.ceil((e.onset + e.duration) / tr)))):
            W[k, j] = max(0.0, min((k + 1) * tr, e.onset + e.duration) - max(k * tr, e.onset))
    total = W.sum(1, keepdims=True)
    return W / np.where(total > 0, total, 1.0)


def run_groups(ids: list[str]) -> np.ndarray:
    """The clip of each TR stimulus id (the groups cross-validation keeps whole)."""
    return np.asarray([split_tr_id(s)[0] for s in ids], dtype=object)

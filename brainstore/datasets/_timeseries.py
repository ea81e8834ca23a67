"""Time-series (video fMRI) datasets: continuous runs with one response row per TR.

A described dataset with a ``timeseries:`` section (see the README, "Video fMRI") has clips whose
frames sit in a brick at ``fps`` frames per second, and acquisition runs that each show one clip.
The stimulus of a response row is one TR of a clip, ``{clip}/tr{k:04d}``: TR ``k`` covers the
clip's frames with time in ``[k tr, (k + 1) tr)`` seconds (frame ``j`` is at ``j / fps``). A clip
shown in several runs (a test clip repeated) has the same stimulus ids in each, so its TRs are
averaged over the repeats and give noise ceilings from repeats, as images do.

Everything downstream sees TRs as ordinary stimuli: per-TR feature tables (made by
:func:`brainstore.features.extract_timeseries`, delayed by :func:`brainstore.features.derive_delays`)
are keyed by these ids, and cross-validation folds hold whole clips (:meth:`cv_groups`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import DatasetError

__all__ = ["Clip", "Event", "TimeSeries", "tr_id", "split_tr_id", "n_trs", "event_weights", "lanczos_kernel",
           "run_starts"]

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


@dataclass(frozen=True)
class Clip:
    name: str
    first_frame: int  # index of its first frame in the brick
    n_frames: int
    n_trs: int

    def ids(self) -> list[str]:
        return [tr_id(self.name, k) for k in range(self.n_trs)]


@dataclass(frozen=True)
class Event:
    stimulus_id: str
    onset: float  # seconds from the clip's start
    duration: float  # seconds (0: instantaneous)


@dataclass(frozen=True)
class TimeSeries:
    """What a time-series dataset says about its clips (from its description): frames in a brick at
    ``fps`` (video), or stimulus events with onsets (``events``)."""

    tr: float
    fps: float | None
    frames: Path | None  # the frame brick (video clips)
    key: str  # HDF5 dataset path ("" for npy)
    clips: tuple[Clip, ...]
    clips_table: Path
    events: dict | None = None  # clip -> tuple[Event, ...] (event clips)
    events_table: Path | None = None

    @property
    def kind(self) -> str:
        return "frames" if self.frames is not None else "events"

    def clip(self, name: str) -> Clip:
        for c in self.clips:
            if c.name == name:
                return c
        raise DatasetError(f"clip {name!r} is not in {self.clips_table} (clips: "
                           f"{', '.join(c.name for c in self.clips[:5])}{' ...' if len(self.clips) > 5 else ''})")


def read_clips(path: Path, what: str, fps: float | None, tr: float) -> tuple[tuple[Clip, ...], list[str]]:
    """The clips of a clip table and every problem found: ``clip``, ``first_frame``, ``n_frames`` for
    frame clips (``fps`` given), ``clip``, ``n_trs`` for event clips."""
    from . import _readers as rd

    t = rd.read_table(path, f"clip table, {what}")
    if fps is None:
        return _event_clips(t, path, what)
    need = [c for c in ("clip", "first_frame", "n_frames") if c not in t.column_names]
    if need:
        return (), [f"{path} ({what}) lacks column(s) {need}; a clip table has clip, first_frame (index of the clip's "
                    "first frame in the frame brick) and n_frames"]
    names = [None if v is None else str(v) for v in t.column("clip").to_pylist()]
    first = t.column("first_frame").to_pylist()
    count = t.column("n_frames").to_pylist()
    clips, problems, seen = [], [], set()
    for i, (name, a, n) in enumerate(zip(names, first, count)):
        if not name or not name.strip():
            problems.append(f"{path} ({what}) row {i}: empty clip name")
            continue
        if name in seen:
            problems.append(f"{path} ({what}) row {i}: clip {name!r} is listed twice; a clip name names one clip")
            continue
        seen.add(name)
        if a is None or n is None or not float(a).is_integer() or not float(n).is_integer() or a < 0 or n < 1:
            problems.append(f"{path} ({what}) row {i} ({name}): first_frame must be an integer >= 0 and n_frames >= 1 "
                            f"(given {a!r}, {n!r})")
            continue
        k = n_trs(int(n), fps, tr)
        if k < 1:
            problems.append(f"{path} ({what}) row {i} ({name}): {int(n)} frames at {fps:g} fps last less than one TR "
                            f"({tr:g} s)")
            continue
        clips.append(Clip(name, int(a), int(n), k))
    return tuple(clips), problems


def _event_clips(t, path: Path, what: str) -> tuple[tuple[Clip, ...], list[str]]:
    if not {"clip", "n_trs"} <= set(t.column_names):
        return (), [f"{path} ({what}) has columns {t.column_names}; the clip table of an event time series has clip "
                    "and n_trs (the TRs acquired while the clip runs)"]
    clips, problems, seen = [], [], set()
    for i, (name, k) in enumerate(zip(t.column("clip").to_pylist(), t.column("n_trs").to_pylist())):
        name = None if name is None else str(name)
        if not name or not name.strip() or name in seen:
            problems.append(f"{path} ({what}) row {i}: " + ("a clip is listed twice" if name in seen else "empty clip name"))
            continue
        seen.add(name)
        if k is None or not float(k).is_integer() or k < 1:
            problems.append(f"{path} ({what}) row {i} ({name}): n_trs must be an integer >= 1 (given {k!r})")
            continue
        clips.append(Clip(name, 0, 0, int(k)))
    return tuple(clips), problems


def read_events(path: Path, what: str, clips: tuple[Clip, ...], tr: float) -> tuple[dict, list[str]]:
    """``{clip: (Event, ...)}`` in onset order from an event table (``clip``, ``stimulus_id``, ``onset``,
    optional ``duration``), and every problem found (unknown clips, onsets outside the clip)."""
    from . import _readers as rd

    t = rd.read_table(path, f"event table, {what}")
    need = [c for c in ("clip", "stimulus_id", "onset") if c not in t.column_names]
    if need:
        return {}, [f"{path} ({what}) lacks column(s) {need}; an event table has clip, stimulus_id, onset (seconds from "
                    "the clip's start) and optional duration (seconds)"]
    length = {c.name: c.n_trs * tr for c in clips}
    cols = [t.column(c).to_pylist() for c in ("clip", "stimulus_id", "onset")]
    dur = t.column("duration").to_pylist() if "duration" in t.column_names else [0.0] * t.num_rows
    out: dict[str, list[Event]] = {}
    problems = []
    for i, (clip, sid, onset, d) in enumerate(zip(*cols, dur)):
        clip = None if clip is None else str(clip)
        if clip not in length:
            problems.append(f"{path} ({what}) row {i}: clip {clip!r} is not in the clip table")
            continue
        if sid is None or not str(sid).strip():
            problems.append(f"{path} ({what}) row {i}: empty stimulus_id")
            continue
        d = 0.0 if d is None else float(d)
        if onset is None or not (0 <= float(onset) < length[clip]) or not (d >= 0 and math.isfinite(d)):
            problems.append(f"{path} ({what}) row {i} ({clip} {sid}): onset {onset!r} must be in [0, {length[clip]:g}) "
                            f"seconds (the clip's {length[clip] / tr:g} TRs) and duration >= 0 (given {d!r})")
            continue
        out.setdefault(clip, []).append(Event(str(sid), float(onset), d))
    return {c: tuple(sorted(v, key=lambda e: e.onset)) for c, v in out.items()}, problems


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

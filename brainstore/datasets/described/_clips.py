"""The clip and event tables of a time-series description (``timeseries:``): what
:class:`~._described.DescribedDataset` knows of its clips (:class:`TimeSeries`); the TR timing is
:mod:`brainstore.datasets._timeseries`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .._errors import DatasetError
from .._timeseries import n_trs, tr_id
from . import _readers as rd

__all__ = ["Clip", "Event", "TimeSeries", "read_clips", "read_events"]


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

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

__all__ = ["Clip", "TimeSeries", "tr_id", "split_tr_id", "n_trs"]

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
class TimeSeries:
    """What a time-series dataset says about its clips (from its description)."""

    tr: float
    fps: float
    frames: Path  # the frame brick
    key: str  # HDF5 dataset path ("" for npy)
    clips: tuple[Clip, ...]
    clips_table: Path

    @property
    def frames_per_tr(self) -> float:
        return self.tr * self.fps

    def clip(self, name: str) -> Clip:
        for c in self.clips:
            if c.name == name:
                return c
        raise DatasetError(f"clip {name!r} is not in {self.clips_table} (clips: "
                           f"{', '.join(c.name for c in self.clips[:5])}{' ...' if len(self.clips) > 5 else ''})")

    def frame_range(self, sid: str) -> tuple[int, int]:
        """Brick indices ``[a, b)`` of the frames of TR stimulus ``sid``."""
        clip, k = split_tr_id(sid)
        c = self.clip(clip)
        a, b = frames_of_tr(k, self.fps, self.tr)
        return c.first_frame + a, c.first_frame + min(b, c.n_frames)

    def tr_index(self) -> dict[str, tuple[str, int]]:
        """``{stimulus id: (clip, k)}`` of every TR of every clip."""
        return {tr_id(c.name, k): (c.name, k) for c in self.clips for k in range(c.n_trs)}


def read_clips(path: Path, what: str, fps: float, tr: float) -> tuple[tuple[Clip, ...], list[str]]:
    """The clips of a clip table (``clip``, ``first_frame``, ``n_frames``) and every problem found."""
    from . import _readers as rd

    t = rd.read_table(path, f"clip table, {what}")
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


def run_groups(ids: list[str]) -> np.ndarray:
    """The clip of each TR stimulus id (the groups cross-validation keeps whole)."""
    return np.asarray([split_tr_id(s)[0] for s in ids], dtype=object)

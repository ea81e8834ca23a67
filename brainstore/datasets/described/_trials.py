"""Trials of :class:`~._described.DescribedDataset`: each subject's trial table (checked: ids,
splits, sessions, response rows), the rows of each split's response matrix (which trials each row
averages), and the clips of a time series (``timeseries:``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .._errors import DatasetError
from .._layout import SPLITS, check_split
from .._timeseries import run_groups
from . import _readers as rd
from ._clips import TimeSeries, read_clips, read_events
from ._fields import DescribedBase, shown

__all__ = ["Trials", "TrialsMixin"]


@dataclass
class Trials:
    """A subject's trial table as read and checked."""

    path: Path
    field: str  # where it is described
    table: pa.Table  # the subject's rows, every column
    ids: np.ndarray  # object
    split: np.ndarray  # object
    session: np.ndarray | None
    row: np.ndarray  # int64: row in the response arrays
    explicit_row: bool
    brick_index: np.ndarray | None  # int64, -1 where null


class TrialsMixin(DescribedBase):
    """Trial tables, the rows of the response matrices, the clips of a time series."""

    def _trials_result(self, subject: str):
        return self._memoized(("trials", subject), lambda: self._read_trials(subject))

    def _read_trials(self, subject: str):
        loc = self._loc(subject, "trials")
        what = self._where(subject, loc)
        path = self._path(subject, self._field(subject, "trials"))
        try:
            table = self._memoized(("table", str(path)), lambda: rd.read_table(path, f"trial table, {what}"))
        except DatasetError as e:
            return None, [str(e)]
        cols = table.column_names
        problems = []
        if "subject" in cols:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table.column("subject").cast(pa.string()), subject))
            if table.num_rows == 0:
                return None, [f"{path} ({what}) has no trial of {subject} (its subject column names "
                              f"{shown(sorted(set(map(str, rd.read_table(path, what).column('subject').to_pylist()))))}); "
                              "write the subject's name there as the description does"]
        else:
            sharing = [s for s in self.subjects if self._path(s, self._field(s, "trials")) == path]
            if len(sharing) > 1:
                return None, [f"{path} ({what}) is the trial table of {', '.join(sharing)} but has no subject column; "
                              "add one, or give each subject its own table ({subject} in the path)"]
        need = ["stimulus_id", "split"] + ([self.spec.zscore] if self.spec.zscore in ("session", "run") else [])
        missing = [c for c in need if c not in cols]
        if missing:
            why = f" (zscore: {self.spec.zscore} groups trials by {self.spec.zscore})" if self.spec.zscore in missing else ""
            return None, [f"{path} ({what}) lacks column(s) {missing}{why}; a trial table has stimulus_id, session, "
                          "run, split (train/test), optional onset, duration, row"]
        ids = np.asarray(table.column("stimulus_id").cast(pa.string()).to_pylist(), dtype=object)
        split = np.asarray(table.column("split").cast(pa.string()).to_pylist(), dtype=object)
        empty = [i for i, v in enumerate(ids) if v is None or not str(v).strip()]
        if empty:
            problems.append(f"{path} ({what}): {subject} trial(s) {shown(empty)} (0-based, among the subject's "
                            "rows) have no stimulus_id")
        bad = sorted({str(v) for v in split if v not in SPLITS})
        if bad:
            problems.append(f"{path} ({what}): split value(s) {bad} of {subject} are not train or test")
        session = None
        if "session" in cols:
            session = np.asarray([str(v) for v in table.column("session").to_pylist()], dtype=object)
        explicit = "row" in cols
        if explicit:
            raw_rows = table.column("row").to_pylist()
            if any(r is None for r in raw_rows) or not all(float(r).is_integer() and r >= 0 for r in raw_rows
                                                            if r is not None):
                problems.append(f"{path} ({what}): column row must hold a response row (integer >= 0) for every "
                                f"trial of {subject}")
                row = np.arange(table.num_rows, dtype=np.int64)
            else:
                row = np.asarray(raw_rows, dtype=np.int64)
                uniq, counts = np.unique(row, return_counts=True)
                if (counts > 1).any():
                    problems.append(f"{path} ({what}): response row(s) {shown(uniq[counts > 1].tolist())} are given "
                                    f"to several trials of {subject}; each trial has its own row")
        else:
            row = np.arange(table.num_rows, dtype=np.int64)
        brick = None
        if "brick_index" in cols:
            vals = table.column("brick_index").to_pylist()
            brick = np.asarray([-1 if v is None else int(v) for v in vals], dtype=np.int64)
        if not problems:
            both = set(ids[split == "train"]) & set(ids[split == "test"])
            if both:
                problems.append(f"{path} ({what}): stimulus id(s) {shown(sorted(both))} of {subject} have train and "
                                "test trials; a stimulus belongs to one split (a test stimulus seen in training "
                                "leaks into the test score)")
            if not (split == "train").any():
                problems.append(f"{path} ({what}): {subject} has no train trial")
        return Trials(path, what, table, ids, split, session, row, explicit, brick), problems

    def _trials(self, subject: str) -> Trials:
        return self._need(self._trials_result(self._check_subject(subject)))

    def trials(self, subject: str) -> pa.Table:
        """The subject's trial table (every column of the file, the subject's rows in file order)."""
        return self._trials(subject).table

    def _plan(self, subject: str, split: str) -> tuple[list[str], list[np.ndarray]]:
        """Rows of a split's response matrix: stimulus ids and, per row, the trials (positions) averaged."""
        def build():
            t = self._trials(subject)
            pos = np.flatnonzero(t.split == check_split(split))
            by_id: dict[str, list[int]] = {}
            for p in pos:
                by_id.setdefault(t.ids[p], []).append(int(p))
            if split == "train" and self.spec.train_trials == "single":
                rows = [(sid, [p]) for sid, ps in by_id.items() for p in ps]
            else:
                rows = list(by_id.items())
            return [r[0] for r in rows], [np.asarray(r[1], dtype=np.int64) for r in rows]
        return self._memoized(("plan", subject, split), build)

    # ------------------------------------------------------------------ time series
    @property
    def is_timeseries(self) -> bool:
        """Continuous runs (a ``timeseries:`` section): one response row per TR of a clip."""
        return self.spec.timeseries is not None

    def _timeseries_result(self):
        def build():
            ts = self.spec.timeseries
            what = self._where(None, ("timeseries", "clips"))
            path = self._path(None, ts.clips)
            try:
                clips, problems = read_clips(path, what, ts.fps, ts.tr)
                if ts.events is None:
                    return TimeSeries(ts.tr, ts.fps, self._path(None, ts.frames.array), ts.frames.key or "", clips,
                                      path), problems
                epath = self._path(None, ts.events)
                events, more = read_events(epath, self._where(None, ("timeseries", "events")), clips, ts.tr)
            except DatasetError as e:
                return None, [str(e)]
            return TimeSeries(ts.tr, None, None, "", clips, path, events, epath), problems + more
        return self._memoized("timeseries", build)

    @property
    def timeseries(self):
        """The :class:`~._clips.TimeSeries` (TR, fps, frame brick, clips), or None for a trial dataset."""
        if not self.is_timeseries:
            return None
        return self._need(self._timeseries_result())

    def cv_groups(self, subject: str, split: str = "train") -> np.ndarray | None:
        """The clip of each row of a time-series dataset's ``split`` (cross-validation folds hold whole
        clips: never a fold boundary inside a run); None for a trial dataset."""
        if not self.is_timeseries:
            return None
        return run_groups(self._plan(self._check_subject(subject), check_split(split))[0])

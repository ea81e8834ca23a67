"""Responses from any dataset: :class:`DescribedDataset` reads a dataset description file (YAML,
see the README's "Dataset description files") and offers the interface of
:class:`~._algonauts.AlgonautsDataset` (:class:`~._base.BrainDataset`), so extraction, fitting,
decoders, evaluation and serving use it unchanged.

Design (ARCHITECTURE.md, "datasets"):

* **Rows.** The trial table lists every trial (``stimulus_id``, ``split``, ``session``, ``run``,
  optional ``onset``, ``duration``, ``row``: its row in the response arrays, default the table's
  order). Test rows are the unique test stimuli in order of first presentation, each the mean of
  its repetitions (as NSD and MindEye evaluate). Training rows likewise with ``train_trials:
  average`` (default); with ``train_trials: single`` one row per trial, grouped stimulus by
  stimulus (stimuli in order of first presentation, a stimulus's repeats adjacent in presentation
  order) so that brainstore's contiguous K folds keep a stimulus's repeats in one fold, except
  for at most K - 1 stimuli whose repeats straddle a fold boundary.
* **z-scoring** (``zscore: session``): each session's trials, per vertex, with the mean and
  standard deviation (ddof 0) of that session's training trials; a session with fewer than two
  training trials uses those of all training trials; test trials never contribute statistics.
  A zero deviation counts as 1.
* **Volumes.** The voxels inside the brain mask (finite, nonzero), in C order of (i, j, k), are
  the "vertices"; they are split into ``lh`` (RAS x < 0 through the mask's affine) and ``rh``
  (x >= 0), since every later stage works per hemisphere and several (decoders, adaptors,
  submissions, reports) need both.
* **Cache.** Assembled float32 matrices are written once (atomically, under a file lock) to
  ``<cache>/<subject>/<key>/`` (``cache:``, default ``.brainstore-cache`` beside the description)
  and memory-mapped; the key hashes the input files' sizes and mtimes and the options. Sources are
  read lazily in trial blocks (nibabel ``dataobj``, h5py), never whole.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from ._algonauts import HEMISPHERES, STIMULUS_SCHEMA, _check_hemi, _check_split, _nsd_id
from ._arrays import array_ref
from ._base import DESCRIPTION_NAME, BrainDataset
from ._description import ResponsesSpec, RoiFamily, load_description, where
from ._errors import DatasetError
from . import _readers as rd

__all__ = ["DescribedDataset", "DESCRIPTION_NAME"]

SPLITS = ("train", "test")
_NSD_RE = re.compile(r"^nsd-(\d+)$")
_TRAILING_INT = re.compile(r"(\d+)$")
_SHOWN = 5  # ids / rows named in one message


@dataclass
class _Trials:
    path: Path
    field: str  # where it is described
    table: pa.Table  # the subject's rows, every column
    ids: np.ndarray  # object
    split: np.ndarray  # object
    session: np.ndarray | None
    row: np.ndarray  # int64: row in the response arrays
    explicit_row: bool
    brick_index: np.ndarray | None  # int64, -1 where null


@dataclass
class _Sources:
    volume: bool
    arrays: dict  # hemi -> list[ArraySource] (surface)
    volumes: list  # list[VolumeSource] (volume)
    geometry: rd.VolumeGeometry | None
    n_raw: int  # response rows (trials) in the arrays
    n_vertices: dict  # hemi -> int
    files: dict  # hemi -> [(path, first row, rows)], for messages


def _shown(items) -> str:
    items = list(items)
    return ", ".join(map(str, items[:_SHOWN])) + (f" ... ({len(items)} in all)" if len(items) > _SHOWN else "")


class DescribedDataset(BrainDataset):
    """A dataset read from a description file (YAML); see the module docstring and the README.

    Parameters
    ----------
    path : the description file, or a folder holding ``brainstore-dataset.yaml``.
    name : dataset name recorded in stimulus tables (default: the description's ``name``, else the
        file's stem, or its folder's name for ``brainstore-dataset.yaml``).

    Raises
    ------
    DescriptionError
        The description does not parse: every problem with its file, line, field and fix.
    """

    def __init__(self, path: str | Path, *, name: str | None = None):
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / DESCRIPTION_NAME
        self.root = p.absolute().resolve()
        self.base = self.root.parent
        self.spec, self._lines = load_description(self.root)
        self.name = name or self.spec.name or (self.base.name if self.root.name == DESCRIPTION_NAME else self.root.stem)
        self._memo: dict = {}

    def __repr__(self) -> str:
        return f"DescribedDataset({str(self.root)!r}, subjects={self.subjects})"

    # ------------------------------------------------------------------ description helpers
    @property
    def subjects(self) -> list[str]:
        return list(self.spec.subjects)

    def _check_subject(self, subject: str) -> str:
        if subject not in self.spec.subjects:
            raise DatasetError(f"subject {subject!r} is not in {self.root} (subjects: {', '.join(self.subjects)})")
        return subject

    def _field(self, subject: str, name: str):
        own = getattr(self.spec.subject_spec(subject), name)
        return own if own is not None else getattr(self.spec, name)

    def _loc(self, subject: str, name: str, *rest) -> tuple:
        own = getattr(self.spec.subject_spec(subject), name) is not None
        return (("subjects", subject, name) if own else (name,)) + rest

    def _where(self, subject: str | None, loc: tuple) -> str:
        text = where(self.root, self._lines, loc)
        return text + (f" (for {subject})" if subject and loc[:1] != ("subjects",) else "")

    def _path(self, subject: str | None, value: str) -> Path:
        p = Path(value.replace("{subject}", subject) if subject else value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base / p))

    def _paths(self, subject: str, value, what: str) -> list[Path]:
        """Files of a ``str | list`` field; a name with ``*``, ``?`` or ``[`` is a glob (sorted matches)."""
        out = []
        for v in [value] if isinstance(value, str) else value:
            p = self._path(subject, v)
            if any(c in v for c in "*?["):
                matches = sorted(Path(m) for m in _glob.glob(str(p)))
                if not matches:
                    raise DatasetError(f"{what}: {p} matches no file")
                out += matches
            else:
                out.append(p)
        return out

    def _memoized(self, key, build):
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def _need(self, result):
        """The object of a ``(object, problems)`` result, or the first problem raised."""
        obj, problems = result
        if problems:
            more = (f" (and {len(problems) - 1} more problem(s); `brainstore info {self.root}` lists them)"
                    if len(problems) > 1 else "")
            raise DatasetError(problems[0] + more)
        return obj

    # ------------------------------------------------------------------ trials
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
                              f"{_shown(sorted(set(map(str, rd.read_table(path, what).column('subject').to_pylist()))))}); "
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
            problems.append(f"{path} ({what}): {subject} trial(s) {_shown(empty)} (0-based, among the subject's "
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
                    problems.append(f"{path} ({what}): response row(s) {_shown(uniq[counts > 1].tolist())} are given "
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
                problems.append(f"{path} ({what}): stimulus id(s) {_shown(sorted(both))} of {subject} have train and "
                                "test trials; a stimulus belongs to one split (a test stimulus seen in training "
                                "leaks into the test score)")
            if not (split == "train").any():
                problems.append(f"{path} ({what}): {subject} has no train trial")
        return _Trials(path, what, table, ids, split, session, row, explicit, brick), problems

    def _trials(self, subject: str) -> _Trials:
        return self._need(self._trials_result(self._check_subject(subject)))

    def trials(self, subject: str) -> pa.Table:
        """The subject's trial table (every column of the file, the subject's rows in file order)."""
        return self._trials(subject).table

    def _plan(self, subject: str, split: str) -> tuple[list[str], list[np.ndarray]]:
        """Rows of a split's response matrix: stimulus ids and, per row, the trials (positions) averaged."""
        def build():
            t = self._trials(subject)
            pos = np.flatnonzero(t.split == _check_split(split))
            by_id: dict[str, list[int]] = {}
            for p in pos:
                by_id.setdefault(t.ids[p], []).append(int(p))
            if split == "train" and self.spec.train_trials == "single":
                rows = [(sid, [p]) for sid, ps in by_id.items() for p in ps]
            else:
                rows = list(by_id.items())
            return [r[0] for r in rows], [np.asarray(r[1], dtype=np.int64) for r in rows]
        return self._memoized(("plan", subject, split), build)

    # ------------------------------------------------------------------ stimuli
    # ------------------------------------------------------------------ time series
    @property
    def is_timeseries(self) -> bool:
        """Continuous runs (a ``timeseries:`` section): one response row per TR of a clip."""
        return self.spec.timeseries is not None

    def _timeseries_result(self):
        def build():
            from ._timeseries import TimeSeries, read_clips, read_events

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
        """The :class:`~._timeseries.TimeSeries` (TR, fps, frame brick, clips), or None for a trial dataset."""
        if not self.is_timeseries:
            return None
        return self._need(self._timeseries_result())

    def cv_groups(self, subject: str, split: str = "train") -> np.ndarray | None:
        """The clip of each row of a time-series dataset's ``split`` (cross-validation folds hold whole
        clips: never a fold boundary inside a run); None for a trial dataset."""
        if not self.is_timeseries:
            return None
        from ._timeseries import run_groups

        return run_groups(self._plan(self._check_subject(subject), _check_split(split))[0])

    def ground_truth_dir(self) -> Path | None:
        """The ``ground_truth:`` folder (noiseless responses: the oracle) when described and present."""
        if self.spec.ground_truth is None:
            return None
        p = self._path(None, self.spec.ground_truth)
        return p if p.is_dir() else None

    def _timeseries_stimuli(self):
        ts, problems = self._timeseries_result()
        if ts is None:
            return {}, problems
        from ._timeseries import frames_of_tr

        out = {}
        for c in ts.clips:
            for k, sid in enumerate(c.ids()):  # a TR's path: its first frame in the brick
                out[sid] = ((array_ref(ts.frames, ts.key, c.first_frame + frames_of_tr(k, ts.fps, ts.tr)[0]), None,
                             None, "video") if ts.kind == "frames" else (str(ts.events_table), None, None, "timeseries"))
        return out, problems

    def event_stimuli(self) -> pa.Table:
        """The stimuli an event time series presents (:data:`STIMULUS_SCHEMA`, one row per stimulus;
        ``split`` test when a test clip presents it, ``index`` -1): what extraction embeds before the
        features go to the TRs."""
        ts = self.timeseries
        if ts is None or ts.kind != "events":
            raise DatasetError(f"{self.root} is not an event time series (timeseries.events)")
        table = self._need(self._file_stimuli())
        caps = self._caption_lookup()
        from ._timeseries import run_groups

        split_of: dict[str, str] = {}
        for s in self.subjects:
            t = self._trials(s)
            for clip, sp in zip(run_groups(t.ids), t.split):
                split_of.setdefault(clip, str(sp))
        cols: dict[str, list] = {f.name: [] for f in STIMULUS_SCHEMA}
        seen: dict[str, int] = {}
        unknown = []
        for clip, events in ts.events.items():
            for e in events:
                sp = split_of.get(clip, "train")
                if e.stimulus_id in seen:
                    if sp == "test":
                        cols["split"][seen[e.stimulus_id]] = "test"
                    continue
                entry = table.get(e.stimulus_id)
                if entry is None:
                    unknown.append(e.stimulus_id)
                    continue
                seen[e.stimulus_id] = len(cols["stimulus_id"])
                ref, cap, nsd, mod = entry
                for k, v in (("stimulus_id", e.stimulus_id), ("subject", None), ("split", sp), ("path", ref),
                             ("nsd_id", nsd), ("caption", cap or caps(e.stimulus_id, ref, nsd)), ("modality", mod),
                             ("index", -1), ("dataset", self.name)):
                    cols[k].append(v)
        if unknown:
            raise DatasetError(f"{ts.events_table} ({self._where(None, ('timeseries', 'events'))}): {len(unknown)} "
                               f"stimulus id(s) are not in the stimulus table: {_shown(unknown)}; add them to "
                               f"{self._path(None, self.spec.stimuli.table) if self.spec.stimuli.table else 'the table'}")
        return pa.table(cols, schema=STIMULUS_SCHEMA)

    def _stimulus_table(self):
        """(``{stimulus_id: (path, caption, nsd_id, modality)}`` or None without a table, problems).

        A time-series dataset's stimuli are its clips' TRs; a TR's path is its first frame in the brick."""
        if self.is_timeseries:
            return self._memoized("stimulus_table", self._timeseries_stimuli)
        return self._file_stimuli()

    def _file_stimuli(self):
        """The stimulus table file (or brick) as described: ``({stimulus_id: entry} or None, problems)``."""
        def build():
            st = self.spec.stimuli
            if st.table is None:
                return None, []
            what = self._where(None, ("stimuli", "table"))
            path = self._path(None, st.table)
            try:
                t = rd.read_table(path, f"stimulus table, {what}")
            except DatasetError as e:
                return {}, [str(e)]
            cols = t.column_names
            if "stimulus_id" not in cols or ("path" not in cols and st.array is None):
                return {}, [f"{path} ({what}) has columns {cols}; a stimulus table has stimulus_id and path (or, with "
                            "stimuli.array, brick_index), optional caption, nsd_id, modality"]
            out, problems = {}, []
            get = {c: t.column(c).to_pylist() if c in cols else [None] * t.num_rows
                   for c in ("stimulus_id", "path", "brick_index", "caption", "nsd_id", "modality")}
            for i in range(t.num_rows):
                sid = get["stimulus_id"][i]
                if sid is None or not str(sid).strip():
                    problems.append(f"{path} ({what}) row {i}: empty stimulus_id")
                    continue
                sid = str(sid)
                p = get["path"][i]
                if p:
                    ref = str(self._path(None, str(p)))
                elif st.array is not None:
                    try:
                        ref = self._brick_ref(sid, get["brick_index"][i])
                    except DatasetError as e:
                        problems.append(f"{path} ({what}) row {i}: {e}")
                        continue
                else:
                    problems.append(f"{path} ({what}) row {i} ({sid}): no path")
                    continue
                nsd = get["nsd_id"][i]
                entry = (ref, get["caption"][i] or None, _nsd_of(sid, nsd, path), get["modality"][i] or "image")
                if sid in out and out[sid][0] != ref:
                    problems.append(f"{path} ({what}) row {i}: stimulus id {sid!r} points at {ref} but earlier at "
                                    f"{out[sid][0]}; an id names one stimulus")
                out.setdefault(sid, entry)
            return out, problems
        return self._memoized("file_stimuli", build)

    def _brick_ref(self, sid: str, index) -> str:
        st = self.spec.stimuli
        if index is None or (isinstance(index, (int, np.integer)) and index < 0):
            m = _TRAILING_INT.search(sid)
            if m is None:
                raise DatasetError(f"stimulus {sid!r} has no brick_index and its id ends in no integer; give a "
                                   "brick_index column (the image's index on the brick's first axis)")
            index = int(m.group(1))
        return array_ref(self._path(None, st.array), st.key or "", int(index))

    def _resolve_stimuli(self, subject: str, ids: list[str]) -> list[tuple]:
        """(path, caption, nsd_id, modality) of each id; unknown ids fail with the trial table named."""
        table = self._need(self._stimulus_table())
        caps = self._caption_lookup()
        t = self._trials(subject)
        out, unknown = [], []
        brick_of = None
        if table is None and t.brick_index is not None:
            brick_of = {}
            for sid, b in zip(t.ids, t.brick_index):
                brick_of.setdefault(sid, b)
        for sid in ids:
            if table is not None:
                entry = table.get(sid)
                if entry is None:
                    unknown.append(sid)
                    continue
            else:
                entry = (self._brick_ref(sid, None if brick_of is None else brick_of.get(sid)), None,
                         _nsd_of(sid, None, None), "image")
            ref, cap, nsd, mod = entry
            out.append((ref, cap or caps(sid, ref, nsd), nsd, mod))
        if unknown and self.is_timeseries:
            raise DatasetError(f"{t.path} ({t.field}): {len(unknown)} stimulus id(s) of {subject} are not TRs of the "
                               f"clips in {self._path(None, self.spec.timeseries.clips)}: {_shown(unknown)}; a "
                               "time-series trial is CLIP/trNNNN (TR NNNN of the clip, from 0) of a listed clip, "
                               "within its length")
        if unknown:
            raise DatasetError(f"{t.path} ({t.field}): {len(unknown)} stimulus id(s) of {subject} are not in the "
                               f"stimulus table {self._path(None, self.spec.stimuli.table)}: {_shown(unknown)}; add "
                               "them to the table or drop those trials")
        return out

    def _caption_lookup(self):
        """caption(stimulus_id, path, nsd_id) from the captions file (None when absent)."""
        def build():
            if self.spec.captions is None:
                return None, {}
            path = self._path(None, self.spec.captions)
            what = self._where(None, ("captions",))
            t = rd.read_table(path, f"captions, {what}")
            key = next((k for k in ("stimulus_id", "image", "nsd_id") if k in t.column_names), None)
            if key is None or "caption" not in t.column_names:
                raise DatasetError(f"captions file {path} ({what}) has columns {t.column_names}; it needs caption and "
                                   "stimulus_id (or image: file names, or nsd_id)")
            out: dict = {}
            for k, c in zip(t.column(key).to_pylist(), t.column("caption").to_pylist()):
                if c and str(c).strip():
                    out.setdefault(_nsd_id(k, path) if key == "nsd_id" else str(k), str(c))
            return key, out
        key, table = self._memoized("captions", build)

        def lookup(sid, ref, nsd):
            if key is None:
                return None
            if key == "stimulus_id":
                return table.get(sid)
            if key == "image":
                return table.get(Path(str(ref)).name)
            return table.get(nsd) if nsd is not None else None
        return lookup

    @property
    def captions(self) -> dict[str, str]:
        """Caption per stimulus id (the stimulus table's, else the captions file's; empty without any)."""
        out = {}
        for s in self.subjects:
            for r in self.stimuli([s]).select(["stimulus_id", "caption"]).to_pylist():
                if r["caption"]:
                    out.setdefault(r["stimulus_id"], r["caption"])
        return out

    def stimuli(self, subjects: Iterable[str] | None = None, splits: Iterable[str] = SPLITS) -> pa.Table:
        """The stimulus table (:data:`STIMULUS_SCHEMA`): one row per row of each subject's response
        matrices (``index``); with ``train_trials: single`` a training stimulus has a row per trial."""
        cols: dict[str, list] = {f.name: [] for f in STIMULUS_SCHEMA}
        for subject in subjects or self.subjects:
            self._check_subject(subject)
            for split in splits:
                ids, _ = self._plan(subject, _check_split(split))
                for i, (sid, (ref, cap, nsd, mod)) in enumerate(zip(ids, self._resolve_stimuli(subject, ids))):
                    cols["stimulus_id"].append(sid)
                    cols["subject"].append(subject)
                    cols["split"].append(split)
                    cols["path"].append(ref)
                    cols["nsd_id"].append(nsd)
                    cols["caption"].append(cap)
                    cols["modality"].append(mod)
                    cols["index"].append(i)
                    cols["dataset"].append(self.name)
        return pa.table(cols, schema=STIMULUS_SCHEMA)

    def n_images(self, subject: str, split: str) -> int:
        return len(self._plan(self._check_subject(subject), split)[0])

    def has_test_responses(self, subject: str) -> bool:
        return bool((self._trials(subject).split == "test").any())

    # ------------------------------------------------------------------ response sources
    def _responses_spec(self, subject: str) -> ResponsesSpec:
        return self._field(subject, "responses")

    def _sources_result(self, subject: str):
        return self._memoized(("sources", subject), lambda: self._read_sources(subject))

    def _read_sources(self, subject: str):
        spec = self._responses_spec(subject)
        problems: list[str] = []
        if spec.is_volume:
            what = self._where(subject, self._loc(subject, "responses", "volume"))
            try:
                geometry = rd.volume_geometry(self._path(subject, spec.mask),
                                              self._where(subject, self._loc(subject, "responses", "mask")))
                vols = [rd.VolumeSource(p, geometry, what) for p in self._paths(subject, spec.volume, what)]
            except DatasetError as e:
                return None, [str(e)]
            files, off = [], 0
            for v in vols:
                files.append((v.path, off, v.n_trials))
                off += v.n_trials
            n_vert = {h: len(geometry.hemi_index[h]) for h in HEMISPHERES}
            for h in HEMISPHERES:
                if n_vert[h] == 0:
                    problems.append(f"brain mask {geometry.mask_path} ({self._where(subject, self._loc(subject, 'responses', 'mask'))}) "
                                    f"has no voxel in {h} (RAS x {'< 0' if h == 'lh' else '>= 0'} through its affine); "
                                    "check the affine: both hemispheres need voxels")
            return _Sources(True, {}, vols, geometry, off, n_vert, {h: files for h in HEMISPHERES}), problems
        arrays, n_rows, n_vert, files = {}, {}, {}, {}
        for h in HEMISPHERES:
            hs = getattr(spec, h)
            what = self._where(subject, self._loc(subject, "responses", h))
            try:
                paths = self._paths(subject, hs.file, what)
            except DatasetError as e:
                problems.append(str(e))
                continue
            srcs = []
            for p in paths:
                try:
                    srcs.append(rd.ArraySource(p, hs.format, hs.key, hs.trials_axis, what))
                except DatasetError as e:
                    problems.append(str(e))
            if len(srcs) != len(paths):
                continue
            vs = {s.shape[1] for s in srcs}
            if len(vs) > 1:
                problems.append(f"{what}: the {h} files have different vertex counts: "
                                + "; ".join(f"{s.path} {s.shape[1]}" for s in srcs) + "; concatenated files must match")
                continue
            arrays[h], n_rows[h], n_vert[h] = srcs, sum(s.shape[0] for s in srcs), vs.pop()
            files[h], off = [], 0
            for s in srcs:
                files[h].append((s.path, off, s.shape[0]))
                off += s.shape[0]
        if problems:
            return None, problems
        if n_rows["lh"] != n_rows["rh"]:
            return None, [f"{self._where(subject, self._loc(subject, 'responses'))}: lh has {n_rows['lh']} trials "
                          f"({_shown(s.path for s in arrays['lh'])}) but rh has {n_rows['rh']} "
                          f"({_shown(s.path for s in arrays['rh'])}); both hemispheres hold the same trials"]
        return _Sources(False, arrays, [], None, n_rows["lh"], n_vert, files), []

    def _sources(self, subject: str) -> _Sources:
        return self._need(self._sources_result(self._check_subject(subject)))

    def n_vertices(self, subject: str, hemi: str) -> int:
        return int(self._sources(subject).n_vertices[_check_hemi(hemi)])

    def _row_problems(self, subject: str, t: _Trials, src: _Sources) -> list[str]:
        """Trials without responses and response rows without trials."""
        files = _shown(p for p, _, _ in src.files["lh"])
        if (t.row >= src.n_raw).any():
            bad = np.flatnonzero(t.row >= src.n_raw)
            return [f"{t.path} ({t.field}): {len(bad)} trial(s) of {subject} have no response: "
                    + (f"rows {_shown(t.row[bad].tolist())} are past" if t.explicit_row else
                       f"the table has {len(t.row)} trials but") + f" the {src.n_raw} response rows of {files}"]
        if not t.explicit_row and len(t.row) != src.n_raw:
            return [f"{t.path} ({t.field}) has {len(t.row)} trials of {subject} but the responses ({files}) have "
                    f"{src.n_raw} rows; add a row column naming each trial's response row, or make them match"]
        return []

    # ------------------------------------------------------------------ cache and assembly
    def _cache_root(self) -> Path:
        p = Path(self.spec.cache).expanduser()
        return p if p.is_absolute() else self.base / p

    def _raw_key(self, subject: str) -> list:
        spec, src = self._responses_spec(subject), self._sources(subject)
        files = [rd.stamp(Path(p)) for h in HEMISPHERES for p, _, _ in src.files[h]]
        if src.volume:
            files.append(rd.stamp(src.geometry.mask_path))
        return [files, spec.model_dump(mode="json")]

    def _derived_folder(self, subject: str) -> Path:
        t = self._trials(subject)
        key = rd.cache_key([self._raw_key(subject), rd.stamp(t.path), subject, self.spec.train_trials,
                            self.spec.zscore, self._field(subject, "noise_ceiling") == "from_repeats"])
        return self._cache_root() / subject / key

    def _fix(self) -> str:
        return f"set cache: in {self.root} to a writable folder"

    def _raw(self, subject: str) -> dict[str, np.ndarray]:
        """The trials x vertices matrices as stored (scaled, float32), per hemisphere, memory-mapped."""
        spec, src = self._responses_spec(subject), self._sources(subject)
        if not src.volume and spec.scale == 1.0 and all(len(src.arrays[h]) == 1 and _plain_npy(src.arrays[h][0])
                                                        for h in HEMISPHERES):
            return {h: np.load(src.arrays[h][0].path, mmap_mode="r") for h in HEMISPHERES}
        folder = self._cache_root() / subject / f"raw-{rd.cache_key(self._raw_key(subject))}"
        paths = {h: folder / f"{h}.npy" for h in HEMISPHERES}
        if not all(p.exists() for p in paths.values()):
            with rd.locked(folder, self._fix()):
                if not all(p.exists() for p in paths.values()):
                    self._write_raw(src, spec.scale, paths)
        return {h: np.load(p, mmap_mode="r") for h, p in paths.items()}

    @staticmethod
    def _write_raw(src: _Sources, scale: float, paths: dict[str, Path]) -> None:
        if src.volume:
            with rd.new_npy(paths["lh"], (src.n_raw, src.n_vertices["lh"])) as lh, \
                    rd.new_npy(paths["rh"], (src.n_raw, src.n_vertices["rh"])) as rh:
                out = {"lh": lh, "rh": rh}
                for v, (_, off, _) in zip(src.volumes, src.files["lh"]):
                    for t0, block in v.blocks(scale):
                        for h in HEMISPHERES:
                            out[h][off + t0: off + t0 + block[h].shape[0]] = block[h]
            return
        for h in HEMISPHERES:
            with rd.new_npy(paths[h], (src.n_raw, src.n_vertices[h])) as out:
                off = 0
                for s in src.arrays[h]:
                    for t0, block in s.blocks(scale):
                        out[off + t0: off + t0 + len(block)] = block
                    off += s.shape[0]

    def _assembled(self, subject: str, name: str) -> np.ndarray:
        """A file of the subject's derived folder (``{hemi}_{split}.npy``, ``{hemi}_noise_ceiling.npy``)."""
        t, src = self._trials(subject), self._sources(subject)
        problems = self._row_problems(subject, t, src)
        if problems:
            raise DatasetError(problems[0])
        folder = self._derived_folder(subject)
        path = folder / name
        if not path.exists():
            with rd.locked(folder, self._fix()):
                if not path.exists():
                    self._assemble(subject, folder)
        return np.load(path, mmap_mode="r")

    def _assemble(self, subject: str, folder: Path) -> None:
        """Write every split (and the noise ceilings from repeats) of both hemispheres, in vertex blocks."""
        t, raw = self._trials(subject), self._raw(subject)
        plans = {s: self._plan(subject, s)[1] for s in SPLITS if self._plan(subject, s)[1]}
        from_repeats = self._field(subject, "noise_ceiling") == "from_repeats"
        reps = None
        if from_repeats:
            groups: dict[str, list[int]] = {}
            for p, sid in enumerate(t.ids):
                groups.setdefault(sid, []).append(p)
            reps = [np.asarray(g) for g in groups.values() if len(g) > 1]
            test_counts = np.asarray([len(g) for g in self._plan(subject, "test")[1]], dtype=np.float64)
            if not reps or not len(test_counts):
                raise DatasetError(f"{self._where(subject, self._loc(subject, 'noise_ceiling'))}: from_repeats needs "
                                   f"stimuli shown at least twice and test trials; {subject} has "
                                   f"{len(reps)} repeated stimuli and {len(test_counts)} test stimuli in {t.path}")
            k = float(np.mean(1.0 / test_counts))  # (A/3 + B/2 + C/1) / (A + B + C) for 3, 2, 1 repeats
        train = t.split == "train"
        sessions = None
        if self.spec.zscore == "session":
            sessions = [(t.session == v) for v in dict.fromkeys(t.session)]
        elif self.spec.zscore == "run":  # each run by its own statistics (every trial of it, as in video fMRI)
            runs = np.asarray([str(v) for v in t.table.column("run").to_pylist()], dtype=object)
            sessions = [(runs == v) for v in dict.fromkeys(runs)]
            train = np.ones(len(runs), dtype=bool)
        for h in HEMISPHERES:
            r = raw[h]
            n_v = r.shape[1]
            step = max(1, min(n_v, rd.BLOCK_BYTES // max(1, len(t.row) * 8 * 3)))
            outs = {s: rd.new_npy(folder / f"{h}_{s}.npy", (len(g), n_v)) for s, g in plans.items()}
            if from_repeats:
                outs["nc"] = rd.new_npy(folder / f"{h}_noise_ceiling.npy", (n_v,), np.float64)
            with rd.all_of(outs) as arrays:
                for v0 in range(0, n_v, step):
                    x = np.asarray(r[:, v0:v0 + step][t.row], dtype=np.float64)  # trials x block
                    if sessions is not None:
                        x = rd.zscore(x, train, sessions)
                    for s, g in plans.items():
                        arrays[s][:, v0:v0 + step] = rd.group_means(x, g)
                    if from_repeats:
                        arrays["nc"][v0:v0 + step] = rd.nc_from_repeats(x, reps, k)

    def responses(self, subject: str, hemi: str, split: str = "train") -> np.ndarray:
        """Memory-mapped float32 matrix (rows x vertices), rows in :meth:`stimuli` ``index`` order."""
        hemi, split = _check_hemi(hemi), _check_split(split)
        if not self._plan(self._check_subject(subject), split)[0]:
            t = self._trials(subject)
            raise DatasetError(f"{subject} has no {split} trial in {t.path} ({t.field}); "
                               f"{'test responses come from the test trials' if split == 'test' else 'add train trials'}")
        return self._assembled(subject, f"{hemi}_{split}.npy")

    def noise_ceiling(self, subject: str, hemi: str) -> np.ndarray | None:
        """Noise ceiling per vertex (fraction in [0, 1]), from files or from the repeats; None when not described."""
        hemi = _check_hemi(hemi)
        spec = self._field(self._check_subject(subject), "noise_ceiling")
        if spec is None:
            return None
        if spec == "from_repeats":
            return np.asarray(self._assembled(subject, f"{hemi}_noise_ceiling.npy"), dtype=np.float64)
        loc = self._loc(subject, "noise_ceiling", "volume" if spec.volume else hemi)
        what = self._where(subject, loc)
        if spec.volume:
            src = self._sources(subject)
            if not src.volume:
                raise DatasetError(f"{what}: a noise-ceiling volume needs volume responses; give lh and rh .npy files")
            img = rd.load_nifti(self._path(subject, spec.volume), what)
            data = np.asarray(img.dataobj, dtype=np.float64)
            if data.shape != src.geometry.shape:
                raise DatasetError(f"noise-ceiling volume {self._path(subject, spec.volume)} ({what}) has shape "
                                   f"{data.shape}, the brain mask {src.geometry.shape}")
            nc = src.geometry.sample(data)[hemi]
            path = self._path(subject, spec.volume)
        else:
            path = self._path(subject, getattr(spec, hemi))
            if not path.exists():
                raise DatasetError(f"noise-ceiling file {path} ({what}) does not exist")
            try:
                nc = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
            except ValueError as e:
                raise DatasetError(f"{path} ({what}) is not a plain numeric .npy array ({e})") from None
        if nc.size and (np.nanmax(nc) > 1.0 + 1e-6 or np.nanmin(nc) < 0):
            raise DatasetError(f"{path} ({what}) has values outside [0, 1] (max {np.nanmax(nc):.3g}); noise ceilings "
                               "are fractions: divide a percent ceiling by 100")
        return nc

    # ------------------------------------------------------------------ ROIs
    def roi_families(self, subject: str) -> list[str]:
        """The ROI families described for the subject, in file order."""
        return list(self._field(self._check_subject(subject), "rois") or {})

    def roi_labels(self, subject: str, hemi: str, family: str) -> tuple[np.ndarray, dict[int, str]]:
        """Integer label per vertex (0 = outside) and the label -> ROI name mapping of one family."""
        hemi = _check_hemi(hemi)
        fams = self._field(self._check_subject(subject), "rois") or {}
        if family not in fams:
            raise DatasetError(f"{subject} has no ROI family {family!r} in {self.root}; its families: "
                               f"{', '.join(fams) or 'none (add rois: to the description)'}")
        return self._memoized(("roi", subject, hemi, family), lambda: self._read_roi(subject, hemi, family, fams[family]))

    def _read_roi(self, subject: str, hemi: str, family: str, spec: RoiFamily):
        what = self._where(subject, self._loc(subject, "rois", family, "volume" if spec.volume else hemi))
        self_named = False
        if spec.volume:
            src = self._sources(subject)
            if not src.volume:
                raise DatasetError(f"{what}: a label volume needs volume responses; give lh and rh label files")
            labels, names = rd.read_volume_labels(self._path(subject, spec.volume), src.geometry, what)[hemi], None
        else:
            files = getattr(spec, hemi)
            self_named = isinstance(files, dict) or files.lower().endswith(".annot")
            files = ({k: str(self._path(subject, v)) for k, v in files.items()} if isinstance(files, dict)
                     else str(self._path(subject, files)))
            labels, names = rd.read_surface_labels(files, self.n_vertices(subject, hemi), what)
        if spec.mapping is not None:
            if self_named:
                raise DatasetError(f"{self._where(subject, self._loc(subject, 'rois', family, 'mapping'))}: the label "
                                   "files name their ROIs themselves (.annot / {name: FILE.label}); remove mapping")
            mapping = rd.read_mapping(spec.mapping if isinstance(spec.mapping, dict) else
                                      str(self._path(subject, spec.mapping)),
                                      self._where(subject, self._loc(subject, "rois", family, "mapping")))
        elif names is not None:
            mapping = names
        else:
            raise DatasetError(f"{self._where(subject, self._loc(subject, 'rois', family))}: ROI family {family!r} "
                               "needs mapping: (label -> ROI name, e.g. {1: FFA-1, 2: FFA-2}, or a .json file); "
                               "only .label.gii, .annot and {name: FILE.label} name their labels themselves")
        return labels, mapping

    def report_families(self, subject: str) -> list[str]:
        """Every ROI family the dataset describes for the subject (Algonauts names or its own)."""
        return self.roi_families(subject)

    def _mask_families(self, subject: str, families: Iterable[str]) -> list[str]:
        """Families the dataset does not describe are absent from :meth:`roi_masks` (reports show them as
        NaN / "-")."""
        have = self.roi_families(subject)
        return [f for f in families if f in have]

    # ------------------------------------------------------------------ validation and summary
    def validate(self, *, check_images: bool = True, subjects: list[str] | None = None) -> list[str]:
        """Every problem found (each naming its file and the description field), empty when valid."""
        from ._described_checks import validate_described

        return validate_described(self, check_images=check_images, subjects=subjects)

    def summary(self) -> dict:
        """Counts per subject (as :meth:`AlgonautsDataset.summary`, plus trial counts); parts that cannot
        be read are left out (``validate`` names why)."""
        try:
            n_caps = len(self.captions)
        except DatasetError:
            n_caps = 0
        out = {"root": str(self.root), "name": self.name, "captions": n_caps, "subjects": {},
               "description": {"train_trials": self.spec.train_trials, "zscore": self.spec.zscore}}
        if self.is_timeseries:
            ts, _ = self._timeseries_result()
            out["description"]["timeseries"] = {
                "tr": self.spec.timeseries.tr, "fps": self.spec.timeseries.fps,
                "clips": None if ts is None else len(ts.clips),
                "trs": None if ts is None else sum(c.n_trs for c in ts.clips)}
        for s in self.subjects:
            entry: dict = {"train_images": None, "test_images": None, "test_responses": False, "hemispheres": {}}
            try:
                t = self._trials(s)
                entry.update(train_images=self.n_images(s, "train"), test_images=self.n_images(s, "test"),
                             test_responses=self.has_test_responses(s), train_trials=int((t.split == "train").sum()),
                             test_trials=int((t.split == "test").sum()))
            except DatasetError:
                pass
            for h in HEMISPHERES:
                hemi: dict = {"vertices": None, "rois": {}, "named_rois": {}}
                try:
                    hemi["vertices"] = self.n_vertices(s, h)
                    hemi["rois"] = {k: int(v.sum()) for k, v in self.roi_masks(s, h, families=self.roi_families(s)).items()}
                    hemi["named_rois"] = {k: int(v.sum()) for k, v in
                                          self.roi_masks(s, h, level="roi", families=self.roi_families(s)).items()}
                except DatasetError:
                    pass
                try:
                    nc = self.noise_ceiling(s, h)
                    if nc is not None:
                        hemi["noise_ceiling_mean"] = float(np.nanmean(nc))
                        hemi["noise_ceiling_median"] = float(np.nanmedian(nc))
                except DatasetError:
                    pass
                entry["hemispheres"][h] = hemi
            out["subjects"][s] = entry
        return out

    def input_files(self, kind: str = "responses") -> list[Path]:
        """The files the dataset reads, for identities (sizes and mtimes): ``"stimuli"`` (description,
        stimulus table, captions, brick, every stimulus file) or ``"responses"`` (description, trial
        tables, response files, masks, ROI and noise-ceiling files)."""
        from ._described_checks import input_files

        return input_files(self, kind)


# ----------------------------------------------------------------------------- helpers
def _plain_npy(src: rd.ArraySource) -> bool:
    """An .npy source the raw matrix can be read from directly (float32, trials x vertices, C order)."""
    if src.fmt != "npy" or src.trials_axis != 0:
        return False
    a = np.load(src.path, mmap_mode="r", allow_pickle=False)
    return a.dtype == np.float32 and a.flags.c_contiguous


def _nsd_of(sid: str, given, path) -> int | None:
    if given is not None:
        return _nsd_id(given, path)
    m = _NSD_RE.match(sid)
    return int(m.group(1)) if m else None


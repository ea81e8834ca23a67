"""Stimuli of :class:`~._described.DescribedDataset`: the stimulus table (files or images of a brick,
:data:`~brainstore.datasets.STIMULUS_SCHEMA`), captions, and the TRs of a time series and the
stimuli its events present."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from .._arrays import array_ref
from .._errors import DatasetError
from .._layout import SPLITS, STIMULUS_SCHEMA, check_split, nsd_id
from .._timeseries import frames_of_tr, run_groups
from . import _readers as rd
from ._fields import shown
from ._trials import TrialsMixin

__all__ = ["StimuliMixin"]

_NSD_RE = re.compile(r"^nsd-(\d+)$")
_TRAILING_INT = re.compile(r"(\d+)$")


class StimuliMixin(TrialsMixin):
    """Stimulus tables, captions, time-series and event stimuli."""

    def _timeseries_stimuli(self):
        ts, problems = self._timeseries_result()
        if ts is None:
            return {}, problems
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
                               f"stimulus id(s) are not in the stimulus table: {shown(unknown)}; add them to "
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
                               f"clips in {self._path(None, self.spec.timeseries.clips)}: {shown(unknown)}; a "
                               "time-series trial is CLIP/trNNNN (TR NNNN of the clip, from 0) of a listed clip, "
                               "within its length")
        if unknown:
            raise DatasetError(f"{t.path} ({t.field}): {len(unknown)} stimulus id(s) of {subject} are not in the "
                               f"stimulus table {self._path(None, self.spec.stimuli.table)}: {shown(unknown)}; add "
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
                    out.setdefault(nsd_id(k, path) if key == "nsd_id" else str(k), str(c))
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
                ids, _ = self._plan(subject, check_split(split))
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


def _nsd_of(sid: str, given, path) -> int | None:
    if given is not None:
        return nsd_id(given, path)
    m = _NSD_RE.match(sid)
    return int(m.group(1)) if m else None

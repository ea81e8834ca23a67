"""Whole-dataset validation of a :class:`~._described.DescribedDataset` (every problem, each naming
its file and the description field) and the list of files it reads (for identities): the
:class:`ChecksMixin` the dataset is made of, over its stimuli, responses and ROIs."""

from __future__ import annotations

from pathlib import Path
import numpy as np

from .._arrays import parse_array_ref
from .._errors import DatasetError
from .._images import image_problem
from .._layout import HEMISPHERES
from ._cortex import CortexMixin
from ._stimuli import StimuliMixin

_CHUNK_ROWS = 1024


def _brick_length(ds: "ChecksMixin") -> tuple[int | None, str | None]:
    """Images in the stimulus brick (or a time series' frame brick; axis 0), or (None, the problem)."""
    st = ds.spec.stimuli if ds.spec.stimuli is not None else ds.spec.timeseries.frames
    path = ds._path(None, st.array)
    what = ds._where(None, ("stimuli", "array") if ds.spec.stimuli is not None else ("timeseries", "frames"))
    if not path.exists():
        return None, f"image brick {path} ({what}) does not exist"
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            return int(a.shape[0]), None
        import h5py

        with h5py.File(path, "r") as f:
            if st.key not in f or not isinstance(f[st.key], h5py.Dataset):
                return None, f"image brick {path} ({what}) holds no dataset {st.key!r}; fix stimuli.key"
            return int(f[st.key].shape[0]), None
    except (OSError, ValueError) as e:
        return None, f"image brick {path} ({what}) cannot be read ({e})"


def _finite_problem(ds, subject: str, hemi: str, raw: np.ndarray, rows: np.ndarray, src) -> str | None:
    """NaN / inf among the trials' response rows, named by source file and trial (and voxel)."""
    for start in range(0, len(rows), _CHUNK_ROWS):
        sel = rows[start:start + _CHUNK_ROWS]
        block = np.asarray(raw[sel])
        bad = ~np.isfinite(block)
        if not bad.any():
            continue
        n_bad = int(bad.sum())
        r, c = np.argwhere(bad)[0]
        row = int(sel[r])
        kind = "NaN" if np.isnan(block[r, c]) else "inf"
        path, off = next(((p, o) for p, o, n in src.files[hemi] if o <= row < o + n), (src.files[hemi][0][0], 0))
        at = f"vertex {int(c)}"
        if src.volume:
            ijk = np.argwhere(src.geometry.mask)[src.geometry.hemi_index[hemi][c]]
            at = f"voxel {tuple(int(v) for v in ijk)} ({hemi} voxel {int(c)})"
        return (f"{path} ({subject} {hemi}): {n_bad}+ non-finite responses ({kind} first at trial {row - off} of the "
                f"file, {at}); replace them (e.g. with the vertex mean) or mask those {'voxels' if src.volume else 'vertices'} out")
    return None


def validate_described(ds: "ChecksMixin", *, check_images: bool = True,
                       subjects: list[str] | None = None) -> list[str]:
    """Every problem of the dataset (of ``subjects``, default all), each once, in the order found."""
    problems, table, stimuli_ok, brick_len = _stimulus_problems(ds)
    checked: set[str] = set()  # stimulus files already checked (subjects share stimuli)
    for s in subjects or ds.subjects:
        problems += _subject_problems(ds, s, table, stimuli_ok, brick_len, check_images, checked)
    return list(dict.fromkeys(problems))


def _stimulus_problems(ds: "ChecksMixin") -> tuple[list[str], dict | None, bool, int | None]:
    """Problems of the stimulus table, captions, brick and clips; the stimulus table, whether it read
    without problems, and the brick's length (None without a brick or when unreadable)."""
    problems: list[str] = []
    table, probs = ds._stimulus_table()
    problems += probs
    try:
        ds._caption_lookup()
    except DatasetError as e:
        problems.append(str(e))
    brick_len, brick_problem = (None, None)
    frames = ds.is_timeseries and ds.spec.timeseries.frames is not None
    if frames or (ds.spec.stimuli is not None and ds.spec.stimuli.array is not None):
        brick_len, brick_problem = _brick_length(ds)
        if brick_problem:
            problems.append(brick_problem)
    if ds.is_timeseries and ds.spec.timeseries.events is not None and not probs:
        problems += ds._file_stimuli()[1]
        try:
            for sid, path in zip(*(ds.event_stimuli().column(c).to_pylist() for c in ("stimulus_id", "path"))):
                if not parse_array_ref(path) and not Path(path).is_file():
                    problems.append(f"stimulus {sid} (events {ds.timeseries.events_table}): file {path} does not exist")
        except DatasetError as e:
            problems.append(str(e))
    if frames and brick_len is not None:
        ts, _ = ds._timeseries_result()
        for c in ts.clips if ts is not None else ():
            if c.first_frame + c.n_frames > brick_len:
                problems.append(f"clip {c.name} ({ts.clips_table}): frames {c.first_frame} to "
                                f"{c.first_frame + c.n_frames - 1} run past the {brick_len} frames of {ts.frames} "
                                f"({ds._where(None, ('timeseries', 'frames'))})")
    return problems, table, not probs, brick_len


def _subject_problems(ds: "ChecksMixin", s: str, table: dict | None, stimuli_ok: bool, brick_len: int | None,
                      check_images: bool, checked: set[str]) -> list[str]:
    """A subject's problems: trial table, stimulus files, response files, rows, noise ceilings, ROIs."""
    ds._check_subject(s)
    t, t_probs = ds._trials_result(s)
    src, s_probs = ds._sources_result(s)
    problems = t_probs + s_probs
    if t is not None and not t_probs and stimuli_ok:
        problems += _stimulus_file_problems(ds, s, t, table, brick_len, check_images, checked)
    if src is None or s_probs:
        return problems
    row_probs = ds._row_problems(s, t, src) if t is not None and not t_probs else ["(trial table)"]
    problems += [p for p in row_probs if p != "(trial table)"]
    assembled = False
    if not row_probs:
        try:
            raw = ds._raw(s)
            bad = [p for p in (_finite_problem(ds, s, h, raw[h], t.row, src) for h in HEMISPHERES) if p]
            problems += bad
            if not bad:
                for split in ("train", "test"):
                    if ds.n_images(s, split):
                        for h in HEMISPHERES:
                            ds.responses(s, h, split)  # assembles (and caches) the matrices now
                assembled = True
        except DatasetError as e:
            problems.append(str(e))
    for h in HEMISPHERES:
        problems += _noise_ceiling_problems(ds, s, h, src.n_vertices[h], assembled)
        problems += _roi_problems(ds, s, h, src.n_vertices[h])
    return problems + ds.space_problems(s)


def _stimulus_file_problems(ds: "ChecksMixin", s: str, t, table: dict | None, brick_len: int | None,
                            check_images: bool, checked: set[str]) -> list[str]:
    """Stimuli of a subject's trials: unknown ids, missing or empty files, undecodable images, brick
    indices past the brick's end (each file checked once, ``checked``)."""
    problems: list[str] = []
    ids = list(dict.fromkeys(t.ids))
    if table is not None:
        unknown = [i for i in ids if i not in table]
        if unknown:
            try:
                ds._resolve_stimuli(s, unknown)
            except DatasetError as e:  # names the trial table, the stimulus table and the ids
                problems.append(str(e))
            ids = [i for i in ids if i in table]
    try:
        resolved = ds._resolve_stimuli(s, ids)
    except DatasetError as e:
        problems.append(str(e))
        resolved = []
    for sid, (ref, _, _, modality) in zip(ids, resolved):
        if ref in checked:
            continue
        checked.add(ref)
        arr = parse_array_ref(ref)
        if arr is not None:
            if brick_len is not None and arr.index >= brick_len:
                problems.append(f"stimulus {sid} of {s}: brick index {arr.index} is past the {brick_len} images "
                                f"of {arr.file} ({ds._where(None, ('stimuli', 'array'))})")
            continue
        f = Path(ref)
        if not f.exists():
            problems.append(f"stimulus {sid} ({s}): file {f} does not exist (stimulus table "
                            f"{ds._path(None, ds.spec.stimuli.table)})")
        elif f.stat().st_size == 0:
            problems.append(f"stimulus {sid} ({s}): file {f} is empty (0 bytes)")
        elif check_images and modality == "image":
            p = image_problem(f)
            if p:
                problems.append(p)
    return problems


def _noise_ceiling_problems(ds, s: str, h: str, n_vert: int, assembled: bool) -> list[str]:
    if ds._field(s, "noise_ceiling") == "from_repeats" and not assembled:
        return []  # computed from the responses, whose problems are listed
    where = ds._where(s, ds._loc(s, "noise_ceiling"))
    try:
        nc = ds.noise_ceiling(s, h)
    except DatasetError as e:
        return [str(e)]
    if nc is not None and nc.shape != (n_vert,):
        return [f"{where}: the {h} noise ceiling of {s} has shape {nc.shape}, expected ({n_vert},) (one per vertex)"]
    if nc is not None and not np.isfinite(nc).all():
        return [f"{where}: the {h} noise ceiling of {s} holds NaN / inf values"]
    return []


def _roi_problems(ds, s: str, h: str, n_vert: int) -> list[str]:
    out = []
    for fam in ds.roi_families(s):
        try:
            labels, mapping = ds.roi_labels(s, h, fam)
        except DatasetError as e:
            out.append(str(e))
            continue
        what = ds._where(s, ds._loc(s, "rois", fam, "volume" if (ds._field(s, "rois")[fam].volume) else h))
        if labels.shape != (n_vert,):
            out.append(f"{what}: the {h} labels of {s} have length {labels.shape[0] if labels.ndim else 0} but {s} {h} "
                       f"has {n_vert} vertices; a label file has one label per vertex")
            continue
        unknown = sorted(set(np.unique(labels).tolist()) - set(mapping) - {0})
        if unknown:
            out.append(f"{what}: the {h} labels of {s} use {unknown} that the mapping does not name (it names "
                       f"{sorted(mapping)})")
    return out


def input_files(ds: "ChecksMixin", kind: str) -> list[Path]:
    """Existing files the dataset reads (see :meth:`ChecksMixin.input_files`)."""
    if kind not in ("stimuli", "responses"):
        raise ValueError(f"kind must be 'stimuli' or 'responses', not {kind!r}")
    st, ts = ds.spec.stimuli, ds.spec.timeseries
    out: list[Path] = [ds.root]
    if kind == "stimuli":
        given = ((st.table, st.array) if st is not None else ()) + \
            ((ts.clips, ts.events, ts.frames.array if ts.frames else None) if ts is not None else ())
        out += [ds._path(None, v) for v in (*given, ds.spec.captions) if v]
        for s in ds.subjects:
            try:
                out += [Path(p) for p in ds.stimuli([s]).column("path").to_pylist() if p and not parse_array_ref(p)]
            except DatasetError:
                pass
    else:
        for s in ds.subjects:
            out.append(ds._path(s, ds._field(s, "trials")))
            spec = ds._responses_spec(s)
            try:
                if spec.is_volume:
                    out += ds._paths(s, spec.volume, "volume") + [ds._path(s, spec.mask)]
                else:
                    for h in HEMISPHERES:
                        out += ds._paths(s, getattr(spec, h).file, h)
            except DatasetError:
                pass
            for fam in (ds._field(s, "rois") or {}).values():
                for v in (fam.lh, fam.rh, fam.volume, fam.mapping if isinstance(fam.mapping, str) else None):
                    if isinstance(v, dict):
                        out += [ds._path(s, p) for p in v.values()]
                    elif v:
                        out.append(ds._path(s, v))
            nc = ds._field(s, "noise_ceiling")
            if nc is not None and nc != "from_repeats":
                out += [ds._path(s, v) for v in (nc.lh, nc.rh, nc.volume) if v]
    return [p for p in dict.fromkeys(out) if p.is_file()]


class ChecksMixin(StimuliMixin, CortexMixin):
    """``validate`` and ``input_files`` over the stimuli, responses and ROIs."""

    def validate(self, *, check_images: bool = True, subjects: list[str] | None = None) -> list[str]:
        """Every problem found (each naming its file and the description field), empty when valid."""
        return validate_described(self, check_images=check_images, subjects=subjects)

    def input_files(self, kind: str = "responses") -> list[Path]:
        """The files the dataset reads, for identities (sizes and mtimes): ``"stimuli"`` (description,
        stimulus table, captions, brick, every stimulus file) or ``"responses"`` (description, trial
        tables, response files, masks, ROI and noise-ceiling files)."""
        return input_files(self, kind)

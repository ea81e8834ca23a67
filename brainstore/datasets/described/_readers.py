"""File readers of :class:`~._described.DescribedDataset`: response sources read in trial blocks
(npy, HDF5, GIfTI, MGH, NIfTI volumes through a brain mask), ROI label files, tables, ROI name
mappings, and the on-disk cache (atomic writes under a file lock, keyed by file sizes and mtimes).

nibabel and h5py are imported inside the functions that need them. Nothing here loads a whole
4-D NIfTI or HDF5 dataset: sources are sliced along trials (nibabel ``dataobj``, h5py datasets,
numpy memory maps), a block of at most :data:`BLOCK_BYTES` at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .._errors import DatasetError

#: Largest block read from a source at once (bytes of the source's own slice).
BLOCK_BYTES = 256 * 2 ** 20
#: Bumped when the assembled matrices would change for the same inputs.
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- response sources
class ArraySource:
    """One per-hemisphere response file seen as (n_trials, n_vertices), read in trial blocks.

    ``what`` names the file and the description field in messages.
    """

    def __init__(self, path: Path, fmt: str, key: str | None, trials_axis: int | None, what: str):
        self.path, self.fmt, self.key, self.what = path, fmt, key, what
        self.trials_axis = trials_axis if trials_axis is not None else (1 if fmt == "gifti" else 0)
        self.shape = self._shape()

    def _fail(self, msg: str) -> DatasetError:
        return DatasetError(f"{self.path} ({self.what}): {msg}")

    def _shape(self) -> tuple[int, int]:
        if not self.path.exists():
            raise DatasetError(f"response file {self.path} ({self.what}) does not exist")
        if self.path.stat().st_size == 0:
            raise DatasetError(f"response file {self.path} ({self.what}) is empty (0 bytes)")
        with self.open() as arr:
            return tuple(int(n) for n in arr.shape)

    @contextlib.contextmanager
    def open(self):
        """A (n_trials, n_vertices) array-like (numpy or h5py slicing) for the duration of the block."""
        if self.fmt == "npy":
            try:
                a = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise self._fail(f"not a plain numeric .npy array ({e})") from None
            yield _Oriented(self._two_d(a), self.trials_axis)
        elif self.fmt == "hdf5":
            import h5py

            try:
                f = h5py.File(self.path, "r")
            except OSError as e:
                raise self._fail(f"cannot be read as HDF5 ({e})") from None
            with f:
                if self.key not in f:
                    known = []
                    f.visit(lambda n: known.append(n) if isinstance(f[n], h5py.Dataset) else None)
                    raise self._fail(f"holds no dataset {self.key!r} (datasets there: {', '.join(known[:10]) or 'none'}); "
                                     "fix key:")
                d = f[self.key]
                if not isinstance(d, h5py.Dataset):
                    raise self._fail(f"{self.key!r} is a group, not a dataset; point key: at the response array")
                yield _Oriented(self._two_d(d), self.trials_axis)
        elif self.fmt == "gifti":
            yield _Gifti(self._load_nib(), self.trials_axis, self)
        elif self.fmt == "mgh":
            img = self._load_nib(keep_file_open=True)
            shape = img.shape
            if len(shape) < 3 or tuple(shape[1:3]) != (1, 1) or len(shape) > 4:
                raise self._fail(f"has shape {shape}; an MGH response file is vertices x 1 x 1 x trials")
            yield _Mgh(img)
        else:  # pragma: no cover - formats are checked by the description
            raise self._fail(f"unknown format {self.fmt}")

    def _load_nib(self, **kw):
        import nibabel as nib

        try:
            return nib.load(str(self.path), **kw)
        except Exception as e:  # nibabel raises several types for unreadable files
            raise self._fail(f"cannot be read by nibabel ({type(e).__name__}: {e})") from None

    def _two_d(self, a):
        if a.ndim != 2:
            raise self._fail(f"has shape {tuple(a.shape)}; expected a 2-D array (trials x vertices, or set "
                             "trials_axis: 1 for vertices x trials)")
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise self._fail(f"holds {a.dtype} values; responses must be real numbers")
        return a

    def blocks(self, scale: float = 1.0) -> Iterator[tuple[int, np.ndarray]]:
        """``(first trial, float32 block of trials x vertices)`` over the whole file."""
        n, v = self.shape
        step = max(1, BLOCK_BYTES // max(1, v * 8))
        with self.open() as arr:
            for t0 in range(0, n, step):
                yield t0, _scaled(arr.rows(t0, min(n, t0 + step)), scale)


def _scaled(block: np.ndarray, scale: float) -> np.ndarray:
    block = np.asarray(block)
    if scale != 1.0:
        return (block.astype(np.float64) * scale).astype(np.float32)
    return block.astype(np.float32, copy=False)


class _Oriented:
    def __init__(self, a, trials_axis: int):
        self.a, self.axis = a, trials_axis
        self.shape = tuple(a.shape) if trials_axis == 0 else tuple(a.shape)[::-1]

    def rows(self, t0: int, t1: int) -> np.ndarray:
        return np.asarray(self.a[t0:t1]) if self.axis == 0 else np.asarray(self.a[:, t0:t1]).T


class _Gifti:
    """A GIfTI file: one data array per trial, or one 2-D array (GIfTI is XML: it is read whole)."""

    def __init__(self, img, trials_axis: int, src: ArraySource):
        arrays = img.darrays
        if not arrays:
            raise src._fail("holds no data array")
        if len(arrays) > 1:
            sizes = {d.data.shape for d in arrays}
            if len(sizes) != 1 or len(next(iter(sizes))) != 1:
                raise src._fail(f"holds {len(arrays)} data arrays of shapes {sorted(sizes)[:3]}; one 1-D array "
                                "per trial (all of one length) or a single 2-D array is expected")
            self.data = None
            self.arrays = arrays
            self.shape = (len(arrays), int(arrays[0].data.shape[0]))
        else:
            d = np.asarray(arrays[0].data)
            if d.ndim == 1:
                d = d[:, None]
                trials_axis = 1
            if d.ndim != 2:
                raise src._fail(f"its data array has shape {d.shape}; expected vertices x trials")
            self.data = d if trials_axis == 0 else d.T
            self.shape = tuple(self.data.shape)

    def rows(self, t0: int, t1: int) -> np.ndarray:
        if self.data is not None:
            return self.data[t0:t1]
        return np.stack([np.asarray(d.data) for d in self.arrays[t0:t1]])


class _Mgh:
    def __init__(self, img):
        self.img = img
        shape = img.shape
        self.shape = (shape[3] if len(shape) == 4 else 1, shape[0])

    def rows(self, t0: int, t1: int) -> np.ndarray:
        if len(self.img.shape) == 3:
            return np.asarray(self.img.dataobj[:, 0, 0])[None, :]
        return np.asarray(self.img.dataobj[:, 0, 0, t0:t1]).T


@dataclass
class VolumeGeometry:
    """The brain mask of a volume dataset: inside voxels in C order of (i, j, k), split by hemisphere."""

    mask_path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    mask: np.ndarray  # bool, 3-D
    hemi_index: dict[str, np.ndarray] = field(default_factory=dict)  # hemi -> positions among the inside voxels

    @property
    def n_inside(self) -> int:
        return int(self.mask.sum())

    def sample(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        """A 3-D array's values at the inside voxels, per hemisphere (lh: x < 0, rh: x >= 0)."""
        inside = volume[self.mask]
        return {h: inside[i] for h, i in self.hemi_index.items()}


def volume_geometry(mask_path: Path, what: str) -> VolumeGeometry:
    """Read a brain mask (3-D NIfTI, finite nonzero = inside) and split its voxels by the sign of
    their RAS x coordinate (through the mask's affine): x < 0 -> ``lh``, x >= 0 -> ``rh``."""
    img = load_nifti(mask_path, what)
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"brain mask {mask_path} ({what}) has shape {data.shape}; a mask is a 3-D volume")
    mask = np.isfinite(data) & (data != 0)
    ijk = np.argwhere(mask)  # the C order of boolean indexing
    x = ijk @ img.affine[0, :3] + img.affine[0, 3]
    left = x < 0
    return VolumeGeometry(mask_path, tuple(int(s) for s in data.shape), np.asarray(img.affine, dtype=np.float64), mask,
                          {"lh": np.flatnonzero(left), "rh": np.flatnonzero(~left)})


def load_nifti(path: Path, what: str, **kw):
    import nibabel as nib

    if not path.exists():
        raise DatasetError(f"NIfTI file {path} ({what}) does not exist")
    try:
        return nib.load(str(path), **kw)
    except Exception as e:  # nibabel raises several types for unreadable files
        raise DatasetError(f"{path} ({what}) cannot be read as NIfTI ({type(e).__name__}: {e})") from None


class VolumeSource:
    """A 4-D NIfTI response volume (trials on the last axis) seen through a brain mask."""

    def __init__(self, path: Path, geometry: VolumeGeometry, what: str):
        self.path, self.geometry, self.what = path, geometry, what
        img = load_nifti(path, what)
        shape = img.shape
        if len(shape) not in (3, 4):
            raise DatasetError(f"response volume {path} ({what}) has shape {shape}; expected x, y, z, trials")
        if tuple(shape[:3]) != geometry.shape:
            raise DatasetError(f"response volume {path} ({what}) has a {tuple(shape[:3])} grid but the brain mask "
                               f"{geometry.mask_path} has {geometry.shape}; the mask must be on the volume's grid")
        if not np.allclose(img.affine, geometry.affine, atol=1e-3):
            raise DatasetError(f"response volume {path} ({what}) and the brain mask {geometry.mask_path} have "
                               "different affines; resample the mask onto the volume's grid")
        self.n_trials = int(shape[3]) if len(shape) == 4 else 1

    def blocks(self, scale: float = 1.0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(first trial, {hemi: float32 trials x voxels})`` over the file, a block of trials at a time."""
        img = load_nifti(self.path, self.what, keep_file_open=True)  # sequential reads of a .nii.gz stay linear
        voxels = int(np.prod(self.geometry.shape))
        step = max(1, BLOCK_BYTES // (voxels * 8))
        m = self.geometry.mask
        for t0 in range(0, self.n_trials, step):
            t1 = min(self.n_trials, t0 + step)
            block = np.asarray(img.dataobj[..., t0:t1]) if len(img.shape) == 4 else np.asarray(img.dataobj)[..., None]
            inside = block[m]  # (n_inside, trials)
            yield t0, {h: _scaled(inside[i].T, scale) for h, i in self.geometry.hemi_index.items()}


# ----------------------------------------------------------------------------- ROI labels
def read_surface_labels(spec, n_vertices: int | None, what: str) -> tuple[np.ndarray, dict[int, str] | None]:
    """Integer labels per vertex (0 = outside) and the names the file itself gives (or None).

    ``spec``: a label file (``.npy``, ``.label.gii``, ``.annot``, ``.mgh``/``.mgz``) or
    ``{ROI name: FreeSurfer .label file}`` (labels 1, 2, ... in the order given; a later file wins
    where two overlap).
    """
    import nibabel as nib

    if isinstance(spec, dict):
        if n_vertices is None:
            raise DatasetError(f"{what}: FreeSurfer .label files need the hemisphere's vertex count, which the "
                               "responses did not give; fix the responses first")
        labels = np.zeros(n_vertices, dtype=np.int64)
        names = {}
        for k, (name, p) in enumerate(spec.items(), start=1):
            path = Path(p)
            _exists(path, what)
            try:
                idx = np.asarray(nib.freesurfer.read_label(str(path)), dtype=np.int64)
            except Exception as e:
                raise DatasetError(f"{path} ({what}): cannot be read as a FreeSurfer .label file ({e})") from None
            if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
                raise DatasetError(f"{path} ({what}) names vertex {int(idx.max())} but the hemisphere has "
                                   f"{n_vertices} vertices; the label belongs to another surface")
            labels[idx] = k
            names[k] = name
        return labels, names
    path = Path(spec)
    _exists(path, what)
    low = path.name.lower()
    try:
        if low.endswith(".npy"):
            try:
                a = np.load(path, allow_pickle=False)
            except ValueError as e:
                raise DatasetError(f"{path} ({what}) is not a plain numeric .npy array ({e})") from None
            return _int_labels(np.squeeze(a), path, what), None
        if low.endswith(".gii"):
            img = nib.load(str(path))
            if not img.darrays:
                raise DatasetError(f"{path} ({what}) holds no data array")
            names = {int(k): str(v) for k, v in img.labeltable.get_labels_as_dict().items() if int(k) != 0}
            return _int_labels(np.asarray(img.darrays[0].data), path, what), names or None
        if low.endswith(".annot"):
            labels, _, names = nib.freesurfer.read_annot(str(path))
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            out = np.where(labels >= 0, labels + 1, 0).astype(np.int64)
            skip = [i + 1 for i, n in enumerate(names) if n.lower() in ("unknown", "???", "medial_wall")]
            out[np.isin(out, skip)] = 0
            return out, {i + 1: n for i, n in enumerate(names) if i + 1 not in skip}
        if low.endswith((".mgh", ".mgz")):
            return _int_labels(np.squeeze(np.asarray(nib.load(str(path)).dataobj)), path, what), None
    except DatasetError:
        raise
    except Exception as e:  # nibabel raises several types for unreadable files
        raise DatasetError(f"{path} ({what}) cannot be read ({type(e).__name__}: {e})") from None
    raise DatasetError(f"{path} ({what}): unknown label file type; use .npy, .label.gii, .annot, .mgh/.mgz, or "
                       "{ROI name: FILE.label}")


def read_volume_labels(path: Path, geometry: VolumeGeometry, what: str) -> dict[str, np.ndarray]:
    """A label volume's labels at the inside voxels, per hemisphere."""
    img = load_nifti(path, what)
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != geometry.shape:
        raise DatasetError(f"label volume {path} ({what}) has shape {data.shape} but the responses' brain mask "
                           f"{geometry.mask_path} has {geometry.shape}; labels must be on the responses' grid")
    return {h: _int_labels(v, path, what) for h, v in geometry.sample(data).items()}


def _int_labels(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise DatasetError(f"{path} ({what}) has shape {a.shape}; labels are one integer per vertex")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise DatasetError(f"{path} ({what}) holds non-integer labels; ROI labels are integers (0 = outside)")
    elif not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise DatasetError(f"{path} ({what}) holds {a.dtype} values; ROI labels are integers (0 = outside)")
    return a.astype(np.int64)


def read_mapping(spec, what: str) -> dict[int, str]:
    """Label -> ROI name from a dict, a ``.json`` file or the Algonauts release's pickled-dict ``.npy``."""
    if isinstance(spec, dict):
        return {int(k): str(v) for k, v in spec.items()}
    path = Path(spec)
    _exists(path, what)
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except ValueError as e:
            raise DatasetError(f"{path} ({what}) is not valid JSON ({e})") from None
    elif path.suffix == ".npy":
        obj = np.load(path, allow_pickle=True)  # the release's format; pickles are allowed for this file only
        raw = obj.item() if obj.dtype == object and obj.shape == () else None
    else:
        raise DatasetError(f"{path} ({what}): a mapping file is .json (or the Algonauts pickled-dict .npy)")
    if not isinstance(raw, dict):
        raise DatasetError(f"{path} ({what}) does not hold a label -> ROI name mapping")
    try:
        out = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path} ({what}) has a non-integer label ({e})") from None
    out.pop(0, None)
    return out


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"file {path} ({what}) does not exist")


# ----------------------------------------------------------------------------- tables
#: Columns always read as text (ids keep leading zeros, subjects and sessions stay as written).
TEXT_COLUMNS = ("stimulus_id", "subject", "split", "path", "caption", "modality", "image", "session", "run")


def read_table(path: Path, what: str):
    """A CSV or Parquet table (pyarrow)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    _exists(path, what)
    low = path.name.lower()
    try:
        if low.endswith(".parquet"):
            return pq.read_table(path)
        if low.endswith((".csv", ".tsv")):
            header = path.open().readline()
            delim = "\t" if low.endswith(".tsv") else ","
            present = [c.strip().strip('"') for c in header.rstrip("\r\n").split(delim)]
            types = {c: pa.string() for c in TEXT_COLUMNS if c in present}
            return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim),
                                 convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    except Exception as e:  # pyarrow raises several types for unreadable tables
        raise DatasetError(f"cannot read {path} ({what}): {' '.join(str(e).split())}") from None
    raise DatasetError(f"{path} ({what}) must be .csv, .tsv or .parquet")


# ----------------------------------------------------------------------------- cache
def stamp(path: Path) -> list:
    """``[path, size, mtime_ns]`` (``[path, None, None]`` for a missing file): what a cache key holds."""
    try:
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def cache_key(parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(folder: Path, fix: str):
    """Create ``folder`` and hold its build lock (one builder at a time across processes and nodes)."""
    from filelock import FileLock

    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder) + ".lock")
        with lock:
            yield folder
    except PermissionError as e:
        raise DatasetError(f"cannot write the response cache {folder} ({e.strerror or e}); {fix}") from None


@contextlib.contextmanager
def new_npy(path: Path, shape: tuple[int, ...], dtype=np.float32):
    """A memory-mapped .npy under a temporary name, renamed to ``path`` once the block finishes."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(int(n) for n in shape))
    try:
        yield arr
        arr.flush()
        del arr
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ----------------------------------------------------------------------------- assembly numerics
def zscore(x: np.ndarray, train: np.ndarray, sessions: list[np.ndarray]) -> np.ndarray:
    """Per session, (x - mean) / std over that session's training trials (all training trials'
    statistics for a session with fewer than two); a zero std counts as 1."""
    def stats(sel):
        mu, sd = x[sel].mean(axis=0), x[sel].std(axis=0)
        return mu, np.where(sd > 0, sd, 1.0)

    overall = stats(train)
    out = np.empty_like(x)
    for sel in sessions:
        tr = sel & train
        mu, sd = stats(tr) if tr.sum() >= 2 else overall
        out[sel] = (x[sel] - mu) / sd
    return out


def group_means(x: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Row g = mean of x over the trials of group g (float32)."""
    counts = np.asarray([len(g) for g in groups])
    if (counts == 1).all():
        return x[np.concatenate(groups)].astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (np.add.reduceat(x[np.concatenate(groups)], starts, axis=0) / counts[:, None]).astype(np.float32)


def nc_from_repeats(x: np.ndarray, reps: list[np.ndarray], k: float) -> np.ndarray:
    """Noise ceiling from the repeated stimuli (Scoring contract): noise variance pooled within
    stimuli, signal variance = total - noise, ncsnr = sqrt(signal / noise), NC = ncsnr^2 / (ncsnr^2 + k)
    with k the mean over test stimuli of 1 / repeats."""
    order = np.concatenate(reps)
    counts = np.asarray([len(g) for g in reps])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    xs = x[order]
    means = np.add.reduceat(xs, starts, axis=0) / counts[:, None]
    dev = xs - np.repeat(means, counts, axis=0)
    var_noise = (dev ** 2).sum(axis=0) / (counts - 1).sum()
    var_signal = np.clip(xs.var(axis=0, ddof=1) - var_noise, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = np.where(var_noise > 0, var_signal / np.where(var_noise > 0, var_noise, 1.0),
                      np.where(var_signal > 0, np.inf, 0.0))
        nc = np.where(np.isinf(s2), 1.0, s2 / (s2 + k))
    return nc


class all_of:
    """Enter several ``new_npy`` contexts: all renamed in place on success, all removed on failure."""

    def __init__(self, ctxs: dict):
        self.ctxs = ctxs

    def __enter__(self):
        self.entered = {}
        for k, c in self.ctxs.items():
            self.entered[k] = c.__enter__()
        return self.entered

    def __exit__(self, *exc):
        for c in reversed(list(self.ctxs.values())):
            c.__exit__(*exc)
        return False

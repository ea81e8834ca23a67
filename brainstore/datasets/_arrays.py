"""Stimuli held in a pixel array (an image brick) instead of one file per image.

NSD ships its 73,000 stimuli as one HDF5 dataset (``nsd_stimuli.hdf5``, ``imgBrick``, 73,000 x 425 x
425 x 3 uint8); other collections come as ``.npy`` bricks. A stimulus table row names one image of
such a brick in its ``path`` column with an *array reference*::

    /data/nsd/nsd_stimuli.hdf5#imgBrick[2950]     HDF5: file, dataset path inside it, index on axis 0
    /data/things/images.npy#[17]                  npy: file, index on axis 0 (no dataset path)

The extraction pipeline reads such rows by index (no decoding step): :func:`read_array_refs` groups
a batch's references by brick, sorts their indices and reads them in as few slices as possible
(h5py for HDF5, the file opened once per process; ``np.load(mmap_mode="r")`` for npy), giving the
same H x W x 3 uint8 pixels the PNG route decodes. :func:`brick_info` / :func:`ref_problem` check a
brick and a reference cheaply (the file stays open, its header read once).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._errors import DatasetError

__all__ = ["ArrayRef", "array_ref", "parse_array_ref", "is_array_ref", "BrickError", "BrickFileError", "BrickInfo",
           "BrickFormatError", "brick_info", "brick_problem", "ref_problem", "range_error", "read_array_refs",
           "read_array_ref", "close_bricks", "HDF5_SUFFIXES", "MAX_PIXELS"]

_REF = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|npy))#(?P<key>[^\[\]]*)\[(?P<index>\d+)\]$", re.IGNORECASE)


class ArrayRef(NamedTuple):
    """One image of a brick: ``file`` (absolute path), ``key`` (HDF5 dataset path; ``""`` for npy), ``index``."""

    file: str
    key: str
    index: int


def array_ref(file: str | Path, key: str, index: int) -> str:
    """The ``path`` string of image ``index`` of brick ``file`` (``key``: HDF5 dataset path, ``""`` for npy)."""
    if "[" in key or "]" in key or "#" in key:
        raise ValueError(f"array key {key!r} may not contain '[', ']' or '#'")
    if int(index) < 0:
        raise ValueError(f"array index {index} must be >= 0")
    return f"{Path(file).expanduser().absolute()}#{key}[{int(index)}]"


def parse_array_ref(path: str) -> ArrayRef | None:
    """The :class:`ArrayRef` a ``path`` string names, or None for an ordinary file path."""
    m = _REF.match(str(path))
    if m is None:
        return None
    return ArrayRef(m["file"], m["key"], int(m["index"]))


def is_array_ref(path: str) -> bool:
    return parse_array_ref(path) is not None


# ----------------------------------------------------------------------------- reading
# An image brick is N x H x W x 3 uint8 (RGB) or N x H x W uint8 (grayscale), one image per index on
# axis 0. Reading is cached per process (one open h5py.File / np.memmap per brick file, reopened
# when the file changes), so a Ray worker opens a brick once for all the tasks it runs.

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
#: Largest image accepted (pixels): 8,192 x 8,192, in a brick as in a file (:mod:`._images`). NSD images
#: are 425 x 425; anything far larger is almost certainly a mistake or a decompression bomb.
MAX_PIXELS = 8192 * 8192
#: Indices at most this far apart are read in one slice (the images between are read and dropped):
#: one large read beats several small ones on HDF5 and on disk.
MAX_GAP = 8
#: Open brick files kept per process (least recently used closed first).
MAX_OPEN = 16
#: HDF5 chunk cache per open file (bytes): a chunked, compressed brick decompresses each chunk once.
CHUNK_CACHE = 64 * 1024 * 1024
_LAYOUT = "N x H x W x 3 uint8 (RGB) or N x H x W uint8 (grayscale), one image per index on axis 0"


class BrickError(DatasetError):
    """An array reference cannot be read (missing key, index out of range, a brick of the wrong dtype/shape)."""


class BrickFileError(BrickError):
    """The brick file itself is missing or is not a readable HDF5 / npy file (every reference into it fails)."""


class BrickFormatError(BrickError):
    """The brick holds no images of the accepted layout (dtype, shape or size; every reference into it fails)."""


class BrickInfo(NamedTuple):
    """A brick's images: ``n`` on axis 0 of ``height`` x ``width``, ``channels`` 3 (RGB) or 1 (grayscale)."""

    n: int
    height: int
    width: int
    channels: int


_OPEN: "OrderedDict[str, tuple[tuple, object]]" = OrderedDict()  # file -> (stat key, h5py.File | np.memmap)


def _is_hdf5(file: str) -> bool:
    return file.lower().endswith(HDF5_SUFFIXES)


def _stat(file: str) -> tuple:
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise BrickFileError(f"image brick {file} does not exist; fix the path in the array references "
                             f"(FILE.hdf5#KEY[INDEX] or FILE.npy#[INDEX]) or put the file there") from None
    except OSError as e:
        raise BrickFileError(f"image brick {file} cannot be read ({e})") from None
    if not os.path.isfile(file):
        raise BrickFileError(f"image brick {file} is not a file; an array reference names an .hdf5/.h5 or .npy file")
    return st.st_mtime_ns, st.st_size, st.st_ino


def _open(file: str):
    """The process's open handle of ``file`` (h5py.File or np.memmap), reopened when the file changed."""
    key = _stat(file)
    hit = _OPEN.get(file)
    if hit is not None and hit[0] == key:
        _OPEN.move_to_end(file)
        return hit[1]
    if hit is not None:
        _close(file)
    if _is_hdf5(file):
        import h5py

        try:
            handle = h5py.File(file, "r", locking=False, rdcc_nbytes=CHUNK_CACHE)
        except OSError as e:
            raise BrickFileError(f"image brick {file} is not a readable HDF5 file ({e}); write it with h5py "
                                 f"(a dataset of {_LAYOUT})") from None
    else:
        try:
            handle = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise BrickFileError(f"image brick {file} is not a readable .npy array ({e}); write it with "
                                 f"numpy.save (an array of {_LAYOUT})") from None
        if not isinstance(handle, np.ndarray):  # an .npz under an .npy name
            raise BrickFileError(f"image brick {file} is not a .npy array; write it with numpy.save")
    _OPEN[file] = (key, handle)
    while len(_OPEN) > MAX_OPEN:
        _close(next(iter(_OPEN)))
    return handle


def _close(file: str) -> None:
    _, handle = _OPEN.pop(file)
    if hasattr(handle, "close"):
        try:
            handle.close()
        except Exception:  # noqa: BLE001 - a stale handle; nothing to keep
            pass


def close_bricks() -> None:
    """Close every brick file this process holds open."""
    for f in list(_OPEN):
        _close(f)


def _describe_ref(file: str, key: str, index: int | None = None) -> str:
    return f"{file}#{key}[{index}]" if index is not None else (f"{file}#{key}" if key else file)


def _listing(handle) -> str:
    """The dataset paths of an open HDF5 file, for error messages (the first 8)."""
    import h5py

    names: list[str] = []
    handle.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "none"


def _dataset(file: str, key: str):
    """The array ``key`` of brick ``file`` (checked: dtype and shape), and its :class:`BrickInfo`.

    Raises :class:`BrickFileError` for a missing or unreadable file, :class:`BrickFormatError` for an
    array of the wrong dtype/shape, :class:`BrickError` for a missing key.
    """
    handle = _open(file)
    if _is_hdf5(file):
        import h5py

        if not key:
            raise BrickError(f"array reference into HDF5 file {file} names no dataset; write "
                             f"{file}#DATASET[INDEX] (datasets in the file: {_listing(handle)})")
        obj = handle.get(key)
        if obj is None:
            raise BrickError(f"HDF5 file {file} has no dataset {key!r}; fix the reference's key "
                             f"(datasets in the file: {_listing(handle)})")
        if not isinstance(obj, h5py.Dataset):
            raise BrickError(f"{key!r} in HDF5 file {file} is a group, not a dataset; name a dataset "
                             f"(datasets in the file: {_listing(handle)})")
        arr = obj
    else:
        if key:
            raise BrickError(f"a .npy brick has no dataset key, but the reference names {key!r}; write "
                             f"{file}#[INDEX]")
        arr = handle
    shape, dtype = tuple(arr.shape), np.dtype(arr.dtype)
    where = _describe_ref(file, key)
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3):
        raise BrickFormatError(f"image brick {where} is {' x '.join(map(str, shape)) or 'a scalar'} {dtype}, "
                               f"not {_LAYOUT}; convert it (e.g. numpy: (x * 255).round().clip(0, 255)"
                               ".astype('uint8') for floats in 0..1, x.transpose(0, 2, 3, 1) for N x 3 x H x W)")
    if shape[1] * shape[2] > MAX_PIXELS or shape[1] == 0 or shape[2] == 0:
        raise BrickFormatError(f"image brick {where} holds {shape[1]} x {shape[2]} images, outside 1 .. "
                               f"{MAX_PIXELS:,} pixels; {_LAYOUT}")
    return arr, BrickInfo(int(shape[0]), int(shape[1]), int(shape[2]), 3 if len(shape) == 4 else 1)


def brick_info(file: str, key: str = "") -> BrickInfo:
    """Shape of brick ``file`` / ``key`` (cheap: the file stays open in this process).

    Raises
    ------
    BrickFileError
        The file is missing or not a readable HDF5 / npy file.
    BrickFormatError
        The array is not N x H x W x 3 / N x H x W uint8 (or its images are too large).
    BrickError
        The key is missing (or names a group), or a ``.npy`` reference names a key.
    """
    return _dataset(file, key)[1]


def brick_problem(file: str, key: str = "") -> str | None:
    """None when ``file`` / ``key`` is a usable brick, else a sentence naming it and the fix."""
    try:
        brick_info(file, key)
    except BrickError as e:
        return str(e)
    return None


def ref_problem(path: str | ArrayRef) -> str | None:
    """None when the array reference can be read (file, key, dtype/shape, index in range), else why not."""
    ref = parse_array_ref(path) if isinstance(path, str) else path
    if ref is None:
        return f"{path!r} is not an array reference (FILE.hdf5#KEY[INDEX] or FILE.npy#[INDEX])"
    try:
        info = brick_info(ref.file, ref.key)
    except BrickError as e:
        return str(e)
    if ref.index >= info.n:
        return str(range_error(ref, info.n))
    return None


def range_error(ref: ArrayRef, n: int) -> BrickError:
    """The error for a reference whose index lies past the end of its brick.

    Parameters
    ----------
    ref : ArrayRef
        The reference (``ref.index >= n``).
    n : int
        The number of images the brick holds (``brick_info(ref.file, ref.key).n``).

    Returns
    -------
    BrickError
        Naming the reference, the brick, its valid indices and the fix; returned, not raised, so
        that a reader can put it in the reference's place (:func:`read_array_refs`).
    """
    return BrickError(f"array reference {_describe_ref(*ref)}: index {ref.index} is out of range; the brick "
                      f"{_describe_ref(ref.file, ref.key)} holds {n} image(s) (indices 0..{n - 1}); fix the index")


def _runs(indices: list[int], max_gap: int) -> list[tuple[int, int]]:
    """Sorted unique ``indices`` -> ``[(start, stop), ...]`` slices covering them, gaps <= ``max_gap`` merged."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i - runs[-1][1] < max_gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _rgb(img: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 as the PNG route decodes it (grayscale replicated to 3 channels, like PIL's L -> RGB)."""
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return img


def read_array_refs(refs: list[ArrayRef], *, max_gap: int = MAX_GAP) -> list[np.ndarray | BrickError]:
    """The pixels of each reference: H x W x 3 uint8 (C order), or the :class:`BrickError` saying why not.

    References into one brick are read together: their indices sorted and read in as few slices as
    possible (indices at most ``max_gap`` apart share a slice); h5py for HDF5 (the file opened once per
    process), ``np.load(mmap_mode="r")`` for npy. Nothing raises: a reference into a missing file, a
    missing key, a brick of the wrong layout or an index out of range gets its error (naming the
    reference and the fix) in its place.
    """
    out: list[np.ndarray | BrickError | None] = [None] * len(refs)
    if any(r.index < 0 for r in refs):
        raise ValueError("array reference indices are >= 0")
    groups: dict[tuple[str, str], list[int]] = {}
    for pos, r in enumerate(refs):
        groups.setdefault((r.file, r.key), []).append(pos)
    for (file, key), positions in groups.items():
        try:
            arr, info = _dataset(file, key)
        except BrickError as e:
            for p in positions:
                out[p] = type(e)(f"array reference {_describe_ref(file, key, refs[p].index)}: {e}")
            continue
        wanted: dict[int, list[int]] = {}
        for p in positions:
            if refs[p].index >= info.n:
                out[p] = range_error(refs[p], info.n)
            else:
                wanted.setdefault(refs[p].index, []).append(p)
        for start, stop in _runs(sorted(wanted), max_gap):
            try:
                block = np.asarray(arr[start:stop])
            except Exception:  # noqa: BLE001 - a corrupt chunk: read one by one to isolate it
                block = None
            for i in range(start, stop):
                if i not in wanted:
                    continue
                try:
                    img = block[i - start] if block is not None else np.asarray(arr[i])
                    pixels = np.ascontiguousarray(_rgb(img))
                except Exception as e:  # noqa: BLE001 - this image only
                    err = BrickError(f"array reference {_describe_ref(file, key, i)}: cannot read the image "
                                     f"({type(e).__name__}: {e}); the brick file may be corrupt")
                    for p in wanted[i]:
                        out[p] = err
                    continue
                for p in wanted[i]:
                    out[p] = pixels
            del block
    return out  # type: ignore[return-value]


def read_array_ref(ref: str | ArrayRef) -> np.ndarray:
    """The pixels of one reference (H x W x 3 uint8); raises :class:`BrickError` when it cannot be read."""
    r = parse_array_ref(ref) if isinstance(ref, str) else ref
    if r is None:
        raise BrickError(f"{ref!r} is not an array reference (FILE.hdf5#KEY[INDEX] or FILE.npy#[INDEX])")
    got = read_array_refs([r])[0]
    if isinstance(got, BrickError):
        raise got
    return got

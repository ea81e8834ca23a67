"""Stimuli held in a pixel array (an image brick) instead of one file per image.

NSD ships its 73,000 stimuli as one HDF5 dataset (``nsd_stimuli.hdf5``, ``imgBrick``, 73,000 x 425 x
425 x 3 uint8); other collections come as ``.npy`` bricks. A stimulus table row names one image of
such a brick in its ``path`` column with an *array reference*::

    /data/nsd/nsd_stimuli.hdf5#imgBrick[2950]     HDF5: file, dataset path inside it, index on axis 0
    /data/things/images.npy#[17]                  npy: file, index on axis 0 (no dataset path)

The extraction pipeline reads such rows by index (no decoding step); everything else treats the
string as the stimulus's path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

__all__ = ["ArrayRef", "array_ref", "parse_array_ref", "is_array_ref"]

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

"""Content digests of the dataset inputs a fit used, recorded in every fitted model's ``model.json`` so its lineage
can say which data made it (and whether that data is still the same).

``dataset_digest`` covers what the numbers of a fit depend on: per subject, its training and test stimulus ids in
response-row order and the bytes of its response matrices (and noise ceilings); ``stimuli_digest`` the stimulus
table the fit read (ids and paths). Both are sha256 hex strings, deterministic (no time, no absolute path), so a
resumed fit records the same values and the registry adds no version for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["dataset_digest", "stimuli_digest", "DIGEST_BLOCK_BYTES"]

#: Bytes of a response matrix hashed at a time (a memory-mapped matrix is read in blocks of rows this size).
DIGEST_BLOCK_BYTES = 1 << 24


def _ids(ds, subject: str, split: str) -> list[tuple[int, str, str]]:
    """(row index, stimulus id, path) of ``subject``'s ``split``, in response-row order."""
    t = ds.stimuli([subject], splits=(split,))
    rows = zip(t.column("index").to_pylist(), t.column("stimulus_id").to_pylist(), t.column("path").to_pylist())
    return sorted((int(i), str(s), "" if p is None else str(p)) for i, s, p in rows)


def _update_array(h, label: str, a) -> None:
    """Hash a header (label, dtype, shape) then the array's bytes in C order, a block of rows at a time."""
    a = np.asarray(a)
    h.update(f"{label} {a.dtype.str} {list(a.shape)}\n".encode())
    if a.ndim == 0 or a.size == 0:
        h.update(a.tobytes())
        return
    step = max(1, DIGEST_BLOCK_BYTES // max(1, a[:1].nbytes))
    for i in range(0, a.shape[0], step):
        h.update(np.ascontiguousarray(a[i:i + step]))


def dataset_digest(ds, subjects: Iterable[str], hemis: Iterable[str] = ("lh", "rh")) -> str:
    """The sha256 of the dataset inputs a fit of ``subjects`` used.

    Covered, per subject (sorted) and in this order: the training then test stimulus ids in response-row order;
    per hemisphere, the training response matrix and (when the dataset has them) the test responses, each as
    its dtype, shape and raw bytes; and the noise ceiling where the dataset has one (the test scores depend on
    it). Not covered: the stimuli's pixels (see :func:`stimuli_digest` for the table of ids and paths; feature
    tables carry their own fingerprints), ROI masks, captions, or where the dataset lies. The cost is one read of
    the response matrices (hashing runs at about 1 GB/s; matrices are memory-mapped and read in blocks of
    :data:`DIGEST_BLOCK_BYTES`, so memory stays bounded).
    """
    h = hashlib.sha256(b"brainstore dataset digest v1\n")
    for s in sorted(set(subjects)):
        h.update(f"subject {s}\n".encode())
        test = ds.has_test_responses(s)
        for split in ("train", "test"):
            h.update(f"{split} ids\n".encode() + "\n".join(i for _, i, _ in _ids(ds, s, split)).encode() + b"\n")
        for hemi in hemis:
            _update_array(h, f"{s} {hemi} train", ds.responses(s, hemi, "train"))
            if test:
                _update_array(h, f"{s} {hemi} test", ds.responses(s, hemi, "test"))
            nc = ds.noise_ceiling(s, hemi) if test else None
            if nc is not None:
                _update_array(h, f"{s} {hemi} noise ceiling", nc)
    return h.hexdigest()


def _relative(path: str, roots: tuple[str, ...]) -> str:
    for r in roots:
        if path.startswith(r):
            return path[len(r):]
    return path


def stimuli_digest(ds, subjects: Iterable[str]) -> str:
    """The sha256 of the stimulus table a fit of ``subjects`` read: per subject (sorted) and split (train, test),
    each stimulus's row index, id and path, in response-row order. Paths inside the dataset's folder are taken
    relative to it, so a copied or moved dataset keeps its digest (the model records the dataset's path
    separately)."""
    root = Path(ds.root)
    base = root if root.is_dir() else root.parent
    roots = tuple(dict.fromkeys((f"{base}/", f"{base.resolve()}/")))
    h = hashlib.sha256(b"brainstore stimuli digest v1\n")
    for s in sorted(set(subjects)):
        for split in ("train", "test"):
            for i, sid, path in _ids(ds, s, split):
                h.update(f"{s}\t{split}\t{i}\t{sid}\t{_relative(path, roots)}\n".encode())
    return h.hexdigest()

"""The run folder of a fit: predictions and fitted states written by Ray tasks, read memory-mapped.

Fit tasks never return prediction matrices to the driver (at NSD scale one subject x hemisphere x
model is ~0.75 GB); they write them here and return small summaries. Layout under ``root``::

    predictions/<model>/<subject>/{lh,rh}_pred_test.npy   test split, Algonauts submission layout
    validation/<model>/<subject>/{lh,rh}_pred_val.npy     the held-out validation fold
    states/<model>/<subject>/{lh,rh}.safetensors          fitted arrays, before registration
    split/<model>/<subject>/{lh,rh}_split_test.npy        banded ridge: per-space test r (n_spaces, n_vertices)

Every file is written to a temporary name and renamed into place, so a killed (and retried)
task never leaves a half-written file under a final name; the temporary files of tasks killed
mid-write (a lost node) are removed once every task of the run is done (:func:`remove_partial`).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._fileio import write_safetensors
from ._registry import safe_name

__all__ = ["RunLayout", "new_array", "open_array", "remove_partial", "run_dir", "write_array", "write_state"]


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder (see the module docstring)."""

    root: Path

    def _path(self, kind: str, model: str, subject: str, fname: str) -> Path:
        return Path(self.root) / kind / safe_name(model) / subject / fname

    def test_pred(self, model: str, subject: str, hemi: str) -> Path:
        return self._path("predictions", model, subject, f"{hemi}_pred_test.npy")

    def val_pred(self, model: str, subject: str, hemi: str) -> Path:
        return self._path("validation", model, subject, f"{hemi}_pred_val.npy")

    def state(self, model: str, subject: str, hemi: str) -> Path:
        return self._path("states", model, subject, f"{hemi}.safetensors")

    def split(self, model: str, subject: str, hemi: str) -> Path:
        return self._path("split", model, subject, f"{hemi}_split_test.npy")


def run_dir(out: str | os.PathLike | None, registry: str | os.PathLike, kind: str) -> Path:
    """A run's folder, absolute: ``out``, or ``<registry>/_runs/<kind>-<time>`` (never the current directory).

    Run folders are local (tasks write and memory-map them): for a registry on object storage the
    default is ``$BRAINSTORE_HOME/runs/<kind>-<time>`` (``.brainstore/`` by default); on a cluster of
    several machines pass ``out`` on a file system every node mounts.
    """
    from ..._storage import is_remote

    stamp = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out is not None:
        path = Path(out)
    elif is_remote(registry):
        path = Path(os.environ.get("BRAINSTORE_HOME", ".brainstore")) / "runs" / stamp
    else:
        path = Path(registry) / "_runs" / stamp
    return path.expanduser().absolute()


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def remove_partial(root: str | os.PathLike) -> int:
    """Remove the temporary files (:func:`_tmp` names) that tasks killed mid-write left under a run folder;
    call it only once no task writes there. Returns how many were removed."""
    n = 0
    for p in Path(root).rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_array(path: Path, array: np.ndarray) -> Path:
    """Save ``array`` as float32 ``.npy`` at ``path`` atomically."""
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(array, dtype=np.float32))
    os.replace(tmp, path)
    return path


def write_state(path: Path, state: dict[str, np.ndarray]) -> Path:
    """Save a fitted estimator's ``state_dict()`` as safetensors at ``path`` atomically."""
    tmp = _tmp(path)
    write_safetensors(tmp, {k: np.ascontiguousarray(v) for k, v in state.items()}, {})
    os.replace(tmp, path)
    return path


class new_array:
    """Context manager: a float32 ``.npy`` memmap of ``shape`` to fill, renamed to ``path`` on success.

    >>> with new_array(path, (n, v)) as out:
    ...     out[:, :100] = block
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = Path(path), shape
        self.tmp = _tmp(self.path)

    def __enter__(self) -> np.memmap:
        self.arr = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=self.shape)
        return self.arr

    def __exit__(self, exc_type, exc, tb) -> None:
        self.arr.flush()
        del self.arr
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def open_array(path: Path) -> np.ndarray:
    """A read-only memory map of an array written by :func:`write_array` / :class:`new_array`."""
    return np.load(path, mmap_mode="r")

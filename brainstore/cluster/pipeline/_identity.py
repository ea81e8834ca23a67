"""What a stage's fingerprint is made of.

Each stage's **fingerprint** is the sha256 of a canonical JSON of its inputs: its own config (without
settings that cannot change its outputs, such as ``batch_size``), the dataset's identity (its
summary and the sizes and mtimes of its files: cheap, nothing is hashed), the versions and metadata
of the feature tables it reads, the ``safetensors_sha256`` of the registry records it reads, and its
upstream stages' fingerprints. Each part is digested apart too, so that the plan can say *why* a
stage runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ._spec import PipelineSpec

def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def _fingerprint(config: dict, parts: dict) -> tuple[str, dict]:
    digests = {"config": _digest(config), **{k: _digest(v) for k, v in parts.items()}}
    return _digest(digests), digests


def _stat(p: Path) -> list:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _stimuli_identity(root: Path) -> dict:
    """The stimuli extraction reads: every image's name, size and mtime, and the captions files (no hashing)."""
    from ...datasets import AlgonautsDataset, open_dataset

    ds = open_dataset(root)
    if not isinstance(ds, AlgonautsDataset):  # a described dataset lists the files it reads
        return {"root": str(ds.root), "files": _digest([[str(p), *_stat(p)] for p in ds.input_files("stimuli")])}
    out: dict = {"root": str(ds.root), "captions": {f: _stat(ds.root / f) for f in ("captions.csv", "captions.parquet")
                                                    if (ds.root / f).exists()}}
    for s in ds.subjects:
        for split in ("train", "test"):
            out[f"{s}/{split}"] = _digest([[p.name, *_stat(p)] for p in ds.image_files(s, split)])
    return out


def _dataset_identity(root: Path, skip: tuple[str, ...] = ()) -> dict:
    """The dataset's summary and the size and mtime of every file but the images (responses, ROIs, ...);
    ``skip``: folders left out (the pipeline's own out, store and registry, should they lie inside)."""
    from ...datasets import AlgonautsDataset, open_dataset

    ds = open_dataset(root)
    if not isinstance(ds, AlgonautsDataset):  # a described dataset lists the files it reads
        return {"summary": ds.summary(), "files": {str(p): _stat(p) for p in ds.input_files("responses")}}
    files = {}
    for dirpath, dirnames, filenames in os.walk(ds.root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("training_images", "test_images")
                             and str(Path(dirpath) / d) not in skip)
        for f in sorted(filenames):
            p = Path(dirpath) / f
            files[p.relative_to(ds.root).as_posix()] = _stat(p)
    return {"summary": ds.summary(), "files": files}


def _own(spec: PipelineSpec) -> tuple[str, ...]:
    """The local folders the pipeline writes (left out of the dataset's identity)."""
    return tuple(str(Path(p)) for p in (spec.out, spec.store, spec.registry) if "://" not in p)


def _table_identity(fs, tables) -> dict:
    out = {}
    for t in sorted(set(tables)):
        out[t] = {"version": fs.version(t), "metadata": fs.metadata(t)} if fs is not None and fs.exists(t) else None
    return out


def _record_identity(reg, names) -> dict:
    out = {}
    for n in sorted(names):
        try:
            out[n] = reg.record(n).meta.get("safetensors_sha256") if reg is not None else None
        except Exception:  # noqa: BLE001 - a missing or unreadable record is a changed input
            out[n] = None
    return out


def _file_sha(p: Path) -> str | None:
    from ..._provenance import sha256

    return sha256(p) if p.is_file() else None

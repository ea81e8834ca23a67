"""The Algonauts 2023 release's folder layout: where each split's images are and how they are named,
and the readers of its files (memory-mapped .npy, ROI name mappings, captions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .._errors import DatasetError
from .._layout import nsd_id

__all__ = ["SPLIT_DIRS", "load_npy", "read_mapping", "read_captions"]

_TRAIN_RE = re.compile(r"^train-(\d{4,})_nsd-(\d{5})\.png$")
_TEST_RE = re.compile(r"^test-(\d{4,})_nsd-(\d{5})\.png$")
# split -> (folder, images subfolder, image name pattern)
SPLIT_DIRS = {
    "train": ("training_split", "training_images", _TRAIN_RE),
    "test": ("test_split", "test_images", _TEST_RE),
}


def load_npy(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty (0 bytes); regenerate or re-download it")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DatasetError(f"{path} is not a plain numeric .npy array ({e})") from e


def read_mapping(folder: Path, family: str) -> dict[int, str]:
    """ROI label -> name, from ``mapping_{family}.json`` or the release's pickled-dict ``.npy``."""
    js = folder / f"mapping_{family}.json"
    npy = folder / f"mapping_{family}.npy"
    if js.exists():
        raw = json.loads(js.read_text())
    elif npy.exists():
        # The official release stores a dict with np.save; pickles are allowed for this file only.
        obj = np.load(npy, allow_pickle=True)
        raw = obj.item() if obj.dtype == object and obj.shape == () else None
        if not isinstance(raw, dict):
            raise DatasetError(f"{npy} does not hold a label -> ROI name dict; save one with np.save or as JSON")
    else:
        raise DatasetError(f"missing ROI name mapping {js.name} or {npy.name} in {folder}")
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise DatasetError(f"ROI mapping for {family} in {folder} has a non-integer label ({e})") from e


def read_captions(path: Path) -> dict[str, str] | dict[int, str]:
    """Captions keyed by image file name or by NSD id (see :attr:`AlgonautsDataset.captions`)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DatasetError(f"cannot read captions file {path}: {e}") from e
    key = next((k for k in ("image", "nsd_id") if k in table.column_names), None)
    if key is None or "caption" not in table.column_names:
        raise DatasetError(f"captions file {path} has columns {table.column_names}; it needs 'image' and 'caption' "
                           "(image file names) or 'nsd_id' and 'caption' (NSD ids, COCO-caption style)")
    out: dict = {}
    for k, caption in zip(table.column(key).to_pylist(), table.column("caption").to_pylist()):
        if caption and str(caption).strip():
            out.setdefault(k if key == "image" else nsd_id(k, path), caption)  # the first caption of a key
    return out

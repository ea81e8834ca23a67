"""The names every dataset layout shares: hemispheres, splits, ROI families, the stimulus table's
columns and stimulus ids (the Algonauts 2023 release's names; ARCHITECTURE.md, "datasets").

Every reader (:mod:`.algonauts`, :mod:`.described`), the base class and the synthetic generators
import them from here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ._errors import DatasetError

__all__ = [
    "HEMISPHERES",
    "SPLITS",
    "ROI_FAMILIES",
    "REPORT_FAMILIES",
    "ROI_FAMILY_LABELS",
    "STIMULUS_SCHEMA",
    "stimulus_id_for",
    "nsd_id",
    "check_hemi",
    "check_split",
]

HEMISPHERES = ("lh", "rh")
SPLITS = ("train", "test")
ROI_FAMILIES = (
    "prf-visualrois",
    "floc-bodies",
    "floc-faces",
    "floc-places",
    "floc-words",
    "streams",
)
# ROI families reported in per-ROI tables (streams overlaps all of them, so it is left out).
REPORT_FAMILIES = ROI_FAMILIES[:5]
# Short column labels for ROI families in tables and plots.
ROI_FAMILY_LABELS = {"prf-visualrois": "early (prf)", "floc-bodies": "bodies", "floc-faces": "faces",
                     "floc-places": "places", "floc-words": "words"}

STIMULUS_SCHEMA = pa.schema(
    [
        pa.field("stimulus_id", pa.string(), nullable=False),
        pa.field("subject", pa.string()),
        pa.field("split", pa.string()),
        pa.field("path", pa.string()),
        pa.field("nsd_id", pa.int64()),
        pa.field("caption", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("index", pa.int32()),  # row of this stimulus in the subject's response matrix
        pa.field("dataset", pa.string()),
    ]
)


def stimulus_id_for(nsd_id: int) -> str:
    """The stimulus id of an NSD image: shared by every subject who saw it."""
    return f"nsd-{int(nsd_id):05d}"


def nsd_id(value, path: Path) -> int:
    """An ``nsd_id`` cell as ``int`` (integers, integral floats or digit strings)."""
    try:
        as_float = float(value)
        if as_float.is_integer():
            return int(as_float)
    except (TypeError, ValueError):
        pass
    raise DatasetError(f"captions file {path}: nsd_id {value!r} is not an integer NSD id")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return split


def check_hemi(hemi: str) -> str:
    if hemi not in HEMISPHERES:
        raise ValueError(f"hemisphere must be 'lh' or 'rh', not {hemi!r}")
    return hemi

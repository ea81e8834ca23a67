"""Reader and validator for the Algonauts 2023 challenge layout (see ARCHITECTURE.md)."""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from ._base import BrainDataset
from ._errors import DatasetError, DatasetValidationError

__all__ = [
    "AlgonautsDataset",
    "HEMISPHERES",
    "ROI_FAMILIES",
    "STIMULUS_SCHEMA",
    "stimulus_id_for",
]

HEMISPHERES = ("lh", "rh")
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

_TRAIN_RE = re.compile(r"^train-(\d{4,})_nsd-(\d{5})\.png$")
_TEST_RE = re.compile(r"^test-(\d{4,})_nsd-(\d{5})\.png$")
_SPLIT_DIRS = {
    "train": ("training_split", "training_images", _TRAIN_RE),
    "test": ("test_split", "test_images", _TEST_RE),
}

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


class AlgonautsDataset(BrainDataset):
    """An Algonauts 2023 dataset on disk (real or synthetic).

    Parameters
    ----------
    root : path
        Folder holding ``subjNN/`` folders (and optionally ``captions.csv``/``.parquet``).
    name : str, optional
        Dataset name recorded in stimulus tables (default: the folder name).

    Notes
    -----
    Response matrices are memory-mapped (``np.load(..., mmap_mode="r")``), so opening a
    73,000-image dataset costs nothing until rows are touched.
    """

    def __init__(self, root: str | Path, *, name: str | None = None):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; pass the folder that holds subjNN/")
        self.name = name or self.root.name
        if not self.subjects:
            raise DatasetError(
                f"{self.root} holds no subjNN/ folder; an Algonauts dataset has one folder per subject "
                "(subj01/, subj02/, ...), e.g. from `brainstore make-dataset`"
            )

    def __repr__(self) -> str:
        return f"AlgonautsDataset({str(self.root)!r}, subjects={self.subjects})"

    # ------------------------------------------------------------------ structure
    @cached_property
    def subjects(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("subj[0-9][0-9]") if p.is_dir())

    def _subject_dir(self, subject: str) -> Path:
        if subject not in self.subjects:
            raise DatasetError(f"subject {subject!r} is not in {self.root} (subjects: {', '.join(self.subjects)})")
        return self.root / subject

    def image_files(self, subject: str, split: str) -> list[Path]:
        """Image files of a subject's split, in the sorted order of their names (= fMRI row order)."""
        top, sub, _ = _SPLIT_DIRS[_check_split(split)]
        folder = self._subject_dir(subject) / top / sub
        if not folder.is_dir():
            raise DatasetError(f"missing folder {folder}; every subject needs {top}/{sub}/")
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")

    def n_images(self, subject: str, split: str) -> int:
        return len(self.image_files(subject, split))

    @cached_property
    def captions(self) -> dict[str, str] | dict[int, str]:
        """Captions from ``captions.parquet`` or ``captions.csv`` at the root (empty if absent).

        Two layouts: columns ``image, caption`` give keys that are image file names (without
        folder); columns ``nsd_id, caption`` (COCO-caption style) give keys that are NSD ids
        (``int``), matched to the NSD id in each image's name. A key listed several times (COCO
        has about five captions per image) keeps its first non-empty caption in file order.
        A file with both ``image`` and ``nsd_id`` columns is read by ``image``.
        """
        for fname in ("captions.parquet", "captions.csv"):
            path = self.root / fname
            if path.exists():
                return _read_captions(path)
        return {}

    # ------------------------------------------------------------------ stimuli
    def stimuli(self, subjects: Iterable[str] | None = None, splits: Iterable[str] = ("train", "test")) -> pa.Table:
        """The stimulus table: one row per (subject, image).

        Columns follow :data:`STIMULUS_SCHEMA`: ``stimulus_id`` (``nsd-NNNNN``, shared by subjects
        who saw the same image), ``subject``, ``split``, ``path``, ``nsd_id``, ``caption`` (null
        when absent), ``modality`` (``image``), ``index`` (row in the response matrix), ``dataset``.
        """
        cols: dict[str, list] = {f.name: [] for f in STIMULUS_SCHEMA}
        caps = self.captions
        for subject in subjects or self.subjects:
            for split in splits:
                regex = _SPLIT_DIRS[_check_split(split)][2]
                seen: dict[int, str] = {}
                for i, path in enumerate(self.image_files(subject, split)):
                    m = regex.match(path.name)
                    if not m:
                        raise DatasetError(
                            f"image {path} does not follow the name pattern "
                            f"{'train' if split == 'train' else 'test'}-NNNN_nsd-NNNNN.png; rename it"
                        )
                    nsd = int(m.group(2))
                    if nsd in seen:  # two files, one id: one embedding would silently stand for both
                        raise DatasetError(
                            f"two images of {subject} {split} share the stimulus id {stimulus_id_for(nsd)}: "
                            f"{seen[nsd]} and {path.name}; an id must name one image: keep one of them "
                            f"(and its response row) or give the other its own NSD id")
                    seen[nsd] = path.name
                    cols["stimulus_id"].append(stimulus_id_for(nsd))
                    cols["subject"].append(subject)
                    cols["split"].append(split)
                    cols["path"].append(str(path))
                    cols["nsd_id"].append(nsd)
                    cols["caption"].append(caps.get(path.name, caps.get(nsd)))  # keyed by name or by NSD id
                    cols["modality"].append("image")
                    cols["index"].append(i)
                    cols["dataset"].append(self.name)
        return pa.table(cols, schema=STIMULUS_SCHEMA)

    # ------------------------------------------------------------------ responses
    def _fmri_path(self, subject: str, hemi: str, split: str) -> Path:
        hemi = _check_hemi(hemi)
        if _check_split(split) == "train":
            return self._subject_dir(subject) / "training_split" / "training_fmri" / f"{hemi}_training_fmri.npy"
        return self._subject_dir(subject) / "test_split" / "test_fmri" / f"{hemi}_test_fmri.npy"

    def has_test_responses(self, subject: str) -> bool:
        return all(self._fmri_path(subject, h, "test").exists() for h in HEMISPHERES)

    def responses(self, subject: str, hemi: str, split: str = "train") -> np.ndarray:
        """Memory-mapped response matrix, shape (n_images, n_vertices), float32, rows = sorted images."""
        path = self._fmri_path(subject, hemi, split)
        if not path.exists():
            hint = (
                "test responses are held by the organizers in the real challenge; score on CV folds instead"
                if split == "test"
                else f"every subject needs training_split/training_fmri/{hemi}_training_fmri.npy"
            )
            raise DatasetError(f"missing response file {path}; {hint}")
        arr = _load_npy(path)
        if arr.ndim != 2:
            raise DatasetError(f"{path} has shape {arr.shape}; expected (n_images, n_vertices)")
        return arr

    def n_vertices(self, subject: str, hemi: str) -> int:
        return int(self.responses(subject, hemi, "train").shape[1])

    def noise_ceiling(self, subject: str, hemi: str) -> np.ndarray | None:
        """Noise ceiling per vertex as a fraction in [0, 1], or None when the file is absent."""
        path = self._subject_dir(subject) / "test_split" / "noise_ceiling" / f"{_check_hemi(hemi)}_noise_ceiling.npy"
        if not path.exists():
            return None
        nc = np.asarray(_load_npy(path), dtype=np.float64)
        if nc.size and (np.nanmax(nc) > 1.0 + 1e-6 or np.nanmin(nc) < 0):
            raise DatasetError(
                f"{path} has values outside [0, 1] (max {np.nanmax(nc):.3g}); noise ceilings are stored as "
                "fractions: divide a percent ceiling by 100 and save it again"
            )
        return nc

    # ------------------------------------------------------------------ ROIs
    def roi_labels(self, subject: str, hemi: str, family: str) -> tuple[np.ndarray, dict[int, str]]:
        """Integer label per vertex (0 = outside) and the label -> ROI name mapping of one family."""
        if family not in ROI_FAMILIES:
            raise DatasetError(f"unknown ROI family {family!r}; families: {', '.join(ROI_FAMILIES)}")
        folder = self._subject_dir(subject) / "roi_masks"
        path = folder / f"{_check_hemi(hemi)}.{family}_challenge_space.npy"
        if not path.exists():
            raise DatasetError(f"missing ROI mask {path}")
        labels = np.asarray(_load_npy(path)).astype(np.int64)
        return labels, _read_mapping(folder, family)

    def roi_families(self, subject: str) -> list[str]:
        """The six families of the challenge layout (``streams`` included), which every subject has."""
        return list(ROI_FAMILIES)

    # ------------------------------------------------------------------ validation
    def validate(self, *, check_images: bool = True, subjects: list[str] | None = None) -> list[str]:
        """Check the whole dataset (or only ``subjects``); returns a list of problems (empty when valid)."""
        from ._validate import validate_algonauts

        return validate_algonauts(self, check_images=check_images, subjects=subjects)

    def check(self, *, check_images: bool = True) -> "AlgonautsDataset":
        """Validate and raise :class:`DatasetValidationError` listing every problem found."""
        problems = self.validate(check_images=check_images)
        if problems:
            raise DatasetValidationError(str(self.root), problems)
        return self

    def summary(self) -> dict:
        """Counts per subject: images, vertices, ROI sizes and noise-ceiling statistics."""
        out = {"root": str(self.root), "name": self.name, "captions": len(self.captions), "subjects": {}}
        for s in self.subjects:
            entry = {"train_images": self.n_images(s, "train"), "test_images": self.n_images(s, "test"),
                     "test_responses": self.has_test_responses(s), "hemispheres": {}}
            for h in HEMISPHERES:
                hemi = {"vertices": self.n_vertices(s, h)}
                try:
                    hemi["rois"] = {k: int(v.sum()) for k, v in self.roi_masks(s, h, families=ROI_FAMILIES).items()}
                    hemi["named_rois"] = {k: int(v.sum()) for k, v in
                                          self.roi_masks(s, h, level="roi", families=ROI_FAMILIES).items()}
                except DatasetError:
                    hemi["rois"], hemi["named_rois"] = {}, {}
                nc = self.noise_ceiling(s, h)
                if nc is not None:
                    hemi["noise_ceiling_mean"] = float(nc.mean())
                    hemi["noise_ceiling_median"] = float(np.median(nc))
                entry["hemispheres"][h] = hemi
            out["subjects"][s] = entry
        return out


def _check_split(split: str) -> str:
    if split not in _SPLIT_DIRS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return split


def _check_hemi(hemi: str) -> str:
    if hemi not in HEMISPHERES:
        raise ValueError(f"hemisphere must be 'lh' or 'rh', not {hemi!r}")
    return hemi


def _load_npy(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty (0 bytes); regenerate or re-download it")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DatasetError(f"{path} is not a plain numeric .npy array ({e})") from e


def _read_mapping(folder: Path, family: str) -> dict[int, str]:
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


def _read_captions(path: Path) -> dict[str, str] | dict[int, str]:
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
            out.setdefault(k if key == "image" else _nsd_id(k, path), caption)  # the first caption of a key
    return out


def _nsd_id(value, path: Path) -> int:
    """An ``nsd_id`` cell as ``int`` (integers, integral floats or digit strings)."""
    try:
        as_float = float(value)
        if as_float.is_integer():
            return int(as_float)
    except (TypeError, ValueError):
        pass
    raise DatasetError(f"captions file {path}: nsd_id {value!r} is not an integer NSD id")
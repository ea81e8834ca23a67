"""Reader of the Algonauts 2023 challenge layout (see ARCHITECTURE.md, "datasets")."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from .._base import BrainDataset
from .._errors import DatasetError, DatasetValidationError
from .._layout import HEMISPHERES, ROI_FAMILIES, STIMULUS_SCHEMA, check_hemi, check_split, stimulus_id_for
from ._files import SPLIT_DIRS, load_npy, read_captions, read_mapping

__all__ = ["AlgonautsDataset"]


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
        top, sub, _ = SPLIT_DIRS[check_split(split)]
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
                return read_captions(path)
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
                regex = SPLIT_DIRS[check_split(split)][2]
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
        hemi = check_hemi(hemi)
        if check_split(split) == "train":
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
        arr = load_npy(path)
        if arr.ndim != 2:
            raise DatasetError(f"{path} has shape {arr.shape}; expected (n_images, n_vertices)")
        return arr

    def n_vertices(self, subject: str, hemi: str) -> int:
        return int(self.responses(subject, hemi, "train").shape[1])

    def noise_ceiling(self, subject: str, hemi: str) -> np.ndarray | None:
        """Noise ceiling per vertex as a fraction in [0, 1], or None when the file is absent."""
        path = self._subject_dir(subject) / "test_split" / "noise_ceiling" / f"{check_hemi(hemi)}_noise_ceiling.npy"
        if not path.exists():
            return None
        nc = np.asarray(load_npy(path), dtype=np.float64)
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
        path = folder / f"{check_hemi(hemi)}.{family}_challenge_space.npy"
        if not path.exists():
            raise DatasetError(f"missing ROI mask {path}")
        labels = np.asarray(load_npy(path)).astype(np.int64)
        return labels, read_mapping(folder, family)

    def roi_families(self, subject: str) -> list[str]:
        """The six families of the challenge layout (``streams`` included), which every subject has."""
        return list(ROI_FAMILIES)

    # ------------------------------------------------------------------ the cortex
    def cortex(self, subject: str):
        """Where the subject's columns sit on fsaverage (:class:`brainstore.maps.Cortex`), from the release's
        ``roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy`` (1 where a challenge-space vertex sits; columns
        in ascending vertex order), with the ROI labels on fsaverage (``{hemi}.{family}_fsaverage_space.npy``,
        else the challenge-space labels laid through the mask) for outlines; None when the files are absent."""
        from ._space import read_cortex

        if subject not in self._cortices:
            self._cortices[subject] = read_cortex(self, subject)
        return self._cortices[subject]

    @cached_property
    def _cortices(self) -> dict:
        return {}

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
        """Counts per subject: images, vertices, where they sit (``space``), ROI sizes and noise-ceiling statistics."""
        out = {"root": str(self.root), "name": self.name, "captions": len(self.captions), "subjects": {}}
        for s in self.subjects:
            entry = {"train_images": self.n_images(s, "train"), "test_images": self.n_images(s, "test"),
                     "test_responses": self.has_test_responses(s), "hemispheres": {}}
            try:
                cortex = self.cortex(s)
                entry["space"] = cortex.space.describe() if cortex else None
            except DatasetError as e:
                entry["space"] = f"unreadable: {e}"
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

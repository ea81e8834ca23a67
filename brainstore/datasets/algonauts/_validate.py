"""Whole-dataset validation of an :class:`~._algonauts.AlgonautsDataset` (``ds``, typed by name: this module
is imported by the reader, never the other way): every problem found, each naming its file and the fix."""

from __future__ import annotations

import numpy as np

from .._errors import DatasetError
from .._images import image_problem
from .._layout import HEMISPHERES, ROI_FAMILIES
from ._files import SPLIT_DIRS
from ._space import space_problems

_CHUNK_ROWS = 2048


def _finite_problem(arr: np.ndarray, path: str) -> str | None:
    """Scan a (memory-mapped) matrix in row chunks for NaN / inf."""
    for start in range(0, arr.shape[0], _CHUNK_ROWS):
        block = np.asarray(arr[start : start + _CHUNK_ROWS])
        bad = ~np.isfinite(block)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            kind = "NaN" if np.isnan(block[r, c]) else "inf"
            return (
                f"{path} holds {int(bad.sum())}+ non-finite values ({kind} first at row {start + r}, vertex {c}); "
                "replace them (e.g. with the vertex mean) or drop those vertices"
            )
    return None


def validate_algonauts(ds: "AlgonautsDataset", *, check_images: bool = True,
                       subjects: list[str] | None = None) -> list[str]:
    """Collect all contract violations of an Algonauts-layout dataset (of ``subjects``, default all)."""
    problems: list[str] = []
    for s in subjects or ds.subjects:
        problems += _image_problems(ds, s, check_images)
        sdir = ds.root / s
        n_train = ds.n_images(s, "train") if (sdir / "training_split" / "training_images").is_dir() else None
        n_test = ds.n_images(s, "test") if (sdir / "test_split" / "test_images").is_dir() else None
        for h in HEMISPHERES:
            n_vert, found = _response_problems(ds, s, h, {"train": n_train, "test": n_test})
            problems += found
            try:
                nc = ds.noise_ceiling(s, h)
                if nc is not None and n_vert is not None and nc.shape != (n_vert,):
                    problems.append(f"{s} {h} noise ceiling has shape {nc.shape}, expected ({n_vert},) (one per vertex)")
                if nc is not None and not np.isfinite(nc).all():
                    problems.append(f"{s} {h} noise ceiling holds NaN/inf values")
            except DatasetError as e:
                problems.append(str(e))
            roi_dir = sdir / "roi_masks"
            if not roi_dir.is_dir():
                problems.append(f"missing folder {roi_dir}")
                continue
            problems += _roi_problems(ds, s, h, n_vert)
        if (sdir / "roi_masks").is_dir():
            problems += space_problems(ds, s)
    return problems


def _image_problems(ds: "AlgonautsDataset", s: str, check_images: bool) -> list[str]:
    """Missing image folders, misnamed or duplicate images, undecodable ones (``check_images``)."""
    problems: list[str] = []
    for split, (top, sub, regex) in SPLIT_DIRS.items():
        folder = ds.root / s / top / sub
        if not folder.is_dir():
            problems.append(f"missing folder {folder}; every subject needs {top}/{sub}/")
            continue
        files = ds.image_files(s, split)
        if not files:
            problems.append(f"{folder} holds no .png image")
        seen: dict[str, str] = {}
        for f in files:
            m = regex.match(f.name)
            if not m:
                problems.append(f"image {f} does not follow the name pattern {split}-NNNN_nsd-NNNNN.png; rename it")
                continue
            nsd = m.group(2)
            if nsd in seen:
                problems.append(
                    f"duplicate stimulus id nsd-{nsd} in {folder}: {seen[nsd]} and {f.name}; keep one of them"
                )
            seen[nsd] = f.name
            if check_images:
                p = image_problem(f)
                if p:
                    problems.append(p)
    return problems


def _response_problems(ds: "AlgonautsDataset", s: str, h: str, n_images: dict) -> tuple[int | None, list[str]]:
    """The training responses' vertex count (None when unreadable) and the response files' problems."""
    problems: list[str] = []
    n_vert = None
    for split, n_img in n_images.items():
        path = ds._fmri_path(s, h, split)
        if not path.exists():
            if split == "train":
                problems.append(f"missing response file {path}")
            continue
        try:
            arr = ds.responses(s, h, split)
        except DatasetError as e:
            problems.append(str(e))
            continue
        if n_img is not None and arr.shape[0] != n_img:
            problems.append(
                f"{path} has {arr.shape[0]} rows but {s} has {n_img} {split} images; "
                "rows must match the sorted image files one to one"
            )
        if n_vert is None:
            n_vert = arr.shape[1]
        elif arr.shape[1] != n_vert:
            problems.append(f"{path} has {arr.shape[1]} vertices, the training responses have {n_vert}")
        p = _finite_problem(arr, str(path))
        if p:
            problems.append(p)
    return n_vert, problems


def _roi_problems(ds: "AlgonautsDataset", s: str, h: str, n_vert: int | None) -> list[str]:
    """Unreadable ROI masks, masks of the wrong length, labels their mapping does not name."""
    problems: list[str] = []
    roi_dir = ds.root / s / "roi_masks"
    for fam in ROI_FAMILIES:
        try:
            labels, mapping = ds.roi_labels(s, h, fam)
        except DatasetError as e:
            problems.append(str(e))
            continue
        if n_vert is not None and labels.shape != (n_vert,):
            problems.append(
                f"{roi_dir / f'{h}.{fam}_challenge_space.npy'} has length {labels.shape[0] if labels.ndim else 0} "
                f"but {s} {h} has {n_vert} vertices; masks need one label per vertex"
            )
        unknown = sorted(set(np.unique(labels).tolist()) - set(mapping) - {0})
        if unknown:
            problems.append(f"{s} {h} {fam} mask uses labels {unknown} that mapping_{fam} does not name")
    return problems

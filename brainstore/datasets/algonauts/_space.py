"""The release's fsaverage files of an :class:`~._algonauts.AlgonautsDataset` (``ds``, typed by name: this
module is imported by the reader, never the other way): the measured vertices and the ROI labels on fsaverage."""

from __future__ import annotations

import numpy as np

from ...maps import FSAVERAGE_VERTICES, Cortex, Space, SpaceError, indices_from_mask
from .._errors import DatasetError
from .._layout import HEMISPHERES, ROI_FAMILIES
from ._files import load_npy, read_mapping

__all__ = ["read_cortex", "space_problems"]


def read_cortex(ds: "AlgonautsDataset", subject: str) -> Cortex | None:
    """The subject's placement on fsaverage, or None without ``all-vertices`` files; a bad file is a
    :class:`DatasetError` naming it."""
    folder = ds._subject_dir(subject) / "roi_masks"
    files = {h: folder / f"{h}.all-vertices_fsaverage_space.npy" for h in HEMISPHERES}
    have = [h for h, f in files.items() if f.exists()]
    if not have:
        return None
    if len(have) == 1:
        missing = files[next(h for h in HEMISPHERES if h not in have)]
        raise DatasetError(f"{missing} is missing while {files[have[0]].name} is there; the release has one per "
                           "hemisphere: add it, or remove both to use the dataset without maps")
    vertices, sizes = {}, set()
    for h, f in files.items():
        mask = load_npy(f)
        try:
            vertices[h] = indices_from_mask(mask, ds.n_vertices(subject, h), f, h)
        except SpaceError as e:
            raise DatasetError(str(e)) from None
        sizes.add(mask.shape[0])
    if len(sizes) != 1:
        raise DatasetError(f"{files['lh']} and {files['rh'].name} cover different meshes ({sorted(sizes)} vertices)")
    name = next(k for k, v in FSAVERAGE_VERTICES.items() if v == sizes.pop())
    cortex = Cortex(Space.fsaverage(name), vertices, source=str(folder))
    return Cortex(cortex.space, vertices, rois=_rois(ds, subject, cortex), source=str(folder))


def _rois(ds, subject: str, cortex: Cortex) -> dict:
    """ROI labels on the whole of fsaverage per hemisphere and family: the release's ``_fsaverage_space``
    files where present (they label unmeasured vertices too), else the challenge-space labels laid on it."""
    folder = ds.root / subject / "roi_masks"
    out: dict = {}
    for h in HEMISPHERES:
        out[h] = {}
        for fam in ROI_FAMILIES:
            f = folder / f"{h}.{fam}_fsaverage_space.npy"
            try:
                mapping = read_mapping(folder, fam)
                if f.exists():
                    full = np.asarray(load_npy(f))
                    if full.shape != (cortex.size(h),):
                        raise DatasetError(f"{f} has {full.size:,} values; fsaverage {h} has {cortex.size(h):,}")
                    full = full.astype(np.int32)
                else:
                    labels, _ = ds.roi_labels(subject, h, fam)
                    full = np.zeros(cortex.size(h), np.int32)
                    full[cortex.vertices[h]] = labels
            except DatasetError:
                continue  # validate names it; the pictures draw no outline for it
            out[h][fam] = (full, mapping)
    return out


def space_problems(ds: "AlgonautsDataset", subject: str) -> list[str]:
    """The fsaverage files' problems (for ``validate``): unreadable, wrong length, counts that differ from the
    response columns, ROI files of the wrong length."""
    try:
        cortex = ds.cortex(subject)
    except DatasetError as e:
        return [str(e)]
    if cortex is None:
        return []
    problems = []
    folder = ds.root / subject / "roi_masks"
    for h in HEMISPHERES:
        for fam in ROI_FAMILIES:
            f = folder / f"{h}.{fam}_fsaverage_space.npy"
            if f.exists():
                try:
                    n = load_npy(f).shape
                except DatasetError as e:
                    problems.append(str(e))
                    continue
                if n != (cortex.size(h),):
                    problems.append(f"{f} has shape {n}; the subject's fsaverage mask covers {cortex.size(h):,} "
                                    "vertices: one label per fsaverage vertex")
    return problems

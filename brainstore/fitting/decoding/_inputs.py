"""What a decoder reads: a subject's responses at a voxel selection (all vertices, or a union of ROIs /
ROI families; left hemisphere first), the delayed responses of a time series, and the check that
every target table covers each subject's stimuli. Shared by the ridge decoders and the adaptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...datasets import HEMISPHERES, AlgonautsDataset, DatasetError
from ...features import FeatureStore, FeatureStoreError, MissingStimuliError
from ..encoding import subject_stimuli

__all__ = ["select_voxels", "response_matrix", "delay_responses", "check_decoding_inputs", "validation_cut",
           "ORACLE_FILES"]


def select_voxels(ds: AlgonautsDataset, subject: str, rois: list[str] | None = None) -> dict[str, np.ndarray]:
    """Vertex indices per hemisphere: all of them, or the union of the named ROIs / ROI families.

    Raises
    ------
    DatasetError
        An ROI name the dataset lacks (the available ones are listed), or a selection without vertices.
    """
    out = {}
    for hemi in HEMISPHERES:
        n = ds.n_vertices(subject, hemi)
        if not rois:
            out[hemi] = np.arange(n, dtype=np.int64)
            continue
        regions = ds.regions(subject, hemi)
        unknown = [r for r in rois if r not in regions]
        if unknown:
            raise DatasetError(f"decoder ROI(s) {unknown} not in {ds.root} ({subject} {hemi}); available: "
                               f"{', '.join(regions)}")
        mask = np.zeros(n, dtype=bool)
        for r in rois:
            mask |= regions[r]
        out[hemi] = np.flatnonzero(mask).astype(np.int64)
    if sum(len(v) for v in out.values()) == 0:
        raise DatasetError(f"decoder ROI(s) {rois} select no vertex of {subject} in {ds.root}")
    return out

#: Noiseless responses of a synthetic dataset, under ``ground_truth/subjNN``: file name by split.
ORACLE_FILES = {"train": "{hemi}_train_noiseless.npy", "test": "{hemi}_pred_test.npy"}

def response_matrix(ds: AlgonautsDataset, subject: str, split: str, voxels: dict[str, np.ndarray],
                    *, oracle: bool = False) -> np.ndarray:
    """A subject's ``split`` responses at a voxel selection: (n_images, n_voxels) float32, lh then rh.

    Parameters
    ----------
    voxels : dict
        ``{hemi: vertex indices}`` (:func:`select_voxels`, or a decoder's ``voxels``).
    oracle : bool
        Read the noiseless responses of a synthetic dataset instead (:data:`ORACLE_FILES`).

    Raises
    ------
    DatasetError
        A hemisphere has fewer vertices than the selection needs, or the responses hold NaN or inf.
    """
    parts = []
    for hemi in HEMISPHERES:
        Y = (np.load(_oracle_dir(ds, subject) / ORACLE_FILES[split].format(hemi=hemi), mmap_mode="r") if oracle
             else ds.responses(subject, hemi, split))
        if Y.shape[1] <= (voxels[hemi].max(initial=-1)):
            raise DatasetError(f"{subject} {hemi} {split} responses have {Y.shape[1]} vertices; the decoder's "
                               f"voxel selection needs {voxels[hemi].max() + 1}")
        parts.append(np.asarray(Y[:, voxels[hemi]], dtype=np.float32))
    R = np.hstack(parts)
    if not np.isfinite(R).all():
        bad = np.argwhere(~np.isfinite(R))[0]
        raise DatasetError(f"{subject} {split} responses hold NaN or inf (first at row {bad[0]}, selected voxel "
                           f"{bad[1]}); fix the response files (`brainstore info` lists them)")
    return R


def _oracle_dir(ds: AlgonautsDataset, subject: str) -> Path | None:
    """``ground_truth/subjNN`` when it holds noiseless train and test responses of both hemispheres."""
    gt = ds.ground_truth_dir()
    if gt is None:
        return None
    d = gt / subject
    ok = all((d / f.format(hemi=h)).exists() for h in HEMISPHERES for f in ORACLE_FILES.values())
    return d if ok else None


def delay_responses(R: np.ndarray, delays, runs=None) -> np.ndarray:
    """Responses of the TRs after each row, side by side: row ``t`` holds ``R[t + d]`` for each delay
    ``d`` (in TRs), within its run (``runs``: a label per row, adjacent rows of a run; None: one run),
    zeros past a run's end. A time-series decoder reads TR ``t``'s stimulus from the BOLD of the TRs
    its hemodynamic response reaches."""
    from ...datasets import run_starts
    from ...features import delay_rows

    R = np.asarray(R, dtype=np.float32)
    if runs is None:
        return delay_rows(R, [-int(d) for d in delays])
    runs = np.asarray(runs, dtype=object)
    starts = run_starts(runs) + [len(runs)]
    return np.concatenate([delay_rows(R[a:b], [-int(d) for d in delays]) for a, b in zip(starts, starts[1:])])

def check_decoding_inputs(ds: AlgonautsDataset, fs: FeatureStore, targets: list[str],
                          subjects: list[str] | None) -> list[str]:
    """The subjects to decode (all by default), once every target table holds each one's train and test stimuli.

    Raises
    ------
    DatasetError
        A subject the dataset lacks (its subjects are listed).
    FeatureStoreError
        A target table the store lacks (its tables are listed).
    MissingStimuliError
        A target table lacking stimuli of a subject (the ids are listed).
    """
    subjects = list(subjects) if subjects else ds.subjects
    unknown = [s for s in subjects if s not in ds.subjects]
    if unknown:
        raise DatasetError(f"subject(s) {unknown} not in {ds.root}; subjects: {', '.join(ds.subjects)}")
    need = {s: subject_stimuli(ds, s, "train") + subject_stimuli(ds, s, "test") for s in subjects}
    for t in targets:
        if not fs.exists(t):
            raise FeatureStoreError(f"decoder target table {t!r} is not in store {fs.uri}; tables: "
                                    f"{', '.join(fs.names()) or 'none'}")
        have = set(fs.ids(t))
        for s in subjects:
            missing = [i for i in need[s] if i not in have]
            if missing:
                raise MissingStimuliError(t, missing)
    return subjects


def validation_cut(n: int, val_fraction: float, groups=None) -> int:
    """The first validation row of ``n`` training rows: rows ``[0, cut)`` train, ``[cut, n)`` are held out, the
    last ``val_fraction`` of them. With ``groups`` (a time series' run or clip of each row, as
    ``BrainDataset.cv_groups`` gives), the cut moves to the nearest boundary between two groups, so that no run
    is split between training and validation (its TRs are correlated in time); a single group is cut by rows."""
    from ...datasets import run_starts

    cut = n - int(round(n * val_fraction))
    if groups is None or not 0 < cut < n:
        return cut
    bounds = run_starts(list(groups[:n]))[1:]  # rows where a new group starts
    return min(bounds, key=lambda b: abs(b - cut)) if bounds else cut


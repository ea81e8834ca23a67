"""Small described datasets written by the tests of ``datasets/described/`` (and ``datasets/_open``): tables,
images, a surface dataset, a dataset with a problem per subject, the expected assembled responses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from PIL import Image


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _csv(file: Path, **cols) -> Path:
    pcsv.write_csv(pa.table(cols), file)
    return file


def _images(folder: Path, ids: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return [f"{folder.name}/{i}.png" for i in ids]


# A trial table with repeats, two sessions, and a session with no training trial.
IDS = [f"nsd-{i:05d}" for i in range(7)]


TRIALS = {  # stimulus, split, session (row order = response-array order unless `row` is given)
    "stimulus_id": ["nsd-00000", "nsd-00001", "nsd-00005", "nsd-00002", "nsd-00000", "nsd-00003",   # session 1
                    "nsd-00001", "nsd-00004", "nsd-00006", "nsd-00002", "nsd-00005", "nsd-00004",   # session 2
                    "nsd-00006", "nsd-00005", "nsd-00006"],                                        # session 3
    "split": ["train", "train", "test", "train", "train", "train",
              "train", "train", "test", "train", "test", "train",
              "test", "test", "test"],
    "session": ["1"] * 6 + ["2"] * 6 + ["3"] * 3,
    "run": ["1", "1", "1", "2", "2", "2"] * 2 + ["1"] * 3,
}


N_TRIALS = len(TRIALS["split"])


def _expected(x: np.ndarray, trials: dict, *, zscore: bool, single: bool) -> dict:
    """Hand computation: {split: (ids, rows)} from single trials x (trials x vertices)."""
    x = x.astype(np.float64)
    split = np.array(trials["split"])
    sess = np.array(trials["session"])
    ids = np.array(trials["stimulus_id"])
    if zscore:
        z = np.empty_like(x)
        train = split == "train"
        for s in np.unique(sess):
            sel = sess == s
            tr = sel & train
            ref = x[tr] if tr.sum() >= 2 else x[train]  # a session without training trials: all training trials
            sd = ref.std(axis=0)
            z[sel] = (x[sel] - ref.mean(axis=0)) / np.where(sd > 0, sd, 1)
        x = z
    out = {}
    for sp in ("train", "test"):
        pos = np.flatnonzero(split == sp)
        order = list(dict.fromkeys(ids[pos]))
        if sp == "train" and single:
            rows = [(i, x[p]) for i in order for p in pos if ids[p] == i]
        else:
            rows = [(i, x[[p for p in pos if ids[p] == i]].mean(axis=0)) for i in order]
        out[sp] = ([r[0] for r in rows], np.stack([r[1] for r in rows]))
    return out


def _surface_dataset(root: Path, lh: np.ndarray, rh: np.ndarray, extra: str = "", trials: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    paths = _images(root / "img", IDS)
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=paths, caption=[f"a photo of {i}" for i in IDS])
    _csv(root / "trials.csv", **(trials or TRIALS))
    np.save(root / "lh.npy", lh)
    np.save(root / "rh.npy", rh)
    return _write(root / "dataset.yaml", textwrap.dedent("""\
        name: tiny
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses: {lh: lh.npy, rh: rh.npy}
        subjects: [subj01]
        """) + textwrap.dedent(extra))


def _affine() -> np.ndarray:
    """2 mm voxels, x flipped, rotated 30 degrees about z, shifted so the midline cuts the grid."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    a = np.eye(4)
    a[:3, :3] = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1]]) * 2.0
    a[:3, 3] = [3.5, -4.0, 10.0]
    return a


GOOD = textwrap.dedent("""\
    stimuli: {table: stimuli.csv}
    trials: trials.csv
    responses: {lh: lh.npy, rh: rh.npy}
    subjects: [subj01]
    """)


def _broken(root: Path) -> Path:
    """Four subjects, each with its own problems."""
    import nibabel as nib

    root.mkdir()
    paths = _images(root / "img", IDS)
    paths[3] = "img/gone.png"
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=paths)
    t = {k: list(v) for k, v in TRIALS.items()}
    t["subject"] = ["subj01"] * N_TRIALS
    t1 = {k: v[:-1] for k, v in t.items()}  # one trial short of the response rows
    t1["stimulus_id"][1] = "nsd-99999"  # not in the stimulus table
    t2 = {**t, "subject": ["subj02"] * N_TRIALS}
    t3 = {**t, "subject": ["subj03"] * N_TRIALS}
    t4 = {**t, "subject": ["subj04"] * N_TRIALS}
    _csv(root / "trials.csv", **{k: t1[k] + t2[k] + t3[k] + t4[k] for k in t})
    z = np.zeros((N_TRIALS, 4), np.float32)
    np.save(root / "subj01_lh.npy", z)
    np.save(root / "subj01_rh.npy", z)
    np.save(root / "lab_lh.npy", np.array([0, 1, 7, 1]))  # 7: not in the mapping
    np.save(root / "lab_rh.npy", np.array([0, 1, 1]))  # 3 labels for 4 vertices
    nan = z.copy()
    nan[4, 2] = np.nan
    np.save(root / "subj02_lh.npy", nan)
    np.save(root / "subj02_rh.npy", z)
    np.save(root / "subj03_lh_a.npy", z[:8])
    np.save(root / "subj03_lh_b.npy", np.zeros((N_TRIALS - 8, 5), np.float32))  # 5 vertices, not 4
    np.save(root / "subj03_rh.npy", z)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, N_TRIALS), np.float32), _affine()), root / "subj04.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 4), np.uint8), _affine()), root / "subj04_mask.nii.gz")
    return _write(root / "broken.yaml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses: {lh: "{subject}_lh.npy", rh: "{subject}_rh.npy"}
        subjects:
          subj01:
            rois: {floc-faces: {lh: lab_lh.npy, rh: lab_rh.npy, mapping: {1: FFA-1}}}
          subj02:
          subj03:
            responses: {lh: [subj03_lh_a.npy, subj03_lh_b.npy], rh: subj03_rh.npy}
          subj04:
            responses: {volume: subj04.nii.gz, mask: subj04_mask.nii.gz}
        """)

"""Datasets read from a description file (DescribedDataset): every source format read back equal to
what was written, splits, trial averaging, per-session z-scoring, noise ceilings from repeats,
masks, the hemisphere split of volumes, one-line errors, `brainstore info` listing problems, and
extraction -> fit -> predict equal to the same fit on the Algonauts folder."""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from PIL import Image
from typer.testing import CliRunner

from brainstore.datasets import (STIMULUS_SCHEMA, AlgonautsDataset, BrainDataset, DatasetError, DescribedDataset,
                                 DescriptionError, open_dataset, open_stimuli)
from brainstore.datasets._arrays import array_ref


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


@pytest.mark.parametrize("zscore,single", [(False, False), (True, False), (True, True), (False, True)])
def test_splits_averaging_single_trials_and_session_zscore(tmp_path, zscore, single):
    rng = np.random.default_rng(0)
    lh = rng.normal(3, 2, size=(N_TRIALS, 6)).astype(np.float32)
    rh = rng.normal(-1, 5, size=(N_TRIALS, 4))  # float64 on disk: stored as float32
    opts = (f"zscore: {'session' if zscore else 'none'}\n"
            f"train_trials: {'single' if single else 'average'}\n")
    ds = DescribedDataset(_surface_dataset(tmp_path / "d", lh, rh, opts))
    assert isinstance(ds, BrainDataset) and ds.root == (tmp_path / "d" / "dataset.yaml").resolve()
    st = ds.stimuli()
    assert st.schema.equals(STIMULUS_SCHEMA)
    for h, x in (("lh", lh), ("rh", rh.astype(np.float32))):
        want = _expected(x, TRIALS, zscore=zscore, single=single)
        for split in ("train", "test"):
            ids, rows = want[split]
            t = ds.stimuli(splits=(split,)).to_pylist()
            assert [r["stimulus_id"] for r in t] == ids and [r["index"] for r in t] == list(range(len(ids)))
            got = ds.responses("subj01", h, split)
            assert isinstance(got, np.memmap) and got.dtype == np.float32
            np.testing.assert_allclose(got, rows, rtol=1e-5, atol=1e-5)
    # repeats: train stimuli 0, 1, 2, 4 twice; test stimulus 5 three times and 6 three times
    assert ds.n_images("subj01", "test") == 2
    assert ds.n_images("subj01", "train") == (9 if single else 5)
    if single:  # a stimulus's repeats are adjacent rows (contiguous CV folds keep them together)
        tr = [r["stimulus_id"] for r in ds.stimuli(splits=("train",)).to_pylist()]
        assert tr == ["nsd-00000", "nsd-00000", "nsd-00001", "nsd-00001", "nsd-00002", "nsd-00002", "nsd-00003",
                      "nsd-00004", "nsd-00004"]
    r0 = st.to_pylist()[0]
    assert r0["path"] == str(tmp_path / "d" / "img" / "nsd-00000.png") and r0["caption"] == "a photo of nsd-00000"
    assert r0["nsd_id"] == 0 and r0["modality"] == "image" and r0["dataset"] == "tiny"
    assert ds.validate() == []


def test_zscore_and_noise_ceiling_from_repeats_by_hand(tmp_path):
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(len(IDS), 5))
    sid = np.array([IDS.index(i) for i in TRIALS["stimulus_id"]])
    lh = (signal[sid] + 0.5 * rng.normal(size=(N_TRIALS, 5))).astype(np.float32)
    ds = DescribedDataset(_surface_dataset(tmp_path / "d", lh, lh[:, :3].copy(),
                                           "zscore: session\nnoise_ceiling: from_repeats\n"))
    z = _expected(lh, TRIALS, zscore=True, single=True)  # (z-scored single trials, then regrouped below)
    x = lh.astype(np.float64)
    split, sess = np.array(TRIALS["split"]), np.array(TRIALS["session"])
    zs = np.empty_like(x)
    for s in "123":
        sel, tr = sess == s, (sess == s) & (split == "train")
        ref = x[tr] if tr.sum() >= 2 else x[split == "train"]
        zs[sel] = (x[sel] - ref.mean(0)) / ref.std(0)
    assert np.allclose(z["train"][1][0], zs[0])
    # ncsnr: noise variance pooled within the repeated stimuli, signal = total - noise (Scoring contract)
    ids = np.array(TRIALS["stimulus_id"])
    groups = [np.flatnonzero(ids == i) for i in IDS if (ids == i).sum() > 1]
    allrep = np.concatenate(groups)
    noise = sum(((zs[g] - zs[g].mean(0)) ** 2).sum(0) for g in groups) / sum(len(g) - 1 for g in groups)
    total = zs[allrep].var(0, ddof=1)
    ncsnr2 = np.clip(total - noise, 0, None) / noise
    a = 2  # the two test stimuli are each shown 3 times: A = 2, B = C = 0
    from brainstore.scoring import noise_ceiling_from_ncsnr

    want = noise_ceiling_from_ncsnr(np.sqrt(ncsnr2), n_three=a)
    got = ds.noise_ceiling("subj01", "lh")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert ((got >= 0) & (got <= 1)).all() and got.mean() > 0.3


def test_hdf5_session_files_trials_axis_scale_and_explicit_rows(tmp_path):
    import h5py

    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(2)
    full_lh = rng.integers(-300, 300, size=(N_TRIALS, 5)).astype(np.int16)  # NSD-style int16 betas x 300
    full_rh = rng.normal(size=(N_TRIALS, 3)).astype(np.float32)
    for k, (a, b) in enumerate(((0, 8), (8, N_TRIALS))):
        with h5py.File(root / f"lh_session{k + 1}.hdf5", "w") as f:
            f.create_dataset("betas/lh", data=full_lh[a:b])
    with h5py.File(root / "rh.h5", "w") as f:
        f.create_dataset("betas", data=full_rh.T)  # vertices x trials
    perm = rng.permutation(N_TRIALS)  # the trial table lists trials in another order, `row` says where they are
    trials = {k: [v[i] for i in perm] for k, v in TRIALS.items()}
    trials["row"] = perm.tolist()
    paths = _images(root / "img", IDS)
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=paths)
    _csv(root / "trials.csv", **trials)
    desc = _write(root / "brainstore-dataset.yaml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses:
          lh: {file: "lh_session*.hdf5", key: betas/lh}
          rh: {file: rh.h5, key: betas, trials_axis: 1}
          scale: 0.0033333333
        subjects: [subj01]
        """)
    ds = open_dataset(root)  # a folder holding brainstore-dataset.yaml
    assert isinstance(ds, DescribedDataset) and ds.root == desc.resolve() and ds.name == "d"
    for h, x in (("lh", full_lh.astype(np.float64) * 0.0033333333), ("rh", full_rh * 0.0033333333)):  # (both)
        want = _expected(x[perm], trials, zscore=False, single=False)
        for split in ("train", "test"):
            assert [r["stimulus_id"] for r in ds.stimuli(splits=(split,)).to_pylist()] == want[split][0]
            np.testing.assert_allclose(ds.responses("subj01", h, split), want[split][1], rtol=1e-5, atol=1e-6)
    assert ds.validate() == []
    # the identity reopens it, and the cache is reused until an input changes
    again = open_dataset(str(ds.root))
    first = Path(again.responses("subj01", "lh").filename)
    assert first == Path(ds.responses("subj01", "lh").filename) and ".brainstore-cache" in str(first)
    import os

    os.utime(root / "trials.csv", ns=(1, 1))
    assert Path(open_dataset(ds.root).responses("subj01", "lh").filename) != first


def _write_label(path: Path, vertices) -> None:
    lines = ["#!ascii label, from subject vox2ras=TkReg", str(len(vertices))]
    lines += [f"{v} 0.0 0.0 0.0 0.0" for v in vertices]
    path.write_text("\n".join(lines) + "\n")


def test_gifti_mgh_and_surface_label_files(tmp_path):
    import nibabel as nib

    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(3)
    lh = rng.normal(size=(N_TRIALS, 9)).astype(np.float32)
    rh = rng.normal(size=(N_TRIALS, 6)).astype(np.float32)
    nib.save(nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(t) for t in lh]), root / "lh.func.gii")
    nib.save(nib.MGHImage(rh.T.reshape(6, 1, 1, N_TRIALS), np.eye(4)), root / "rh.mgz")
    # lh ROIs: a GIfTI label file with its label table; rh: FreeSurfer .label files; then an annot
    lab_lh = np.array([0, 1, 1, 2, 0, 0, 2, 0, 0], dtype=np.int32)
    table = nib.gifti.GiftiLabelTable()
    for key, name in ((0, "???"), (1, "FFA-1"), (2, "OFA")):
        g = nib.gifti.GiftiLabel(key=key)
        g.label = name
        table.labels.append(g)
    nib.save(nib.GiftiImage(labeltable=table, darrays=[nib.gifti.GiftiDataArray(lab_lh, intent="NIFTI_INTENT_LABEL")]),
             root / "lh.faces.label.gii")
    _write_label(root / "rh.FFA-1.label", [0, 4])
    _write_label(root / "rh.OFA.label", [5])
    paths = _images(root / "img", IDS)
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=paths)
    _csv(root / "trials.csv", **TRIALS)
    ds = DescribedDataset(_write(root / "d.yml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses: {lh: lh.func.gii, rh: rh.mgz}
        rois:
          floc-faces:
            lh: lh.faces.label.gii
            rh: {FFA-1: rh.FFA-1.label, OFA: rh.OFA.label}
        subjects: {subj01: null}
        """))
    for h, x in (("lh", lh), ("rh", rh)):
        want = _expected(x, TRIALS, zscore=False, single=False)
        np.testing.assert_allclose(ds.responses("subj01", h, "train"), want["train"][1], rtol=1e-6)
        np.testing.assert_allclose(ds.responses("subj01", h, "test"), want["test"][1], rtol=1e-6)
    labels, mapping = ds.roi_labels("subj01", "lh", "floc-faces")
    assert labels.tolist() == lab_lh.tolist() and mapping == {1: "FFA-1", 2: "OFA"}
    labels, mapping = ds.roi_labels("subj01", "rh", "floc-faces")
    assert labels.tolist() == [1, 0, 0, 0, 1, 2] and mapping == {1: "FFA-1", 2: "OFA"}
    masks = ds.roi_masks("subj01", "rh", level="roi")
    assert list(masks) == ["FFA-1", "OFA"] and masks["OFA"].tolist() == [False] * 5 + [True]
    # families absent from the dataset are absent (not empty masks)
    assert list(ds.roi_masks("subj01", "lh")) == ["floc-faces"]
    assert list(ds.regions("subj01", "rh")) == ["floc-faces", "FFA-1", "OFA"]


def test_annot_names_its_labels(tmp_path):
    import nibabel as nib

    root = tmp_path / "d"
    root.mkdir()
    annot = np.array([0, 1, 1, 2, 2, 0, -1])
    ctab = np.array([[25, 5, 25, 0, 0], [100, 0, 0, 0, 0], [0, 100, 0, 0, 0]], dtype=np.int32)
    nib.freesurfer.write_annot(str(root / "lh.annot"), annot, ctab, [b"unknown", b"V1", b"V2"], fill_ctab=True)
    nib.freesurfer.write_annot(str(root / "rh.annot"), annot[:5], ctab, [b"unknown", b"V1", b"V2"], fill_ctab=True)
    np.save(root / "lh.npy", np.zeros((3, 7), np.float32))
    np.save(root / "rh.npy", np.zeros((3, 5), np.float32))
    _csv(root / "trials.csv", stimulus_id=["a1", "a2", "b1"], split=["train", "train", "test"])
    _csv(root / "stimuli.csv", stimulus_id=["a1", "a2", "b1"], path=["x.png"] * 3)
    ds = DescribedDataset(_write(root / "d.yaml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses: {lh: lh.npy, rh: rh.npy}
        rois: {early: {lh: lh.annot, rh: rh.annot}}
        subjects: [s1]
        """))
    labels, mapping = ds.roi_labels("s1", "lh", "early")
    assert mapping == {2: "V1", 3: "V2"} and labels.tolist() == [0, 2, 2, 3, 3, 0, 0]
    assert list(ds.regions("s1", "lh")) == ["early", "V1", "V2"]
    text = (root / "d.yaml").read_text().replace("rh: rh.annot}", "rh: rh.annot, mapping: {1: V1}}")
    ds = DescribedDataset(_write(root / "d.yaml", text))
    with pytest.raises(DatasetError, match=r"d\.yaml line 4: rois\.early\.mapping \(for s1\): the label files name "
                                           r"their ROIs themselves"):
        ds.roi_labels("s1", "lh", "early")


def _affine() -> np.ndarray:
    """2 mm voxels, x flipped, rotated 30 degrees about z, shifted so the midline cuts the grid."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    a = np.eye(4)
    a[:3, :3] = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1]]) * 2.0
    a[:3, 3] = [3.5, -4.0, 10.0]
    return a


def test_nifti_volume_mask_hemisphere_split_and_lazy_reads(tmp_path, monkeypatch):
    import nibabel as nib
    from nibabel.affines import apply_affine
    from nibabel.arrayproxy import ArrayProxy

    from brainstore.datasets import _readers

    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(5)
    shape = (5, 4, 3)
    aff = _affine()
    vol = rng.normal(size=(*shape, N_TRIALS)).astype(np.float32)
    mask = rng.random(shape) > 0.25
    nib.save(nib.Nifti1Image(vol[..., :9], aff), root / "betas_session01.nii.gz")
    nib.save(nib.Nifti1Image(vol[..., 9:], aff), root / "betas_session02.nii")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), root / "brainmask.nii.gz")
    labels = rng.integers(0, 3, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, aff), root / "faces.nii.gz")
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=_images(root / "img", IDS))
    _csv(root / "trials.csv", **TRIALS)
    (root / "faces.json").write_text(json.dumps({"1": "FFA-1", "2": "FFA-2"}))
    ds = DescribedDataset(_write(root / "vol.yaml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        subjects:
          subj01:
            responses: {volume: [betas_session01.nii.gz, betas_session02.nii], mask: brainmask.nii.gz}
            rois: {floc-faces: {volume: faces.nii.gz, mapping: faces.json}}
        """))
    # reads are slices of at most two trials (no whole-volume read of the 4-D files)
    monkeypatch.setattr(_readers, "BLOCK_BYTES", int(np.prod(shape)) * 8 * 2)
    reads, whole = [], []
    getitem, array = ArrayProxy.__getitem__, ArrayProxy.__array__

    def spy_getitem(self, key):
        out = getitem(self, key)
        reads.append(out.shape)
        return out

    def spy_array(self, *a, **k):
        if len(self.shape) == 4:
            whole.append(self.shape)
        return array(self, *a, **k)

    monkeypatch.setattr(ArrayProxy, "__getitem__", spy_getitem)
    monkeypatch.setattr(ArrayProxy, "__array__", spy_array)
    ijk = np.argwhere(mask)  # C order
    x = apply_affine(aff, ijk)[:, 0]
    assert (x < 0).any() and (x >= 0).any()
    for h, sel in (("lh", x < 0), ("rh", x >= 0)):
        trials = vol[ijk[sel, 0], ijk[sel, 1], ijk[sel, 2], :].T  # trials x voxels
        want = _expected(trials, TRIALS, zscore=False, single=False)
        assert ds.n_vertices("subj01", h) == sel.sum()
        np.testing.assert_allclose(ds.responses("subj01", h, "train"), want["train"][1], rtol=1e-6)
        np.testing.assert_allclose(ds.responses("subj01", h, "test"), want["test"][1], rtol=1e-6)
        lab, mapping = ds.roi_labels("subj01", h, "floc-faces")
        assert lab.tolist() == labels[ijk[sel, 0], ijk[sel, 1], ijk[sel, 2]].tolist()
        assert mapping == {1: "FFA-1", 2: "FFA-2"}
    assert not whole and reads and max(r[-1] for r in reads if len(r) == 4) <= 2
    monkeypatch.undo()
    assert ds.validate() == []


def test_image_brick_stimuli_are_array_refs(tmp_path):
    import h5py

    root = tmp_path / "d"
    root.mkdir()
    with h5py.File(root / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=np.zeros((10, 4, 4, 3), np.uint8))
    np.save(root / "lh.npy", np.zeros((4, 3), np.float32))
    np.save(root / "rh.npy", np.zeros((4, 2), np.float32))
    _csv(root / "trials.csv", stimulus_id=["nsd-00003", "nsd-00007", "cat", "nsd-00003"],
         split=["train", "train", "test", "train"], brick_index=[None, None, 9, None])
    ds = DescribedDataset(_write(root / "d.yaml", """\
        stimuli: {array: nsd_stimuli.hdf5, key: imgBrick}
        trials: trials.csv
        responses: {lh: lh.npy, rh: rh.npy}
        subjects: [subj01]
        """))
    rows = ds.stimuli().to_pylist()
    brick = root / "nsd_stimuli.hdf5"
    assert [(r["stimulus_id"], r["path"], r["nsd_id"]) for r in rows] == [
        ("nsd-00003", array_ref(brick, "imgBrick", 3), 3), ("nsd-00007", array_ref(brick, "imgBrick", 7), 7),
        ("cat", array_ref(brick, "imgBrick", 9), None)]
    assert ds.validate() == []
    _csv(root / "trials.csv", stimulus_id=["nsd-00003", "nsd-00012"], split=["train", "test"])
    np.save(root / "lh.npy", np.zeros((2, 3), np.float32))
    np.save(root / "rh.npy", np.zeros((2, 2), np.float32))
    assert any("brick index 12 is past the 10 images" in p for p in DescribedDataset(root / "d.yaml").validate())


GOOD = textwrap.dedent("""\
    stimuli: {table: stimuli.csv}
    trials: trials.csv
    responses: {lh: lh.npy, rh: rh.npy}
    subjects: [subj01]
    """)


@pytest.mark.parametrize("text,pattern", [
    (GOOD.replace("trials: trials.csv", "trails: trials.csv"),
     r"d\.yaml line 2: trails: unknown key 'trails'; did you mean 'trials'"),
    (GOOD.replace("{lh: lh.npy, rh: rh.npy}", "{lh: lh.h5, rh: rh.npy}"),
     r"d\.yaml line 3: responses\.lh: an HDF5 file needs key: the path of the dataset inside it"),
    (GOOD.replace("{lh: lh.npy, rh: rh.npy}", "{lh: lh.npy}"), r"line 3: responses: give both lh and rh"),
    (GOOD.replace("{lh: lh.npy, rh: rh.npy}", "{lh: lh.npy, rh: rh.npy, volume: v.nii.gz}"),
     r"line 3: responses: give lh and rh .* or volume and mask .*, not both"),
    (GOOD.replace("stimuli: {table: stimuli.csv}\n", ""), r"d\.yaml: stimuli: required field 'stimuli' is missing; give"),
    (GOOD + "train_trials: each\n", r"line 5: train_trials: Input should be 'average' or 'single' \(given: 'each'\)"),
    (GOOD.replace("trials: trials.csv\n", ""), r"line 3: subjects: subject subj01 has no trials: give subjects\.subj01\.trials"),
    (GOOD + "rois: {floc-faces: {lh: a.npy}}\n", r"line 5: rois\.floc-faces: give both lh and rh label files"),
    (GOOD + "noise_ceiling: 0.5\n", r"line 5: noise_ceiling: .*"),
    (GOOD.replace("subjects: [subj01]", "subjects: {subj01: {respones: {}}}"),
     r"line 4: subjects\.subj01\.respones: unknown key 'respones'; did you mean 'responses'"),
    (GOOD + "stimuli: {table: x.csv}\n", r"line 5: stimuli is given twice \(first on line 1\); keep one"),
    ("[1, 2]\n", r"d\.yaml must be a mapping of fields"),
    ("stimuli: {table: [\n", r"d\.yaml is not valid YAML"),
])
def test_bad_descriptions_are_one_line_errors(tmp_path, text, pattern):
    path = _write(tmp_path / "d.yaml", text)
    with pytest.raises(DescriptionError, match=pattern) as e:
        DescribedDataset(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_bad_data_errors_name_file_and_field(tmp_path):
    root = tmp_path / "d"
    ds = DescribedDataset(_surface_dataset(root, np.zeros((N_TRIALS, 3), np.float32), np.zeros((N_TRIALS, 2), np.float32),
                                           "rois: {floc-faces: {lh: nope.npy, rh: nope.npy, mapping: {1: FFA}}}\n"))
    with pytest.raises(DatasetError, match=r"nope\.npy \(.*dataset\.yaml line 6: rois\.floc-faces\.lh \(for subj01\)\) "
                                           r"does not exist"):
        ds.roi_labels("subj01", "lh", "floc-faces")
    with pytest.raises(DatasetError, match=r"subject 'subj09' is not in .*dataset\.yaml \(subjects: subj01\)"):
        ds.responses("subj09", "lh")
    (root / "lh.npy").unlink()
    with pytest.raises(DatasetError, match=r"response file .*lh\.npy \(.*dataset\.yaml line 4: responses\.lh \(for "
                                           r"subj01\)\) does not exist"):
        DescribedDataset(root / "dataset.yaml").responses("subj01", "lh")
    with pytest.raises(DatasetError, match=r"dataset .*missing\.yaml does not exist"):
        open_dataset(tmp_path / "missing.yaml")


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


def test_info_lists_every_problem_with_its_file(tmp_path):
    from brainstore.cluster.cli import app

    desc = _broken(tmp_path / "d")
    r = CliRunner().invoke(app, ["info", str(desc), "--json"])
    assert r.exit_code == 1, r.output
    problems = json.loads(r.output)["problems"]
    text = "\n".join(problems)
    expected = [
        r"trials\.csv \(.*broken\.yaml line 2: trials \(for subj01\)\) has 14 trials of subj01 but the responses "
        r"\(.*subj01_lh\.npy\) have 15 rows",
        r"trials\.csv .*: 1 stimulus id\(s\) of subj01 are not in the stimulus table .*stimuli\.csv: nsd-99999",
        r"stimulus nsd-00003 \(subj01\): file .*img/gone\.png does not exist",
        r"broken\.yaml line 6: subjects\.subj01\.rois\.floc-faces\.lh: the lh labels of subj01 use \[7\] that the "
        r"mapping does not name",
        r"broken\.yaml line 6: subjects\.subj01\.rois\.floc-faces\.rh: the rh labels of subj01 have length 3 but "
        r"subj01 rh has 4 vertices",
        r"subj02_lh\.npy \(subj02 lh\): 1\+ non-finite responses \(NaN first at trial 4 of the file, vertex 2\)",
        r"broken\.yaml line 9: subjects\.subj03\.responses\.lh: the lh files have different vertex counts: "
        r".*subj03_lh_a\.npy 4; .*subj03_lh_b\.npy 5",
        r"response volume .*subj04\.nii\.gz .* has a \(3, 3, 3\) grid but the brain mask .*subj04_mask\.nii\.gz "
        r"has \(3, 3, 4\)",
    ]
    import re

    for pat in expected:
        assert re.search(pat, text), f"{pat}\nnot in:\n{text}"
    assert len(problems) == len(expected), text
    r = CliRunner().invoke(app, ["info", str(desc)])
    assert r.exit_code == 1 and "8 problem(s)" in r.output
    # a description that does not parse: its problems are listed too (exit 1)
    bad = _write(tmp_path / "bad.yaml", GOOD + "zscore: trial\nname: [1]\n")
    r = CliRunner().invoke(app, ["info", str(bad)])
    assert r.exit_code == 1 and "2 problem(s)" in r.output and "line 5: zscore" in r.output and "line 6: name" in r.output


def test_open_dataset_picks_the_reader(small_dataset, tmp_path):
    assert isinstance(open_dataset(small_dataset), AlgonautsDataset)
    ds = open_dataset(small_dataset)
    assert open_dataset(ds) is ds
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DatasetError, match="is a file but not a dataset description"):
        open_dataset(tmp_path / "x.txt")
    desc = _surface_dataset(tmp_path / "d", np.zeros((N_TRIALS, 2), np.float32), np.zeros((N_TRIALS, 2), np.float32))
    assert open_stimuli(desc).num_rows == 7
    with pytest.raises(DatasetError, match=r"holds no subjNN/ folder.*; or pass its description file \(dataset\.yaml\), "
                                           r"or name it brainstore-dataset\.yaml"):
        open_dataset(desc.parent)


# ----------------------------------------------------------------------------- end to end
def describe_algonauts(src: Path, dst: Path, *, drop_families=("floc-words",), subjects=None) -> Path:
    """The Algonauts folder as a described dataset: one HDF5 per subject (train then test rows; lh and rh
    datasets), one shared trial table (subject column), a stimulus table pointing at the PNG files, the
    captions file keyed by image name, the ROI label files and mappings, the noise-ceiling files."""
    import h5py

    alg = AlgonautsDataset(src)
    dst.mkdir()
    trials = {"subject": [], "stimulus_id": [], "session": [], "run": [], "split": []}
    stim: dict[str, str] = {}
    rois: dict = {}
    described: dict = {}
    for s in subjects or alg.subjects:
        with h5py.File(dst / f"{s}.hdf5", "w") as f:
            for h in ("lh", "rh"):
                f.create_dataset(f"{h}/betas", data=np.concatenate([alg.responses(s, h, "train"),
                                                                    alg.responses(s, h, "test")]))
        for split in ("train", "test"):
            for r in alg.stimuli([s], (split,)).to_pylist():
                trials["subject"].append(s)
                trials["stimulus_id"].append(r["stimulus_id"])
                trials["session"].append("1")
                trials["run"].append("1")
                trials["split"].append(split)
                stim[r["stimulus_id"]] = os.path.relpath(r["path"], dst)  # relative to the description's folder
        fams = {}
        for fam in ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams"):
            if fam in drop_families:
                continue
            fams[fam] = {h: str(src / s / "roi_masks" / f"{h}.{fam}_challenge_space.npy") for h in ("lh", "rh")}
            fams[fam]["mapping"] = str(src / s / "roi_masks" / f"mapping_{fam}.npy")
        nc = {h: str(src / s / "test_split" / "noise_ceiling" / f"{h}_noise_ceiling.npy") for h in ("lh", "rh")}
        described[s] = {"responses": {h: {"file": f"{s}.hdf5", "key": f"{h}/betas"} for h in ("lh", "rh")},
                       "rois": fams, "noise_ceiling": nc}
    _csv(dst / "trials.csv", **trials)
    _csv(dst / "stimuli.csv", stimulus_id=list(stim), path=[stim[k] for k in stim])
    doc = {"name": "synth-described", "stimuli": {"table": "stimuli.csv"}, "captions": str(src / "captions.csv"),
           "trials": "trials.csv", "subjects": described}
    import yaml

    return _write(dst / "synth.yaml", yaml.safe_dump(doc, sort_keys=False))


def test_described_copy_of_the_algonauts_folder_reads_back_equal(small_dataset, tmp_path):
    desc = describe_algonauts(small_dataset, tmp_path / "described")
    alg, ds = AlgonautsDataset(small_dataset), DescribedDataset(desc)
    assert ds.subjects == alg.subjects and ds.validate(check_images=False) == []
    a, d = alg.stimuli(), ds.stimuli()
    for col in ("stimulus_id", "subject", "split", "nsd_id", "caption", "index"):
        assert d.column(col).to_pylist() == a.column(col).to_pylist(), col
    # an id names one file: a shared image's path is the first subject's copy
    assert all(Path(p).is_file() and p.endswith(f"_nsd-{n:05d}.png")
               for p, n in zip(d.column("path").to_pylist(), d.column("nsd_id").to_pylist()))
    for s in alg.subjects:
        for h in ("lh", "rh"):
            for split in ("train", "test"):
                np.testing.assert_array_equal(ds.responses(s, h, split), alg.responses(s, h, split))
            np.testing.assert_allclose(ds.noise_ceiling(s, h), alg.noise_ceiling(s, h))
            fams = [f for f in alg.regions(s, h) if f in ds.roi_families(s)]
            want = {**alg.roi_masks(s, h, families=fams), **alg.roi_masks(s, h, level="roi", families=fams)}
            got = ds.regions(s, h)
            assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
            assert "floc-words" not in got and len(fams) == 5
    summ = ds.summary()["subjects"]["subj01"]
    assert summ["train_images"] == 120 and summ["test_images"] == 40 and summ["test_responses"]


def _single_trial_copy(desc: Path, src: Path) -> Path:
    """The described copy with every training stimulus shown twice (session 1: the responses, session 2:
    them + noise + an offset), z-scored per session, train_trials: single."""
    import h5py
    import yaml

    alg = AlgonautsDataset(src)
    rng = np.random.default_rng(7)
    root = desc.parent
    with h5py.File(root / "single.hdf5", "w") as f:
        for h in ("lh", "rh"):
            tr, te = np.asarray(alg.responses("subj01", h, "train")), np.asarray(alg.responses("subj01", h, "test"))
            f.create_dataset(f"{h}/betas", data=np.concatenate([tr, tr + 0.5 * rng.normal(size=tr.shape) + 2.0, te]))
    tr_ids = alg.stimuli(["subj01"], ("train",)).column("stimulus_id").to_pylist()
    te_ids = alg.stimuli(["subj01"], ("test",)).column("stimulus_id").to_pylist()
    _csv(root / "single_trials.csv", stimulus_id=tr_ids + tr_ids + te_ids,
         split=["train"] * 240 + ["test"] * 40, session=["1"] * 120 + ["2"] * 120 + ["3"] * 40)
    doc = yaml.safe_load(desc.read_text())
    doc.update(name="single", trials="single_trials.csv", train_trials="single", zscore="session")
    doc["subjects"]["subj01"]["responses"] = {h: {"file": "single.hdf5", "key": f"{h}/betas"} for h in ("lh", "rh")}
    return _write(root / "single.yaml", yaml.safe_dump(doc, sort_keys=False))


def test_single_trial_rows_keep_repeats_in_one_fold(tmp_path):
    """The documented bound: with contiguous K folds, at most K - 1 stimuli have repeats in two folds."""
    from brainstore.fitting._encoding import validation_folds

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in rng.integers(0, 40, size=150)]  # 150 trials of 40 stimuli, repeats anywhere
    trials = {"stimulus_id": ids, "split": ["train"] * 150, "session": ["1"] * 150}
    root = tmp_path / "d"
    root.mkdir()
    _csv(root / "trials.csv", **trials)
    _csv(root / "stimuli.csv", stimulus_id=sorted(set(ids)), path=["x.png"] * len(set(ids)))
    np.save(root / "lh.npy", np.zeros((150, 2), np.float32))
    np.save(root / "rh.npy", np.zeros((150, 2), np.float32))
    ds = DescribedDataset(_write(root / "d.yaml", GOOD + "train_trials: single\n"))
    rows = ds.stimuli(splits=("train",)).column("stimulus_id").to_pylist()
    assert sorted(rows) == sorted(ids)
    for k in (3, 5, 7):
        folds, _, _ = validation_folds(len(rows), k)
        fold_of = np.empty(len(rows), int)
        for f, (_, va) in enumerate(folds):
            fold_of[va] = f
        split_ids = [i for i in set(rows) if len({fold_of[j] for j, r in enumerate(rows) if r == i}) > 1]
        assert len(split_ids) <= k - 1


@pytest.mark.slow
def test_extract_fit_predict_equal_to_the_algonauts_folder(small_dataset, tmp_path, ray_local):
    """The same fit on the Algonauts folder and on its described copy (subj01) gives the same predictions and
    scores (the described copy lacks floc-words: reported as NaN, no warning)."""
    from brainstore.features import extract
    from brainstore.features._extractors._testing import register_tiny_models
    from brainstore.fitting import FitSpec, ModelRegistry, fit_encoding_models, predict_model, subject_stimuli
    from brainstore.fitting._report import comparison_rows, write_report

    register_tiny_models()
    desc = describe_algonauts(small_dataset, tmp_path / "described", subjects=["subj01"])
    spec_ext = "clip:arch=brainstore-tiny-clip,pretrained=none"
    runs = {}
    # (one subject keeps the test short: the Algonauts side extracts subj01's stimuli, the described side its file)
    for tag, data, source in (("alg", small_dataset, AlgonautsDataset(small_dataset).stimuli(["subj01"])),
                              ("desc", desc, desc)):
        store, registry = str(tmp_path / tag / "store"), str(tmp_path / tag / "registry")
        img = extract(source, spec_ext, store, progress=False).feature
        spec = FitSpec(dataset=str(data), alphas=[1.0, 100.0, 10000.0], folds=3, subjects=["subj01"],
                       models=[{"name": "img", "features": [img]}])
        run = fit_encoding_models(spec, store=store, registry=registry, out=tmp_path / tag / "run", progress=False)
        assert not run.failures, run.failures
        runs[tag] = (run, registry, open_dataset(data))
    (ra, rega, alg), (rd_, regd, ds) = runs["alg"], runs["desc"]
    reg_a, reg_d = ModelRegistry(rega, create=False), ModelRegistry(regd, create=False)
    assert reg_d.list()[0].meta["dataset"] == str(ds.root) == str(desc.resolve())
    assert ds.subjects == ["subj01"]
    for s in ds.subjects:
        ids = subject_stimuli(alg, s, "test")
        assert subject_stimuli(ds, s, "test") == ids
        pa_, pd = predict_model(reg_a, "img", s, None, ids), predict_model(reg_d, "img", s, None, ids)
        for h in ("lh", "rh"):
            np.testing.assert_allclose(pd[h], pa_[h], rtol=1e-4, atol=1e-5)
        ma, md = ra.metrics["img"][s]["both"], rd_.metrics["img"][s]["both"]
        assert md["test_nnmc"] == pytest.approx(ma["test_nnmc"], rel=1e-4)
        for fam in ("floc-faces", "prf-visualrois"):
            assert md["test_nnmc_roi"][fam] == pytest.approx(ma["test_nnmc_roi"][fam], rel=1e-4)
        assert "floc-words" not in md["test_nnmc_roi"]
    # single trials (each training stimulus shown twice, one session each), z-scored per session: the fit
    # takes the repeated ids (features looked up per row)
    single = _single_trial_copy(desc, small_dataset)
    spec = FitSpec(dataset=str(single), alphas=[1.0, 100.0, 10000.0], folds=3,
                   models=[{"name": "img-single", "features": reg_d.record("img/subj01").meta["features"]}])
    run = fit_encoding_models(spec, store=str(tmp_path / "desc" / "store"), registry=regd, out=tmp_path / "single",
                              progress=False)
    assert not run.failures, run.failures
    assert ModelRegistry(regd, create=False).record("img-single/subj01").meta["info"]["lh"]["n_train"] == 240
    sd = open_dataset(single)
    assert sd.n_images("subj01", "train") == 240 and len(set(subject_stimuli(sd, "subj01", "train"))) == 120
    pred = predict_model(reg_d, "img-single", "subj01", None, subject_stimuli(sd, "subj01", "test"))
    assert pred["lh"].shape == (40, sd.n_vertices("subj01", "lh")) and np.isfinite(pred["lh"]).all()
    assert run.metrics["img-single"]["subj01"]["both"]["val_r_mean"] > 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = comparison_rows(rd_.metrics, rd_.kinds)
        rep = write_report(rd_.metrics, rd_.kinds, rd_.test_preds, ds, tmp_path / "report")
    assert np.isnan(rows[0]["floc-words"]) and not np.isnan(rows[0]["floc-faces"])
    assert "| - |" in rep["markdown"]


def test_docs_example_is_a_valid_description(tmp_path):
    """The docs' one complete example parses (every field it shows exists, with the values it shows)."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    block = readme.split("## Dataset description files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    ds = DescribedDataset(_write(tmp_path / "brainstore-dataset.yaml", block))
    assert ds.subjects == ["subj01", "subj02", "subj03"] and ds.name == "nsd-subset"
    assert ds._responses_spec("subj03").is_volume and ds._field("subj02", "noise_ceiling").lh == "subj02/lh_nc.npy"
    assert ds.roi_families("subj01") == ["floc-faces", "prf-visualrois"] and ds.roi_families("subj03") == ["floc-faces"]


def test_info_table_says_unreadable_where_a_hemisphere_cannot_be_read(tmp_path):
    """`brainstore info` on a dataset whose subj03 and subj04 responses cannot be read (files of different
    vertex counts; a mask of another grid): their vertex cells say "unreadable" and their ROI cells "-",
    never "None" or a count of 0; the readable subjects keep their numbers."""
    import re

    from brainstore.cluster.cli import app

    desc = _broken(tmp_path / "d")
    r = CliRunner().invoke(app, ["info", str(desc)])
    assert r.exit_code == 1
    assert "None" not in r.output, r.output
    rows = {tuple(m.group(1, 2)): m.group(3).split() for m in
            re.finditer(r"│ (subj\d\d)\s+│ (lh|rh)\s+│(.*)│\s*$", r.output, re.M)}
    cells = {k: [c for c in v if c != "│"] for k, v in rows.items()}
    for s in ("subj03", "subj04"):
        for h in ("lh", "rh"):
            assert cells[(s, h)][3:5] == ["unreadable", "-"], (s, h, cells[(s, h)])
    assert cells[("subj01", "lh")][3:5] == ["4", "3"]  # train, test, test fMRI, vertices, faces

"""Responses of a described dataset (``described/_responses.py``): splits, trial averaging or single
trials, per-session z-scoring, noise ceilings from repeats, HDF5 sources over several files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from brainstore.datasets import STIMULUS_SCHEMA, BrainDataset, DescribedDataset, open_dataset
from tests.datasets.described.helpers import IDS, N_TRIALS, TRIALS, _csv, _expected, _images, _surface_dataset, _write


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

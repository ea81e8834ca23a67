"""A described dataset as a whole (``described/_described.py``): the Algonauts folder described reads
back equal, extraction -> fit -> predict equal to the same fit on the Algonauts folder, the summary
of unreadable parts."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from brainstore.datasets import AlgonautsDataset, DescribedDataset, open_dataset
from tests.datasets.described.helpers import _broken, _csv, _write


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


@pytest.mark.slow
def test_extract_fit_predict_equal_to_the_algonauts_folder(small_dataset, tmp_path, ray_local):
    """The same fit on the Algonauts folder and on its described copy (subj01) gives the same predictions and
    scores (the described copy lacks floc-words: reported as NaN, no warning)."""
    from brainstore.features import extract
    from brainstore.features.extractors.testing import register_tiny_models
    from brainstore.fitting import FitSpec, ModelRegistry, fit_encoding_models, predict_model, subject_stimuli
    from brainstore.fitting import comparison_rows, write_report

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
            # vertices, space (a volume's grid cannot be read either; no space: is "-"), faces
            assert cells[(s, h)][3:6] in (["unreadable", "-", "-"], ["unreadable", "unreadable", "-"]), \
                (s, h, cells[(s, h)])
    assert cells[("subj01", "lh")][3:6] == ["4", "-", "3"]  # train, test, test fMRI, vertices, space, faces

"""Encoding models end to end: Ray-parallel fits, derived models, registry, evaluate, predict."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from brainstore.datasets import AlgonautsDataset
from brainstore.features import FeatureStore, extract
from brainstore.fitting import (
    FitSpec,
    ModelRegistry,
    SpecError,
    best_model,
    default_spec,
    fit_encoding_models,
    kfold_indices,
    load_spec,
    oof_ridge_predictions,
    predict_model,
    subject_stimuli,
)

IMG = "clip:arch=brainstore-tiny-clip,pretrained=none"


def test_oof_predictions_match_sklearn_ridge_per_fold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 7)) * rng.uniform(0.5, 3, 7) + 2
    Y = X @ rng.normal(size=(7, 5)) + rng.normal(size=(60, 5))
    alpha = np.array([0.1, 1.0, 10.0, 1.0, 1000.0])
    folds = kfold_indices(60, 4)
    got = oof_ridge_predictions(X, Y, alpha, folds)
    ref = np.empty_like(Y)
    for tr, va in folds:
        sc = StandardScaler().fit(X[tr])
        for j, a in enumerate(alpha):
            ref[va, j] = Ridge(alpha=a).fit(sc.transform(X[tr]), Y[tr, j]).predict(sc.transform(X[va]))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_spec_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="refers to unknown model 'nope'"):
        FitSpec(dataset="d", models=[{"name": "a", "features": ["f"]}], ensembles=[{"name": "e", "members": ["a", "nope"]}])
    with pytest.raises(ValueError, match="unknown ROI family"):
        FitSpec(dataset="d", models=[{"name": "a", "features": ["f"]}],
                per_roi=[{"name": "p", "default": "a", "rules": {"v1": "a"}}])
    p = tmp_path / "spec.yaml"
    p.write_text("dataset: d\nmodels:\n  - name: a\n    features: [f]\n    method: lasso\n")
    with pytest.raises(SpecError, match=r"models.0.method"):
        load_spec(p)
    p.write_text("dataset: d\nalphas: [1, -1]\nmodels:\n  - name: a\n    features: [f]\n")
    with pytest.raises(SpecError, match="alphas"):
        load_spec(p)


@pytest.fixture(scope="module")
def fitted(small_dataset, tmp_path_factory, ray_local):
    from brainstore.features._extractors._testing import register_tiny_models

    register_tiny_models()
    root = tmp_path_factory.mktemp("fit")
    store, registry = str(root / "store"), str(root / "registry")
    img = extract(small_dataset, IMG, store, progress=False).feature
    txt = extract(small_dataset, "text", store, progress=False).feature
    spec = default_spec(small_dataset, store, registry, alphas=np.logspace(0, 5, 6).tolist(), folds=4)
    run = fit_encoding_models(spec, store=store, registry=registry, progress=False)
    return {"store": store, "registry": registry, "img": img, "txt": txt, "spec": spec, "run": run}


def test_default_spec_fits_every_model_and_registers(fitted, small_dataset):
    run, spec = fitted["run"], fitted["spec"]
    img, txt = fitted["img"], fitted["txt"]
    singles = [m.name for m in spec.models[:2]]
    assert sorted(singles) == sorted([img, txt])
    assert spec.models[2].features == singles  # the concatenation of both tables
    assert set(run.models) == {img, txt, "+".join(singles), "avg-ensemble", "per-roi-best"}
    assert not run.failures
    reg = ModelRegistry(fitted["registry"])
    assert len(reg.list()) == len(run.models) * 2
    for model in run.models:
        for s in ("subj01", "subj02"):
            both = run.metrics[model][s]["both"]
            assert np.isfinite(both["cv_r_mean"]) and 0 <= both["test_nnmc"] <= 100
    # captions carry the category content: the text model explains the face/place ROIs
    m = run.metrics[txt]["subj01"]["both"]["test_nnmc_roi"]
    assert m["floc-faces"] > 10 and m["floc-places"] > 10


def test_registry_predictions_reproduce_the_run(fitted, small_dataset):
    run = fitted["run"]
    reg, fs = ModelRegistry(fitted["registry"]), FeatureStore(fitted["store"])
    ds = AlgonautsDataset(small_dataset)
    ids = subject_stimuli(ds, "subj02", "test")
    for model in run.models:
        pred = predict_model(reg, model, "subj02", fs, ids)
        for h in ("lh", "rh"):
            np.testing.assert_allclose(pred[h], run.test_preds[(model, "subj02")][h], rtol=1e-4, atol=1e-4)
    # the ensemble is the mean of its members; the per-ROI model takes each vertex from one member
    ens = predict_model(reg, "avg-ensemble", "subj02", fs, ids)
    members = reg.load("avg-ensemble/subj02")[1].meta["members"]
    mean = np.mean([predict_model(reg, x, "subj02", fs, ids)["lh"] for x in members], axis=0)
    np.testing.assert_allclose(ens["lh"], mean, rtol=1e-5, atol=1e-5)
    tensors, rec = reg.load("per-roi-best/subj02")
    assert tensors["lh.choice"].max() < len(rec.meta["members"])
    assert best_model(reg, "subj01") in run.models


def test_failing_subject_reported_others_finish(small_dataset, tmp_path, fitted):
    """A subject whose stimuli are missing from the features fails alone."""
    src = FeatureStore(fitted["store"])
    fs = FeatureStore(tmp_path / "store")
    ds = AlgonautsDataset(small_dataset)
    keep = set(subject_stimuli(ds, "subj01", "train") + subject_stimuli(ds, "subj01", "test"))
    tbl = src.read(fitted["txt"])
    ids = [i for i in tbl.column("stimulus_id").to_pylist() if i in keep]
    fs.ensure_table("txt", 384, {"extractor": "text"})
    fs.write("txt", ids, src.load(fitted["txt"], ids))
    spec = FitSpec(dataset=str(small_dataset), models=[{"name": "txt", "features": ["txt"]}], folds=3,
                   alphas=[1.0, 100.0])
    run = fit_encoding_models(spec, store=fs.uri, registry=str(tmp_path / "reg"), progress=False)
    assert {(f["subject"], f["model"]) for f in run.failures} == {("subj02", "txt")}
    assert all("missing from feature table 'txt'" in f["error"] for f in run.failures if f["hemi"] in ("lh", "rh"))
    assert set(run.metrics["txt"]) == {"subj01"}


def _fit_worker_pids():
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::fit_base"):
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
def test_worker_killed_mid_fit_is_retried(small_dataset, tmp_path, fitted):
    spec = FitSpec(dataset=str(small_dataset), models=[{"name": "img", "features": [fitted["img"]]},
                                                       {"name": "txt", "features": [fitted["txt"]]}],
                   folds=4, alphas=np.logspace(0, 5, 6).tolist())
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = _fit_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    run = fit_encoding_models(spec, store=fitted["store"], registry=str(tmp_path / "reg"), progress=False)
    th.join(1)
    assert killed, "no fit worker was caught mid-task"
    assert not run.failures
    assert set(run.metrics) == {"img", "txt"} and all(len(v) == 2 for v in run.metrics.values())
    # the retried fit equals the original fit of the same model
    np.testing.assert_allclose(run.test_preds[("txt", "subj01")]["lh"],
                               fitted["run"].test_preds[(fitted["txt"], "subj01")]["lh"], rtol=1e-4, atol=1e-4)


def test_cli_fit_evaluate_predict_models(fitted, small_dataset, tmp_path):
    import json

    from typer.testing import CliRunner

    from brainstore.cluster.cli import app

    runner = CliRunner()
    S, R = fitted["store"], fitted["registry"]
    r = runner.invoke(app, ["features", "--store", S])
    assert r.exit_code == 0 and "feature tables in" in r.output
    tables = {t["name"]: t for t in json.loads(runner.invoke(app, ["features", "--store", S, "--json"]).output)}
    assert tables[fitted["img"]]["metadata"]["random_init"] == "true"
    assert tables[fitted["txt"]]["metadata"]["random_init"] == "false" and tables[fitted["txt"]]["dim"] == 384
    r = runner.invoke(app, ["features", "--list"])
    assert r.exit_code == 0 and "sam" in r.output and "video" in r.output
    r = runner.invoke(app, ["models", "--registry", R, "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 10
    out = tmp_path / "eval"
    r = runner.invoke(app, ["evaluate", "--dataset", str(small_dataset), "--store", S, "--registry", R, "--out", str(out)])
    assert r.exit_code == 0, r.output
    for f in ("comparison.md", "comparison.csv", "roi_scores.png", "pred_vs_measured.png", "metrics.json"):
        assert (out / f).stat().st_size > 0, f
    assert "| Features and methods |" in (out / "comparison.md").read_text()
    sub = tmp_path / "submission"
    r = runner.invoke(app, ["predict", "--dataset", str(small_dataset), "--out", str(sub), "--store", S, "--registry", R])
    assert r.exit_code == 0, r.output
    ds = AlgonautsDataset(small_dataset)
    for s in ds.subjects:
        for h in ("lh", "rh"):
            p = np.load(sub / s / f"{h}_pred_test.npy")
            assert p.dtype == np.float32 and p.shape == ds.responses(s, h, "test").shape
    # a YAML spec with an MLP projector beside ridge
    spec = tmp_path / "fit.yaml"
    spec.write_text(f"dataset: {small_dataset}\nsubjects: [subj01]\nhemispheres: [lh]\nfolds: 3\nalphas: [1, 100, 10000]\n"
                    f"models:\n  - {{name: txt, features: [{fitted['txt']}]}}\n"
                    f"  - {{name: txt-mlp, features: [{fitted['txt']}], method: mlp, mlp: {{hidden: 32, epochs: 5}}}}\n")
    r = runner.invoke(app, ["fit", "--config", str(spec), "--store", S, "--registry", str(tmp_path / "reg2"),
                            "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert {x.name for x in ModelRegistry(tmp_path / "reg2").list()} == {"txt/subj01", "txt-mlp/subj01"}
    r = runner.invoke(app, ["fit", "--config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output

"""Encoding models end to end on a real local Ray and LanceDB on disk: default spec, Ray-parallel
fits writing to the run folder, derived models, honest validation scores, registry, CLI."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr

from brainstore.datasets import REPORT_FAMILIES, AlgonautsDataset
from brainstore.features import FeatureStore, extract
from brainstore.fitting import (
    FitSpec,
    ModelRegistry,
    best_model,
    default_spec,
    fit_encoding_models,
    predict_model,
    subject_stimuli,
    validation_folds,
)
from brainstore.fitting.encoding._run import plan_fit_cpus
from brainstore.fitting.registry._runfiles import RunLayout, open_array

IMG = "clip:arch=brainstore-tiny-clip,pretrained=none"
ALPHAS = np.logspace(0, 5, 6).tolist()


def test_fit_cpus_share_the_node():
    assert plan_fit_cpus(2, 12, False) == 1
    assert plan_fit_cpus(16, 4, False) == 4
    assert plan_fit_cpus(16, 5, False) == 3
    assert plan_fit_cpus(16, 4, True) == 1


def test_fit_driver_code_does_not_import_torch():
    """The fit driver orders jobs by cost and submits them: torch (~0.5 GB resident) stays in the workers."""
    code = ("import sys; from brainstore.fitting.encoding._run import _fit_cost; from brainstore.fitting._spec import ModelSpec; "
            "from brainstore.fitting.encoding._encoding import fit_base; from brainstore.fitting.encoding._assemble import assemble_subject; "
            "c = _fit_cost(ModelSpec(name='u', features=['a', 'b'], method='banded'), {'a': 512, 'b': 384}); "
            "print(c, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(5.0 * 896 ** 2), "False"]  # 5 default weightings x p^2


@pytest.fixture(scope="module")
def fitted(small_dataset, tmp_path_factory, ray_local):
    from brainstore.features.extractors.testing import register_tiny_models

    register_tiny_models()
    root = tmp_path_factory.mktemp("fit")
    store, registry = str(root / "store"), str(root / "registry")
    img = extract(small_dataset, IMG, store, progress=False).feature
    txt = extract(small_dataset, "text", store, progress=False).feature
    notes: list[str] = []
    spec = default_spec(small_dataset, store, registry, alphas=ALPHAS, folds=5, include_random=True, notes=notes)
    run = fit_encoding_models(spec, store=store, registry=registry, out=root / "run", progress=False)
    return {"store": store, "registry": registry, "img": img, "txt": txt, "spec": spec, "run": run, "notes": notes,
            "root": root}


def test_default_spec_leaves_out_random_tables_unless_asked(fitted, small_dataset):
    notes: list[str] = []
    spec = default_spec(small_dataset, fitted["store"], fitted["registry"], notes=notes)
    assert [m.name for m in spec.models] == [fitted["txt"]] and not spec.per_roi and not spec.ensembles
    assert any(fitted["img"] in n and "RANDOM weights" in n and "--include-random" in n for n in notes)
    # with --include-random: each table, their banded union, the per-ROI best and the average ensemble
    spec = fitted["spec"]
    assert [m.method for m in spec.models] == ["ridge", "ridge", "banded"]
    assert spec.models[2].features == [m.name for m in spec.models[:2]]
    assert any("including" in n and fitted["img"] in n for n in fitted["notes"])


def test_default_fit_registers_every_model(fitted):
    run, spec = fitted["run"], fitted["spec"]
    assert not run.failures
    assert set(run.models) == {fitted["img"], fitted["txt"], spec.models[2].name, "avg-ensemble", "per-roi-best"}
    assert run.kinds["per-roi-best"] == "per-roi" and run.kinds[spec.models[2].name] == "banded"
    reg = ModelRegistry(fitted["registry"])
    assert len(reg.list()) == len(run.models) * 2
    for model in run.models:
        for s in ("subj01", "subj02"):
            both = run.metrics[model][s]["both"]
            assert np.isfinite(both["val_r_mean"]) and 0 <= both["test_nnmc"] <= 100
            assert set(both["test_nnmc_named"]) >= {"V1v", "FFA-1", "PPA", "EBA", "VWFA-1"}
    # captions carry the category content: the text model explains the face/place ROIs
    m = run.metrics[fitted["txt"]]["subj01"]["both"]["test_nnmc_roi"]
    assert m["floc-faces"] > 10 and m["floc-places"] > 10
    # banded ridge splits its test r between the two feature spaces
    split = run.metrics[spec.models[2].name]["subj01"]["both"]["split_test_r_roi"]
    assert set(split) == {fitted["img"], fitted["txt"]}


def test_predictions_are_memory_mapped_files_in_the_run_folder(fitted, small_dataset):
    run, layout = fitted["run"], RunLayout(fitted["root"] / "run")
    assert run.run_dir == fitted["root"] / "run"
    ds = AlgonautsDataset(small_dataset)
    for model in run.models:
        for h in ("lh", "rh"):
            test = run.test_preds[(model, "subj02")][h]
            assert isinstance(test, np.memmap) and Path(test.filename) == layout.test_pred(model, "subj02", h)
            assert test.shape == ds.responses("subj02", h, "test").shape
            n_val = len(subject_stimuli(ds, "subj02", "train")) - validation_folds(120, 5)[1]
            assert open_array(layout.val_pred(model, "subj02", h)).shape == (n_val, test.shape[1])
    assert run.worker_peak_rss_gb > 0


def test_registry_predictions_reproduce_the_run(fitted, small_dataset):
    run = fitted["run"]
    reg = ModelRegistry(fitted["registry"])
    ds = AlgonautsDataset(small_dataset)
    ids = subject_stimuli(ds, "subj02", "test")
    for model in run.models:
        pred = predict_model(reg, model, "subj02", None, ids)  # the store recorded in the model
        for h in ("lh", "rh"):
            np.testing.assert_array_equal(pred[h], run.test_preds[(model, "subj02")][h])
    assert best_model(reg, "subj01") in run.models


def test_ensemble_and_per_roi_choice_match_a_hand_computed_reference(fitted, small_dataset):
    run, layout = fitted["run"], RunLayout(fitted["root"] / "run")
    ds = AlgonautsDataset(small_dataset)
    reg = ModelRegistry(fitted["registry"])
    img, txt = fitted["img"], fitted["txt"]
    for h in ("lh", "rh"):
        ens = run.test_preds[("avg-ensemble", "subj01")][h]
        np.testing.assert_allclose(ens, (run.test_preds[(img, "subj01")][h].astype(np.float64)
                                         + run.test_preds[(txt, "subj01")][h]) / 2, rtol=1e-5, atol=1e-6)
    # per-ROI best: per ROI family, the member with the highest mean validation r (mean of the two
    # halves' Pearson r, computed here with scipy), vertex by vertex from the members' files
    tensors, rec = reg.load_arrays("per-roi-best/subj01")
    members = rec.meta["members"]
    n_fit = validation_folds(120, 5)[1]
    for h in ("lh", "rh"):
        Yv = np.asarray(ds.responses("subj01", h, "train"))[n_fit:]
        k = len(Yv) // 2
        r = np.zeros((len(members), Yv.shape[1]))
        for i, m in enumerate(members):
            P = np.asarray(open_array(layout.val_pred(m, "subj01", h)))
            for v in range(Yv.shape[1]):
                r[i, v] = np.mean([pearsonr(P[s, v], Yv[s, v])[0] if P[s, v].std() > 0 else 0.0
                                   for s in (slice(0, k), slice(k, None))])
        want = np.zeros(Yv.shape[1], int)
        for fam, mask in ds.roi_masks("subj01", h, families=REPORT_FAMILIES).items():
            want[mask] = np.argmax(r[:, mask].mean(1))
        np.testing.assert_array_equal(tensors[f"{h}.choice"], want)
        test = run.test_preds[("per-roi-best", "subj01")][h]
        for i, m in enumerate(members):
            sel = want == i
            np.testing.assert_array_equal(test[:, sel], run.test_preds[(m, "subj01")][h][:, sel])


def test_per_roi_rules_over_streams_and_named_rois(fitted, small_dataset, tmp_path):
    img, txt = fitted["img"], fitted["txt"]
    rules = {"V1v": "img", "prf-visualrois": "txt", "early": "img", "FFA-1": "img"}
    spec = FitSpec(dataset=str(small_dataset), alphas=ALPHAS, subjects=["subj01"], hemispheres=["lh"],
                   models=[{"name": "img", "features": [img]}, {"name": "txt", "features": [txt]}],
                   per_roi=[{"name": "rules", "default": "txt", "rules": rules}])
    run = fit_encoding_models(spec, store=fitted["store"], registry=str(tmp_path / "reg"), out=tmp_path / "run",
                              progress=False)
    assert not run.failures
    choice = ModelRegistry(tmp_path / "reg").load_arrays("rules/subj01")[0]["lh.choice"]
    ds = AlgonautsDataset(small_dataset)
    regions = ds.regions("subj01", "lh")
    members = ["txt", "img"]  # default first
    want = np.zeros(len(choice), int)
    taken = np.zeros(len(choice), bool)
    for roi, m in rules.items():  # by hand: the first rule naming a vertex wins
        want[regions[roi] & ~taken] = members.index(m)
        taken |= regions[roi]
    np.testing.assert_array_equal(choice, want)
    assert (choice[regions["prf-visualrois"] & ~regions["V1v"]] == 0).all() and (choice[regions["V1v"]] == 1).all()
    # an ROI the dataset lacks is refused before any task starts, naming the available ROIs
    bad = spec.model_copy(update={"per_roi": [spec.per_roi[0].model_copy(update={"rules": {"FFA-9": "img"}})]})
    with pytest.raises(ValueError, match=r"ROI \['FFA-9'\] not in the dataset; available ROIs: prf-visualrois.*FFA-1"):
        fit_encoding_models(bad, store=fitted["store"], registry=str(tmp_path / "reg2"), progress=False)
    assert not (tmp_path / "reg2" / "rules").exists()


def test_reported_validation_scores_are_not_optimistic_on_noise(fitted, dataset_copy, tmp_path):
    """Pure-noise responses: the chosen models' reported scores stay centred on 0."""
    from brainstore.fitting import RidgeCVEncoder, design_matrix

    rng = np.random.default_rng(7)
    ds = AlgonautsDataset(dataset_copy)
    for s in ds.subjects:
        for h in ("lh", "rh"):
            for split, sub in (("train", "training_split/training_fmri/%s_training_fmri.npy"),
                               ("test", "test_split/test_fmri/%s_test_fmri.npy")):
                shape = ds.responses(s, h, split).shape
                np.save(dataset_copy / s / (sub % h), rng.standard_normal(shape).astype(np.float32))
    img, txt = fitted["img"], fitted["txt"]
    spec = FitSpec(dataset=str(dataset_copy), alphas=ALPHAS, folds=5,
                   models=[{"name": "img", "features": [img]}, {"name": "txt", "features": [txt]},
                           {"name": "both", "features": [img, txt]}],
                   per_roi=[{"name": "best", "default": "both", "choose_by_cv": True, "roi_level": "named"}],
                   ensembles=[{"name": "avg", "members": ["img", "txt"]}])
    reg = tmp_path / "reg"
    run = fit_encoding_models(spec, store=fitted["store"], registry=str(reg), progress=False)
    assert not run.failures
    chosen = [run.metrics["best"][s]["both"]["val_r_mean"] for s in ds.subjects]
    best = [ModelRegistry(reg).record(f"{best_model(ModelRegistry(reg), s)}/{s}").meta["val_score"]
            for s in ds.subjects]
    assert abs(np.mean(chosen)) <= 0.02 and abs(np.mean(best)) <= 0.02, (chosen, best)
    # what the check guards against: the CV score at the alpha CV chose is optimistic on the same noise
    X = design_matrix(FeatureStore(fitted["store"]), [txt], subject_stimuli(ds, "subj01", "train"))
    naive = RidgeCVEncoder(alphas=ALPHAS, n_folds=5).fit(X, ds.responses("subj01", "lh")).best_scores_.mean()
    assert naive > 0.02


def test_fit_threads_equal_the_cpus_a_task_was_given(fitted, small_dataset, tmp_path):
    """One fit on a 2-CPU Ray node gets both CPUs, and torch inside the task uses both."""
    spec = FitSpec(dataset=str(small_dataset), alphas=ALPHAS, subjects=["subj01"], hemispheres=["lh"],
                   models=[{"name": "txt", "features": [fitted["txt"]]}])
    run = fit_encoding_models(spec, store=fitted["store"], registry=str(tmp_path / "reg"), progress=False)
    info = ModelRegistry(tmp_path / "reg").record("txt/subj01").meta["info"]["lh"]
    assert info["threads"] == 2 and info["torch_threads"] == 2
    # without --out the run folder lies under the registry, not the current directory
    assert run.run_dir.parent == (tmp_path / "reg" / "_runs") and (run.run_dir / "predictions").is_dir()
    assert ModelRegistry(tmp_path / "reg").names() == ["txt/subj01"]


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
    assert all("missing from feature table 'txt'" in f["error"] for f in run.failures)
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
                   folds=5, alphas=ALPHAS)
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
    # the retried fit equals the original fit of the same model, and no temporary file is left behind
    np.testing.assert_allclose(run.test_preds[("txt", "subj01")]["lh"],
                               fitted["run"].test_preds[(fitted["txt"], "subj01")]["lh"], rtol=1e-4, atol=1e-4)
    assert not [p for p in run.run_dir.rglob("*") if p.name.endswith(".tmp")]


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
    r = runner.invoke(app, ["models", "--registry", R, "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 10
    assert {m["store"] for m in json.loads(r.output)} == {S}
    # a mistyped registry is an error, and nothing is created
    r = runner.invoke(app, ["models", "--registry", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output and not (tmp_path / "nope").exists()
    # evaluate without --store reads each model's own store; without --out the report goes under the registry;
    # --no-maps: no maps on the cortex (tests/fitting/reports/test_maps.py checks them), the report says so
    r = runner.invoke(app, ["evaluate", "--dataset", str(small_dataset), "--registry", R, "--rois", "named",
                            "--no-maps"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "per named ROI" in r.output and "FFA-1" in r.output
    assert "note: no maps: skipped on request" in " ".join(r.output.split())
    out = max((Path(R) / "_runs").glob("evaluate-*"))
    assert not (out / "maps").exists() and "no maps: skipped on request" in (out / "report.html").read_text()
    for f in ("comparison.md", "comparison.csv", "named_rois.md", "roi_scores.png", "pred_vs_measured.png",
              "split_scores.png", "metrics.json"):
        assert (out / f).stat().st_size > 0, f
    assert "| Features and methods |" in (out / "comparison.md").read_text()
    sub = tmp_path / "submission"
    r = runner.invoke(app, ["predict", "--dataset", str(small_dataset), "--out", str(sub), "--registry", R])
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
    assert (tmp_path / "run" / "comparison.md").exists()
    r = runner.invoke(app, ["fit", "--config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output

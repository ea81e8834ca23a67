"""Lineage of registered model versions (``reports/_lineage.py``) and evaluating two versions side by side.

One refit of the serving registry's copy adds version 2 of ``img`` and ``both`` for subj01 (other alphas) and an
ensemble of them; the tests follow those versions' chains and compare ``img@1`` with ``img@2``."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def refit(serving_models, tmp_path_factory) -> dict:
    from brainstore.fitting import FitSpec, fit_encoding_models

    root = tmp_path_factory.mktemp("lineage")
    registry = root / "registry"
    shutil.copytree(serving_models["registry"], registry, ignore=shutil.ignore_patterns("_runs", "_services", "_locks"))
    spec = FitSpec(dataset=str(serving_models["data"]), alphas=[1e5, 1e6], folds=3, subjects=["subj01"],
                   models=[{"name": "img", "features": [serving_models["img"]]},
                           {"name": "both", "features": [serving_models["img"], serving_models["txt"]]}],
                   ensembles=[{"name": "ens", "members": ["img", "both"]}])
    start = time.perf_counter()
    run = fit_encoding_models(spec, store=serving_models["store"], registry=str(registry), out=root / "run2",
                              progress=False)
    print(f"\nrefit of img, both and ens for subj01: {time.perf_counter() - start:.1f} s")
    assert not run.failures, run.failures
    assert sorted(run.registered) == ["both/subj01@2", "ens/subj01@1", "img/subj01@2"]
    return {**serving_models, "registry": str(registry), "root": root}


def test_lineage_names_dataset_tables_extractor_run_version_and_aliases(refit, tmp_path):
    from brainstore.datasets import open_dataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry, lineage
    from brainstore.fitting.registry import dataset_digest, stimuli_digest

    reg, fs, img, txt = ModelRegistry(refit["registry"]), FeatureStore(refit["store"]), refit["img"], refit["txt"]
    reg.set_alias("img/subj01", "champion", 1)
    reg.set_alias("img/subj01", "staging", 2)
    ds = open_dataset(refit["data"])
    chain = lineage(refit["registry"], "img/subj01@2")
    assert (chain.ref, chain.version, chain.kind) == ("img/subj01@2", 2, "ridge")
    assert [x.kind for x in chain.links] == ["dataset", "stimuli", "features", "fit", "model", "aliases", "serving"]
    [d], [s], [f] = chain.link("dataset"), chain.link("stimuli"), chain.link("features")
    assert d.facts["path"] == str(ds.root) and d.facts["dataset_digest"] == dataset_digest(ds, ["subj01"])
    assert s.facts["stimuli_sha256"] == stimuli_digest(ds, ["subj01"])
    meta = fs.metadata(img)
    assert f.facts["table"] == img and f.facts["table_version"] == fs.version(img) and f.facts["pinned"]
    assert f.facts["extractor_spec"] == meta["spec"] == "clip:arch=brainstore-tiny-clip,pretrained=none"
    assert f.facts["weights_sha256"] == meta["weights_sha256"] and f.facts["random_weights"]
    [fit] = chain.link("fit")
    assert fit.facts["run"] == str(refit["root"] / "run2") and fit.facts["fit"]["alphas"] == [1e5, 1e6]
    [a] = chain.link("aliases")
    assert a.facts["aliases"] == ["staging"] and a.facts["default_version"] == 1 and not a.changed
    assert not chain.changed, chain.changed
    text = chain.text()
    for want in (str(ds.root), d.facts["dataset_digest"][:16], img, f"@ version {fs.version(img)}", meta["spec"],
                 str(refit["root"] / "run2"), "img/subj01@2", "staging", "the bare name loads @1", "RANDOM WEIGHTS"):
        assert want in text, (want, text)
    # the text table's weights: the real sha256 of the caption model (a pretrained table)
    both = lineage(reg, "both/subj01")
    assert fs.metadata(txt)["weights_sha256"][:16] in both.text() and both.version == 2
    assert json.loads(json.dumps(chain.to_dict()))["chain"][2]["extractor_spec"] == meta["spec"]

    # a composite: its member versions' chains
    ens = lineage(reg, "ens/subj01")
    assert ens.link("members")[0].facts["members"] == ["img/subj01@2", "both/subj01@2"]
    assert [m.ref for m in ens.members] == ["img/subj01@2", "both/subj01@2"]
    assert [x.facts["table"] for x in ens.members[1].link("features")] == [img, txt]

    # what changed since the fit: a newer table version (in a copy of the store), a run folder gone, a newer model
    copy = tmp_path / "store"
    shutil.copytree(refit["store"], copy)
    pinned = fs.version(img)
    FeatureStore(copy).write(img, ["late-stimulus"], np.zeros((1, fs.info(img).dim), np.float32))
    later = lineage(reg, "img/subj01@2", store=str(copy))
    assert later.link("features")[0].changed == [f"the table is at version {pinned + 1} now (the fit pinned {pinned})"]
    (refit["root"] / "run2").rename(refit["root"] / "run2-moved")
    try:
        gone = lineage(reg, "img/subj01@2")
        assert gone.link("fit")[0].changed == [f"the run folder {refit['root'] / 'run2'} is gone"]
        assert "! the run folder" in gone.text()
    finally:
        (refit["root"] / "run2-moved").rename(refit["root"] / "run2")
    assert lineage(reg, "img/subj01@1").link("aliases")[0].changed == ["newer version(s) exist (latest @2)"]


def test_a_service_announced_in_the_registry_serves_while_fresh(refit):
    from brainstore.fitting import ModelRegistry, lineage

    reg = ModelRegistry(refit["registry"])
    reg.announce("svc-lineage", {"url": "http://127.0.0.1:9999", "models": ["img/subj01@2", "both/subj01@2"]})
    try:
        [s] = lineage(reg, "img/subj01@2").link("serving")
        assert s.facts["served"] and s.facts["served_by"][0]["id"] == "svc-lineage", s
        assert "served by svc-lineage at http://127.0.0.1:9999" in s.summary
        [other] = lineage(reg, "img/subj01@1").link("serving")
        assert not other.facts["served"] and other.facts["other_versions_served"] == ["img/subj01@2"]
        assert other.changed == ["another version is served (img/subj01@2)"]
        # its heartbeat 40 s old: stale, so not serving (the default freshness is 30 s)
        path = reg.root / "_services" / "svc-lineage.json"
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "heartbeat": time.time() - 40}))
        [stale] = lineage(reg, "img/subj01@2").link("serving")
        assert not stale.facts["served"] and "no service announced" in stale.summary
        assert lineage(reg, "img/subj01@2", max_age_s=60).link("serving")[0].facts["served"]
    finally:
        reg.withdraw("svc-lineage")


def test_evaluate_scores_two_versions_side_by_side(refit, tmp_path):
    """`brainstore evaluate --models img@1,img@2`: two rows, each what scoring that version alone gives, keyed and
    shown as given; predictions under safe file names; the report's lineage holds both versions."""
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app
    from brainstore.datasets import open_dataset
    from brainstore.fitting import EncodingModel, ModelRegistry, evaluate_registered, subject_stimuli

    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["evaluate", "--dataset", str(refit["data"]), "--registry", refit["registry"],
                                 "--models", "img@1,img@2", "--out", str(out), "--no-maps"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "metrics.json").read_text())
    metrics = doc["metrics"]
    assert list(metrics) == ["img@1", "img@2"] and doc["kinds"] == {"img@1": "ridge", "img@2": "ridge"}
    assert sorted(metrics["img@1"]) == ["subj01", "subj02"] and list(metrics["img@2"]) == ["subj01"]
    assert [row["model"] for row in doc["comparison"]] == ["img@1", "img@2"]
    reg, ds = ModelRegistry(refit["registry"]), open_dataset(refit["data"])
    for key in ("img@1", "img@2"):  # each row: the scores of that version evaluated alone
        alone, _, _ = evaluate_registered(reg, ds, models=[key])
        assert alone[key]["subj01"]["both"]["test_nnmc"] == pytest.approx(metrics[key]["subj01"]["both"]["test_nnmc"])
    fitted = reg.record("img/subj01@2").meta["metrics"]["both"]["test_nnmc"]  # the fit's own test score
    assert metrics["img@2"]["subj01"]["both"]["test_nnmc"] == pytest.approx(fitted, rel=1e-4)
    assert metrics["img@1"]["subj01"]["both"]["test_nnmc"] != pytest.approx(fitted, rel=1e-3)
    pred = np.load(out / "predictions" / "img-1" / "subj01" / "lh_pred_test.npy")  # '@' made safe in file names
    want = EncodingModel.load(reg, "img@1", "subj01").predict(subject_stimuli(ds, "subj01", "test"))["lh"]
    np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-6)
    assert "| img@1 |" in (out / "comparison.md").read_text() and "img@2" in r.output
    html = (out / "report.html").read_text(encoding="utf-8")
    for ref in ("img/subj01@1", "img/subj02@1", "img/subj01@2"):
        assert f'data-ref="{ref}"' in html, ref
    assert '<span class="model">img@2</span>' in html and "ridge on " + refit["img"] in html
    bad = CliRunner().invoke(app, ["evaluate", "--dataset", str(refit["data"]), "--registry", refit["registry"],
                                   "--models", "img@7", "--out", str(tmp_path / "bad"), "--no-maps"])
    assert bad.exit_code == 2 and "no subject of model 'img' has 'img@7'" in " ".join(bad.output.split()), bad.output

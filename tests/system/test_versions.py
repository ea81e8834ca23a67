"""History a lab can trust, end to end: a refit adds a version and the first fit still predicts bit for bit
(`brainstore predict --model NAME@1`), whatever happened to the feature table since; aliases choose what the
bare name loads; `brainstore gc` removes what nothing needs and never breaks a model that is kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from brainstore.cluster.cli import app

pytestmark = pytest.mark.slow


def _cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def _preds(folder, subjects=("subj01", "subj02")) -> dict:
    return {(s, h): np.load(folder / s / f"{h}_pred_test.npy") for s in subjects for h in ("lh", "rh")}


@pytest.fixture(scope="module")
def refitted(small_dataset, tmp_path_factory, ray_local):
    """The text model fitted twice (other alphas: other weights), predictions written after each fit."""
    from brainstore.features import extract
    from brainstore.fitting import FitSpec, fit_encoding_models, predict

    root = tmp_path_factory.mktemp("versions")
    store, registry = str(root / "store"), str(root / "registry")
    txt = extract(small_dataset, "text", store, progress=False).feature
    first = {}
    for i, alphas in enumerate(([1.0, 10.0], [1000.0, 100000.0])):
        spec = FitSpec(dataset=str(small_dataset), alphas=alphas, folds=3, models=[{"name": "txt", "features": [txt]}])
        run = fit_encoding_models(spec, store=store, registry=registry, out=root / f"run{i}", progress=False)
        assert not run.failures, run.failures
        done = predict(small_dataset, registry=registry, out=root / f"pred{i}")
        first[i] = _preds(root / f"pred{i}")
        assert {d["version"] for d in done.values()} == {f"txt/{s}@{i + 1}" for s in ("subj01", "subj02")}
    return {"root": root, "store": store, "registry": registry, "table": txt, "preds": first, "data": small_dataset}


def test_a_refit_adds_a_version_and_name_at_1_predicts_the_first_fit_bit_for_bit(refitted):
    reg, root = refitted["registry"], refitted["root"]
    p1, p2 = refitted["preds"][0], refitted["preds"][1]
    assert any(not np.array_equal(p1[k], p2[k]) for k in p1)  # the refit really differs
    out = _cli("predict", "--dataset", str(refitted["data"]), "--out", str(root / "at1"), "--model", "txt@1",
               "--registry", reg)
    assert "txt/subj01@1" in out and "txt/subj02@1" in out
    got = _preds(root / "at1")
    assert all(np.array_equal(got[k], p1[k]) for k in p1)
    listed = json.loads(_cli("models", "txt", "--registry", reg, "--json"))
    assert [(r["name"], r["version"]) for r in listed] == [("txt/subj01", 1), ("txt/subj01", 2), ("txt/subj02", 1),
                                                           ("txt/subj02", 2)]
    assert {r["spec"]["name"] for r in listed} == {"txt"}
    bad = CliRunner().invoke(app, ["predict", "--dataset", str(refitted["data"]), "--out", str(root / "x"),
                                   "--model", "txt@7", "--registry", reg])
    assert bad.exit_code == 2 and "no version 7" in bad.output and "versions 1, 2" in bad.output


def test_champion_chooses_what_the_bare_name_predicts(refitted):
    reg, root = refitted["registry"], refitted["root"]
    _cli("models", "alias", "txt@champion", "1", "--registry", reg)
    try:
        _cli("predict", "--dataset", str(refitted["data"]), "--out", str(root / "champ"), "--model", "txt",
             "--registry", reg)
        got, p1 = _preds(root / "champ"), refitted["preds"][0]
        assert all(np.array_equal(got[k], p1[k]) for k in p1)
        names = {r["name"]: r for r in json.loads(_cli("models", "--registry", reg, "--json"))}
        assert names["txt/subj01"]["latest"] == 2 and names["txt/subj01"]["serves"] == 1
        assert names["txt/subj01"]["aliases"] == {"champion": 1}
    finally:
        _cli("models", "alias", "txt@champion", "--remove", "--registry", reg)


def test_gc_removes_what_nothing_needs_and_never_breaks_a_kept_model(refitted):
    """(Last in this module: it changes the shared registry.) A third fit after the table gained a row; champion
    on 1: gc keeps 1 (alias) and 3 (latest), removes 2, unpins the table version only version 2 pinned, and both
    kept versions still predict bit for bit."""
    from brainstore.features import FeatureStore
    from brainstore.fitting import FitSpec, ModelRegistry, fit_encoding_models, predict

    root, store, reg_uri, t = refitted["root"], refitted["store"], refitted["registry"], refitted["table"]
    fs = FeatureStore(store, create=False)
    ids = fs.ids(t)
    fs.write(t, ["late-stimulus"], fs.load(t, ids[:1]) * 0.5, dataset="synth", split="train")  # a new table version
    spec = FitSpec(dataset=str(refitted["data"]), alphas=[10.0, 100.0], folds=3, models=[{"name": "txt", "features": [t]}])
    assert not fit_encoding_models(spec, store=store, registry=reg_uri, out=root / "run3", progress=False).failures
    reg = ModelRegistry(reg_uri)
    assert [r.version for r in reg.versions("txt/subj01")] == [1, 2, 3]
    for s in ("subj01", "subj02"):
        reg.set_alias(f"txt/{s}", "champion", 1)
    before = {}
    for v in (1, 3):
        predict(refitted["data"], registry=reg, out=root / f"b{v}", model=f"txt@{v}")
        before[v] = _preds(root / f"b{v}")
    assert all(np.array_equal(before[1][k], refitted["preds"][0][k]) for k in before[1])
    dry = json.loads(_cli("gc", "--older-than", "0s", "--dry-run", "--registry", reg_uri, "--json"))
    assert dry["removed"] == ["txt/subj01@2", "txt/subj02@2"]
    assert [r.version for r in reg.versions("txt/subj01")] == [1, 2, 3]
    rep = json.loads(_cli("gc", "--older-than", "0s", "--registry", reg_uri, "--json"))
    assert rep["removed"] == ["txt/subj01@2", "txt/subj02@2"]
    assert rep["kept"]["txt/subj01@1"] == "alias champion" and rep["kept"]["txt/subj01@3"] == "latest version"
    assert [r.version for r in reg.versions("txt/subj01")] == [1, 3]
    pinned = {r.meta["fingerprints"][t]["table_version"] for r in reg.all_versions()}
    assert set(fs.pinned(t)) == pinned  # the kept models' table versions stay pinned, the others do not
    row = next(x for x in rep["tables"] if x["table"] == t)
    assert row["pinned"] == sorted(pinned) and row["cleaned"]  # the extraction's chunk commits went
    kept = {v["version"] for v in fs.versions(t)}
    assert pinned <= kept and fs.version(t) in kept and not kept & set(row["cleaned"])
    for v in (1, 3):
        predict(refitted["data"], registry=reg, out=root / f"a{v}", model=f"txt@{v}")
        got = _preds(root / f"a{v}")
        assert all(np.array_equal(got[k], before[v][k]) for k in got), v

"""`brainstore lineage NAME[@V]` (``cluster/cli/_models.py``): the chain, one line per link; --json; a model's
subjects; a served version; one-line errors."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from brainstore.cluster.cli import app

runner = CliRunner()


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_lineage_prints_the_chain_and_json(serving_models, tmp_path):
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry

    registry = tmp_path / "registry"
    shutil.copytree(serving_models["registry"], registry, ignore=shutil.ignore_patterns("_runs", "_services", "_locks"))
    reg, fs, img = ModelRegistry(registry), FeatureStore(serving_models["store"]), serving_models["img"]
    rec = reg.record("img/subj01")
    r = runner.invoke(app, ["lineage", "img/subj01", "--registry", str(registry)])
    assert r.exit_code == 0, r.output
    lines = [line.strip() for line in r.output.splitlines() if line.strip()]
    assert lines[0] == "img/subj01@1 (ridge)"
    assert [line.split()[0] for line in lines[1:8]] == ["dataset", "stimuli", "features", "fit", "model", "aliases",
                                                       "serving"]
    flat = _flat(r.output)
    for want in (str(serving_models["data"]), rec.meta["dataset_digest"][:16], f"{img} @ version {fs.version(img)}",
                 "clip:arch=brainstore-tiny-clip,pretrained=none", rec.meta["run"], "not served"):
        assert want in flat, (want, flat)

    doc = json.loads(runner.invoke(app, ["lineage", "img/subj01@1", "--json", "--registry", str(registry)]).output)
    assert doc["ref"] == "img/subj01@1" and doc["chain"][0]["dataset_digest"] == rec.meta["dataset_digest"]
    assert doc["chain"][2]["table_version"] == fs.version(img) and doc["chain"][3]["run"] == rec.meta["run"]
    # a model: every subject's chain; JSON a list
    docs = json.loads(runner.invoke(app, ["lineage", "img", "--json", "--registry", str(registry)]).output)
    assert [d["ref"] for d in docs] == ["img/subj01@1", "img/subj02@1"]

    # a service announces the version: served; a stale announcement: not
    reg.announce("svc-cli", {"url": "http://127.0.0.1:8123", "models": ["img/subj01@1"]})
    served = _flat(runner.invoke(app, ["lineage", "img/subj01@1", "--registry", str(registry)]).output)
    assert "served by svc-cli at http://127.0.0.1:8123" in served, served
    doc = json.loads(runner.invoke(app, ["lineage", "img/subj01", "--json", "--registry", str(registry),
                                         "--max-age", "0"]).output)
    assert doc["chain"][-1]["served"] is False

    r = runner.invoke(app, ["lineage", "img/subj01@5", "--registry", str(registry)])
    assert r.exit_code == 2 and "error: model 'img/subj01' has no version 5 (versions 1)" in _flat(r.output), r.output
    r = runner.invoke(app, ["lineage", "imgg", "--registry", str(registry)])
    assert r.exit_code == 2 and "no model 'imgg'" in _flat(r.output), r.output

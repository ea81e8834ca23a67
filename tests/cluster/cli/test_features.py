"""``brainstore features TABLE --versions``: a table's versions, their tags and the registered models pinning each."""

import json
import time

import lancedb
import numpy as np
from typer.testing import CliRunner

from brainstore.cluster.cli import app
from brainstore.features import FeatureStore
from brainstore.fitting import ModelRegistry
from brainstore.fitting.registry import table_fingerprint
from tests.features.helpers import META

runner = CliRunner()


def _store_and_registry(tmp_path):
    """Table 't': v1 created, v2 rows a b, v3 row c, v4 a rewritten through LanceDB. Models: m/s1@1 fitted at v2,
    m/s1@2 at v3, other/s1 on another store, old/s1 on an earlier table of the same name."""
    fs = FeatureStore(tmp_path / "store")
    fs.ensure_table("t", 3, META)
    fs.write("t", ["a", "b"], np.eye(3, dtype=np.float32)[:2])
    reg = ModelRegistry(tmp_path / "registry")
    x = {"w": np.zeros(1, np.float32)}

    def save(name, store_uri, fp):
        reg.save(name, x, {"kind": "ridge", "store": store_uri, "fingerprints": {"t": fp}})

    save("m/s1", fs.uri, table_fingerprint(fs, "t", ["a", "b"]))  # pins 2
    fs.write("t", ["c"], np.ones((1, 3), np.float32))
    save("m/s1", fs.uri, table_fingerprint(fs, "t", ["a", "b", "c"]))  # pins 3
    save("other/s1", str(tmp_path / "elsewhere"), {"table": "t", "table_version": 2, "created": fs.metadata("t")["created"]})
    save("old/s1", fs.uri, {"table": "t", "table_version": 2, "created": "2001-01-01T00:00:00Z"})
    lancedb.connect(fs.uri).open_table("t").update(where="stimulus_id='a'", values={"embedding": [5.0, 5.0, 5.0]})
    return fs, reg


def test_versions_lists_rows_tags_and_pinning_models(tmp_path):
    fs, _ = _store_and_registry(tmp_path)
    args = ["features", "t", "--versions", "--store", fs.uri, "--registry", str(tmp_path / "registry")]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [(v["version"], v["rows"], v["tags"], v["models"]) for v in out["versions"]] == [
        (1, 0, [], []), (2, 2, ["brainstore-v2"], ["m/s1@1"]), (3, 3, ["brainstore-v3"], ["m/s1@2"]), (4, 3, [], [])]
    assert out["models_on_an_earlier_table"] == ["old/s1@1"] and out["models_on_versions_gone"] == {}
    assert all(v["timestamp"].endswith("Z") for v in out["versions"])
    r = runner.invoke(app, args, terminal_width=200)
    assert r.exit_code == 0, r.output
    lines = {ln.split("│")[1].strip(): ln for ln in r.output.splitlines() if ln.count("│") > 4}
    assert "brainstore-v2" in lines["2"] and "m/s1@1" in lines["2"] and "m/s1@2" in lines["3"]
    assert "m/s1" not in lines["1"] + lines["4"] and "other/s1" not in r.output
    assert "earlier table of this name" in r.output and "old/s1@1" in r.output
    # a pinned version unpinned and cleaned up: its models are named as reading a version that is gone
    fs.unpin("t", 3)
    time.sleep(0.05)
    assert fs.cleanup("t", 0)["removed"] == [1, 3]
    out = json.loads(runner.invoke(app, args + ["--json"]).output)
    assert [v["version"] for v in out["versions"]] == [2, 4] and out["models_on_versions_gone"] == {"3": ["m/s1@2"]}
    r = runner.invoke(app, args, terminal_width=200)
    assert "version 3 is gone" in r.output and "m/s1@2" in r.output


def test_versions_refusals(tmp_path):
    fs, _ = _store_and_registry(tmp_path)
    r = runner.invoke(app, ["features", "nope", "--versions", "--store", fs.uri])
    assert r.exit_code == 2 and "no feature table 'nope'" in r.output and "tables: t" in r.output
    r = runner.invoke(app, ["features", "--versions", "--store", fs.uri])
    assert r.exit_code == 2 and "give a table and --versions" in r.output
    # no registry there: the versions are listed, and a note says why no model is named
    r = runner.invoke(app, ["features", "t", "--versions", "--store", fs.uri, "--registry", str(tmp_path / "none"),
                            "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["versions"]) == 4 and "registry" in out["note"] and str(tmp_path / "none") in out["note"]

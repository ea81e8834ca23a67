"""In-silico experiments (``fitting/encoding/_insilico.py``): every stored stimulus through a registered model,
streamed by Ray Data into a store table. The rows are checked against the ridge map computed by hand from the
registered arrays and the stored embeddings (numpy, not the model's code); a run killed part way (rows removed
through LanceDB) resumes with only the missing ones; a table of another version is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest


@pytest.fixture()
def copy(serving_models, tmp_path):
    """The serving fixture's store and registry copied (tables and versions are written there, not into the shared
    ones)."""
    store, registry = tmp_path / "store", tmp_path / "registry"
    shutil.copytree(serving_models["store"], store)
    shutil.copytree(serving_models["registry"], registry)
    return {**serving_models, "store": str(store), "registry": str(registry)}


def _by_hand(reg, store: str, table: str, ids: list[str]) -> np.ndarray:
    """Version 1 of img/subj01 by hand: ((X - mean) / scale) @ coef + intercept per hemisphere, lh then rh."""
    from brainstore.features import FeatureStore

    t, _ = reg.load_arrays("img/subj01@1")
    X = FeatureStore(store, create=False).load(table, ids).astype(np.float64)
    return np.hstack([((X - t[f"{h}.x_mean_"]) / t[f"{h}.x_scale_"]) @ t[f"{h}.coef_"] + t[f"{h}.intercept_"]
                      for h in ("lh", "rh")])


@pytest.mark.slow
def test_every_stored_stimulus_is_predicted_into_a_table_and_a_killed_run_resumes(copy):
    import lancedb

    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry, RegistryError, predict_to_table

    reg = ModelRegistry(copy["registry"], create=False)
    fs = FeatureStore(copy["store"], create=False)
    ids = fs.ids(copy["img"])
    run = predict_to_table("img", "subj01", registry=reg, store=copy["store"], batch_size=100, progress=False)
    assert (run.requested, run.already, run.written) == (len(ids), 0, len(ids))
    assert run.model == "img/subj01@1" and run.table == "pred-img-v1-subj01"
    meta = fs.metadata(run.table)
    assert meta["kind"] == "predicted-responses" and meta["model"] == "img/subj01@1"
    assert sum(meta["hemispheres"].values()) == fs.info(run.table).dim
    got = fs.load(run.table, ids)
    np.testing.assert_allclose(got, _by_hand(reg, copy["store"], copy["img"], ids), rtol=1e-4, atol=1e-4)
    assert sorted(fs.ids(run.table)) == sorted(ids)  # one row per stimulus

    # killed part way: a third of the rows never written (removed through LanceDB); the rerun writes only those
    gone = ids[::3]
    db = lancedb.connect(copy["store"])
    db.open_table(run.table).delete("stimulus_id IN (" + ", ".join(f"'{i}'" for i in gone) + ")")
    again = predict_to_table("img", "subj01", registry=reg, store=copy["store"], batch_size=100, progress=False)
    assert (again.already, again.written) == (len(ids) - len(gone), len(gone))
    assert sorted(fs.ids(run.table)) == sorted(ids)  # no duplicates, no losses
    np.testing.assert_allclose(fs.load(run.table, gone), got[::3], rtol=0, atol=0)

    # a chosen subset, into a named table; the same table for another version is refused
    few = predict_to_table("img", "subj01", registry=reg, store=copy["store"], stimuli=ids[:7], table="seven",
                           progress=False)
    assert few.written == 7 and sorted(fs.ids("seven")) == sorted(ids[:7])
    reg_w = ModelRegistry(copy["registry"])
    t, rec = reg_w.load_arrays("img/subj01@1")
    reg_w.save("img/subj01", {**t, "lh.coef_": t["lh.coef_"] * 2}, {k: v for k, v in rec.meta.items()
                                                                     if k not in ("name", "version", "created")})
    with pytest.raises(RegistryError, match="holds predictions of 'img/subj01@1', not 'img/subj01@2'"):
        predict_to_table("img", "subj01", registry=reg_w, store=copy["store"], table="seven", stimuli=ids[:2],
                         progress=False)


@pytest.mark.slow
def test_the_cli_runs_an_in_silico_experiment(copy, tmp_path):
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app
    from brainstore.features import FeatureStore

    ids = FeatureStore(copy["store"], create=False).ids(copy["img"])[:5]
    f = tmp_path / "ids.txt"
    f.write_text("\n".join(ids) + "\n")
    r = CliRunner().invoke(app, ["predict", "--into", "auto", "--model", "img@1", "--subject", "subj02", "--stimuli",
                                 str(f), "--store", copy["store"], "--registry", copy["registry"]])
    assert r.exit_code == 0, r.output
    assert "5 stimuli predicted into pred-img-v1-subj02" in r.output
    r = CliRunner().invoke(app, ["predict", "--into", "auto", "--model", "img", "--registry", copy["registry"]])
    assert r.exit_code != 0 and "--subject" in r.output

"""Ridge decoders end to end on a real local Ray and LanceDB: fMRI -> a store table, registered,
drift-checked, evaluated by retrieval; predictions against an independent sklearn reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainstore.datasets import AlgonautsDataset, DatasetError
from brainstore.features import FeatureStore, FeatureStoreError, extract
from brainstore.fitting import RegistryError, subject_stimuli
from brainstore.fitting.decoding._inputs import response_matrix, select_voxels
from brainstore.fitting.decoding._ridge_decoders import Decoder, fit_decoders

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def decoded(small_dataset, tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("decode")
    store, registry = root / "store", root / "registry"
    txt = extract(small_dataset, "text", store, progress=False).feature
    run = fit_decoders(small_dataset, txt, store=str(store), registry=str(registry), progress=False)
    return {"store": store, "registry": registry, "target": txt, "run": run, "root": root}


def test_ridge_decoder_retrieves_and_matches_sklearn(decoded, small_dataset):
    run, target = decoded["run"], decoded["target"]
    assert not run.failures, run.failures
    ds = AlgonautsDataset(small_dataset)
    fs = FeatureStore(decoded["store"], create=False)
    name = next(iter(run.metrics))
    for s in ds.subjects:
        m = run.metrics[name][s]
        assert m["n_candidates"] == 40 and m["chance"] == pytest.approx(1 / 40)
        # caption embeddings are decodable from the synthetic semantic vertices: far above chance
        assert m["top1_brain_to_stimulus"] > 5 * m["chance"] and m["top1_stimulus_to_brain"] > 5 * m["chance"]
        assert m["two_way"] > 0.75
        assert m["oracle_top1_brain_to_stimulus"] >= m["top1_brain_to_stimulus"] - 0.05  # noiseless responses
        dec = Decoder.load(decoded["registry"], f"{name}/{s}")
        assert dec.meta["kind"] == "decoder" and dec.meta["target"] == target
        vox = select_voxels(ds, s)
        R, Rt = response_matrix(ds, s, "train", vox), response_matrix(ds, s, "test", vox)
        E = fs.load(target, subject_stimuli(ds, s, "train"))
        ref = make_pipeline(StandardScaler(), Ridge(alpha=m["alpha"])).fit(R, E).predict(Rt)
        got = dec.decode(Rt)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
        saved = np.load(run.run_dir / "decoded" / name / f"{s}_test.npy")
        np.testing.assert_allclose(saved, got, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match=f"takes {R.shape[1]} voxels"):
            dec.decode(Rt[:, :10])
        # decoded captions: the nearest training caption (sklearn cosine) scored against the true ones
        from sklearn.metrics.pairwise import cosine_similarity as sk_cos

        from brainstore.scoring import caption_metrics

        train_ids, test_ids = subject_stimuli(ds, s, "train"), subject_stimuli(ds, s, "test")
        cap = dict(zip(ds.stimuli([s]).column("stimulus_id").to_pylist(), ds.stimuli([s]).column("caption").to_pylist()))
        nearest = sk_cos(got, E).argmax(1)
        ref = caption_metrics([cap[train_ids[b]] for b in nearest], [cap[i] for i in test_ids])
        assert m["caption_bleu1"] == pytest.approx(ref["bleu1"], rel=1e-3)
        assert m["caption_rougeL"] == pytest.approx(ref["rougeL"], rel=1e-3)
        assert 0 < m["caption_cosine"] <= 1 and set(test_ids).isdisjoint(train_ids)


def test_roi_selection_and_bad_inputs(decoded, small_dataset):
    ds = AlgonautsDataset(small_dataset)
    faces = select_voxels(ds, "subj01", ["floc-faces"])
    for h in ("lh", "rh"):
        np.testing.assert_array_equal(faces[h], np.flatnonzero(ds.roi_masks("subj01", h)["floc-faces"]))
    with pytest.raises(DatasetError, match="'FFA-9'.*available: .*FFA-1"):
        select_voxels(ds, "subj01", ["FFA-9"])
    kw = dict(store=str(decoded["store"]), registry=str(decoded["registry"]), progress=False)
    with pytest.raises(FeatureStoreError, match="'nosuch' is not in store .*tables: "):
        fit_decoders(small_dataset, "nosuch", **kw)
    with pytest.raises(DatasetError, match="subj09"):
        fit_decoders(small_dataset, decoded["target"], subjects=["subj09"], **kw)


def test_a_changed_target_table_is_refused(decoded, small_dataset, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(decoded["store"], store)
    fs = FeatureStore(store)
    name = next(iter(decoded["run"].metrics))
    ds = AlgonautsDataset(small_dataset)
    t = decoded["target"]
    ids, emb, meta = fs.ids(t), fs.load(t), fs.metadata(t)
    emb[ids.index(subject_stimuli(ds, "subj01", "train")[0])] *= 2  # one fitted stimulus re-embedded
    fs.drop(t)
    fs.ensure_table(t, emb.shape[1], {k: v for k, v in meta.items() if k not in ("feature_version", "dim", "created")})
    fs.write(t, ids, emb)
    with pytest.raises(RegistryError, match="embeddings of the 120 stimuli it was fitted on differ"):
        Decoder.load(decoded["registry"], f"{name}/subj01", store=str(store))


def test_a_target_row_rewritten_in_place_keeps_the_decoder_at_its_pinned_version(decoded, small_dataset, tmp_path):
    """A fitted target row changed through LanceDB (a new version of the table): the decoder's fitted rows are
    verified at the version it pinned, so it loads; once that version is unpinned and cleaned up, the latest
    must hold the fitted rows, and does not."""
    import shutil
    import time

    import lancedb

    store = tmp_path / "store"
    shutil.copytree(decoded["store"], store)
    fs = FeatureStore(store)
    name = next(iter(decoded["run"].metrics))
    t = decoded["target"]
    first = subject_stimuli(AlgonautsDataset(small_dataset), "subj01", "train")[0]
    dec = Decoder.load(decoded["registry"], f"{name}/subj01", store=str(store))
    pinned = dec.meta["fingerprints"][t]["table_version"]
    assert fs.pinned(t) == [pinned]
    lancedb.connect(str(store)).open_table(t).update(where=f"stimulus_id='{first}'",
                                                     values={"embedding": (fs.load(t, [first])[0] * 2).tolist()})
    assert fs.version(t) > pinned
    Decoder.load(decoded["registry"], f"{name}/subj01", store=str(store))  # verified at the pinned version
    fs.unpin(t, pinned)
    time.sleep(0.05)
    assert pinned in fs.cleanup(t, 0)["removed"]
    with pytest.raises(RegistryError, match=f"embeddings of the 120 stimuli it was fitted on differ.*table version "
                                            f"{pinned} at fit time"):
        Decoder.load(decoded["registry"], f"{name}/subj01", store=str(store))


def test_evaluate_decoders_writes_metrics_and_plot(decoded, small_dataset, tmp_path):
    """Evaluation re-decodes the test responses (same figures as the fit) and plots them; with fewer test
    images than candidates every draw is the whole set, a zero-width interval."""
    from brainstore.fitting import ModelRegistry, evaluate_decoders
    from brainstore.fitting.reports._report import write_decoding_plot

    ev = evaluate_decoders(ModelRegistry(decoded["registry"], create=False), AlgonautsDataset(small_dataset))
    fit = decoded["run"].metrics
    for model, by_s in fit.items():
        for s, m in by_s.items():
            for k in ("top1_brain_to_stimulus", "top1_stimulus_to_brain", "two_way", "caption_bleu1",
                      "oracle_top1_brain_to_stimulus"):
                assert ev[model][s][k] == pytest.approx(m[k], rel=1e-6), k
    png = write_decoding_plot(ev, tmp_path / "decoding_top1.png")
    assert png.stat().st_size > 1000


def _brute_top(decoded: np.ndarray, fs: FeatureStore, table: str, k: int) -> list[list[str]]:
    """Top-k stored ids by cosine, computed with sklearn over the whole table (independent of LanceDB)."""
    from sklearn.metrics.pairwise import cosine_similarity as sk_cos

    ids = fs.ids(table)
    sims = sk_cos(decoded, fs.load(table, ids))
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in sims]


def test_whole_store_search_matches_brute_force(decoded, small_dataset):
    """``store_top1``/``store_top5``: the true stimulus among every stored stimulus (LanceDB search),
    against an sklearn brute-force ranking of the whole table."""
    from brainstore.fitting import ModelRegistry, evaluate_decoders

    ds = AlgonautsDataset(small_dataset)
    fs = FeatureStore(decoded["store"], create=False)
    t = decoded["target"]
    ev = evaluate_decoders(ModelRegistry(decoded["registry"], create=False), ds)
    name = next(iter(decoded["run"].metrics))
    n_stored = len(fs.ids(t))
    for s in ds.subjects:
        dec = Decoder.load(decoded["registry"], f"{name}/{s}")
        D = dec.decode(response_matrix(ds, s, "test", dec.voxels))
        truth = subject_stimuli(ds, s, "test")
        top = _brute_top(D, fs, t, 5)
        m = ev[name][s]
        assert m["store_candidates"] == n_stored > m["n_candidates"]
        assert m["store_top1"] == pytest.approx(np.mean([a == r[0] for a, r in zip(truth, top)]))
        assert m["store_top5"] == pytest.approx(np.mean([a in r for a, r in zip(truth, top)]))
        assert m["store_top5"] >= m["store_top1"] > 5 / n_stored


def test_cli_predict_decode_and_fit_spec_decoders(decoded, small_dataset, tmp_path):
    """``predict --decode`` writes the decoded embeddings and the whole-table top-k; a fit spec's
    ``decoders:`` list fits a decoder (ROI selection, own name and alphas) with no encoder."""
    import json

    from typer.testing import CliRunner

    from brainstore.cluster.cli import app

    runner = CliRunner()
    ds = AlgonautsDataset(small_dataset)
    fs = FeatureStore(decoded["store"], create=False)
    t, reg = decoded["target"], str(decoded["registry"])
    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", "--dataset", str(small_dataset), "--out", str(out), "--decode", t,
                            "--top-k", "3", "--registry", reg])
    assert r.exit_code == 0, r.output
    name = next(iter(decoded["run"].metrics))
    from brainstore.fitting import safe_name

    tag = safe_name(t)
    for s in ds.subjects:
        dec = Decoder.load(reg, f"{name}/{s}")
        want = dec.decode(response_matrix(ds, s, "test", dec.voxels))
        np.testing.assert_allclose(np.load(out / s / f"decoded_{tag}.npy"), want, rtol=1e-5, atol=1e-6)
        doc = json.loads((out / s / f"top3_{tag}.json").read_text())
        assert doc["candidates"] == len(fs.ids(t)) and doc["model"] == name
        assert [row["stimulus_id"] for row in doc["rows"]] == subject_stimuli(ds, s, "test")
        assert [[h["stimulus_id"] for h in row["top"]] for row in doc["rows"]] == _brute_top(want, fs, t, 3)
    r = runner.invoke(app, ["predict", "--dataset", str(small_dataset), "--out", str(out), "--decode", t,
                            "--model", "nosuch", "--registry", reg])
    assert r.exit_code != 0 and "'nosuch'" in r.output and name in r.output
    spec = tmp_path / "fit.yaml"
    spec.write_text(f"dataset: {small_dataset}\nstore: {decoded['store']}\nregistry: {reg}\n"
                    f"decoders:\n  - target: {t}\n    name: dec-yaml\n    rois: [floc-faces]\n    alphas: [10, 1000]\n")
    r = runner.invoke(app, ["fit", "--config", str(spec), "--out", str(tmp_path / "fitrun")])
    assert r.exit_code == 0, r.output
    for s in ds.subjects:
        d = Decoder.load(reg, f"dec-yaml/{s}")
        assert d.meta["rois"] == ["floc-faces"] and d.meta["metrics"]["alpha"] in (10, 1000)
        assert d.n_voxels == sum(len(v) for v in select_voxels(ds, s, ["floc-faces"]).values())
    spec.write_text(f"dataset: {small_dataset}\nstore: {decoded['store']}\nregistry: {reg}\n"
                    f"decoders:\n  - target: {t}\n    rois: [FFA-9]\n")
    r = runner.invoke(app, ["fit", "--config", str(spec)])
    assert r.exit_code != 0 and "decoders[0]" in r.output and "FFA-9" in r.output
    spec.write_text(f"dataset: {small_dataset}\ndecoders:\n  - target: {t}\n    adaptor: {{epochs: 2}}\n")
    r = runner.invoke(app, ["fit", "--config", str(spec)])
    assert r.exit_code != 0 and "method: adaptor" in r.output
    spec.write_text(f"dataset: {small_dataset}\ndecoders:\n  - target: {t}\n    fraction: 0.1\n")
    r = runner.invoke(app, ["fit", "--config", str(spec)])
    assert r.exit_code != 0 and "fraction need method: adaptor" in r.output


def test_cli_fit_decode_prints_and_records_the_whole_store_retrieval(decoded, small_dataset, tmp_path):
    """``fit --decode TABLE`` prints the whole-store top-1 / top-5 (as the README says; it printed "-")
    and writes them to metrics.json, equal to an sklearn brute-force ranking of the whole table."""
    import json
    import shutil

    from typer.testing import CliRunner

    from brainstore.cluster.cli import app

    store = tmp_path / "store"
    shutil.copytree(decoded["store"], store)
    t, ds = decoded["target"], AlgonautsDataset(small_dataset)
    r = CliRunner().invoke(app, ["fit", "--dataset", str(small_dataset), "--decode", t, "--store", str(store),
                                 "--registry", str(tmp_path / "reg"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    fs = FeatureStore(store, create=False)
    n_stored = len(fs.ids(t))
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())["decoders"]
    (name, by_subject), = doc.items()
    for s in ds.subjects:
        D = np.load(tmp_path / "run" / "decoded" / name / f"{s}_test.npy")
        truth, top = subject_stimuli(ds, s, "test"), _brute_top(D, fs, t, 5)
        m = by_subject[s]
        assert m["store_candidates"] == n_stored
        assert m["store_top1"] == pytest.approx(np.mean([a == row[0] for a, row in zip(truth, top)]), abs=1e-6)
        assert m["store_top5"] == pytest.approx(np.mean([a in row for a, row in zip(truth, top)]), abs=1e-6)
        shown = f"{m['store_top1']:.3f} / {m['store_top5']:.3f} of {n_stored}"
        assert shown in r.output, r.output


def test_evaluate_compares_two_versions_of_a_decoder(decoded, small_dataset):
    """(Last: it adds a version to the module's registry.) A refit with other alphas is version 2; evaluate with
    NAME@1 and NAME@2 scores each version as registered (version 1's figures are the first fit's)."""
    from brainstore.fitting import ModelRegistry, evaluate

    name = next(iter(decoded["run"].metrics))
    again = fit_decoders(small_dataset, decoded["target"], store=str(decoded["store"]), registry=str(decoded["registry"]),
                         alphas=(1e6,), folds=3, progress=False)
    assert not again.failures
    reg = ModelRegistry(decoded["registry"], create=False)
    assert [r.version for r in reg.versions(f"{name}/subj01")] == [1, 2]
    ev = evaluate(small_dataset, registry=reg, out=decoded["root"] / "ev12", models=[f"{name}@1", f"{name}@2"],
                  maps=False)
    assert set(ev.decoders) == {f"{name}@1", f"{name}@2"}
    for s, m in decoded["run"].metrics[name].items():
        assert ev.decoders[f"{name}@1"][s]["top1_brain_to_stimulus"] == pytest.approx(m["top1_brain_to_stimulus"])
        assert ev.decoders[f"{name}@2"][s]["alpha"] == 1e6 and ev.decoders[f"{name}@1"][s]["alpha"] == m["alpha"]

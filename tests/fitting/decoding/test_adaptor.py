"""Adaptor decoders (``brainstore.fitting.decoding._adaptor``): Ray Train training end to end (2 CPU
workers, DDP), registry round trip, resume from the last checkpoint, refusal of another spec's
checkpoint; factored adapters: transfer to a new subject training its adapter alone (every other
tensor bit-identical), mixed adapter kinds through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainstore.fitting.decoding._adaptor_net import AdaptorNet, FactoredAdapter


# ---------------------------------------------------------------------------- Ray Train, end to end

ADAPT = {"epochs": 15, "batch_size": 16, "latent": 64, "n_blocks": 1, "patience": None}  # every epoch (early stopping: test_adaptor_search.py)


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory, ray_local):
    from brainstore.features import extract
    from brainstore.fitting.decoding._adaptor import fit_adaptor

    root = tmp_path_factory.mktemp("adaptor")
    store, registry = root / "store", root / "registry"
    txt = extract(small_dataset, "text", store, progress=False).feature
    run = fit_adaptor(small_dataset, [txt], store=str(store), registry=str(registry), params=ADAPT, num_workers=2,
                      out=root / "run")
    return {"root": root, "store": store, "registry": registry, "target": txt, "run": run}


@pytest.mark.slow
def test_adaptor_trains_on_two_workers_and_round_trips_the_registry(trained, small_dataset):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import subject_stimuli
    from brainstore.fitting.decoding._adaptor_model import AdaptorModel
    from brainstore.fitting.decoding._inputs import response_matrix, select_voxels
    from brainstore.scoring import retrieval_metrics

    run, t = trained["run"], trained["target"]
    assert [h["epoch"] for h in run.history] == list(range(ADAPT["epochs"]))
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    ds = AlgonautsDataset(small_dataset)
    model = AdaptorModel.load(trained["registry"], f"{run.name}/shared")
    fs = FeatureStore(trained["store"], create=False)
    for s in ds.subjects:
        m = run.metrics[t][s]
        assert m["top1_brain_to_stimulus"] > 5 * m["chance"]  # learned, far above chance (40 candidates)
        R = response_matrix(ds, s, "test", select_voxels(ds, s))
        D = model.decode(s, R)[t]
        again = retrieval_metrics(D, fs.load(t, subject_stimuli(ds, s, "test")))
        assert again["top1_brain_to_stimulus"] == pytest.approx(m["top1_brain_to_stimulus"])
        with pytest.raises(ValueError, match=f"takes {R.shape[1]} voxels for {s}"):
            model.decode(s, R[:, :5])
    with pytest.raises(ValueError, match="no adapter for 'subj09'"):
        model.decode("subj09", R)
    # encoder evaluation and model choice skip decoders in a shared registry
    from brainstore.fitting import ModelRegistry, RegistryError, best_model, evaluate_registered

    reg = ModelRegistry(trained["registry"], create=False)
    assert evaluate_registered(reg, ds)[0] == {}
    with pytest.raises(RegistryError, match="no registered model for subj01"):
        best_model(reg, "subj01", str(ds.root))


_KILL = """
import sys
from brainstore._ray import connect
connect(None, num_cpus=2)
from brainstore.fitting.decoding._adaptor import fit_adaptor
fit_adaptor(sys.argv[1], [sys.argv[2]], store=sys.argv[3], registry=sys.argv[4], out=sys.argv[5], num_workers=2,
            params={"epochs": 12, "batch_size": 16, "latent": 64, "n_blocks": 1, "patience": None})
print("FINISHED")
"""


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_checkpoint(trained, small_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from brainstore.fitting.decoding._adaptor import fit_adaptor
    from brainstore.fitting.decoding._adaptor_trainer import latest_checkpoint as _latest_checkpoint

    out = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(_KILL)
    log = open(tmp_path / "job.log", "w")
    args = [str(small_dataset), trained["target"], str(trained["store"]), str(tmp_path / "reg"), str(out)]
    # the killed job at Ray Train's default pace (a report collected every 2 s: an epoch of ~2 s), so that the kill
    # lands mid-run; at the suite's 0.1 s (conftest) its 12 epochs can all pass between two polls of this loop
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}
    proc = subprocess.Popen([sys.executable, str(script), *args], start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    killed_at, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = _latest_checkpoint(out / "train")
        if latest is not None and latest[0] >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = latest[0]
            break
        time.sleep(0.3)
    proc.wait(60)
    log.close()
    assert killed_at is not None, (tmp_path / "job.log").read_text()[-3000:]
    assert killed_at < 11, "the training had finished before the kill"
    params = {"epochs": 12, "batch_size": 16, "latent": 64, "n_blocks": 1, "patience": None}
    kw = dict(store=str(trained["store"]), registry=str(tmp_path / "reg"), out=out, num_workers=2)
    run = fit_adaptor(small_dataset, [trained["target"]], params=params, **kw)
    assert run.resumed_from_epoch is not None and run.resumed_from_epoch >= killed_at
    assert [h["epoch"] for h in run.history] == list(range(12))  # each epoch once: nothing lost, nothing repeated
    # the same folder with another spec: refused, naming the fix
    with pytest.raises(ValueError, match="made by another adaptor spec"):
        fit_adaptor(small_dataset, [trained["target"]], params={**params, "lr": 1e-3}, **kw)


@pytest.mark.slow
def test_factored_transfer_trains_only_the_new_adapter_and_mixed_kinds_round_trip(trained, small_dataset, tmp_path):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import ModelRegistry, subject_stimuli
    from brainstore.fitting.decoding._adaptor import fit_adaptor
    from brainstore.fitting.decoding._adaptor_model import AdaptorModel
    from brainstore.fitting.decoding._inputs import response_matrix, select_voxels

    t, registry = trained["target"], str(tmp_path / "reg")
    kw = dict(store=str(trained["store"]), registry=registry, num_workers=2)
    # the network alone (no ridge start: its parameters are the whole state, as counted below)
    P = {"epochs": 4, "batch_size": 16, "latent": 64, "n_blocks": 1, "ridge_base": False}
    pre = fit_adaptor(small_dataset, [t], params=P, subjects=["subj01"], out=tmp_path / "pre", name="pre", **kw)
    assert pre.n_trainable == pre.n_params
    rank = 4
    tr = fit_adaptor(small_dataset, [t], params={**{k: v for k, v in P.items() if k != "ridge_base"},
                                                 "new_adapter": "factored", "new_rank": rank}, subjects=["subj02"],
                     fraction=0.5, init_from="pre/shared", trainable="adapter", out=tmp_path / "tr", name="tr", **kw)
    # these subjects are in their own vertex spaces: no vertex-wise mean of their adapters
    with pytest.raises(ValueError, match="one vertex space: subj02 has"):
        fit_adaptor(small_dataset, [t], params={**P, "new_adapter_init": "mean"}, subjects=["subj02"],
                    init_from="pre/shared", trainable="adapter", out=tmp_path / "mean", register=False, **kw)
    assert not (tmp_path / "mean").exists()
    with pytest.raises(ValueError, match="give init_from"):
        fit_adaptor(small_dataset, [t], params={**P, "new_adapter_init": "mean"}, subjects=["subj02"],
                    out=tmp_path / "mean", register=False, **kw)
    reg = ModelRegistry(registry, create=False)
    st0, rec0 = reg.load_arrays("pre/shared")
    st1, rec1 = reg.load_arrays("tr/shared")
    m = rec1.meta
    assert m["adapters"] == {"subj01": {"kind": "linear", "rank": None}, "subj02": {"kind": "factored", "rank": rank}}
    assert rec0.meta["adapters"] == {"subj01": {"kind": "linear", "rank": None}}
    # the new subject's adapter: n_vox * rank + rank * latent + latent of all the net's parameters
    n_vox, latent = m["n_voxels"]["subj02"], P["latent"]
    own = sum(v.size for k, v in st1.items() if k.startswith("net.adapters.subj02."))
    total = sum(v.size for k, v in st1.items() if k.startswith("net."))
    assert own == n_vox * rank + rank * latent + latent == tr.n_trainable == m["n_trainable"]
    assert total == tr.n_params == m["n_params"]
    assert own / total == pytest.approx((n_vox * rank + rank * latent + latent) / total)
    assert own / total < 0.05
    # trainable="adapter": every other tensor is bit-identical to the pretrained model's
    shared = [k for k in st0 if k.startswith("net.")]
    assert shared and set(shared) == {k for k in st1 if k.startswith("net.") and not k.startswith("net.adapters.subj02.")}
    for k in shared:
        assert st1[k].dtype == st0[k].dtype and np.array_equal(st1[k], st0[k]), k
    # mixed kinds through the registry: the loaded model decodes as the one fitted (its test metrics) and as a
    # network rebuilt by hand from the registered tensors
    ds = AlgonautsDataset(small_dataset)
    model = AdaptorModel.load(registry, "tr/shared")
    assert isinstance(model.net.adapters["subj02"], FactoredAdapter)
    assert isinstance(model.net.adapters["subj01"], torch.nn.Linear)
    hand = AdaptorNet(m["n_voxels"], m["target_dims"], latent=latent, n_blocks=1, adapters=m["adapters"]).eval()
    hand.load_state_dict({k[4:]: torch.from_numpy(np.asarray(v)) for k, v in st1.items() if k.startswith("net.")})
    from brainstore.scoring import retrieval_metrics
    from brainstore.features import FeatureStore

    fs = FeatureStore(trained["store"], create=False)
    for s in ("subj01", "subj02"):
        R = response_matrix(ds, s, "test", select_voxels(ds, s))
        D = model.decode(s, R)[t]
        x = (R - st1[f"norm.{s}.mean"]) / st1[f"norm.{s}.std"]
        with torch.no_grad():
            np.testing.assert_array_equal(D, hand(torch.from_numpy(x.astype(np.float32)), s)[t].numpy())
    again = retrieval_metrics(D, fs.load(t, subject_stimuli(ds, "subj02", "test")))
    assert again["top1_brain_to_stimulus"] == pytest.approx(tr.metrics[t]["subj02"]["top1_brain_to_stimulus"])
    # a registration made before per-subject adapters (no "adapters" in its meta): all of the params' kind
    old = {k: v for k, v in rec0.meta.items() if k != "adapters"}
    reg.save("old/shared", st0, old)
    R = response_matrix(ds, "subj01", "test", select_voxels(ds, "subj01"))
    np.testing.assert_array_equal(AdaptorModel.load(registry, "old/shared").decode("subj01", R)[t],
                                  AdaptorModel.load(registry, "pre/shared").decode("subj01", R)[t])


@pytest.mark.slow
def test_mean_adapter_init_starts_a_new_subject_from_the_pretrained_maps(tmp_path, ray_local):
    """Aligned subjects (one vertex space): a new subject's adapter starts as the vertex-wise mean of the
    pretrained subjects' maps; linear as is, factored as its best rank-r approximation (numpy SVD).
    Trained at a vanishing lr, the registered adapter is still its start."""
    from brainstore.datasets import make_dataset
    from brainstore.features import extract
    from brainstore.fitting import ModelRegistry
    from brainstore.fitting.decoding._adaptor import fit_adaptor

    data = make_dataset(tmp_path / "data", n_subjects=3, n_train=40, n_test=10, n_vertices=60, seed=2, image_size=32,
                        alignment=0.9, progress=False)
    t = extract(data, "text", tmp_path / "store", progress=False).feature
    # one Ray Train worker: the start is made on the driver and loaded by the worker before any step (DDP across
    # workers is the tests above); a worker group of one starts ~4 s sooner, and this test starts four
    kw = dict(store=str(tmp_path / "store"), registry=str(tmp_path / "reg"), num_workers=1)
    P = {"epochs": 2, "batch_size": 8, "latent": 16, "n_blocks": 1}
    # a ridge-started adaptor (the default from scratch) holds corrections to its subjects' ridge maps: refused
    fit_adaptor(data, [t], params={**P, "epochs": 1}, subjects=["subj01", "subj02"], out=tmp_path / "rb", name="rb",
                **kw)
    with pytest.raises(ValueError, match="trained on a ridge start .* does not carry to a new subject \\(subj03\\)"):
        fit_adaptor(data, [t], params=P, subjects=["subj03"], init_from="rb/shared", out=tmp_path / "x", **kw)
    P["ridge_base"] = False  # the network alone: what transfers
    fit_adaptor(data, [t], params=P, subjects=["subj01", "subj02"], out=tmp_path / "pre", name="pre", **kw)
    still = {**P, "epochs": 1, "lr": 1e-12, "weight_decay": 0.0, "new_adapter_init": "mean"}
    for name, extra in (("lin", {}), ("fac", {"new_adapter": "factored", "new_rank": 3})):
        fit_adaptor(data, [t], params={**still, **extra}, subjects=["subj03"], init_from="pre/shared",
                    trainable="adapter", out=tmp_path / name, name=name, **kw)
    reg = ModelRegistry(tmp_path / "reg", create=False)
    pre, _ = reg.load_arrays("pre/shared")
    W = (pre["net.adapters.subj01.weight"] + pre["net.adapters.subj02.weight"]) / 2
    b = (pre["net.adapters.subj01.bias"] + pre["net.adapters.subj02.bias"]) / 2
    assert W.shape == (16, 120)
    lin, rec = reg.load_arrays("lin/shared")
    assert rec.meta["params"]["new_adapter_init"] == "mean"
    np.testing.assert_allclose(lin["net.adapters.subj03.weight"], W, atol=1e-6)
    np.testing.assert_allclose(lin["net.adapters.subj03.bias"], b, atol=1e-6)
    fac, _ = reg.load_arrays("fac/shared")
    U, S, Vt = np.linalg.svd(W.astype(np.float64))
    best3 = (U[:, :3] * S[:3]) @ Vt[:3]
    np.testing.assert_allclose(fac["net.adapters.subj03.up.weight"] @ fac["net.adapters.subj03.down.weight"], best3,
                               atol=1e-5)
    np.testing.assert_allclose(fac["net.adapters.subj03.up.bias"], b, atol=1e-6)
    assert np.abs(best3 - W).max() > 1e-3  # rank 3 is an approximation of this map, not the map


@pytest.mark.slow
def test_evaluate_and_predict_cover_adaptors(trained, small_dataset, tmp_path):
    """``evaluate_decoders`` scores a registered adaptor (same figures as its fit, plus the whole-store
    top-k against an sklearn brute force); ``predict --decode --model`` decodes with it."""
    import json

    from sklearn.metrics.pairwise import cosine_similarity as sk_cos
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app
    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry, evaluate_decoders, safe_name, subject_stimuli
    from brainstore.fitting.decoding._adaptor_model import AdaptorModel
    from brainstore.fitting.decoding._inputs import response_matrix

    run, t = trained["run"], trained["target"]
    ds = AlgonautsDataset(small_dataset)
    ev = evaluate_decoders(ModelRegistry(trained["registry"], create=False), ds)
    fs = FeatureStore(trained["store"], create=False)
    ids = fs.ids(t)
    model = AdaptorModel.load(trained["registry"], f"{run.name}/shared")
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["predict", "--dataset", str(small_dataset), "--out", str(out), "--decode", t,
                                 "--top-k", "5", "--model", run.name, "--registry", str(trained["registry"])])
    assert r.exit_code == 0, r.output
    for s in ds.subjects:
        m, fit = ev[run.name][s], run.metrics[t][s]
        assert m["method"] == "adaptor"
        for k in ("top1_brain_to_stimulus", "top1_stimulus_to_brain", "two_way", "cosine"):
            assert m[k] == pytest.approx(fit[k], rel=1e-5), k
        D = model.decode(s, response_matrix(ds, s, "test", model.voxels[s]))[t]
        top = [[ids[j] for j in np.argsort(-row, kind="stable")[:5]] for row in sk_cos(D, fs.load(t, ids))]
        truth = subject_stimuli(ds, s, "test")
        assert m["store_top1"] == pytest.approx(np.mean([a == b[0] for a, b in zip(truth, top)]))
        assert m["store_top5"] == pytest.approx(np.mean([a in b for a, b in zip(truth, top)]))
        assert "caption_bleu1" in m  # a caption table: retrieved training captions are scored too
        doc = json.loads((out / s / f"top5_{safe_name(t)}.json").read_text())
        assert doc["model"] == run.name and [[h["stimulus_id"] for h in row["top"]] for row in doc["rows"]] == top
        np.testing.assert_allclose(np.load(out / s / f"decoded_{safe_name(t)}.npy"), D, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_an_adaptor_checks_its_targets_fitted_rows_at_their_pinned_version(trained, small_dataset, tmp_path):
    """The registration records the training stimuli (fit_ids) and pins the target's version: a target row
    rewritten in place still loads (the pinned version holds the fitted rows); a target table re-created with
    one training stimulus re-embedded is refused."""
    import shutil

    import lancedb

    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry, RegistryError, subject_stimuli
    from brainstore.fitting.decoding._adaptor_model import AdaptorModel
    from brainstore.fitting.registry import decode_ids

    run, t = trained["run"], trained["target"]
    ds = AlgonautsDataset(small_dataset)
    tensors, rec = ModelRegistry(trained["registry"], create=False).load_arrays(f"{run.name}/shared")
    fitted = sorted({i for s in run.metrics[t] for i in subject_stimuli(ds, s, "train")})
    assert decode_ids(tensors["fit_ids"]) == fitted and rec.meta["fingerprints"][t]["n_rows"] == len(fitted)
    store = tmp_path / "store"
    shutil.copytree(trained["store"], store)
    fs = FeatureStore(store)
    assert fs.pinned(t) == [rec.meta["fingerprints"][t]["table_version"]]
    lancedb.connect(str(store)).open_table(t).update(where=f"stimulus_id='{fitted[0]}'",
                                                     values={"embedding": (fs.load(t, [fitted[0]])[0] * 2).tolist()})
    AdaptorModel.load(trained["registry"], f"{run.name}/shared", str(store))
    ids, emb, meta = fs.ids(t), fs.load(t), fs.metadata(t)
    fs.drop(t)
    fs.ensure_table(t, emb.shape[1], {k: v for k, v in meta.items() if k not in ("feature_version", "dim")})
    fs.write(t, ids, emb)  # the rewritten row is now the only content there is
    with pytest.raises(RegistryError, match=f"embeddings of the {len(fitted)} stimuli it was fitted on differ"):
        AdaptorModel.load(trained["registry"], f"{run.name}/shared", str(store))

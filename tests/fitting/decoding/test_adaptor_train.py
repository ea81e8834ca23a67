"""Domain adaptation of adaptor decoders (seed 002 / DANCE) in the training loop
(``brainstore.fitting.decoding._adaptor_train``): a Ray Train run adapting to unlabeled responses (a
held-out subject, and the unlabeled rest of a few-shot subject) trains, registers and records its
settings; its spec hash refuses other checkpoints; bad inputs are refused in one line before any work."""

from __future__ import annotations

import numpy as np
import pytest


# ---------------------------------------------------------------------------- Ray Train, end to end

P = {"epochs": 3, "batch_size": 16, "latent": 32, "n_blocks": 1}
DA = {**P, "domain_adaptation": {"n_classes": 6}}


@pytest.fixture(scope="module")
def da(tmp_path_factory, ray_local):
    """3 tiny subjects, caption embeddings, and a run training subj01 and half of subj02 while adapting to the
    other half of subj02 and to all of subj03 (held out: no labels)."""
    from brainstore.datasets import make_dataset
    from brainstore.features import extract
    from brainstore.fitting.decoding._adaptor import fit_adaptor

    root = tmp_path_factory.mktemp("adaptor-da")
    data = make_dataset(root / "data", n_subjects=3, n_train=60, n_test=30, n_vertices=80, seed=5, image_size=32,
                        progress=False)
    store, registry = root / "store", root / "registry"
    txt = extract(data, "text", store, progress=False).feature
    kw = dict(store=str(store), registry=str(registry), num_workers=2)
    run = fit_adaptor(data, [txt], params=DA, subjects=["subj01", "subj02"], fraction=0.5,
                      adapt_subjects=["subj02", "subj03"], out=root / "run-da", name="da", **kw)
    return {"root": root, "data": data, "target": txt, "kw": kw, "run": run}


@pytest.mark.slow
def test_domain_adaptation_trains_registers_and_records_its_settings(da):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import ModelRegistry
    from brainstore.fitting.decoding._adaptor_model import AdaptorModel
    from brainstore.fitting.decoding._inputs import response_matrix, select_voxels

    run, t = da["run"], da["target"]
    assert [h["epoch"] for h in run.history] == list(range(P["epochs"]))
    for h in run.history:
        assert all(np.isfinite(h[k]) for k in ("train_loss", "class_ce", "nc_loss", "es_loss"))
    assert run.adapt_subjects == ["subj02", "subj03"]
    assert set(run.metrics[t]) == {"subj01", "subj02", "subj03"}  # the held-out subject is scored too
    assert run.n_trainable == run.n_params  # trainable="all": every adapter takes part
    st, rec = ModelRegistry(da["kw"]["registry"], create=False).load_arrays("da/shared")
    m = rec.meta
    assert m["subjects"] == ["subj01", "subj02", "subj03"] and m["trained_subjects"] == ["subj01", "subj02"]
    assert m["adapt_subjects"] == ["subj02", "subj03"]
    d = m["domain_adaptation"]
    assert (d["lam"], d["tau"], d["n_classes"], d["margin"], d["memory"]) == (0.95, 0.5, 6, 0.5, None)
    assert d["rho"] == pytest.approx(np.log(6) / 2)
    # subj02: the 30 images after its labeled half; subj03: all of its 60
    assert d["unlabeled"] == {"subj02": {"rows": [30, 60], "n": 30}, "subj03": {"rows": [0, 60], "n": 60}}
    assert m["params"]["domain_adaptation"]["n_classes"] == 6
    assert st["net.classifier.weight"].shape == (6, P["latent"])
    assert m["n_params"] == sum(v.size for k, v in st.items() if k.startswith("net."))
    ds = AlgonautsDataset(da["data"])
    model = AdaptorModel.load(da["kw"]["registry"], "da/shared")
    out = model.decode("subj03", response_matrix(ds, "subj03", "test", select_voxels(ds, "subj03")))[t]
    assert out.shape[0] == 30 and np.isfinite(out).all()


@pytest.mark.slow
def test_the_spec_hash_covers_domain_adaptation(da, tmp_path):
    from brainstore.fitting.decoding._adaptor import fit_adaptor

    data, t, kw = da["data"], da["target"], da["kw"]
    plain = tmp_path / "plain"
    fit_adaptor(data, [t], params={**P, "epochs": 1}, subjects=["subj01", "subj02"], fraction=0.5, out=plain,
                register=False, **kw)
    # a run with domain adaptation cannot resume the checkpoint of one without it
    with pytest.raises(ValueError, match="made by another adaptor spec"):
        fit_adaptor(data, [t], params={**DA, "epochs": 1}, subjects=["subj01", "subj02"], fraction=0.5,
                    adapt_subjects=["subj03"], out=plain, register=False, **kw)
    # nor one with other domain-adaptation settings or other adapt subjects
    folder = da["root"] / "run-da"
    same = dict(subjects=["subj01", "subj02"], fraction=0.5, out=folder, register=False, **kw)
    with pytest.raises(ValueError, match="made by another adaptor spec"):
        fit_adaptor(data, [t], params={**P, "domain_adaptation": {"n_classes": 6, "tau": 0.3}},
                    adapt_subjects=["subj02", "subj03"], **same)
    with pytest.raises(ValueError, match="made by another adaptor spec"):
        fit_adaptor(data, [t], params=DA, adapt_subjects=["subj03"], **same)


@pytest.mark.slow
def test_bad_domain_adaptation_inputs_are_refused_in_one_line(da):
    from brainstore.datasets import DatasetError
    from brainstore.fitting.decoding._adaptor import fit_adaptor

    data, t, kw = da["data"], da["target"], da["kw"]
    cases = [
        (dict(params=DA, adapt_subjects=["subj09"]), DatasetError,
         "adapt subject.*subj09.*known subjects: subj01, subj02, subj03"),
        (dict(params=P, adapt_subjects=["subj03"]), ValueError, "add params.domain_adaptation"),
        (dict(params=DA), ValueError, "pass adapt_subjects"),
        (dict(params=DA, subjects=["subj01"], adapt_subjects=["subj01"]), ValueError,
         "subj01 is trained on all of its training images.*fraction < 1"),
        (dict(params={**P, "new_adapter": "factored"}), ValueError, "give init_from"),
        (dict(params={**P, "domain_adaptation": {"n_classes": 500}}, subjects=["subj01"], adapt_subjects=["subj03"]),
         ValueError, "n_classes"),
    ]
    for args, err, match in cases:
        with pytest.raises(err, match=match) as e:
            fit_adaptor(data, [t], out=da["root"] / "never", **args, **kw)
        assert "\n" not in str(e.value)
    assert not (da["root"] / "never").exists()

"""Adaptors that hold on data they were not tuned on (``_adaptor_train`` early stopping, ``_adaptor_search``
the Ray Tune search, ``_adaptor_compare`` the ridge on the same validation split, ``method: auto``).

Early stopping keeps the best epoch's weights (a case built to overfit: few images, a high learning rate, no
regularization), checked by decoding the validation rows with the registered model and ranking them by hand,
and the ridge it is compared with matches scikit-learn's ridge on the same rows; the search is deterministic
by seed and a killed search resumes to the same table without rerunning finished trials; ``method: auto``
registers whichever won on validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

SPACE = {"latent": [32, 64], "lr": [1e-3, 3e-3], "n_blocks": [0, 1]}
# no ridge start here: the networks themselves train, so ASHA has trailing trials to stop
SMALL = {"epochs": 6, "batch_size": 16, "latent": 32, "n_blocks": 1, "patience": 3, "ridge_base": False}


@pytest.fixture(scope="module")
def text(small_dataset, tmp_path_factory, ray_local):
    from brainstore.features import extract

    root = tmp_path_factory.mktemp("adaptor-search")
    return {"root": root, "store": root / "store",
            "target": extract(small_dataset, "text", root / "store", progress=False).feature}


def _top1_by_hand(pred: np.ndarray, true: np.ndarray) -> float:
    """Validation top-1 by hand, the mean of both directions: the share of decoded embeddings most cosine-similar
    to their own stimulus's embedding, and of stimuli whose embedding is most similar to their own decoding."""
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    t = true / np.linalg.norm(true, axis=1, keepdims=True)
    sim, own = p @ t.T, np.arange(len(p))
    return float(((sim.argmax(1) == own).mean() + (sim.argmax(0) == own).mean()) / 2)


def _val_rows(ds, fs, target, subject, n_lab, val_fraction):
    """The validation rows of a subject, as the adaptor holds them out: the last share of its labeled images."""
    from brainstore.fitting import response_matrix, select_voxels, subject_stimuli

    n_val = int(round(n_lab * val_fraction))
    R = response_matrix(ds, subject, "train", select_voxels(ds, subject))[:n_lab]
    E = fs.load(target, subject_stimuli(ds, subject, "train")[:n_lab])
    return R, E, n_lab - n_val


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch_and_ridge_is_judged_on_the_same_rows(small_dataset, text, tmp_path):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from brainstore.datasets import open_dataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import AdaptorModel, fit_adaptor

    # built to overfit: 60 images a subject, lr 1e-2, a wide backbone, no dropout or weight decay
    p = {"epochs": 24, "batch_size": 16, "latent": 256, "n_blocks": 2, "lr": 1e-2, "dropout": 0.0,
         "weight_decay": 0.0, "val_fraction": 0.3, "patience": 6, "ridge_base": False, "ridge_floor": False}
    run = fit_adaptor(small_dataset, [text["target"]], store=str(text["store"]), registry=str(tmp_path / "reg"),
                      params=p, num_workers=1, fraction=0.5, out=tmp_path / "run")
    val = [h["val_top1"] for h in run.history]
    best, n = 0, run.history[0]["val_items"]  # the kept epoch, by the rule: better by more than a standard error
    assert n == 2 * 2 * 18  # 18 validation images a subject (30 % of 60), each ranked both ways
    for e in range(1, len(val)):
        if val[e] > val[best] + np.sqrt(val[best] * (1 - val[best]) / n):
            best = e
    assert run.best_epoch == best
    assert val[-1] < val[best], f"the case did not overfit: {val}"  # else the test shows nothing
    # patience: it stopped 6 epochs after the kept one, or ran every epoch
    assert len(val) == min(p["epochs"], best + 1 + p["patience"]), val
    # the registered weights are the best epoch's: its validation top-1, computed here by hand
    ds, fs = open_dataset(small_dataset), FeatureStore(str(text["store"]), create=False)
    model = AdaptorModel.load(str(tmp_path / "reg"), f"{run.name}/shared")
    tops = []
    for s in ds.subjects:
        R, E, cut = _val_rows(ds, fs, text["target"], s, 60, p["val_fraction"])
        tops.append(_top1_by_hand(model.decode(s, R[cut:])[text["target"]], E[cut:]))
        assert run.val_top1[s] == pytest.approx(tops[-1])
        # the ridge it is compared with: fitted on the same rows, judged on the same validation rows (scikit-learn
        # at the alpha its CV chose, voxels z-scored with the fitted rows' statistics)
        c = run.comparison[s]
        assert (c["n_fit"], c["n_val"], c["adaptor_val_top1"]) == (cut, 60 - cut, run.val_top1[s])
        sc = StandardScaler().fit(R[:cut])
        ref = Ridge(alpha=c["ridge_alpha"]).fit(sc.transform(R[:cut]), E[:cut]).predict(sc.transform(R[cut:]))
        assert c["ridge_val_top1"] == pytest.approx(_top1_by_hand(ref, E[cut:]))
    assert np.mean(tops) == pytest.approx(val[best])
    mean = {k: np.mean([c[f"{k}_val_top1"] for c in run.comparison.values()]) for k in ("adaptor", "ridge")}
    assert run.winner == ("ridge" if mean["ridge"] > mean["adaptor"] else "adaptor")
    # the report's account of it, from the registered record
    from brainstore.fitting import ModelRegistry, decoding_models
    from brainstore.fitting.reports._html_adaptors import adaptor_outcomes

    reg = ModelRegistry(str(tmp_path / "reg"), create=False)
    html = adaptor_outcomes(reg, decoding_models(reg, small_dataset))
    assert f"{run.name} against ridge on the same validation split" in html
    assert ("Ridge wins on validation" in html) == (run.winner == "ridge")
    for s, c in run.comparison.items():
        assert f"<td>{s}</td><td>{c['n_val']}</td><td>{c['adaptor_val_top1']:.3f}</td><td>{c['ridge_val_top1']:.3f}</td>" in html


@pytest.mark.slow
def test_with_the_ridge_start_no_trial_is_below_ridge_on_validation(small_dataset, text, tmp_path):
    from brainstore.fitting import fit_adaptor

    p = {"epochs": 3, "batch_size": 16, "latent": 32, "n_blocks": 1, "lr": 1e-2, "val_fraction": 0.3}  # ridge_base: default
    run = fit_adaptor(small_dataset, [text["target"]], store=str(text["store"]), registry=str(tmp_path / "reg"),
                      params=p, num_workers=1, out=tmp_path / "run", register=False,
                      search={"trials": 2, "grace": 1, "space": {"lr": [1e-2, 3e-2]}})
    assert run.params["ridge_base"] is True  # on by default for an adaptor trained from scratch
    ridge_val = np.mean([c["ridge_val_top1"] for c in run.comparison.values()])
    n_val = min(c["n_val"] for c in run.comparison.values())
    # the start (epoch -1) decodes as ridge does and is every trial's first candidate (float32 ties aside)
    for t in run.search["trials"]:
        assert t["val_top1"] >= ridge_val - 1 / n_val, (t, ridge_val)
        assert t["floor_held"], t  # the start is ridge itself: every trial has an epoch that holds the floor
    assert run.winner == "adaptor" or np.mean(list(run.val_top1.values())) >= ridge_val - 1 / n_val
    # the kept model holds ridge's validation top-1 each way, per subject, within one standard error of ridge's figure
    assert run.floor_held is True
    for s, c in run.comparison.items():
        for d in ("b2s", "s2b"):
            r = c["ridge_val"][d]
            assert c["adaptor_val"][d] >= r - np.sqrt(r * (1 - r) / c["n_val"]) - 1e-12, (s, d, c)


def test_the_floor_rule_by_hand():
    """``holds_floor`` and the order of kept trials, on hand-made figures: 0.5 over 100 images has a standard error of
    0.05, so 0.45 holds it and 0.449 does not; a trial that holds the floor wins over a better one that does not."""
    from brainstore.fitting.decoding._adaptor_search import _kept_trial
    from brainstore.fitting.decoding._scores import holds_floor

    floor = {"s1": {"b2s": 0.5, "s2b": 0.5, "n": 100}}
    assert holds_floor({"val_b2s_s1": 0.9, "val_s2b_s1": 0.45}, floor)
    assert not holds_floor({"val_b2s_s1": 0.9, "val_s2b_s1": 0.449}, floor)
    assert not holds_floor({"val_b2s_s1": 0.449, "val_s2b_s1": 0.9}, floor)
    assert holds_floor({"val_b2s_s1": 0.49, "val_s2b_s1": 0.49}, floor, min_delta=0.01)
    assert not holds_floor({"val_b2s_s1": 0.489, "val_s2b_s1": 0.5}, floor, min_delta=0.01)
    assert holds_floor({"val_b2s_s1": 0.0}, None)
    trials = [{"trial": 0, "val_top1": 0.50, "val_items": 400, "floor_held": True},
              {"trial": 1, "val_top1": 0.70, "val_items": 400, "floor_held": False},  # better, but below ridge one way
              {"trial": 2, "val_top1": 0.52, "val_items": 400, "floor_held": True},  # within a standard error of 0
              {"trial": 3, "val_top1": 0.56, "val_items": 400, "floor_held": True}]  # 0.56 > 0.5 + 0.025
    assert _kept_trial(trials, None)["trial"] == 3
    assert _kept_trial(trials[1:2] + trials[:1], None)["trial"] == 0


def test_the_ridge_base_decodes_as_the_ridge_it_was_made_from(tmp_path):
    """An adaptor with ``ridge_base`` and its correction at zero (as it starts) decodes exactly as the ridge whose
    map it holds, rewritten for the adaptor's z-scored input (statistics other than the ridge's own)."""
    from types import SimpleNamespace

    import torch

    from brainstore.fitting import RidgeCVEncoder
    from brainstore.fitting.decoding._adaptor_compare import ridge_base_state
    from brainstore.fitting.decoding._adaptor_net import AdaptorNet

    rng = np.random.default_rng(0)
    R = rng.normal(3.0, 2.0, (80, 30)) * rng.uniform(0.5, 4, 30)
    E = R[:, :8] @ rng.normal(size=(8, 6)) + rng.normal(size=(80, 6))
    est = RidgeCVEncoder(alphas=(1.0, 10.0, 100.0), n_folds=4, alpha_per_target=False, device="cpu").fit(R[:60], E[:60])
    mean, std = R.mean(0), R.std(0) * 1.3  # the adaptor's statistics (all labeled rows), not the ridge's
    prep = SimpleNamespace(norm={"s1": {"mean": mean.tolist(), "std": std.tolist()}})
    state = ridge_base_state(prep, {"s1": {"est": {"t.x": est}}})
    net = AdaptorNet({"s1": 30}, {"t.x": 6}, latent=16, n_blocks=1, ridge_base=True)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    net.eval()
    x = torch.from_numpy(((R - mean) / std).astype(np.float32))
    with torch.no_grad():
        out = net(x, "s1")["t.x"].numpy()
    np.testing.assert_allclose(out, est.predict(R), rtol=1e-4, atol=1e-4)


def test_the_cli_says_when_ridge_wins():
    from types import SimpleNamespace

    from brainstore.cluster._console import console, print_adaptor_outcome

    comp = {"subj01": {"n_val": 30, "adaptor_val_top1": 0.50, "ridge_val_top1": 0.70,
                       "ridge_test": {"top1_brain_to_stimulus": 0.66}}}
    run = SimpleNamespace(search=None, comparison=comp, winner="ridge", history=[],
                          metrics={"t": {"subj01": {"top1_brain_to_stimulus": 0.48}}})
    with console.capture() as cap:
        print_adaptor_outcome(run, "t", "adaptor")
    out = cap.get()
    assert "ridge beats this adaptor on validation" in out and "0.700 against 0.500" in out, out
    assert "0.480" in out and "0.660" in out  # test top-1 of both
    with console.capture() as cap:
        print_adaptor_outcome(SimpleNamespace(**{**vars(run), "metrics": {}}), "t", "auto")
    assert "method auto kept the ridge decoders" in cap.get()


_SEARCH = """
import json, sys
from brainstore._ray import connect
connect(None, num_cpus=2)
from brainstore.fitting import DecoderSpec, fit_decoder
spec = DecoderSpec(**json.loads(sys.argv[5]))
fit_decoder(spec, dataset=sys.argv[1], store=sys.argv[2], registry=sys.argv[3], out=sys.argv[4])
print("FINISHED")
"""


def _finished_trials(out) -> int:
    """Trials whose Tune result file has its last line marked done."""
    n = 0
    for f in (out / "train" / "search").glob("*/result.json"):
        lines = f.read_text().splitlines()
        n += bool(lines) and json.loads(lines[-1]).get("done", False)
    return n


@pytest.mark.slow
def test_the_search_is_deterministic_resumes_when_killed_and_auto_keeps_the_winner(small_dataset, text, tmp_path):
    from brainstore.fitting import DecoderSpec, ModelRegistry, fit_decoder

    spec = DecoderSpec(target=text["target"], method="auto", adaptor=SMALL, workers=1,
                       search={"trials": 4, "grace": 2, "space": SPACE, "seed": 7})
    kw = dict(dataset=small_dataset, store=str(text["store"]))
    first = fit_decoder(spec, registry=str(tmp_path / "reg-a"), out=tmp_path / "a", **kw)
    table = [{k: t[k] for k in ("config", "val_top1", "epochs", "stopped")} for t in first.search["trials"]]
    assert table[0]["config"] == {"latent": 32, "lr": SMALL.get("lr", 3e-4), "n_blocks": 1}  # the spec's own first
    assert len({json.dumps(t["config"], sort_keys=True) for t in table}) == 4  # distinct settings
    assert any(t["stopped"] == "ASHA" for t in table), table  # ASHA stopped a trailing trial at a rung

    # the same search killed after its second trial, then started again on the same folder
    out = tmp_path / "b"
    log = open(tmp_path / "b.log", "w")
    args = [str(small_dataset), str(text["store"]), str(tmp_path / "reg-b"), str(out), spec.model_dump_json()]
    proc = subprocess.Popen([sys.executable, "-c", _SEARCH, *args], start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT)
    killed, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _finished_trials(out) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = _finished_trials(out)
            break
        time.sleep(0.2)
    proc.wait(60)
    log.close()
    assert killed is not None and killed < 4, (tmp_path / "b.log").read_text()[-3000:]
    again = fit_decoder(spec, registry=str(tmp_path / "reg-b"), out=out, **kw)
    assert [{k: t[k] for k in ("config", "val_top1", "epochs", "stopped")} for t in again.search["trials"]] == table
    for f in (out / "train" / "search").glob("*/result.json"):  # no trial's epoch reported twice: none was rerun
        epochs = [json.loads(line)["epochs_done"] for line in f.read_text().splitlines()]
        assert epochs == sorted(set(epochs)), (f, epochs)

    # auto kept the winner on validation, and only it
    assert first.winner == again.winner and first.comparison.keys() == {"subj01", "subj02"}
    names = ModelRegistry(str(tmp_path / "reg-a"), create=False).names()
    if first.winner == "ridge":
        assert not any(n.startswith("adaptor-") for n in names) and any(n.startswith("decoder-ridge-") for n in names)
    else:
        assert any(n.startswith("adaptor-") for n in names) and not any(n.startswith("decoder-ridge-") for n in names)


def test_the_validation_split_holds_out_whole_runs_of_a_time_series():
    """``validation_cut`` by hand: 10 % of 100 rows is rows 90-99; with runs of 30 TRs (boundaries at 30, 60, 90)
    that is already a boundary; with runs of 40 (boundaries 40, 80) the cut moves to 80, the nearest, so no run is
    split; a single run, or no runs, is cut by rows."""
    from brainstore.fitting.decoding import validation_cut

    assert validation_cut(100, 0.1) == 90
    assert validation_cut(100, 0.1, np.repeat([0, 1, 2, 3], [30, 30, 30, 10])) == 90
    runs = np.repeat(["a", "b", "c"], [40, 40, 20])
    cut = validation_cut(100, 0.1, runs)
    assert cut == 80 and set(runs[:cut]).isdisjoint(runs[cut:])
    assert validation_cut(100, 0.1, np.zeros(100)) == 90
    assert validation_cut(100, 0.0, runs) == 100  # no validation split

"""Feature scales that cannot explode (``brainstore.fitting.ridge._scaling``), and what it buys every model kind.

The bug this guards: MiniLM caption embeddings have dimensions that are zero up to 1e-33 on every stored
caption; dividing by their std turned a stored embedding plus noise of 1e-4 into predictions of 1e28.
Constant and near-constant columns are now dropped; a model saved before that is refused with "refit".
References: scikit-learn's ``StandardScaler`` (constant features get a scale of 1) and ``Ridge`` fitted
on the healthy columns only, which a model that drops the dead columns must equal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainstore.fitting.ridge._scaling import NEAR_CONSTANT_RTOL, input_eps, robust_scale, unstable_scales

N, P_OK = 240, 24
DEAD = {"exact": 24, "tiny": 25, "rounding": 26}  # columns appended after the healthy ones


def _table(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 features: 24 healthy columns (std ~0.05, as MiniLM's) then an exactly constant one, one at 1e-33
    (MiniLM's dead dimensions) and one that varies only by float32 rounding; targets from the healthy ones."""
    rng = np.random.default_rng(seed)
    ok = rng.normal(0.02, 0.05, (n, P_OK)) * rng.uniform(0.5, 2, P_OK)
    dead = np.stack([np.full(n, 0.3), rng.normal(1e-33, 8e-34, n),
                     0.1 + rng.normal(0, 1e-9, n)], axis=1)
    X = np.concatenate([ok, dead], axis=1).astype(np.float32)
    W = rng.normal(0, 1, (P_OK, 6))
    Y = (ok @ W / 0.05 / np.sqrt(P_OK) + rng.normal(0, 0.5, (n, 6))).astype(np.float32)
    return X, Y, ok.astype(np.float32)


# ---------------------------------------------------------------------------------------------- the rule
def test_constant_columns_get_a_scale_of_one_as_in_sklearn():
    from sklearn.preprocessing import StandardScaler

    X, _, _ = _table()
    exact = X[:, [DEAD["exact"]]]
    std, mean = X.std(0, dtype=np.float64), X.mean(0, dtype=np.float64)
    scale, const = robust_scale(std, mean, input_eps(X))
    assert StandardScaler().fit(exact).scale_[0] == 1.0 == scale[DEAD["exact"]]
    assert const.tolist() == [False] * P_OK + [True] * 3
    assert np.array_equal(scale[:P_OK], std[:P_OK])  # healthy columns: their std, untouched
    assert np.all(scale[P_OK:] == 1.0)


def test_a_column_just_above_the_threshold_keeps_its_std():
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (500, 10))
    X[:, 0] *= 3 * NEAR_CONSTANT_RTOL  # 3x above the threshold: small but real
    X[:, 1] *= 0.3 * NEAR_CONSTANT_RTOL  # below it: dropped
    std = X.std(0)
    scale, const = robust_scale(std, X.mean(0), input_eps(X))
    assert not const[0] and scale[0] == std[0]
    assert const[1] and scale[1] == 1.0


def test_float32_rounding_counts_as_constant_but_float64_data_of_that_spread_does_not():
    """A column of 1000 +- 1e-5 is float32 rounding noise, but real variation in float64 data."""
    rng = np.random.default_rng(2)
    base = np.column_stack([rng.normal(0, 1e-3, 400), 1000 + rng.normal(0, 1e-5, 400)])
    for X, want in ((base.astype(np.float32), True), (base, False)):
        X64 = X.astype(np.float64)
        _, const = robust_scale(X64.std(0), X64.mean(0), input_eps(X))
        assert const[1] == want, X.dtype


def test_unstable_scales_finds_what_an_old_model_saved():
    X, _, _ = _table()
    raw_std = X.std(0, dtype=np.float64)
    raw_std[DEAD["exact"]] = 1.0  # old rule: exact constants got 1
    assert unstable_scales(raw_std).tolist() == [DEAD["tiny"], DEAD["rounding"]]
    scale, _ = robust_scale(X.std(0, dtype=np.float64), X.mean(0, dtype=np.float64), input_eps(X))
    assert unstable_scales(scale).size == 0


# ------------------------------------------------------------------------------- estimators: equal the
# reference fitted without the dead columns, and stay put under small noise
def _noisy(X: np.ndarray, sigma: float, cols=None, seed: int = 5) -> np.ndarray:
    E = np.random.default_rng(seed).normal(0, sigma, X.shape).astype(np.float32)
    if cols is not None:
        keep = np.zeros(X.shape[1], bool)
        keep[cols] = True
        E[:, ~keep] = 0
    return X + E


def test_ridge_drops_dead_columns_and_equals_sklearn_on_the_healthy_ones():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from brainstore.fitting import RidgeCVEncoder

    X, Y, ok = _table()
    ours = RidgeCVEncoder(alphas=(30.0,), n_folds=3, dtype="float64", device="cpu").fit(X, Y)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=30.0)).fit(ok.astype(np.float64), Y.astype(np.float64))
    Xn = _noisy(X[:40], 1e-4)
    for x in (X[:40], Xn):
        np.testing.assert_allclose(ours.predict(x), ref.predict(x[:, :P_OK].astype(np.float64)), rtol=1e-6, atol=1e-6)
    assert np.all(ours.coef_[P_OK:] == 0)


@pytest.mark.parametrize("kind", ["ridge", "banded", "mlp"])
def test_predictions_under_small_noise_stay_small(kind):
    """A stored input plus N(0, 1e-4) noise moves predictions as much as the noise on the healthy columns
    alone does (the dead columns add exactly nothing); it moved them by 1e28 before."""
    from brainstore.fitting import BandedRidgeCVEncoder, MLPEncoder, RidgeCVEncoder

    X, Y, _ = _table()
    if kind == "ridge":
        est = RidgeCVEncoder(alphas=(1.0, 100.0, 1e4), n_folds=3, device="cpu")
    elif kind == "banded":
        est = BandedRidgeCVEncoder(bands=[list(range(12)), list(range(12, 27))], alphas=(1.0, 100.0, 1e4),
                                   n_folds=3, device="cpu")
    else:
        est = MLPEncoder(hidden=32, epochs=15, device="cpu", seed=0)
    est.fit(X, Y)
    x = X[:40]
    p0 = est.predict(x)
    moved_all = np.abs(est.predict(_noisy(x, 1e-4)) - p0).max()
    moved_ok = np.abs(est.predict(_noisy(x, 1e-4, cols=range(P_OK))) - p0).max()
    moved_dead = np.abs(est.predict(_noisy(x, 1e-4, cols=range(P_OK, P_OK + 3))) - p0).max()
    assert moved_dead == 0.0
    assert moved_all <= 1.5 * moved_ok + 1e-6
    assert moved_ok < 0.05 * np.abs(p0).max()  # and that is small: noise of 1e-4 on features of std ~0.05
    # far outside the fitted range, but finite: a finite answer (the dead columns cannot blow it up)
    assert np.isfinite(est.predict(np.full((1, X.shape[1]), 10.0, np.float32))).all()


def test_overflowing_predictions_raise_instead_of_returning_inf():
    from brainstore.fitting import NonFiniteOutputError, RidgeCVEncoder

    X, Y, _ = _table()
    est = RidgeCVEncoder(alphas=(10.0,), n_folds=3, device="cpu").fit(X, Y)
    with pytest.raises(NonFiniteOutputError) as e:
        est.predict(np.vstack([X[:2], np.full((1, X.shape[1]), 3e38, np.float32)]))
    assert e.value.rows == [2] and e.value.field == "X"
    with pytest.raises(ValueError, match="NaN or inf"):
        est.predict(np.full((1, X.shape[1]), np.inf, np.float32))


def test_adaptor_voxel_scales_follow_the_rule():
    from brainstore.fitting.decoding._adaptor import _voxel_stats

    X, _, _ = _table()
    st = _voxel_stats(X)
    assert np.allclose(st["std"][:P_OK], X.std(0, dtype=np.float64)[:P_OK], rtol=1e-6)
    assert st["std"][P_OK:] == [1.0, 1.0, 1.0]


# -------------------------------------------------------------------------------------------- registry
def _save_old_style(tmp_path, scale: np.ndarray):
    """A ridge model saved as brainstore's format 1 did (model.json without the new format_version)."""
    from brainstore.fitting import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    p = len(scale)
    tensors = {"lh.coef_": np.ones((p, 3), np.float32), "lh.x_scale_": scale.astype(np.float32),
               "lh.x_mean_": np.zeros(p, np.float32)}
    rec = reg.save("old/subj01", tensors, {"kind": "ridge"})
    meta_file = rec.path / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 1
    meta_file.write_text(json.dumps(meta))
    return reg


def test_an_old_model_with_a_near_constant_scale_is_refused_with_the_fix(tmp_path):
    from brainstore.fitting import RegistryError

    scale = np.full(10, 0.04)
    scale[[3, 7]] = 7.8e-34
    reg = _save_old_style(tmp_path, scale)
    with pytest.raises(RegistryError, match=r"column\(s\) 3, 7 .*refit it"):
        reg.load_arrays("old/subj01")


def test_an_old_model_with_healthy_scales_still_loads(tmp_path):
    scale = np.linspace(0.01, 0.06, 10)
    scale[4] = 1.0  # a constant column, as the old rule saved it
    tensors, rec = _save_old_style(tmp_path, scale).load_arrays("old/subj01")
    assert rec.meta["format_version"] == 1 and np.allclose(tensors["lh.x_scale_"], scale)


# ------------------------------------------------------------------- a registered model on real MiniLM
@pytest.mark.slow
def test_registered_encoder_on_minilm_captions_is_stable_under_noise(serving_models):
    """The case that was found: the "both" model reads the real MiniLM caption table (whose dead dimensions
    sit at 1e-33); a stored embedding plus noise of 1e-4 must move predictions like healthy noise does."""
    from brainstore.features import FeatureStore
    from brainstore.fitting import EncodingModel, ModelRegistry

    reg = ModelRegistry(serving_models["registry"], create=False)
    em = EncodingModel.load(reg, "both", "subj01")
    fs = FeatureStore(serving_models["store"], create=False)
    tables = list(em.record.meta["features"])
    ids = sorted(fs.ids(serving_models["txt"]))[:12]
    emb = {t: fs.load(t, ids) for t in tables}
    txt = emb[serving_models["txt"]]
    sd = txt.std(0)
    assert (sd < 1e-20).sum() >= 2, "the MiniLM table no longer has dead dimensions: this test lost its case"

    def predict(table_arrays):  # embeddings given per table, as a server receives them
        return em.predict(["<request>"] * len(ids), em.designs(rows=table_arrays))

    p0 = predict(emb)
    noisy = {**emb, serving_models["txt"]: _noisy(txt, 1e-4)}
    healthy_only = {**emb, serving_models["txt"]: np.where(sd > 1e-3 * np.median(sd), noisy[serving_models["txt"]], txt)}
    p1, p2 = predict(noisy), predict(healthy_only)
    for h in p0:
        moved, moved_ok = np.abs(p1[h] - p0[h]).max(), np.abs(p2[h] - p0[h]).max()
        assert moved <= 1.5 * moved_ok + 1e-6, (h, moved, moved_ok)
        assert moved < 0.1 * np.abs(p0[h]).max()


def test_adaptor_decoding_under_small_noise_stays_small():
    """A dead voxel (constant over training) used to be divided by a std floored at 1e-6, so noise of 1e-4
    there moved the decoded embedding like 100 standard deviations of a live voxel."""
    import torch

    from brainstore.fitting import AdaptorParams
    from brainstore.fitting.decoding._adaptor import _voxel_stats
    from brainstore.fitting.decoding._adaptor_model import AdaptorModel, _build_net

    rng = np.random.default_rng(3)
    R = rng.normal(0, 1, (200, 30)).astype(np.float32)
    R[:, 7] = 0.0  # a dead voxel
    torch.manual_seed(0)
    net = _build_net({"subj01": 30}, {"emb": 16}, AdaptorParams(latent=32, n_blocks=1))
    vox = {"subj01": {"lh": np.arange(20), "rh": np.arange(10)}}
    model = AdaptorModel(net, vox, {"subj01": _voxel_stats(R)}, ["emb"])
    x = R[:20]
    p0 = model.decode("subj01", x)["emb"]
    dead = np.zeros_like(x)
    dead[:, 7] = 1e-4
    live = np.zeros_like(x)
    live[:, 8] = 1e-4
    moved_dead = np.abs(model.decode("subj01", x + dead)["emb"] - p0).max()
    moved_live = np.abs(model.decode("subj01", x + live)["emb"] - p0).max()
    assert moved_dead <= 10 * moved_live + 1e-6, (moved_dead, moved_live)

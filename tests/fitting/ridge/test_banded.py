"""Tests of banded ridge (one regularization per feature space per target).

References: a brute-force loop over folds, candidates and alphas with
scikit-learn's ``StandardScaler`` + ``Ridge`` on features whose bands are
scaled by ``sqrt(gamma)``; ``himalaya.ridge.BandedRidgeCV`` on the same folds
and candidates; :func:`solve_ridge_cv` on a single band; and
``himalaya.scoring`` for the split scores.

himalaya undoes its band scaling by dividing by ``sqrt(gamma)``, so a gamma of
exactly 0 turns its features into NaN: the himalaya comparisons floor the
candidate weights at 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from brainstore.fitting.ridge._banded import banded_candidates, solve_banded_ridge_cv
from brainstore.fitting.ridge._ridge import BandedRidgeCVEncoder
from brainstore.fitting.ridge._solvers import kfold_indices, solve_ridge_cv
from brainstore.scoring import correlation_split, pearson_r, r2_split

ALPHAS = np.logspace(-1, 4, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: one thread avoids seconds of thread synchronization on a busy machine."""
    from threadpoolctl import threadpool_limits

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n_threads)


def make_banded(n: int = 200, sizes=(10, 60), t: int = 24, seed: int = 0,
                weights=(1.0, 0.15), n_test: int = 0):
    """Bands of uneven scale; band 1 has few strong weights, band 2 many weak ones.

    ``weights`` scales each band's true weights (0: a pure-noise band).
    Targets go from high to low SNR. Returns X, Y (and Xt, Yt with ``n_test``).
    """
    rng = np.random.default_rng(seed)
    m = n + n_test
    X = rng.standard_normal((m, sum(sizes))) * rng.uniform(0.5, 3, sum(sizes))
    X += rng.uniform(-5, 5, sum(sizes))
    W = np.vstack([w * rng.standard_normal((s, t)) for s, w in zip(sizes, weights)])
    Z = (X - X[:n].mean(0)) / X[:n].std(0)
    noise = rng.standard_normal((m, t)) * np.logspace(0, 1.3, t)
    Y = Z @ W + noise + rng.uniform(-3, 3, t)
    return (X[:n], Y[:n]) if not n_test else (X[:n], Y[:n], X[n:], Y[n:])


def _floored(cands: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    c = np.maximum(cands, floor)
    return c / c.sum(1, keepdims=True)


def _scaled(X, bands, gamma):
    """Columns of band b times sqrt(gamma_b) (bands as sizes)."""
    return X * np.repeat(np.sqrt(gamma), bands)


def _manual_scores(X, Y, folds, bands, cands, alphas, score):
    """(n_candidates, n_alphas, n_targets) mean validation scores, sklearn loop."""
    out = np.zeros((len(cands), len(alphas), Y.shape[1]))
    for train, val in folds:
        scaler = StandardScaler().fit(X[train])
        Ztr, Zval = scaler.transform(X[train]), scaler.transform(X[val])
        for c, gamma in enumerate(cands):
            for a, alpha in enumerate(alphas):
                model = Ridge(alpha=alpha).fit(_scaled(Ztr, bands, gamma), Y[train])
                P = model.predict(_scaled(Zval, bands, gamma))
                for j in range(Y.shape[1]):
                    y = Y[val, j]
                    s = (pearsonr(P[:, j], y)[0] if score == "pearson" else
                         1 - ((y - P[:, j]) ** 2).sum() / ((y - y.mean()) ** 2).sum())
                    out[c, a, j] += s / len(folds)
    return out


@pytest.mark.parametrize("bands", [[5, 7], [40, 110]], ids=["tall", "wide"])  # wide: 90 train rows, 150 features
@pytest.mark.parametrize("score", ["pearson", "r2"])
def test_cv_scores_and_refit_match_sklearn_loop(score, bands):
    """Per-fold standardization, band scaling, selection and refit, float64."""
    X, Y, Xt, _ = make_banded(n=120, sizes=bands, t=6, n_test=30)
    cands = np.array([[0.5, 0.5], [1.0, 0.0], [0.1, 0.9], [0.9, 0.1]])
    alphas = ALPHAS[::2]
    folds = list(KFold(4).split(X))
    ref = _manual_scores(X, Y, folds, bands, cands, alphas, score)
    res = solve_banded_ridge_cv(X, Y, bands, alphas, cands, folds=folds, score=score,
                                dtype=torch.float64)
    np.testing.assert_allclose(res.candidate_scores.numpy(), ref.max(1), atol=1e-9)
    flat = ref.reshape(-1, Y.shape[1])  # candidate-major: ties to the earlier candidate
    best = flat.argmax(0)
    np.testing.assert_array_equal(res.alphas.numpy(), alphas[best % len(alphas)])
    np.testing.assert_array_equal(res.gammas.numpy(), cands[best // len(alphas)])
    np.testing.assert_allclose(res.best_scores.numpy(), flat.max(0), atol=1e-9)
    torch.testing.assert_close(res.band_alphas, res.alphas[:, None] / res.gammas,
                               rtol=0, atol=0)
    # refit on all samples with each target's pair, predicting held-out rows
    scaler = StandardScaler().fit(X)
    for j in range(Y.shape[1]):
        gamma = res.gammas[j].numpy()
        model = Ridge(alpha=res.alphas[j].item()).fit(
            _scaled(scaler.transform(X), bands, gamma), Y[:, j])
        ref_pred = model.predict(_scaled(scaler.transform(Xt), bands, gamma))
        np.testing.assert_allclose(res.predict(Xt)[:, j].numpy(), ref_pred, rtol=1e-7,
                                   atol=1e-9 * np.abs(ref_pred).max())


def test_picks_the_informative_band():
    """Band 2 is pure noise: high-SNR targets weight band 1; never worse than one band."""
    bands = [10, 60]
    X, Y = make_banded(n=300, sizes=bands, t=20, weights=(1.0, 0.0))
    res = solve_banded_ridge_cv(X, Y, bands, ALPHAS)
    assert res.gammas[:8, 0].mean() >= 0.9  # the eight highest-SNR targets
    assert (res.gammas[:8, 0] >= 0.8).all()
    for k, cols in enumerate((slice(0, 10), slice(10, 70))):
        single = solve_ridge_cv(X[:, cols], Y, ALPHAS)
        assert (res.best_scores >= single.best_scores - 1e-5).all()
        # the corner is a candidate: its score is that single-band ridge's
        corner = int(np.flatnonzero(res.candidates[:, k] == 1)[0])
        torch.testing.assert_close(res.candidate_scores[corner], single.best_scores,
                                   rtol=0, atol=1e-5)


def test_beats_single_and_joint_ridge_when_bands_need_different_alphas():
    """Few strong features + many weak ones: banded ridge gains over every plain ridge."""
    bands = [10, 60]
    X, Y = make_banded(n=300, sizes=bands, t=20, weights=(1.0, 0.15), seed=1)
    res = solve_banded_ridge_cv(X, Y, bands, ALPHAS)
    joint = solve_ridge_cv(X, Y, ALPHAS)
    singles = [solve_ridge_cv(X[:, s], Y, ALPHAS) for s in (slice(0, 10), slice(10, 70))]
    for ref in [joint, *singles]:
        assert (res.best_scores >= ref.best_scores - 1e-5).all()
    assert (res.best_scores - joint.best_scores).mean() > 0.005
    # band 2 regularized much more than band 1 for most targets
    ratio = res.band_alphas[:, 1] / res.band_alphas[:, 0]
    assert (ratio > 1).float().mean() >= 0.8


def test_corner_equals_ridge_on_one_band():
    """gamma = (1, 0): exactly ridge on band 1, band 2 gets exactly zero weight."""
    X, Y, Xt, _ = make_banded(n=150, sizes=(8, 12), t=10, n_test=20)
    res = solve_banded_ridge_cv(X, Y, [8, 12], ALPHAS, [[1.0, 0.0]], dtype=torch.float64)
    ref = solve_ridge_cv(X[:, :8], Y, ALPHAS, dtype=torch.float64)
    torch.testing.assert_close(res.alphas, ref.alphas, rtol=0, atol=0)
    torch.testing.assert_close(res.best_scores, ref.best_scores, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.coef[:8], ref.coef, rtol=1e-8, atol=1e-10)
    assert (res.coef[8:] == 0).all()
    assert torch.isinf(res.band_alphas[:, 1]).all()
    torch.testing.assert_close(res.predict(Xt), ref.predict(Xt[:, :8]), rtol=1e-8, atol=1e-8)
    # interleaved index-array bands: same model
    perm = np.random.default_rng(0).permutation(20)
    inv = np.argsort(perm)
    res_p = solve_banded_ridge_cv(X[:, perm], Y, [inv[:8], inv[8:]], ALPHAS,
                                  [[1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(res_p.predict(Xt[:, perm]), ref.predict(Xt[:, :8]),
                               rtol=1e-8, atol=1e-8)
    assert isinstance(res_p.bands[0], np.ndarray) and res.bands == [(0, 8), (8, 20)]


@pytest.mark.parametrize("score", ["pearson", "r2"])
def test_agrees_with_himalaya_banded_ridge_cv(score):
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV
    from himalaya.scoring import correlation_score, r2_score

    set_backend("numpy")
    bands = [20, 30]
    X, Y, Xt, _ = make_banded(n=400, sizes=bands, t=60, seed=2, n_test=50)
    X, Y, Xt = (a.astype(np.float32) for a in (X, Y, Xt))
    cands = _floored(banded_candidates(2))
    folds = kfold_indices(len(X), 5)
    score_func = correlation_score if score == "pearson" else r2_score
    ref = BandedRidgeCV(groups=np.repeat([0, 1], bands), fit_intercept=True, cv=folds,
                        solver_params=dict(n_iter=cands, alphas=ALPHAS, score_func=score_func,
                                           progress_bar=False)).fit(X, Y)
    res = solve_banded_ridge_cv(X, Y, bands, ALPHAS, cands, folds=folds, score=score,
                                standardize=False)
    np.testing.assert_allclose(res.candidate_scores.numpy(), ref.cv_scores_, atol=1e-4)
    ref_gammas = np.exp(ref.deltas_).T * ref.best_alphas_[:, None]
    same = (np.isclose(res.alphas.numpy(), ref.best_alphas_, rtol=1e-4) &
            np.isclose(res.gammas.numpy(), ref_gammas, rtol=1e-3).all(1))
    assert same.mean() >= 0.98
    np.testing.assert_allclose(res.band_alphas.numpy()[same],
                               np.exp(-ref.deltas_).T[same], rtol=1e-3)
    pred, ref_pred = res.predict(Xt).numpy(), ref.predict(Xt)
    scale = np.abs(ref_pred).max(0)
    assert (np.abs(pred - ref_pred).max(0)[same] <= 1e-3 * scale[same]).all()


def test_target_batch_size_invariance():
    X, Y = make_banded(n=150, sizes=(6, 9), t=13)
    full = solve_banded_ridge_cv(X, Y, [6, 9], ALPHAS, 5)
    for bs in (1, 4, 13, 50):
        part = solve_banded_ridge_cv(X, Y, [6, 9], ALPHAS, 5, target_batch_size=bs)
        torch.testing.assert_close(part.alphas, full.alphas, rtol=0, atol=0)
        torch.testing.assert_close(part.gammas, full.gammas, rtol=0, atol=0)
        torch.testing.assert_close(part.candidate_scores, full.candidate_scores,
                                   rtol=1e-4, atol=1e-5)
        scale = full.coef.abs().amax(0)
        torch.testing.assert_close(part.coef / scale, full.coef / scale, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(part.intercept, full.intercept)


def test_constant_targets_and_three_bands():
    X, Y = make_banded(n=120, sizes=(4, 5, 6), t=5, weights=(1.0, 0.3, 0.0))
    Y[:, 0] = 0.1  # constant target (its float32 mean is not exactly 0.1)
    res = solve_banded_ridge_cv(X, Y, [4, 5, 6], ALPHAS)
    assert res.candidates.shape == (13, 3)
    assert (res.coef[:, 0] == 0).all() and (res.candidate_scores[:, 0] == 0).all()
    torch.testing.assert_close(res.intercept[0], torch.tensor(0.1))
    torch.testing.assert_close(res.gammas[0], torch.full((3,), 1 / 3))  # ties: first
    for arr in (res.coef, res.best_scores, res.candidate_scores):
        assert torch.isfinite(arr).all()


def test_banded_candidates():
    c = banded_candidates(2)
    assert c.shape == (5, 2)
    np.testing.assert_allclose(c[:3], [[0.5, 0.5], [1, 0], [0, 1]])
    np.testing.assert_allclose(c.sum(1), 1)
    np.testing.assert_allclose(np.log10(c[3:, 0] / c[3:, 1]), [-2, 2])
    c7 = banded_candidates(2, 7)
    np.testing.assert_allclose(np.log10(c7[3:, 0] / c7[3:, 1]), [-2, -1, 1, 2])
    c9 = banded_candidates(2, 9)
    np.testing.assert_allclose(np.log10(c9[3:, 0] / c9[3:, 1]), [-2, -4 / 3, -2 / 3, 2 / 3, 4 / 3, 2])
    assert banded_candidates(2, 3).shape == (3, 2) and banded_candidates(2, 4).shape == (4, 2)
    c3 = banded_candidates(3)
    assert c3.shape == (13, 3) and (c3 >= 0).all()
    np.testing.assert_allclose(c3.sum(1), 1)
    np.testing.assert_array_equal(c3, banded_candidates(3))  # deterministic
    np.testing.assert_array_equal(banded_candidates(1, 5), [[1.0]])
    with pytest.raises(ValueError, match="n_bands \\+ 1"):
        banded_candidates(3, 3)


def test_input_validation():
    X, Y = make_banded(n=60, sizes=(4, 6), t=2)
    cases = [
        (dict(bands=[4, 5]), "sum to the number of features"),
        (dict(bands=[4, 0, 6]), "must be positive"),
        (dict(bands=[np.arange(5), np.arange(4, 10)]), "overlap: columns \\[4\\]"),
        (dict(bands=[np.arange(4), np.arange(5, 10)]), "in no band"),
        (dict(bands=[slice(0, 4), np.arange(4, 11)]), "out of range"),
        (dict(bands=[np.ones(10, bool)]), "integer column indices"),
        (dict(bands=[]), "non-empty"),
        (dict(gammas=[[0.5, 0.5, 0.0]]), "shape \\(n_candidates, n_bands=2\\)"),
        (dict(gammas=[[1.5, -0.5]]), "non-negative"),
        (dict(gammas=[[1.0, 1.0]]), "sum to 1"),
        (dict(gammas=1), "n_bands \\+ 1"),
        (dict(score="mse"), "score"),
    ]
    for kw, msg in cases:
        args = dict(bands=[4, 6], gammas=None) | kw
        with pytest.raises(ValueError, match=msg):
            solve_banded_ridge_cv(X, Y, args.pop("bands"), ALPHAS, args.pop("gammas"), **args)
    # slices and a numpy array of sizes are accepted
    a = solve_banded_ridge_cv(X, Y, [slice(0, 4), slice(4, 10)], ALPHAS)
    b = solve_banded_ridge_cv(X, Y, np.array([4, 6]), ALPHAS)
    torch.testing.assert_close(a.coef, b.coef)


def test_predict_split_and_split_scores_match_himalaya():
    from himalaya.backend import set_backend
    from himalaya.scoring import correlation_score_split, r2_score_split

    set_backend("numpy")
    X, Y, Xt, Yt = make_banded(n=200, sizes=(6, 9), t=8, n_test=60)
    res = solve_banded_ridge_cv(X, Y, [6, 9], ALPHAS, dtype=torch.float64)
    split = res.predict_split(Xt).numpy()
    assert split.shape == (2, 60, 8)
    np.testing.assert_allclose(split.sum(0) + res.intercept.numpy(), res.predict(Xt).numpy(),
                               rtol=1e-10, atol=1e-10)
    r = correlation_split(split, Yt)
    np.testing.assert_allclose(r, correlation_score_split(Yt, split), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.sum(0), pearson_r(split.sum(0), Yt), rtol=1e-10, atol=1e-12)
    Yc = Yt - Yt.mean(0)  # himalaya's r2 split expects zero-mean targets
    r2 = r2_split(split, Yt)
    np.testing.assert_allclose(r2, r2_score_split(Yc, split), rtol=1e-10, atol=1e-12)
    P = split.sum(0)
    np.testing.assert_allclose(r2.sum(0), 1 - ((Yc - P) ** 2).sum(0) / (Yc ** 2).sum(0),
                               rtol=1e-10)
    # zero variance (constant target or a summed prediction that cancels): 0
    Yt[:, 0] = 1.0
    split[:, :, 1] = np.array([1.0, -1.0])[:, None] * np.arange(60)
    assert (correlation_split(split, Yt)[:, :2] == 0).all()
    assert (r2_split(split, Yt)[:, 0] == 0).all()
    np.testing.assert_allclose(correlation_split(split[:, :, 3], Yt[:, 3]),
                               correlation_split(split, Yt)[:, 3])
    with pytest.raises(ValueError, match="pred_split has shape"):
        correlation_split(split[0], Yt)


def test_estimator_state_dict_clone_and_split(tmp_path):
    from safetensors.numpy import load_file, save_file

    perm = np.random.default_rng(1).permutation(15)
    X, Y, Xt, Yt = make_banded(n=150, sizes=(6, 9), t=4, n_test=30)
    X, Xt = X[:, perm], Xt[:, perm]
    inv = np.argsort(perm)
    bands = [inv[:6], inv[6:]]
    est = BandedRidgeCVEncoder(bands=bands, alphas=ALPHAS, gammas=5, device="cpu").fit(X, Y)
    direct = solve_banded_ridge_cv(X, Y, bands, ALPHAS, 5)
    np.testing.assert_allclose(est.predict(Xt), direct.predict(Xt).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(est.gamma_, direct.gammas.numpy())
    assert est.candidate_scores_.shape == (5, 4) and est.band_labels_.dtype == np.int64
    np.testing.assert_allclose(est.predict_split(Xt).sum(0) + est.intercept_, est.predict(Xt),
                               rtol=1e-5, atol=1e-5)
    r = [pearsonr(p, y)[0] for p, y in zip(est.predict(Xt).T, Yt.T)]
    assert est.score(Xt, Yt) == pytest.approx(np.mean(r), rel=1e-5)
    state = est.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = BandedRidgeCVEncoder.from_state_dict(load_file(str(tmp_path / "w.safetensors")),
                                                  device="cpu")
    np.testing.assert_array_equal(loaded.predict(Xt), est.predict(Xt))
    np.testing.assert_array_equal(loaded.predict_split(Xt), est.predict_split(Xt))
    cl = clone(est).set_params(gammas=[[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], scoring="r2")
    assert not hasattr(cl, "coef_") and est.get_params()["gammas"] == 5
    cl.fit(X, Y[:, 0])
    assert cl.predict(Xt).shape == (30,) and cl.predict_split(Xt).shape == (2, 30)
    with pytest.raises(ValueError, match="scoring"):
        clone(est).set_params(scoring="mse").fit(X, Y)

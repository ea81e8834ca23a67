"""Tests of the cross-validated ridge solver against independent references.

References: scikit-learn ``Pipeline(StandardScaler(), Ridge(alpha))`` refit
per alpha, manual ``KFold`` loops scored with scipy / numpy, and
``himalaya.ridge.RidgeCV`` on the same folds.

Tolerances: float64 results must match to 1e-6 relative (the algebra is
exact); float32 to 1e-4 of each target's prediction / weight scale (single
precision rounding in the target-sized products; observed ~3e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from brainstore.fitting.ridge._ridge import RidgeCVEncoder
from brainstore.fitting.ridge._solvers import (RIDGE_SOLVERS, kfold_indices,
                                               solve_ridge_cv)

SOLVERS = sorted(RIDGE_SOLVERS)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float64, torch.float32]
ALPHAS = np.logspace(-1, 4, 8)


def _rtol(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-4


def make_data(n: int = 160, p: int = 12, t: int = 10, seed: int = 0,
              drift: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank + noise features with uneven means/scales, targets of varied SNR.

    ``drift`` adds a slow trend to the features so that fold statistics
    differ from global ones (leakage would change the CV scores).
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 4))
    X = latent @ rng.standard_normal((4, p)) + rng.standard_normal((n, p))
    X = X * rng.uniform(0.3, 5, p) + rng.uniform(-10, 10, p)
    if drift:
        X += np.linspace(0, 3, n)[:, None] * rng.uniform(0, 2, p)
    W = rng.standard_normal((p, t))
    noise = rng.standard_normal((n, t)) * np.logspace(0, 2.5, t)
    return X, X @ W + noise + rng.uniform(-5, 5, t)


def _sk_predict_by_alpha(X, Y, Xtest, alphas, **pipe_kw):
    """Refit sklearn pipelines grouped by the selected alpha of each target."""
    out = np.empty((len(Xtest), Y.shape[1]))
    for a in np.unique(alphas):
        cols = np.flatnonzero(alphas == a)
        model = _pipe(a, **pipe_kw).fit(X, Y[:, cols])
        out[:, cols] = model.predict(Xtest).reshape(len(Xtest), -1)
    return out


def _pipe(alpha, standardize=True, fit_intercept=True):
    steps = [StandardScaler(with_mean=fit_intercept)] if standardize else []
    return make_pipeline(*steps, Ridge(alpha=alpha, fit_intercept=fit_intercept))


def _manual_cv_scores(X, Y, folds, alphas, score, **pipe_kw):
    """(n_alphas, n_targets) mean validation score from a plain sklearn loop."""
    scores = np.zeros((len(alphas), Y.shape[1]))
    for train, val in folds:
        for i, a in enumerate(alphas):
            P = _pipe(a, **pipe_kw).fit(X[train], Y[train]).predict(X[val])
            P = P.reshape(len(val), -1)
            for j in range(Y.shape[1]):
                y = Y[val, j]
                if score == "pearson":
                    s = pearsonr(P[:, j], y)[0]
                else:
                    s = 1 - ((y - P[:, j]) ** 2).sum() / ((y - y.mean()) ** 2).sum()
                scores[i, j] += s / len(folds)
    return scores


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_predictions_match_sklearn_ridge(solver, device, dtype):
    X, Y = make_data()
    Xtest, _ = make_data(n=40, seed=1)
    res = solve_ridge_cv(X, Y, ALPHAS, 5, solver=solver, device=device, dtype=dtype)
    alphas = res.alphas.double().numpy()
    assert set(np.round(alphas, 6)) <= set(np.round(ALPHAS, 6))
    ref = _sk_predict_by_alpha(X, Y, Xtest, alphas.astype(ALPHAS.dtype))
    pred = res.predict(Xtest).double().numpy()
    tol = _rtol(dtype) * np.abs(ref).max(0)
    assert np.all(np.abs(pred - ref) <= tol + _rtol(dtype) * np.abs(ref))
    # weights too, in the standardized space of the pipeline
    for j in range(Y.shape[1]):
        ridge = _pipe(alphas[j]).fit(X, Y[:, j])[-1]
        atol = _rtol(dtype) * np.abs(ridge.coef_).max()
        np.testing.assert_allclose(res.coef[:, j].double().numpy(), ridge.coef_,
                                   rtol=_rtol(dtype), atol=atol)
        np.testing.assert_allclose(res.intercept[j].item(), ridge.intercept_,
                                   rtol=_rtol(dtype))


@pytest.mark.parametrize("p", [12, 200], ids=["tall", "wide"])  # wide: fewer train samples than features
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score", ["pearson", "r2"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_cv_scores_match_manual_kfold(solver, score, device, dtype, p):
    """Per-fold standardization with train statistics only (no leakage)."""
    X, Y = make_data(n=120, p=p, t=6)
    folds = list(KFold(4).split(X))
    ref = _manual_cv_scores(X, Y, folds, ALPHAS, score)
    res = solve_ridge_cv(X, Y, ALPHAS, 4, solver=solver, score=score,
                         device=device, dtype=dtype)
    atol = 1e-9 if dtype == torch.float64 else 1e-5
    if solver == "svd" and dtype == torch.float32 and p > 120:
        atol = 1e-4  # the svd solver decomposes in float32: a wide, near-interpolating fit loses a digit
    np.testing.assert_allclose(res.cv_scores.double().numpy(), ref, atol=atol)
    if dtype == torch.float64:
        np.testing.assert_array_equal(res.alphas.numpy(), ALPHAS[ref.argmax(0)])
        np.testing.assert_allclose(res.best_scores.numpy(), ref.max(0), atol=atol)


@pytest.mark.parametrize("score", ["pearson", "r2"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_alphas_agree_with_himalaya(solver, score):
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import correlation_score, r2_score

    set_backend("numpy")
    X, Y = make_data(n=300, p=20, t=40, seed=3, drift=False)
    folds = kfold_indices(len(X), 5)
    score_func = correlation_score if score == "pearson" else r2_score
    ref = RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=folds,
                  solver_params=dict(score_func=score_func)).fit(X, Y)
    res = solve_ridge_cv(X, Y, ALPHAS, folds=folds, solver=solver, score=score,
                         standardize=False, dtype=torch.float64)
    agreement = np.mean(np.isclose(res.alphas.numpy(), ref.best_alphas_))
    assert agreement >= 0.99
    np.testing.assert_allclose(res.coef.numpy(), ref.coef_, rtol=1e-6,
                               atol=1e-8 * np.abs(ref.coef_).max())
    # float32 selection agrees up to near-ties
    res32 = solve_ridge_cv(X, Y, ALPHAS, folds=folds, solver=solver, score=score,
                           standardize=False)
    assert np.mean(np.isclose(res32.alphas.numpy(), ref.best_alphas_)) >= 0.95


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_target_batch_size_invariance(solver, device, dtype):
    """Same alphas; other outputs equal up to rounding of BLAS blockings."""
    X, Y = make_data(t=13)
    kw = dict(solver=solver, device=device, dtype=dtype)
    full = solve_ridge_cv(X, Y, ALPHAS, **kw)
    tol = (dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64
           else dict(rtol=1e-4, atol=1e-5))
    for bs in (1, 4, 13, 50):
        part = solve_ridge_cv(X, Y, ALPHAS, target_batch_size=bs, **kw)
        torch.testing.assert_close(part.alphas, full.alphas, rtol=0, atol=0)
        torch.testing.assert_close(part.cv_scores, full.cv_scores, **tol)
        torch.testing.assert_close(part.coef / full.coef.abs().amax(0),
                                   full.coef / full.coef.abs().amax(0), **tol)
        torch.testing.assert_close(part.intercept, full.intercept)


@pytest.mark.parametrize("score", ["pearson", "r2"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_constant_targets_and_features(solver, score):
    X, Y = make_data(t=5)
    X[:, 3] = 7.5  # constant feature
    Y[:, 0] = 4.2  # constant target
    Y[:, 1] = 0.0  # zero target
    Y[:32, 2] = 1.0  # constant on the first validation fold only
    res = solve_ridge_cv(X, Y, ALPHAS, solver=solver, score=score)
    for arr in (res.coef, res.intercept, res.cv_scores, res.best_scores):
        assert torch.isfinite(arr).all()
    assert (res.cv_scores[:, :2] == 0).all()
    assert (res.coef[:, :2] == 0).all()
    torch.testing.assert_close(res.intercept[:2], torch.tensor([4.2, 0.0]))
    assert (res.coef[3] == 0).all() and res.x_scale[3] == 1
    assert torch.isfinite(res.predict(X)).all()


def test_constant_fold_scores_zero():
    """A target constant in one validation fold scores 0 there, not NaN."""
    X, Y = make_data(n=100, t=2)
    Y[:20, 1] = 3.0
    folds = list(KFold(5).split(X))
    res = solve_ridge_cv(X, Y, ALPHAS, folds=folds, dtype=torch.float64)
    ref = np.c_[_manual_cv_scores(X, Y[:, :1], folds, ALPHAS, "pearson"),
                _manual_cv_scores(X, Y[:, 1:], folds[1:], ALPHAS, "pearson") * 4 / 5]
    np.testing.assert_allclose(res.cv_scores.numpy(), ref, atol=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
def test_no_intercept_no_standardize_and_wide_X(solver):
    X, Y = make_data(n=60, p=80, t=4)  # more features than samples
    X[:, 5] = 2.0  # constant: dropped when centering, kept as a regressor otherwise
    Xtest, _ = make_data(n=10, p=80, seed=2)
    for kw in (dict(fit_intercept=False), dict(standardize=False), {}):
        res = solve_ridge_cv(X, Y, ALPHAS, solver=solver, dtype=torch.float64, **kw)
        ref = _sk_predict_by_alpha(X, Y, Xtest, res.alphas.numpy(), **kw)
        np.testing.assert_allclose(res.predict(Xtest).numpy(), ref, rtol=1e-6,
                                   atol=1e-6 * np.abs(ref).max())
        folds = list(KFold(5).split(X))
        cv = _manual_cv_scores(X, Y, folds, ALPHAS, "pearson", **kw)
        np.testing.assert_allclose(res.cv_scores.numpy(), cv, atol=1e-8)


def test_folds_explicit_shuffled_and_non_complement():
    X, Y = make_data(n=100, t=3)
    ours = kfold_indices(100, 4, random_state=0)
    for (a, b), (c, d) in zip(ours, KFold(4, shuffle=True, random_state=0).split(X)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    # train sets that are not the complement of val (a gap), vals not tiling
    folds = [(np.r_[0:40], np.r_[50:70]), (np.r_[30:100], np.r_[0:20])]
    res = solve_ridge_cv(X, Y, ALPHAS, folds=folds, dtype=torch.float64)
    ref = _manual_cv_scores(X, Y, folds, ALPHAS, "pearson")
    np.testing.assert_allclose(res.cv_scores.numpy(), ref, atol=1e-9)
    res_sh = solve_ridge_cv(X, Y, ALPHAS, 4, random_state=0, dtype=torch.float64)
    ref_sh = _manual_cv_scores(X, Y, ours, ALPHAS, "pearson")
    np.testing.assert_allclose(res_sh.cv_scores.numpy(), ref_sh, atol=1e-9)


def test_input_validation():
    X, Y = make_data(n=50, t=2)
    with pytest.raises(ValueError, match="same number of rows"):
        solve_ridge_cv(X, Y[:-1], ALPHAS)
    Yn = Y.copy()
    Yn[3, 1] = np.nan
    with pytest.raises(ValueError, match="Y contains NaN"):
        solve_ridge_cv(X, Yn, ALPHAS)
    Xn = X.copy()
    Xn[0, 0] = np.inf
    with pytest.raises(ValueError, match="X contains NaN"):
        solve_ridge_cv(Xn, Y, ALPHAS)
    with pytest.raises(ValueError, match="alphas must be positive"):
        solve_ridge_cv(X, Y, [1.0, 0.0])
    with pytest.raises(ValueError, match="score"):
        solve_ridge_cv(X, Y, ALPHAS, score="mse")
    with pytest.raises(ValueError, match="solver"):
        solve_ridge_cv(X, Y, ALPHAS, solver="qr")
    with pytest.raises(ValueError, match="n_folds"):
        solve_ridge_cv(X, Y, ALPHAS, n_folds=1)
    with pytest.raises(ValueError, match="empty val"):
        solve_ridge_cv(X, Y, ALPHAS, folds=[(np.arange(50), np.array([], int))])
    with pytest.raises(ValueError, match="must be 2-D"):
        solve_ridge_cv(X, Y[:, 0], ALPHAS)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            solve_ridge_cv(X, Y, ALPHAS, device="cuda")
    X0, Y0 = X.copy(), Y.copy()
    solve_ridge_cv(X, Y, ALPHAS, dtype=torch.float64)
    Yt = torch.from_numpy(Y.astype(np.float32))
    solve_ridge_cv(torch.from_numpy(X), Yt, ALPHAS)
    np.testing.assert_array_equal(X, X0)  # inputs are never modified
    np.testing.assert_array_equal(Y, Y0)
    np.testing.assert_array_equal(Yt.numpy(), Y0.astype(np.float32))


def test_estimator_pipeline_clone_and_state_dict(tmp_path):
    from safetensors.numpy import load_file, save_file

    X, Y = make_data(t=4)
    Xtest, Ytest = make_data(n=40, t=4, seed=5)
    est = RidgeCVEncoder(alphas=ALPHAS, device="cpu")
    pipe = Pipeline([("id", FunctionTransformer()), ("ridge", est)]).fit(X, Y)
    direct = solve_ridge_cv(X, Y, ALPHAS)
    np.testing.assert_allclose(pipe.predict(Xtest), direct.predict(Xtest).numpy(),
                               rtol=1e-6)
    fitted = pipe.named_steps["ridge"]
    assert fitted.coef_.shape == (12, 4) and fitted.cv_scores_.shape == (8, 4)
    np.testing.assert_array_equal(fitted.alpha_, direct.alphas.numpy())
    r = [pearsonr(p, y)[0] for p, y in zip(pipe.predict(Xtest).T, Ytest.T)]
    assert pipe.score(Xtest, Ytest) == pytest.approx(np.mean(r), rel=1e-5)
    # get_params / set_params / clone round trip
    cl = clone(est).set_params(n_folds=3, scoring="r2")
    assert cl.get_params()["n_folds"] == 3 and est.get_params()["n_folds"] == 5
    assert not hasattr(cl, "coef_")
    params = est.get_params()
    assert set(params) >= {"alphas", "n_folds", "scoring", "device", "dtype",
                           "target_batch_size", "standardize", "fit_intercept"}
    # 1-D y
    est1 = clone(est).fit(X, Y[:, 0])
    assert est1.predict(Xtest).shape == (40,)
    # safetensors round trip, no pickle
    save_file(fitted.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = RidgeCVEncoder.from_state_dict(load_file(str(tmp_path / "w.safetensors")),
                                            device="cpu")
    np.testing.assert_array_equal(loaded.predict(Xtest), fitted.predict(Xtest))
    np.testing.assert_array_equal(loaded.alpha_, fitted.alpha_)


@pytest.mark.parametrize("score", ["r2", "pearson"])
@pytest.mark.parametrize("n,p", [(160, 12), (40, 90)])  # more samples than features, and fewer (decoders)
def test_shared_alpha_matches_a_sklearn_loop(score, n, p):
    """``alpha_per_target=False``: the alpha with the best mean CV score over targets, refit on all samples."""
    X, Y = make_data(n=n, p=p, t=10, seed=4)
    Y[:, 3] = 2.5  # a constant target does not vote and gets zero weight
    folds = list(KFold(5).split(X))
    mean_cv = []
    for a in ALPHAS:
        per_fold = []
        for tr, va in folds:
            pred = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(X[tr], Y[tr]).predict(X[va])
            yv = Y[va]
            if score == "r2":
                ss = ((yv - yv.mean(0)) ** 2).sum(0)
                s = 1 - ((yv - pred) ** 2).sum(0) / np.where(ss > 0, ss, 1)
            else:
                s = np.array([pearsonr(pred[:, j], yv[:, j])[0] if yv[:, j].std() > 0 else 0.0
                              for j in range(yv.shape[1])])
            per_fold.append(np.where(yv.std(0) > 0, s, 0.0))
        mean_cv.append(np.mean(per_fold, 0))
    mean_cv = np.array(mean_cv)
    keep = np.arange(10) != 3
    best = ALPHAS[int(np.argmax(mean_cv[:, keep].mean(1)))]
    ref = make_pipeline(StandardScaler(), Ridge(alpha=best)).fit(X, Y)
    for batch in (None, 3):  # one batch, and a first pass over several
        res = solve_ridge_cv(X, Y, ALPHAS, folds=folds, score=score, dtype=torch.float64,
                             alpha_per_target=False, target_batch_size=batch)
        np.testing.assert_allclose(res.alphas.numpy(), best)
        np.testing.assert_allclose(res.cv_scores.numpy()[:, keep], mean_cv[:, keep], rtol=1e-6, atol=1e-9)
        pred = res.predict(X).numpy()
        np.testing.assert_allclose(pred[:, keep], ref.predict(X)[:, keep], rtol=1e-6, atol=1e-6)
        assert (res.coef.numpy()[:, 3] == 0).all()

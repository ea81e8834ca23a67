"""Benchmark brainstore's cross-validated ridge and banded ridge against himalaya and scikit-learn.

All solvers see identical synthetic data (low-rank + noise features, targets
``X W + noise`` with SNR varying over targets), the same alpha grid
(``np.logspace(0, 6, 10)``), the same 5 contiguous folds and per-target alphas.

Progress goes to stderr; the last line of stdout is one JSON object.

Usage::

    python benchmarks/ridge.py                 # n=4000, p=512, t=10000
    python benchmarks/ridge.py --quick         # n=1000, p=128, t=1000; banded n=1000, 64+48, t=1000
    python benchmarks/ridge.py --n 2000 --t 2000
    python benchmarks/ridge.py --quick --gpu-dry-run   # no CUDA: run the GPU section's code on CPU

Banded ridge (``--skip-banded`` to skip): ``solve_banded_ridge_cv`` against himalaya's
``BandedRidgeCV`` (torch backend) at n=4,000, two bands of 256 and 192 features, t=5,000, with the
9 candidates of ``banded_candidates(2, 9)`` given to both as the same array (zero weights
floored at 1e-6: himalaya divides by sqrt(gamma) to undo its scaling, so an exact 0 makes its
features NaN), the same alphas and folds, Pearson scoring, ours with ``standardize=False`` (himalaya
only centers). himalaya takes several minutes there on 2 cores (7.7 min measured under a load of ~4);
``banded_cost_per_candidate_vs_ridge`` is our time per candidate over one plain ridge CV on the
concatenated features, timed in the same run.

With CUDA, a GPU section follows at Algonauts subject-1 scale (n=9,841, p=1,024, t=39,548):
``gpu_ours_s`` / ``gpu_himalaya_s`` from host arrays, ``*_resident_s`` with X, Y already on the GPU,
and banded ridge with two bands of 512 features (``gpu_banded_*``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from brainstore.fitting import banded_candidates, kfold_indices, solve_banded_ridge_cv, solve_ridge_cv

ALPHAS = np.logspace(0, 6, 10)
N_FOLDS = 5
GPU_SIZE = dict(n=9841, p=1024, t=39548)  # Algonauts 2023 subject 1
BANDED_SIZE = dict(n=4000, bands=(256, 192), t=5000)  # himalaya: several minutes on 2 cores
BANDED_QUICK_SIZE = dict(n=1000, bands=(64, 48), t=1000)
GPU_BANDED_SIZE = dict(n=9841, bands=(512, 512), t=39548)
#: himalaya divides by sqrt(gamma) to undo its band scaling: an exact 0 gives NaN features.
GAMMA_FLOOR = 1e-6


def log(msg: str) -> None:
    print(f"[ridge-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_data(n: int, p: int, t: int, n_test: int = 0, rank: int = 32,
              seed: int = 0) -> tuple[np.ndarray, ...]:
    """Standardized low-rank + noise features and targets of varied SNR (float32).

    Returns X (n, p), Y (n, t) and, when ``n_test``, held-out Xt, Yt.
    """
    rng = np.random.default_rng(seed)
    m = n + n_test
    mix = rng.standard_normal((rank, p)).astype(np.float32)
    X = rng.standard_normal((m, rank), dtype=np.float32) @ mix
    X += rng.standard_normal((m, p), dtype=np.float32) * 2.0
    X = (X - X[:n].mean(0)) / X[:n].std(0)
    W = rng.standard_normal((p, t), dtype=np.float32) / np.sqrt(p)
    signal = X @ W
    # SNR from ~10 down to ~0.01; some targets are pure noise
    noise_scale = np.logspace(-0.5, 1, t).astype(np.float32)
    noise_scale[rng.random(t) < 0.1] = np.inf
    Y = np.where(np.isinf(noise_scale), 0, signal) + rng.standard_normal(
        (m, t), dtype=np.float32) * np.where(np.isinf(noise_scale), 1, noise_scale)
    Y = Y.astype(np.float32)
    return X[:n], Y[:n], X[n:], Y[n:]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def banded_solver(bands, candidates):
    """``solve_banded_ridge_cv`` with fixed bands and candidates, called like ``solve_ridge_cv``."""
    def solve_banded(X, Y, alphas, **kw):
        return solve_banded_ridge_cv(X, Y, list(bands), alphas, candidates, **kw)
    return solve_banded


#: Band weightings compared (9: the figures in RESULTS.md were measured with 9; the default is 7).
N_CANDIDATES = 9


def himalaya_candidates(n_bands: int) -> np.ndarray:
    """``banded_candidates(n_bands, N_CANDIDATES)`` with zeros floored at ``GAMMA_FLOOR``, rows renormalized."""
    c = np.maximum(banded_candidates(n_bands, N_CANDIDATES), GAMMA_FLOOR)
    return c / c.sum(1, keepdims=True)


def run_ours(X, Y, folds, device="cpu", repeats=2, solver=solve_ridge_cv, **kw):
    """Warm-up on a few targets, then best of ``repeats`` full runs."""
    solver(X, Y[:, :256], ALPHAS, folds=folds, device=device, **kw)
    times, res = [], None
    for i in range(repeats):
        dt, res = timed(solver, X, Y, ALPHAS, folds=folds, device=device, **kw)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(dt)
        log(f"ours ({solver.__name__}, {device}, {kw}) run {i + 1}: {dt:.2f} s")
    return min(times), times, res


def run_himalaya(X, Y, folds, backend: str, banded=None):
    """himalaya with Pearson scoring on the same folds (one timed run).

    ``banded`` None: ``RidgeCV``, returns (seconds, best alphas). ``banded=(bands, candidates)``:
    ``BandedRidgeCV`` with ``n_iter=candidates``, returns (seconds, best CV score per target).
    """
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV, RidgeCV
    from himalaya.scoring import correlation_score

    be = set_backend(backend, on_error="raise")
    params = dict(score_func=correlation_score, n_targets_batch=None, n_alphas_batch=None)

    def fit(Yt):
        if banded is None:
            model = RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=folds, solver_params=params)
        else:
            bands, cands = banded
            model = BandedRidgeCV(groups=np.repeat(np.arange(len(bands)), bands), fit_intercept=True,
                                  cv=folds, solver_params=dict(params, n_iter=cands, alphas=ALPHAS,
                                                               progress_bar=False))
        model.fit(X, Yt)
        if "cuda" in backend:
            torch.cuda.synchronize()
        return model

    fit(Y[:, :256])  # warm-up
    dt, model = timed(fit, Y)
    if banded is None:
        out = np.asarray(be.to_numpy(model.best_alphas_))
    else:
        out = np.asarray(be.to_numpy(model.cv_scores_)).max(0)
    log(f"himalaya {'BandedRidgeCV' if banded else 'RidgeCV'} {backend}: {dt:.2f} s")
    set_backend("numpy")
    return dt, out


def banded_figures(size: dict, repeats: int, device: str = "cpu", himalaya_backend: str = "torch",
                   prefix: str = "banded") -> dict:
    """Banded ridge, ours and himalaya ``BandedRidgeCV`` side by side (see the module docstring).

    Also times one plain ridge CV on the concatenated features (the per-candidate cost model).
    """
    n, bands, t = size["n"], tuple(size["bands"]), size["t"]
    log(f"{prefix}: n={n} bands={bands} t={t} on {device}")
    X, Y, _, _ = make_data(n, sum(bands), t, seed=2)
    folds = kfold_indices(n, N_FOLDS)
    cands = himalaya_candidates(len(bands))
    ours_s, _, res = run_ours(X, Y, folds, device=device, repeats=repeats,
                              solver=banded_solver(bands, cands), standardize=False)
    ridge_s, _, _ = run_ours(X, Y, folds, device=device, repeats=1, standardize=False)
    h_s, h_best = run_himalaya(X, Y, folds, himalaya_backend, banded=(bands, cands))
    diff = float(np.abs(res.best_scores.double().numpy() - h_best).mean())
    return {f"{prefix}_size": dict(n=n, bands=list(bands), t=t, n_candidates=len(cands)),
            f"{prefix}_ours_s": round(ours_s, 3), f"{prefix}_himalaya_s": round(h_s, 3),
            f"{prefix}_himalaya_backend": himalaya_backend,
            f"{prefix}_speedup_vs_himalaya": round(h_s / ours_s, 2),
            f"{prefix}_score_diff_vs_himalaya": float(f"{diff:.3g}"),
            f"{prefix}_ridge_same_size_s": round(ridge_s, 3),
            f"{prefix}_cost_per_candidate_vs_ridge": round(ours_s / len(cands) / ridge_s, 2)}


def run_sklearn(X, Y):
    """sklearn RidgeCV with efficient leave-one-out and per-target alphas."""
    from sklearn.linear_model import RidgeCV

    dt, _ = timed(RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit, X, Y)
    log(f"sklearn RidgeCV (LOO): {dt:.2f} s")
    return dt


def max_rel_pred_diff(res, X, Y, Xt) -> float:
    """Our held-out predictions vs sklearn Ridge refit at our alphas (float64).

    Relative to the largest |prediction| of each target, max over targets.
    """
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ours = res.predict(Xt).double().numpy()
    alphas = res.alphas.double().numpy()
    ref = np.empty_like(ours)
    X64, Y64, Xt64 = (a.astype(np.float64) for a in (X, Y, Xt))
    for a in np.unique(alphas):
        cols = np.flatnonzero(alphas == a)
        model = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(X64, Y64[:, cols])
        ref[:, cols] = model.predict(Xt64).reshape(len(Xt), -1)
    scale = np.abs(ref).max(0)
    return float((np.abs(ours - ref).max(0) / np.where(scale > 0, scale, 1)).max())


def gpu_section(repeats: int, dry_run: bool = False, banded: bool = True) -> dict:
    """Algonauts subject-1 scale on CUDA, ours and himalaya torch_cuda side by side.

    Two timings each: from host numpy arrays (``gpu_ours_s``, ``gpu_himalaya_s``: the transfer of
    Y, 1.6 GB, is part of the job) and with X and Y already on the GPU (``*_resident_s``);
    ``banded`` adds banded ridge (``gpu_banded_*``, two bands of 512 features). ``dry_run`` runs the same code on CPU at a small size (to check the code path on a machine
    without a GPU); its timings are reported under ``gpu_dry_run`` only, never as GPU figures.
    """
    g = dict(n=600, p=64, t=500) if dry_run else GPU_SIZE
    dev = "cpu" if dry_run else "cuda"
    name = "none (dry run on CPU)" if dry_run else torch.cuda.get_device_name()
    log(f"GPU section: {name} n={g['n']} p={g['p']} t={g['t']}")
    Xg, Yg, _, _ = make_data(g["n"], g["p"], g["t"], seed=1)
    fg = kfold_indices(g["n"], N_FOLDS)
    ours_s, _, _ = run_ours(Xg, Yg, fg, device=dev, repeats=repeats)
    h_s, _ = run_himalaya(Xg, Yg, fg, "torch" if dry_run else "torch_cuda")
    Xd, Yd = torch.as_tensor(Xg, device=dev), torch.as_tensor(Yg, device=dev)
    ours_res_s, _, _ = run_ours(Xd, Yd, fg, device=dev, repeats=repeats)
    h_res_s, h_alphas = run_himalaya(Xd, Yd, fg, "torch" if dry_run else "torch_cuda")
    # himalaya centers (no scaling) per fold: compare alphas under the same standardization
    _, res = timed(solve_ridge_cv, Xd, Yd, ALPHAS, folds=fg, device=dev, standardize=False)
    agreement = round(float(np.mean(np.isclose(res.alphas.double().numpy(), h_alphas))), 4)
    del Xd, Yd
    figs = dict(gpu=name, gpu_size=g, gpu_ours_s=round(ours_s, 3), gpu_himalaya_s=round(h_s, 3),
                gpu_speedup_vs_himalaya=round(h_s / ours_s, 2),
                gpu_ours_resident_s=round(ours_res_s, 3), gpu_himalaya_resident_s=round(h_res_s, 3),
                gpu_alpha_agreement=agreement)
    if banded:
        size = dict(n=600, bands=(40, 24), t=500) if dry_run else GPU_BANDED_SIZE
        figs.update(banded_figures(size, repeats, device=dev, prefix="gpu_banded",
                                   himalaya_backend="torch" if dry_run else "torch_cuda"))
    if dry_run:
        return dict(gpu="not available", gpu_ours_s=None, gpu_himalaya_s=None, gpu_dry_run=figs)
    return figs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--p", type=int, default=512)
    parser.add_argument("--t", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="n=1000, p=128, t=1000")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--skip-banded", action="store_true", help="skip the banded ridge sections")
    parser.add_argument("--gpu-dry-run", action="store_true",
                        help="without CUDA: run the GPU section's code on CPU at a small size (no GPU figures)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.p, args.t = 1000, 128, 1000
    n, p, t = args.n, args.p, args.t
    out: dict = dict(n=n, p=p, t=t, n_folds=N_FOLDS, n_alphas=len(ALPHAS),
                     alphas="logspace(0, 6, 10)", score="pearson", dtype="float32",
                     folds="contiguous KFold(5), same indices for all")

    log(f"data n={n} p={p} t={t}")
    X, Y, Xt, _ = make_data(n, p, t, n_test=500)
    folds = kfold_indices(n, N_FOLDS)

    ours_s, ours_times, res = run_ours(X, Y, folds, repeats=args.repeats)
    out.update(ours_s=round(ours_s, 3), ours_runs_s=[round(x, 3) for x in ours_times])

    h_np, alphas_np = run_himalaya(X, Y, folds, "numpy")
    h_t, alphas_t = run_himalaya(X, Y, folds, "torch")
    out.update(himalaya_numpy_s=round(h_np, 3), himalaya_torch_s=round(h_t, 3),
               himalaya_s=round(min(h_np, h_t), 3),
               speedup_vs_himalaya=round(min(h_np, h_t) / ours_s, 2))

    # identical scoring: himalaya centers (no scaling) per fold and scores Pearson r
    log("ours with standardize=False for the alpha comparison")
    nostd_s, res_nostd = timed(solve_ridge_cv, X, Y, ALPHAS, folds=folds, standardize=False)
    ours_alphas = res_nostd.alphas.double().numpy()

    def agree(a, b) -> float:
        return round(float(np.mean(np.isclose(a, b))), 4)

    out.update(
        alpha_agreement=agree(ours_alphas, alphas_t),
        alpha_agreement_vs_himalaya_numpy=agree(ours_alphas, alphas_np),
        alpha_agreement_default_standardize=agree(res.alphas.double().numpy(), alphas_t),
        alpha_agreement_setup="ours(score='pearson', standardize=False) vs himalaya RidgeCV("
                              "fit_intercept=True, score_func=correlation_score), same folds",
        ours_nostd_s=round(nostd_s, 3))

    log("sklearn Ridge refits at our alphas (held-out predictions)")
    out["max_rel_pred_diff_vs_sklearn"] = float(f"{max_rel_pred_diff(res, X, Y, Xt):.3g}")
    if not args.skip_sklearn:
        out["sklearn_s"] = round(run_sklearn(X, Y), 3)
    del X, Y, Xt, res, res_nostd

    if not args.skip_banded:
        out.update(banded_figures(BANDED_QUICK_SIZE if args.quick else BANDED_SIZE, args.repeats))
    if (torch.cuda.is_available() and not args.skip_gpu) or args.gpu_dry_run:
        out.update(gpu_section(args.repeats, dry_run=not torch.cuda.is_available(),
                               banded=not args.skip_banded))
    else:
        out.update(gpu="not available" if not torch.cuda.is_available() else "skipped",
                   gpu_ours_s=None, gpu_himalaya_s=None)

    out["machine"] = dict(cpu_count=os.cpu_count(), torch=torch.__version__,
                          torch_threads=torch.get_num_threads(),
                          platform=platform.platform(),
                          processor=platform.processor() or platform.machine(),
                          loadavg=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Video fMRI time series: resampling to the TR, z-scoring per clip, FIR delays, folds by run.

References are independent: hand loops over the frames of each TR, the Lanczos kernel written out
from its definition (Huth et al.'s ``lanczosfun``), a reimplementation of the voxelwise tutorials'
``Delayer`` applied per run, sklearn's ``GroupKFold`` idea (no group split) and ``KFold``
boundaries, ``scipy.stats.zscore``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import zscore

from brainstore.datasets._timeseries import frames_of_tr, n_trs, split_tr_id, tr_id
from brainstore.features._timeseries import (delay_rows, lanczos_weights, resample_to_trs,
                                             zscore_columns)
from brainstore.fitting._encoding import group_folds, validation_folds


# ----------------------------------------------------------------------------- references
class TutorialDelayer:
    """The voxelwise tutorials' ``Delayer`` (gallantlab/voxelwise_tutorials, delayer.py), rewritten:
    ``X_delayed[:, i * p:(i + 1) * p]`` = X shifted by ``delays[i]`` samples, zero-filled."""

    def __init__(self, delays):
        self.delays = delays

    def fit_transform(self, X):
        n_samples, n_features = X.shape
        out = np.zeros((n_samples, n_features * len(self.delays)), dtype=X.dtype)
        for idx, delay in enumerate(self.delays):
            beg, end = idx * n_features, (idx + 1) * n_features
            if delay == 0:
                out[:, beg:end] = X
            elif delay > 0:
                out[delay:, beg:end] = X[:-delay]
            else:
                out[:delay, beg:end] = X[-delay:]
        return out


def lanczosfun(cutoff, t, window=3):
    """Huth et al.'s kernel, term by term (scalar)."""
    t = t * cutoff
    if t == 0:
        return 1.0
    if abs(t) > window:
        return 0.0
    return window * math.sin(math.pi * t) * math.sin(math.pi * t / window) / (math.pi ** 2 * t ** 2)


# ----------------------------------------------------------------------------- ids and TR frames
def test_tr_ids_round_trip_and_frames_of_tr():
    assert tr_id("run-01", 7) == "run-01/tr0007"
    assert split_tr_id("a/b/tr0012") == ("a/b", 12)
    with pytest.raises(ValueError, match="not a TR stimulus id"):
        split_tr_id("nsd-00012")
    # 8 fps, TR 2 s: TR k holds frames 16k .. 16k + 15
    assert [frames_of_tr(k, 8, 2.0) for k in range(3)] == [(0, 16), (16, 32), (32, 48)]
    # 15 fps, TR 0.7 s: 10.5 frames per TR; frame j (time j/15) belongs to TR floor(j / 10.5)
    got = [frames_of_tr(k, 15, 0.7) for k in range(4)]
    for k, (a, b) in enumerate(got):
        assert all(math.floor(j / 15 / 0.7 + 1e-9) == k for j in range(a, b))
    assert [a for a, _ in got[1:]] == [b for _, b in got[:-1]]  # the TRs tile the frames
    assert n_trs(100, 8, 2.0) == 6 and n_trs(96, 8, 2.0) == 6 and n_trs(15, 8, 2.0) == 0


# ----------------------------------------------------------------------------- resampling
def test_average_resampling_is_the_mean_of_each_trs_frames():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(83, 5))
    fps, tr = 10, 0.8  # 8 frames per TR
    n = n_trs(len(X), fps, tr)
    got = resample_to_trs(X, fps, tr, n, "average")
    ref = np.stack([X[[j for j in range(len(X)) if math.floor(j / fps / tr + 1e-9) == k]].mean(0) for k in range(n)])
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_lanczos_weights_follow_the_kernel_definition():
    times = np.arange(40) / 8.0
    new = (np.arange(4) + 0.5) * 2.0
    W = lanczos_weights(times, new, cutoff=0.5, window=3)
    raw = np.array([[lanczosfun(0.5, tn - tf) for tf in times] for tn in new])
    np.testing.assert_allclose(W, raw / raw.sum(1, keepdims=True), rtol=1e-12, atol=1e-15)


def test_lanczos_keeps_slow_signals_and_removes_fast_ones():
    fps, tr = 8, 2.0
    t = np.arange(int(60 * fps)) / fps
    slow = np.sin(2 * np.pi * t / 40.0)  # period 20 TRs: passes
    fast = np.sin(2 * np.pi * t * 2.0)  # 2 Hz, far above the TR's Nyquist rate (0.25 Hz): removed
    n = n_trs(len(t), fps, tr)
    centres = (np.arange(n) + 0.5) * tr
    got = resample_to_trs(np.c_[slow, fast], fps, tr, n, "lanczos")
    inner = slice(3, n - 3)  # away from the clip's edges (the window is 3 TRs wide each side)
    np.testing.assert_allclose(got[inner, 0], np.sin(2 * np.pi * centres / 40.0)[inner], atol=0.03)
    assert np.abs(got[inner, 1]).max() < 0.05


def test_zscore_columns_per_clip_matches_scipy():
    X = np.random.default_rng(1).normal(3, 2, size=(30, 4))
    X[:, 2] = 5.0  # constant -> 0
    got = zscore_columns(X)
    np.testing.assert_allclose(got[:, [0, 1, 3]], zscore(X[:, [0, 1, 3]], ddof=0), rtol=1e-12)
    assert (got[:, 2] == 0).all()


# ----------------------------------------------------------------------------- delays
@pytest.mark.parametrize("delays", [[1, 2, 3, 4], [0, 2], [-1, 0, 1]])
def test_delays_equal_the_tutorial_delayer_per_run(delays):
    rng = np.random.default_rng(2)
    runs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (12, 9, 15)]
    got = np.concatenate([delay_rows(X, delays) for X in runs])
    ref = np.concatenate([TutorialDelayer(delays).fit_transform(X) for X in runs])
    np.testing.assert_array_equal(got, ref)
    # applied to the concatenation instead, the delays would carry a run's end into the next run
    assert not np.array_equal(TutorialDelayer(delays).fit_transform(np.concatenate(runs)), ref)


# ----------------------------------------------------------------------------- folds by run
def test_group_folds_keep_runs_whole_and_follow_kfold():
    from sklearn.model_selection import KFold

    # equal runs aligned with KFold's boundaries: exactly KFold's folds
    g = np.repeat(["r1", "r2", "r3", "r4", "r5"], 20)
    for (tr_a, va_a), (tr_b, va_b) in zip(group_folds(g, 5), KFold(5).split(g)):
        np.testing.assert_array_equal(va_a, va_b)
        np.testing.assert_array_equal(tr_a, tr_b)
    # uneven runs: every fold holds whole runs, the folds tile the rows in order
    sizes = [7, 30, 12, 5, 22, 9, 15]
    g = np.concatenate([[f"run{i}"] * n for i, n in enumerate(sizes)])
    folds = group_folds(g, 4)
    assert np.array_equal(np.concatenate([va for _, va in folds]), np.arange(len(g)))
    for tr, va in folds:
        assert not set(g[tr]) & set(g[va])  # no run on both sides of a boundary
        assert len(np.setdiff1d(np.arange(len(g)), va)) == len(tr)
    _, n_fit, inner = validation_folds(len(g), 4, g)
    assert n_fit == folds[-1][1][0] and len(inner) == 3
    assert all(va.max() < n_fit and not set(g[tr]) & set(g[va]) for tr, va in inner)


def test_group_folds_refuse_too_few_runs_and_scattered_runs():
    with pytest.raises(ValueError, match="3 runs .* cannot make 5 folds"):
        group_folds(np.repeat(["a", "b", "c"], 10), 5)
    with pytest.raises(ValueError, match="run 'a' are not adjacent"):
        group_folds(np.array(["a"] * 5 + ["b"] * 5 + ["a"] * 5 + ["c"] * 5), 3)

"""Feature time series of video fMRI: resampling to the TR, z-scoring per clip, FIR delays.

References are independent: hand loops over the frames of each TR, the Lanczos kernel written out
from its definition (Huth et al.'s ``lanczosfun``), a reimplementation of the voxelwise tutorials'
``Delayer`` applied per run (both in ``tests/_references.py``), ``scipy.stats.zscore``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import zscore

from brainstore.datasets import n_trs
from brainstore.features._timeseries import (delay_rows, lanczos_weights, resample_to_trs,
                                             zscore_columns)
from tests._references import TutorialDelayer, lanczosfun


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

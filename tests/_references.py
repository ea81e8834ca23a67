"""Independent reference implementations that tests of several rooms compare with.

``TutorialDelayer``: the voxelwise tutorials' FIR delayer, rewritten; ``lanczosfun``: Huth et al.'s
Lanczos kernel, term by term.
"""

from __future__ import annotations

import math

import numpy as np


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

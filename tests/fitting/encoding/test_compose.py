"""Derived models against hand-computed references: per-ROI composition and weighted ensembles
(``brainstore.fitting.encoding._compose``)."""

import numpy as np
import pytest

from brainstore.fitting.encoding._compose import compose, normalized_weights


def test_per_roi_composition_by_hand():
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    b = -a
    c = a * 10
    choice = np.array([2, 0, 1, 0])
    want = np.array([[10, 2, -3, 4], [50, 6, -7, 8]], np.float32)
    np.testing.assert_array_equal(compose("per-roi", [a, b, c], choice=choice), want)
    # block size never changes the result, and writing into a given array works
    out = np.zeros_like(a)
    compose("per-roi", [a, b, c], choice=choice, out=out, block=1)
    np.testing.assert_array_equal(out, want)


def test_weighted_ensemble_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[5.0, 6.0], [7.0, 0.0]], np.float32)
    w = normalized_weights([1, 3], 2)
    np.testing.assert_allclose(w, [0.25, 0.75])
    want = np.array([[0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * 6], [0.25 * 3 + 0.75 * 7, 0.25 * 4]], np.float32)
    np.testing.assert_allclose(compose("ensemble", [a, b], weights=w, block=1), want, rtol=1e-6)
    np.testing.assert_allclose(normalized_weights(None, 4), [0.25] * 4)
    with pytest.raises(ValueError, match="non-negative"):
        normalized_weights([1, -1], 2)


def test_compose_refuses_mismatched_members():
    with pytest.raises(ValueError, match="shapes"):
        compose("ensemble", [np.zeros((2, 3)), np.zeros((2, 4))], weights=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="outside"):
        compose("per-roi", [np.zeros((2, 3))], choice=np.array([0, 1, 0]))

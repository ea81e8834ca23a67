"""The base fit's folds (``brainstore.fitting.encoding._encoding``); folds by run checked against sklearn's
``GroupKFold`` idea (no group split) and ``KFold`` boundaries."""

import numpy as np
import pytest

from brainstore.fitting import validation_folds
from brainstore.fitting.encoding import group_folds


def test_validation_folds_hold_out_the_last_contiguous_fold():
    folds, n_fit, inner = validation_folds(23, 4)
    assert n_fit == 18 and list(folds[-1][1]) == list(range(18, 23))  # KFold sizes 6, 6, 6, 5
    assert [list(va) for _, va in inner] == [list(va) for _, va in folds[:-1]]
    for tr, va in inner:  # the inner folds never touch the validation rows
        assert tr.max() < n_fit and va.max() < n_fit and not set(tr) & set(va)


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

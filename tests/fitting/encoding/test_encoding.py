"""The base fit's folds (``brainstore.fitting.encoding._encoding``)."""

from brainstore.fitting import validation_folds


def test_validation_folds_hold_out_the_last_contiguous_fold():
    folds, n_fit, inner = validation_folds(23, 4)
    assert n_fit == 18 and list(folds[-1][1]) == list(range(18, 23))  # KFold sizes 6, 6, 6, 5
    assert [list(va) for _, va in inner] == [list(va) for _, va in folds[:-1]]
    for tr, va in inner:  # the inner folds never touch the validation rows
        assert tr.max() < n_fit and va.max() < n_fit and not set(tr) & set(va)

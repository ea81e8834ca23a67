"""Trials of a described dataset (``described/_trials.py``): single-trial rows keep a stimulus's repeats
in one fold."""

from __future__ import annotations

import numpy as np

from brainstore.datasets import DescribedDataset
from tests.datasets.described.helpers import GOOD, _csv, _write


def test_single_trial_rows_keep_repeats_in_one_fold(tmp_path):
    """The documented bound: with contiguous K folds, at most K - 1 stimuli have repeats in two folds."""
    from brainstore.fitting import validation_folds

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in rng.integers(0, 40, size=150)]  # 150 trials of 40 stimuli, repeats anywhere
    trials = {"stimulus_id": ids, "split": ["train"] * 150, "session": ["1"] * 150}
    root = tmp_path / "d"
    root.mkdir()
    _csv(root / "trials.csv", **trials)
    _csv(root / "stimuli.csv", stimulus_id=sorted(set(ids)), path=["x.png"] * len(set(ids)))
    np.save(root / "lh.npy", np.zeros((150, 2), np.float32))
    np.save(root / "rh.npy", np.zeros((150, 2), np.float32))
    ds = DescribedDataset(_write(root / "d.yaml", GOOD + "train_trials: single\n"))
    rows = ds.stimuli(splits=("train",)).column("stimulus_id").to_pylist()
    assert sorted(rows) == sorted(ids)
    for k in (3, 5, 7):
        folds, _, _ = validation_folds(len(rows), k)
        fold_of = np.empty(len(rows), int)
        for f, (_, va) in enumerate(folds):
            fold_of[va] = f
        split_ids = [i for i in set(rows) if len({fold_of[j] for j, r in enumerate(rows) if r == i}) > 1]
        assert len(split_ids) <= k - 1

"""Opening a dataset by path (``datasets/_open.py``): the reader picked by what the path is."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, DatasetError, open_dataset, open_stimuli
from tests.datasets.described.helpers import N_TRIALS, _surface_dataset


def test_open_dataset_picks_the_reader(small_dataset, tmp_path):
    assert isinstance(open_dataset(small_dataset), AlgonautsDataset)
    ds = open_dataset(small_dataset)
    assert open_dataset(ds) is ds
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DatasetError, match="is a file but not a dataset description"):
        open_dataset(tmp_path / "x.txt")
    desc = _surface_dataset(tmp_path / "d", np.zeros((N_TRIALS, 2), np.float32), np.zeros((N_TRIALS, 2), np.float32))
    assert open_stimuli(desc).num_rows == 7
    with pytest.raises(DatasetError, match=r"holds no subjNN/ folder.*; or pass its description file \(dataset\.yaml\), "
                                           r"or name it brainstore-dataset\.yaml"):
        open_dataset(desc.parent)

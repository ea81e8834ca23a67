"""Errors of a described dataset name the file and the description field (``described/_fields.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.datasets import DatasetError, DescribedDataset, open_dataset
from tests.datasets.described.helpers import N_TRIALS, _surface_dataset


def test_bad_data_errors_name_file_and_field(tmp_path):
    root = tmp_path / "d"
    ds = DescribedDataset(_surface_dataset(root, np.zeros((N_TRIALS, 3), np.float32), np.zeros((N_TRIALS, 2), np.float32),
                                           "rois: {floc-faces: {lh: nope.npy, rh: nope.npy, mapping: {1: FFA}}}\n"))
    with pytest.raises(DatasetError, match=r"nope\.npy \(.*dataset\.yaml line 6: rois\.floc-faces\.lh \(for subj01\)\) "
                                           r"does not exist"):
        ds.roi_labels("subj01", "lh", "floc-faces")
    with pytest.raises(DatasetError, match=r"subject 'subj09' is not in .*dataset\.yaml \(subjects: subj01\)"):
        ds.responses("subj09", "lh")
    (root / "lh.npy").unlink()
    with pytest.raises(DatasetError, match=r"response file .*lh\.npy \(.*dataset\.yaml line 4: responses\.lh \(for "
                                           r"subj01\)\) does not exist"):
        DescribedDataset(root / "dataset.yaml").responses("subj01", "lh")
    with pytest.raises(DatasetError, match=r"dataset .*missing\.yaml does not exist"):
        open_dataset(tmp_path / "missing.yaml")

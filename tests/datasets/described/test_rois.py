"""ROIs of a described dataset (``described/_rois.py``): .annot files name their labels."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.datasets import DatasetError, DescribedDataset
from tests.datasets.described.helpers import _csv, _write


def test_annot_names_its_labels(tmp_path):
    import nibabel as nib

    root = tmp_path / "d"
    root.mkdir()
    annot = np.array([0, 1, 1, 2, 2, 0, -1])
    ctab = np.array([[25, 5, 25, 0, 0], [100, 0, 0, 0, 0], [0, 100, 0, 0, 0]], dtype=np.int32)
    nib.freesurfer.write_annot(str(root / "lh.annot"), annot, ctab, [b"unknown", b"V1", b"V2"], fill_ctab=True)
    nib.freesurfer.write_annot(str(root / "rh.annot"), annot[:5], ctab, [b"unknown", b"V1", b"V2"], fill_ctab=True)
    np.save(root / "lh.npy", np.zeros((3, 7), np.float32))
    np.save(root / "rh.npy", np.zeros((3, 5), np.float32))
    _csv(root / "trials.csv", stimulus_id=["a1", "a2", "b1"], split=["train", "train", "test"])
    _csv(root / "stimuli.csv", stimulus_id=["a1", "a2", "b1"], path=["x.png"] * 3)
    ds = DescribedDataset(_write(root / "d.yaml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses: {lh: lh.npy, rh: rh.npy}
        rois: {early: {lh: lh.annot, rh: rh.annot}}
        subjects: [s1]
        """))
    labels, mapping = ds.roi_labels("s1", "lh", "early")
    assert mapping == {2: "V1", 3: "V2"} and labels.tolist() == [0, 2, 2, 3, 3, 0, 0]
    assert list(ds.regions("s1", "lh")) == ["early", "V1", "V2"]
    text = (root / "d.yaml").read_text().replace("rh: rh.annot}", "rh: rh.annot, mapping: {1: V1}}")
    ds = DescribedDataset(_write(root / "d.yaml", text))
    with pytest.raises(DatasetError, match=r"d\.yaml line 4: rois\.early\.mapping \(for s1\): the label files name "
                                           r"their ROIs themselves"):
        ds.roi_labels("s1", "lh", "early")

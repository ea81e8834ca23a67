"""Stimuli of a described dataset (``described/_stimuli.py``): images of a brick as array references."""

from __future__ import annotations

import numpy as np

from brainstore.datasets import DescribedDataset, array_ref
from tests.datasets.described.helpers import _csv, _write


def test_image_brick_stimuli_are_array_refs(tmp_path):
    import h5py

    root = tmp_path / "d"
    root.mkdir()
    with h5py.File(root / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=np.zeros((10, 4, 4, 3), np.uint8))
    np.save(root / "lh.npy", np.zeros((4, 3), np.float32))
    np.save(root / "rh.npy", np.zeros((4, 2), np.float32))
    _csv(root / "trials.csv", stimulus_id=["nsd-00003", "nsd-00007", "cat", "nsd-00003"],
         split=["train", "train", "test", "train"], brick_index=[None, None, 9, None])
    ds = DescribedDataset(_write(root / "d.yaml", """\
        stimuli: {array: nsd_stimuli.hdf5, key: imgBrick}
        trials: trials.csv
        responses: {lh: lh.npy, rh: rh.npy}
        subjects: [subj01]
        """))
    rows = ds.stimuli().to_pylist()
    brick = root / "nsd_stimuli.hdf5"
    assert [(r["stimulus_id"], r["path"], r["nsd_id"]) for r in rows] == [
        ("nsd-00003", array_ref(brick, "imgBrick", 3), 3), ("nsd-00007", array_ref(brick, "imgBrick", 7), 7),
        ("cat", array_ref(brick, "imgBrick", 9), None)]
    assert ds.validate() == []
    _csv(root / "trials.csv", stimulus_id=["nsd-00003", "nsd-00012"], split=["train", "test"])
    np.save(root / "lh.npy", np.zeros((2, 3), np.float32))
    np.save(root / "rh.npy", np.zeros((2, 2), np.float32))
    assert any("brick index 12 is past the 10 images" in p for p in DescribedDataset(root / "d.yaml").validate())

"""The digests of a fit's dataset inputs (``registry/_digests.py``): what they cover, and what they leave out."""

from __future__ import annotations

import numpy as np

from brainstore.datasets import open_dataset
from brainstore.fitting.registry import dataset_digest, stimuli_digest


def test_digests_follow_the_responses_and_ids_not_the_folder(small_dataset, dataset_copy):
    orig, copy = open_dataset(small_dataset), open_dataset(dataset_copy)
    d, s = dataset_digest(orig, ["subj01"]), stimuli_digest(orig, ["subj01"])
    assert len(d) == len(s) == 64 and d != s
    # a copy elsewhere: the same content, the same digests (paths are taken inside the dataset's folder)
    assert (dataset_digest(copy, ["subj01"]), stimuli_digest(copy, ["subj01"])) == (d, s)
    assert dataset_digest(orig, ["subj02"]) != d and dataset_digest(orig, ["subj02", "subj01"]) == \
        dataset_digest(orig, ["subj01", "subj02"])
    assert dataset_digest(orig, ["subj01"], ["lh"]) != d  # the hemispheres fitted count
    # one response value changed: the dataset digest changes, the stimulus table's does not
    f = dataset_copy / "subj01" / "training_split" / "training_fmri" / "rh_training_fmri.npy"
    a = np.load(f)
    a[7, 3] += 1.0
    np.save(f, a)
    changed = open_dataset(dataset_copy)
    assert dataset_digest(changed, ["subj01"]) != d and stimuli_digest(changed, ["subj01"]) == s
    assert dataset_digest(changed, ["subj02"]) == dataset_digest(orig, ["subj02"])

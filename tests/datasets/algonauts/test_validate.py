"""Validation of an Algonauts folder (``datasets/algonauts/_validate.py``): one test per problem."""

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, DatasetValidationError


def _problems(root):
    return AlgonautsDataset(root).validate()


def test_missing_folder_is_named(dataset_copy):
    import shutil

    shutil.rmtree(dataset_copy / "subj02" / "test_split" / "test_images")
    probs = _problems(dataset_copy)
    assert any("missing folder" in p and "subj02/test_split/test_images" in p for p in probs)


def test_missing_fmri_file(dataset_copy):
    (dataset_copy / "subj01" / "training_split" / "training_fmri" / "rh_training_fmri.npy").unlink()
    probs = _problems(dataset_copy)
    assert any("missing response file" in p and "rh_training_fmri.npy" in p for p in probs)


def test_row_count_mismatch(dataset_copy):
    (dataset_copy / "subj01" / "training_split" / "training_images" / "train-0003_nsd-00000.png").write_bytes(
        (next((dataset_copy / "subj01" / "training_split" / "training_images").iterdir())).read_bytes()
    )
    probs = _problems(dataset_copy)
    assert any("has 120 rows but subj01 has 121 train images" in p for p in probs)


def test_nan_and_inf_in_responses(dataset_copy):
    f = dataset_copy / "subj02" / "training_split" / "training_fmri" / "lh_training_fmri.npy"
    y = np.load(f)
    y[5, 7] = np.nan
    np.save(f, y)
    probs = _problems(dataset_copy)
    assert any("lh_training_fmri.npy" in p and "NaN first at row 5, vertex 7" in p for p in probs)
    y[5, 7] = np.inf
    np.save(f, y)
    assert any("inf first at row 5" in p for p in _problems(dataset_copy))


def test_roi_mask_length_mismatch(dataset_copy):
    f = dataset_copy / "subj01" / "roi_masks" / "lh.floc-words_challenge_space.npy"
    np.save(f, np.load(f)[:-3])
    probs = _problems(dataset_copy)
    assert any("lh.floc-words_challenge_space.npy has length" in p and "one label per vertex" in p for p in probs)


def test_duplicate_stimulus_ids(dataset_copy):
    folder = dataset_copy / "subj01" / "test_split" / "test_images"
    first = sorted(folder.iterdir())[0]
    nsd = first.stem.split("nsd-")[1]
    (folder / f"test-9999_nsd-{nsd}.png").write_bytes(first.read_bytes())
    probs = _problems(dataset_copy)
    assert any(f"duplicate stimulus id nsd-{nsd}" in p for p in probs)


def test_zero_byte_and_unreadable_images(dataset_copy):
    folder = dataset_copy / "subj02" / "training_split" / "training_images"
    files = sorted(folder.iterdir())
    files[0].write_bytes(b"")
    files[1].write_bytes(b"this is not a png")
    probs = _problems(dataset_copy)
    assert any(files[0].name in p and "zero-byte" in p for p in probs)
    assert any(files[1].name in p and "not a readable image" in p for p in probs)
    with pytest.raises(DatasetValidationError, match="problem"):
        AlgonautsDataset(dataset_copy).check()

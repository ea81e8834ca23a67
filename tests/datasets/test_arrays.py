"""Image bricks (``datasets/_arrays.py``): array references read by index in sorted runs, grayscale bricks,
bad references and unusable bricks named with their fix.

The small dataset's PNGs are written into an HDF5 brick and an npy brick (the ``bricks`` fixture, also
used by the manifest's and the extraction's tests)."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, decode_image, image_problem
from brainstore.datasets._arrays import (BrickError, BrickFileError, BrickFormatError, _runs, array_ref, brick_info,
                                         parse_array_ref,
                                         read_array_refs, ref_problem)


@pytest.fixture(scope="module")
def bricks(small_dataset, tmp_path_factory) -> dict:
    """The small dataset's unique images as an HDF5 brick (``imgBrick``) and an npy brick, plus the PNG paths."""
    import h5py

    from brainstore.features import select_stimuli  # (the extraction's tests use this fixture too)

    root = tmp_path_factory.mktemp("bricks")
    stimuli = AlgonautsDataset(small_dataset).stimuli()
    unique = select_stimuli(stimuli, "image")
    pngs = unique.column("path").to_pylist()
    pixels = np.stack([np.asarray(decode_image(p)) for p in pngs])  # the PNG route's decoded pixels
    h5, npy = root / "stimuli.hdf5", root / "stimuli.npy"
    with h5py.File(h5, "w") as f:
        f.create_dataset("imgBrick", data=pixels, chunks=(4, *pixels.shape[1:]))  # chunked, like a real brick
        f.create_dataset("floats", data=pixels.astype(np.float32) / 255)
    np.save(npy, pixels)
    index = {s: i for i, s in enumerate(unique.column("stimulus_id").to_pylist())}  # stimulus id -> brick index
    return {"root": root, "h5": h5, "npy": npy, "pixels": pixels, "stimuli": stimuli, "unique": unique,
            "index": index, "ids": unique.column("stimulus_id").to_pylist()}


def _ref(file, key, i):
    return parse_array_ref(array_ref(file, key, i))


# ----------------------------------------------------------------------------- reading, no Ray
def test_refs_read_the_png_pixels_in_sorted_runs(bricks, monkeypatch):
    import h5py

    n = len(bricks["pixels"])
    order = np.random.default_rng(0).permutation(n)[:40].tolist() + [5, 5]  # shuffled, with a duplicate
    slices = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, k: (slices.append(k), real(self, k))[1])
    for file, key in ((bricks["h5"], "imgBrick"), (bricks["npy"], "")):
        slices.clear()
        refs = [_ref(file, key, i) for i in order]
        got = read_array_refs(refs)
        for i, g in zip(order, got):
            assert g.dtype == np.uint8 and g.flags.c_contiguous
            np.testing.assert_array_equal(g, bricks["pixels"][i])
        if key:  # one slice per run of indices at most MAX_GAP apart, in index order
            assert slices == [slice(a, b) for a, b in _runs(sorted(set(order)), 8)]
    assert _runs([1, 2, 3, 9, 30], 8) == [(1, 10), (30, 31)]
    # decode_image accepts a reference: the brick's pixels as a PIL RGB image
    ref = array_ref(bricks["h5"], "imgBrick", 3)
    png = bricks["unique"]["path"][3].as_py()
    np.testing.assert_array_equal(np.asarray(decode_image(ref)), np.asarray(decode_image(png)))
    assert image_problem(ref) is None and brick_info(str(bricks["h5"]), "imgBrick").n == n


def test_grayscale_brick_equals_a_grayscale_png(tmp_path):
    from PIL import Image

    gray = np.random.default_rng(1).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    Image.fromarray(gray[2]).save(tmp_path / "g.png")
    from_brick = decode_image(array_ref(tmp_path / "gray.npy", "", 2))
    assert from_brick.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(from_brick), np.asarray(decode_image(tmp_path / "g.png")))


def test_bad_references_and_unusable_bricks_say_what_and_how_to_fix(bricks, tmp_path):
    h5, npy = str(bricks["h5"]), str(bricks["npy"])
    n = len(bricks["pixels"])
    assert "out of range" in ref_problem(f"{h5}#imgBrick[{n}]") and f"0..{n - 1}" in ref_problem(f"{h5}#imgBrick[{n}]")
    assert "no dataset 'nope'" in ref_problem(f"{h5}#nope[0]") and "imgBrick" in ref_problem(f"{h5}#nope[0]")
    assert "names no dataset" in ref_problem(f"{h5}#[0]")
    assert "no dataset key" in ref_problem(f"{npy}#k[0]")
    with pytest.raises(BrickFormatError, match="float32.*not N x H x W x 3 uint8"):
        brick_info(h5, "floats")
    with pytest.raises(BrickFileError, match="does not exist"):
        brick_info(str(tmp_path / "gone.hdf5"), "imgBrick")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(BrickFileError, match="not a readable HDF5 file"):
        brick_info(str(tmp_path / "junk.h5"), "x")
    np.save(tmp_path / "chw.npy", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(BrickFormatError, match="transpose"):
        brick_info(str(tmp_path / "chw.npy"))
    # reading never raises: each reference gets its own error
    got = read_array_refs([_ref(h5, "imgBrick", n), _ref(str(tmp_path / "gone.npy"), "", 0),
                           _ref(h5, "imgBrick", 0)])
    assert isinstance(got[0], BrickError) and isinstance(got[1], BrickFileError) and isinstance(got[2], np.ndarray)

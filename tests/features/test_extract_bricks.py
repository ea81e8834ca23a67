"""Stimuli from a pixel array: HDF5 / npy image bricks named by array references in ``path``.

The small dataset's PNGs are written into an HDF5 brick and an npy brick (the ``bricks`` fixture of
``tests/datasets/test_arrays.py``, which tests the bricks themselves); extraction from array
references must give the PNG route's embeddings (same pixels, same preprocessing), bad references
are bad stimuli named by their reference, an unusable brick is one error before any Ray work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from brainstore.datasets import BrickError, BrickFileError, array_ref, decode_image
from brainstore.features import FeatureStore, extract, select_stimuli
from tests.datasets.test_arrays import bricks  # noqa: F401 (the fixture: the small dataset's images as bricks)

TINY_CLIP_SPEC = "clip:arch=brainstore-tiny-clip,pretrained=none"
MOTION_SPEC = "motion-energy"


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    from brainstore.features.extractors.testing import register_tiny_models

    register_tiny_models()


def _with_refs(stimuli: pa.Table, index: dict, file: Path, key: str, keep_files=()) -> pa.Table:
    """``stimuli`` with each image's path replaced by its reference into the brick (but the ``keep_files`` ids)."""
    paths = [p if s in keep_files or s not in index else array_ref(file, key, index[s])
             for s, p in zip(stimuli.column("stimulus_id").to_pylist(), stimuli.column("path").to_pylist())]
    return stimuli.set_column(stimuli.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))


def test_every_image_extractor_prepares_a_reference_like_its_png(bricks, tmp_path):
    """The CPU stage itself (no Ray), on a batch mixing PNG files and references to the same images."""
    from brainstore.features import get_extractor
    from brainstore.features.extractors.testing import make_tiny_hf_models
    from brainstore.features._stages import _prepare_batch

    vit = make_tiny_hf_models(tmp_path / "hf")["vit"]
    pngs = bricks["unique"].column("path").to_pylist()[:6]
    refs = [array_ref(bricks["h5"], "imgBrick", i) for i in range(3)]
    refs += [array_ref(bricks["npy"], "", i) for i in range(3, 6)]
    mixed = [refs[0], pngs[1], refs[2], refs[3], pngs[4], refs[5]]

    def batch(items):
        n = len(items)
        return {"stimulus_id": np.array([f"s{i}" for i in range(n)], dtype=object),
                "item": np.array(items, dtype=object), "path": np.array(items, dtype=object), "dataset": np.array(["d"] * n, dtype=object),
                "split": np.array(["train"] * n, dtype=object)}

    for spec in (TINY_CLIP_SPEC, "sam:variant=tiny,pretrained=none", f"hf:model={vit}", MOTION_SPEC):
        ext = get_extractor(spec)
        want, got, only_refs = (_prepare_batch(batch(x), ext, "image") for x in (pngs, mixed, refs))
        for out in (got, only_refs):
            assert list(out["error"]) == [""] * 6, (spec, list(out["error"]))
            assert list(out["shape"]) == list(want["shape"]) and list(out["dtype"]) == list(want["dtype"])
            assert list(out["data"]) == list(want["data"]), spec  # byte for byte


# ----------------------------------------------------------------------------- extraction
def _embeddings(store, rep, ids):
    return FeatureStore(store).load(rep.feature, ids)


@pytest.mark.slow
def test_clip_from_hdf5_and_npy_bricks_equals_the_png_route(small_dataset, bricks, tmp_path, ray_local):
    ids = bricks["ids"]
    png = extract(small_dataset, TINY_CLIP_SPEC, tmp_path / "png", batch_size=32, progress=False)
    assert png.written == len(ids) and not png.failed
    ref = _embeddings(tmp_path / "png", png, ids)
    # a mixed manifest: a third of the images as PNG files, a third as HDF5 references, a third as npy ones
    uniq = bricks["unique"].select(["stimulus_id", "path"])
    h5 = _with_refs(uniq, bricks["index"], bricks["h5"], "imgBrick", keep_files=set(ids[::3]) | set(ids[1::3]))
    mixed = _with_refs(h5, bricks["index"], bricks["npy"], "", keep_files=set(ids[::3]) | set(ids[2::3]))
    paths = mixed.column("path").to_pylist()
    assert all(p.endswith(".png") for p in paths[::3]) and all("stimuli.npy#[" in p for p in paths[1::3])
    assert all("stimuli.hdf5#imgBrick[" in p for p in paths[2::3])
    man = tmp_path / "mixed.parquet"
    pq.write_table(mixed.append_column("modality", pa.array(["image"] * mixed.num_rows)), man)
    rep = extract(man, TINY_CLIP_SPEC, tmp_path / "bricks", batch_size=32, progress=False)
    assert rep.written == len(ids) and not rep.failed and rep.feature == png.feature
    np.testing.assert_allclose(_embeddings(tmp_path / "bricks", rep, ids), ref, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_motion_energy_from_a_brick_equals_the_png_route(small_dataset, bricks, tmp_path, ray_local):
    ids = bricks["ids"][:48]
    uniq = bricks["unique"].slice(0, 48).select(["stimulus_id", "path", "dataset", "split"])
    uniq = uniq.append_column("modality", pa.array(["image"] * 48))
    png = extract(uniq, MOTION_SPEC, tmp_path / "png", batch_size=16, progress=False)
    assert png.written == 48 and not png.failed
    h5_table = _with_refs(uniq, bricks["index"], bricks["h5"], "imgBrick")
    rep = extract(h5_table, MOTION_SPEC, tmp_path / "h5", batch_size=16, progress=False)
    assert rep.written == 48 and not rep.failed
    np.testing.assert_allclose(_embeddings(tmp_path / "h5", rep, ids), _embeddings(tmp_path / "png", png, ids),
                               rtol=0, atol=1e-5)


@pytest.mark.slow
def test_bad_references_are_bad_stimuli_never_written(bricks, tmp_path, ray_local):
    n = len(bricks["pixels"])
    table = _with_refs(bricks["stimuli"], bricks["index"], bricks["h5"], "imgBrick")
    uniq = select_stimuli(table, "image").slice(0, 40)
    paths = uniq.column("path").to_pylist()
    bad = {uniq["stimulus_id"][0].as_py(): f"{bricks['h5']}#imgBrick[{n + 7}]",     # index out of range
           uniq["stimulus_id"][1].as_py(): f"{bricks['h5']}#imgBrick[{n}]",
           uniq["stimulus_id"][2].as_py(): f"{bricks['h5']}#notThere[3]"}         # missing dataset key
    paths = [bad.get(s, p) for s, p in zip(uniq.column("stimulus_id").to_pylist(), paths)]
    rows = pa.table({"stimulus_id": uniq["stimulus_id"], "path": paths, "modality": ["image"] * 40,
                     "split": ["train"] * 40, "dataset": ["bricks"] * 40})
    store = tmp_path / "store"
    rep = extract(rows, TINY_CLIP_SPEC, store, batch_size=16, progress=False)
    assert {f["stimulus_id"]: f["path"] for f in rep.failed} == bad
    for f in rep.failed:
        assert f["path"] in f["error"]  # the error names the reference ...
        assert ("out of range" in f["error"] and "fix the index" in f["error"]) or "no dataset 'notThere'" in f["error"]
    fs = FeatureStore(store)
    assert rep.written == 37 and not set(bad) & set(fs.ids(rep.feature))
    assert {r["stimulus_id"] for r in fs.bad_stimuli(rep.feature)} == set(bad)
    # the good ones equal the brick's images through the extractor in-process
    from brainstore.features import get_extractor

    ext = get_extractor(TINY_CLIP_SPEC)
    ext.load("cpu")
    good = [(s, p) for s, p in zip(rows.column("stimulus_id").to_pylist(), paths) if s not in bad][:4]
    want = ext.embed(np.stack([ext.preprocess(decode_image(p)) for _, p in good]))
    np.testing.assert_allclose(fs.load(rep.feature, [s for s, _ in good]), want, atol=1e-5)


def test_an_unusable_brick_is_one_error_before_any_work(bricks, tmp_path, monkeypatch):
    import brainstore.features._stimuli as pipeline

    monkeypatch.setattr(pipeline, "connect", lambda: pytest.fail("Ray was started for an unusable brick"))
    table = _with_refs(bricks["stimuli"], bricks["index"], tmp_path / "missing.hdf5", "imgBrick")
    store = tmp_path / "store"
    with pytest.raises(BrickFileError, match=r"missing\.hdf5 does not exist; fix the path.*stimuli reference it"):
        extract(table, TINY_CLIP_SPEC, store, progress=False)
    table = _with_refs(bricks["stimuli"], bricks["index"], bricks["h5"], "floats")
    with pytest.raises(BrickError, match="float32, not N x H x W x 3 uint8"):
        extract(table, TINY_CLIP_SPEC, store, progress=False)
    assert not store.exists() or not FeatureStore(store).names()

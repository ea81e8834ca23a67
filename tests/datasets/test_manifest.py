"""Manifests (``datasets/_manifest.py``): image, video and text rows, every problem listed, array references."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from PIL import Image

from brainstore.datasets import (STIMULUS_SCHEMA, DatasetError, DatasetValidationError, array_ref, open_stimuli,
                                 read_manifest)
from tests.datasets.test_arrays import bricks  # noqa: F401 (the fixture)


def _write_manifest(tmp_path, rows, fmt="csv"):
    t = pa.Table.from_pylist(rows)
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        pcsv.write_csv(t, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(t, path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_video_text_image(tmp_path, fmt):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 10)
    rows = [
        {"stimulus_id": "img-1", "path": "a.png", "modality": "image", "caption": "red", "split": "train", "subject": "s1"},
        {"stimulus_id": "vid-1", "path": "clip.mp4", "modality": "video", "caption": None, "split": "train", "subject": "s1"},
        {"stimulus_id": "txt-1", "path": None, "modality": "text", "caption": "a sentence", "split": "test", "subject": "s1"},
    ]
    t = read_manifest(_write_manifest(tmp_path, rows, fmt))
    assert t.schema.equals(STIMULUS_SCHEMA)
    assert t.column("modality").to_pylist() == ["image", "video", "text"]
    assert Path(t.column("path")[0].as_py()).is_absolute()
    assert open_stimuli(tmp_path / f"manifest.{fmt}").num_rows == 3


def test_manifest_problems_are_all_listed(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    rows = [
        {"stimulus_id": "a", "path": "ok.png", "modality": "image", "caption": None},
        {"stimulus_id": "a", "path": "ok.png", "modality": "image", "caption": None},
        {"stimulus_id": "b", "path": "missing.png", "modality": "image", "caption": None},
        {"stimulus_id": "c", "path": "empty.png", "modality": "image", "caption": None},
        {"stimulus_id": "d", "path": None, "modality": "text", "caption": None},
        {"stimulus_id": "e", "path": "ok.png", "modality": "audio", "caption": None},
    ]
    with pytest.raises(DatasetValidationError) as ei:
        read_manifest(_write_manifest(tmp_path, rows))
    msg = str(ei.value)
    assert "duplicate stimulus id 'a'" in msg
    assert "missing.png does not exist" in msg
    assert "empty.png is empty" in msg
    assert "text stimulus needs a non-empty caption" in msg
    assert "modality 'audio'" in msg


def test_manifest_missing_column(tmp_path):
    p = _write_manifest(tmp_path, [{"stimulus_id": "a", "path": "x.png"}])
    with pytest.raises(DatasetError, match=r"lacks required column\(s\) \['modality'\]"):
        read_manifest(p)


def test_manifest_with_array_references(bricks, tmp_path):
    pngs = bricks["unique"].column("path").to_pylist()
    ids = bricks["ids"]
    folder = tmp_path / "m"
    folder.mkdir()
    rel = Path(os.path.relpath(bricks["npy"], folder))  # relative to the manifest's folder
    paths = [f"{rel}#[{i}]" for i in range(5)] + pngs[5:8]  # mixed: references and files
    man = folder / "manifest.csv"
    pcsv.write_csv(pa.table({"stimulus_id": ids[:8], "path": paths, "modality": ["image"] * 8}), man)
    t = read_manifest(man)
    assert t.column("path").to_pylist()[:5] == [array_ref(bricks["npy"], "", i) for i in range(5)]
    assert t.column("path").to_pylist()[5:] == pngs[5:8]
    n = len(bricks["pixels"])
    bad = folder / "bad.csv"
    pcsv.write_csv(pa.table({
        "stimulus_id": ["a", "b", "c", "d", "e"],
        "path": [f"{rel}#[{n}]", f"{bricks['h5']}#nokey[0]", str(folder / "gone.hdf5#imgBrick[0]"),
                 str(folder / "gone.hdf5#imgBrick[1]"), f"{bricks['h5']}#floats[0]"],
        "modality": ["image"] * 5}), bad)
    with pytest.raises(DatasetValidationError) as ei:
        read_manifest(bad)
    probs = ei.value.problems
    assert len(probs) == 4, probs  # the missing brick is listed once, with its two rows
    assert any("row 2 (a)" in p and "out of range" in p for p in probs)
    assert any("row 3 (b)" in p and "no dataset 'nokey'" in p for p in probs)
    assert any("row 4 (c) and 1 more row(s)" in p and "gone.hdf5 does not exist" in p for p in probs)
    assert any("row 6 (e)" in p and "float32" in p for p in probs)
    assert read_manifest(bad, check_files=False).num_rows == 5

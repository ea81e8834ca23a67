"""Dataset layer: Algonauts reader, manifest reader, and one test per validation problem."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from PIL import Image

from brainstore.datasets import (
    STIMULUS_SCHEMA,
    AlgonautsDataset,
    DatasetError,
    DatasetValidationError,
    decode_image,
    open_stimuli,
    read_manifest,
)


def test_reader_stimulus_table_and_shapes(small_dataset):
    ds = AlgonautsDataset(small_dataset)
    assert ds.subjects == ["subj01", "subj02"]
    assert ds.validate() == []
    t = ds.stimuli()
    assert t.schema.equals(STIMULUS_SCHEMA)
    assert t.num_rows == 2 * (120 + 40)
    rows = t.to_pylist()
    r0 = rows[0]
    assert r0["stimulus_id"] == f"nsd-{r0['nsd_id']:05d}" and r0["split"] == "train" and r0["index"] == 0
    assert Path(r0["path"]).name.endswith(f"_nsd-{r0['nsd_id']:05d}.png")
    assert all(r["caption"] for r in rows)
    # fMRI rows follow sorted file names
    files = ds.image_files("subj01", "train")
    assert [f.name for f in files] == sorted(f.name for f in files)
    y = ds.responses("subj01", "lh")
    assert isinstance(y, np.memmap) and y.dtype == np.float32 and y.shape[0] == 120
    # the same NSD image seen by both subjects has the same stimulus id
    s1 = {r["stimulus_id"] for r in rows if r["subject"] == "subj01"}
    s2 = {r["stimulus_id"] for r in rows if r["subject"] == "subj02"}
    assert len(s1 & s2) >= 40  # shared test images + shared training images


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_captions_by_image_name_or_by_nsd_id(dataset_copy, fmt):
    """Both caption layouts give every image its caption; COCO-style repeats keep the first caption of an id."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    (dataset_copy / "captions.csv").unlink()
    st = AlgonautsDataset(dataset_copy).stimuli()
    names = [Path(p).name for p in st.column("path").to_pylist()]
    nsd = st.column("nsd_id").to_pylist()
    write = pcsv.write_csv if fmt == "csv" else pq.write_table
    layouts = {
        "image": pa.table({"image": names, "caption": [f"image {n}" for n in names]}),
        # several captions per id, in file order: an empty one, then the first real one, then a later one
        "nsd_id": pa.table({"nsd_id": [i for i in nsd for _ in range(3)],
                            "caption": [c for i in nsd for c in ("", f"first of {i}", f"second of {i}")]}),
    }
    for key, table in layouts.items():
        write(table, dataset_copy / f"captions.{fmt}")
        got = AlgonautsDataset(dataset_copy).stimuli().column("caption").to_pylist()
        assert got == ([f"image {n}" for n in names] if key == "image" else [f"first of {i}" for i in nsd]), key
    # ids given as digit strings match too; unknown ids are ignored
    write(pa.table({"nsd_id": [f"{nsd[0]:05d}", "99999"], "caption": ["zero-padded", "nobody"]}), dataset_copy / f"captions.{fmt}")
    got = AlgonautsDataset(dataset_copy).stimuli().column("caption").to_pylist()
    assert got[0] == "zero-padded" and set(got) == {"zero-padded", None}


def test_captions_file_without_known_columns_is_named(dataset_copy):
    (dataset_copy / "captions.csv").write_text("file,text\na.png,a cat\n")
    with pytest.raises(DatasetError, match=r"captions\.csv has columns \['file', 'text'\]; it needs 'image' and "
                                           r"'caption' .* or 'nsd_id' and 'caption'"):
        AlgonautsDataset(dataset_copy).stimuli()
    (dataset_copy / "captions.csv").write_text("nsd_id,caption\nnot-a-number,a cat\n")
    with pytest.raises(DatasetError, match="nsd_id 'not-a-number' is not an integer"):
        AlgonautsDataset(dataset_copy).stimuli()


def test_roi_masks_and_mapping(small_dataset):
    ds = AlgonautsDataset(small_dataset)
    labels, mapping = ds.roi_labels("subj01", "lh", "prf-visualrois")
    assert mapping[1] == "V1v" and labels.shape == (ds.n_vertices("subj01", "lh"),)
    masks = ds.roi_masks("subj01", "lh", level="roi")
    assert {"V1v", "FFA-1", "PPA", "EBA", "VWFA-1"} <= set(masks)
    nc = ds.noise_ceiling("subj01", "lh")
    assert nc.min() >= 0 and nc.max() <= 1


def test_mapping_as_json_is_accepted(dataset_copy):
    roi = dataset_copy / "subj01" / "roi_masks"
    m = np.load(roi / "mapping_floc-faces.npy", allow_pickle=True).item()
    (roi / "mapping_floc-faces.npy").unlink()
    (roi / "mapping_floc-faces.json").write_text(json.dumps({str(k): v for k, v in m.items()}))
    _, mapping = AlgonautsDataset(dataset_copy).roi_labels("subj01", "lh", "floc-faces")
    assert mapping == m


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


def test_decompression_bomb_refused(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(p)
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(p, max_pixels=1000 * 1000)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="subjNN"):
        AlgonautsDataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        AlgonautsDataset(tmp_path / "nope")


def test_noise_ceiling_in_percent_is_refused(dataset_copy):
    f = dataset_copy / "subj01" / "test_split" / "noise_ceiling" / "lh_noise_ceiling.npy"
    np.save(f, np.load(f) * 100)
    with pytest.raises(DatasetError, match="divide a percent ceiling by 100"):
        AlgonautsDataset(dataset_copy).noise_ceiling("subj01", "lh")


# ---------------------------------------------------------------- manifests
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


@pytest.mark.parametrize("kind", ["rgb", "rgba", "palette", "gray", "gray16", "jpeg"])
def test_decode_image_equals_pil(tmp_path, kind):
    """The libpng fast path (8-bit RGB PNGs) and the PIL path give PIL's ``convert("RGB")`` pixels."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    img, kw, ext = {
        "rgb": (rgb, {}, "png"),
        "rgba": (rgb.convert("RGBA"), {}, "png"),
        "palette": (rgb.convert("P"), {}, "png"),
        "gray": (rgb.convert("L"), {}, "png"),
        "gray16": (Image.fromarray(rng.integers(0, 65535, (37, 53), dtype=np.uint16)), {}, "png"),
        "jpeg": (rgb, {"quality": 90}, "jpg"),
    }[kind]
    path = tmp_path / f"x.{ext}"
    img.save(path, **kw)
    from brainstore.datasets import _images

    assert _images._png_decode is not None  # imagecodecs is a pinned dependency: the fast path is tested
    ours = decode_image(path)
    assert ours.mode == "RGB" and ours.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(np.asarray(decode_image(path.read_bytes())), np.asarray(ours))


def test_truncated_png_is_refused_with_a_reason(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    for cut in (data[: len(data) // 2], data[:60]):
        with pytest.raises(ValueError, match="not a readable image"):
            decode_image(cut)

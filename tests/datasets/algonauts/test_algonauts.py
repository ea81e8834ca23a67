"""The Algonauts reader (``datasets/algonauts/_algonauts.py``): stimulus table, responses, captions, ROIs,
noise ceilings."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from brainstore.datasets import STIMULUS_SCHEMA, AlgonautsDataset, DatasetError


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

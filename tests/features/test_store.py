"""The LanceDB feature store (real LanceDB on disk): ordering, idempotence, refusals, index."""

import multiprocessing as mp
import time

import numpy as np
import pytest

from brainstore.features import FeatureStore, FeatureStoreError, MissingStimuliError
from tests.features.helpers import META, _fill

def test_load_in_requested_order_and_missing_named(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    ids, X = _fill(fs)
    order = np.random.default_rng(1).permutation(len(ids))
    got = fs.load("f", [ids[i] for i in order])
    np.testing.assert_array_equal(got, X[order])
    with pytest.raises(MissingStimuliError, match=r"2 stimulus id\(s\) missing .* nope, zzz"):
        fs.load("f", ["s001", "nope", "zzz"])
    with pytest.raises(FeatureStoreError, match="no feature table 'other'"):
        fs.load("other", ["s001"])


def test_schema_metadata_describes_table(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    _fill(fs)
    m = fs.metadata("f")
    assert m["extractor"] == "test" and m["pretrained"] == "none" and m["dim"] == 8 and "created" in m
    t = fs.read("f")
    assert str(t.schema.field("embedding").type) == "fixed_size_list<item: float>[8]"
    assert {"stimulus_id", "embedding", "dataset", "split"} <= set(t.column_names)


def test_writes_are_idempotent(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    ids, X = _fill(fs)
    assert fs.write("f", ids[:10], X[:10] + 1) == 0  # already stored: nothing inserted, nothing changed
    np.testing.assert_array_equal(fs.load("f", ids[:10]), X[:10])
    assert fs.info("f").rows == 50


def test_refuses_other_dimension_or_model(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    _fill(fs)
    with pytest.raises(FeatureStoreError, match="dim: table has 8, new rows 16"):
        fs.ensure_table("f", 16, META)
    with pytest.raises(FeatureStoreError, match="pretrained: table has 'none', new rows 'openai'"):
        fs.ensure_table("f", 8, {**META, "pretrained": "openai"})
    with pytest.raises(FeatureStoreError, match="layer_detail: table has None"):  # same index, other meaning
        fs.ensure_table("f", 8, {**META, "layer_detail": "output of block 1 = hidden_states[2]"})
    with pytest.raises(FeatureStoreError, match="expected"):
        fs.write("f", ["x"], np.zeros((1, 16), np.float32))
    with pytest.raises(FeatureStoreError, match="non-finite"):
        fs.write("f", ["x"], np.full((1, 8), np.nan, np.float32))
    assert fs.info("f").rows == 50  # nothing half written


def _writer(uri, start, seed):
    fs = FeatureStore(uri)
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in range(start, start + 60)]
    fs.ensure_table("f", 8, META)
    for k in range(0, 60, 10):
        fs.write("f", ids[k : k + 10], rng.normal(size=(10, 8)).astype(np.float32))


def test_concurrent_writers_never_duplicate(tmp_path):
    uri = str(tmp_path / "store")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(uri, start, s)) for s, start in enumerate((0, 30, 15))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ids = FeatureStore(uri).ids("f")
    assert len(ids) == len(set(ids)) == 90


def _hold_lock(path, seconds, ready):
    from filelock import FileLock

    with FileLock(path):
        ready.set()
        time.sleep(seconds)


def test_table_lock_is_a_filelock_with_a_timeout(tmp_path):
    """Another process holding the table's lock (``filelock``, the store's own lock file): a write
    waits for it, and fails with an error naming the lock file past ``lock_timeout``."""
    fs = FeatureStore(tmp_path / "store", lock_timeout=0.5)
    ids, X = _fill(fs, n=4)
    lock = tmp_path / "store" / ".f.lock"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(lock), 5, ready))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(FeatureStoreError, match=r"another writer has held its lock .*\.f\.lock for more than 0.5 s"):
        fs.write("f", ["late"], X[:1])
    patient = FeatureStore(tmp_path / "store", lock_timeout=60)
    assert patient.write("f", ["late"], X[:1]) == 1  # waits for the holder to let go, then commits
    holder.join(60)
    assert holder.exitcode == 0 and fs.info("f").rows == 5


def test_float16_storage(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    fs.ensure_table("h", 4, META, storage_dtype="float16")
    X = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    fs.write("h", ["a", "b", "c"], X)
    np.testing.assert_allclose(fs.load("h", ["c", "a"]), X[[2, 0]], rtol=1e-3)


def test_vector_index_and_search(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    ids, X = _fill(fs, n=400, dim=32)
    with pytest.raises(FeatureStoreError, match="index kind"):
        fs.build_index("f", kind="flat")
    for kind in ("ivf_pq", "hnsw"):
        fs.build_index("f", kind=kind)
        hits = fs.search("f", X[[7, 123]], k=5)
        assert hits[0][0][0] == "s007" and hits[1][0][0] == "s123"


# Ray starts its processes by fork + exec (the child never touches Lance's state): a false alarm here.
@pytest.mark.filterwarnings("ignore:lance is not fork-safe:UserWarning")
def test_ray_write_lance_with_pinned_pylance(tmp_path, ray_local):
    """Ray 2.60's Dataset.write_lance works with the pinned pylance (pin trap: pylance>=6 rejects it)."""
    import ray

    rows = [{"stimulus_id": f"r{i}", "embedding": np.full(4, i, np.float32), "dataset": "d", "split": "train"}
            for i in range(20)]
    ray.data.from_items(rows).write_lance(str(tmp_path / "store" / "raywritten.lance"))
    fs = FeatureStore(tmp_path / "store")
    assert "raywritten" in fs.names()
    got = fs.read("raywritten").to_pylist()
    assert sorted(r["stimulus_id"] for r in got) == sorted(r["stimulus_id"] for r in rows)


def test_reading_never_creates_a_store_and_a_file_is_refused(tmp_path):
    with pytest.raises(FeatureStoreError, match="does not exist"):
        FeatureStore(tmp_path / "nosuch", create=False)
    assert not (tmp_path / "nosuch").exists()
    (tmp_path / "file").write_text("x")
    for create in (True, False):
        with pytest.raises(FeatureStoreError, match="is a file"):
            FeatureStore(tmp_path / "file", create=create)
    with pytest.raises(FeatureStoreError, match="is a file"):
        FeatureStore(tmp_path / "file" / "store")  # under a file
    with pytest.raises(FeatureStoreError, match="storage dtype 'float64'"):
        FeatureStore(tmp_path / "s").ensure_table("t", 4, META, storage_dtype="float64")


def test_missing_stimuli_error_survives_pickling():
    """Ray returns a task's error pickled: it must come back as itself, not as a deserialization failure."""
    import pickle

    e = pickle.loads(pickle.dumps(MissingStimuliError("clip-x", ["nsd-00001", "nsd-00002"])))
    assert isinstance(e, MissingStimuliError) and e.feature == "clip-x" and e.missing == ["nsd-00001", "nsd-00002"]
    assert "2 stimulus id(s) missing from feature table 'clip-x'" in str(e)

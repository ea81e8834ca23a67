"""Versions of a feature table (real LanceDB on disk, and on a moto S3 server): reading an old version,
pinning (tags ``brainstore-v{N}``), listing, cleanup and compaction that keep pinned versions."""

import json
import time

import lancedb
import numpy as np
import pytest

from brainstore._storage import ENV
from brainstore.features import FeatureStore, FeatureStoreError
from tests.features.helpers import META
from tests.system.test_storage import BUCKET, s3_server  # noqa: F401  (the moto server fixture)

A = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)


def _table(fs) -> int:
    """Table 't': version 1 created empty, version 2 = rows a, b (A); returns 2."""
    fs.ensure_table("t", 3, META)
    fs.write("t", ["a", "b"], A, dataset="d", split="train")
    return fs.version("t")


def _rewrite_a(uri: str, value: float, storage_options=None) -> None:
    """Change row 'a' behind the store's back, as a user of LanceDB would."""
    db = lancedb.connect(uri, storage_options=storage_options)
    db.open_table("t").update(where="stimulus_id='a'", values={"embedding": [value] * 3})


def test_reading_an_old_version_gives_its_rows(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    assert _table(fs) == 2
    _rewrite_a(fs.uri, 9.0)
    fs.write("t", ["c"], np.full((1, 3), 7, np.float32))
    assert fs.version("t") == 4
    np.testing.assert_array_equal(fs.load("t", ["b", "a"], version=2), A[::-1])
    np.testing.assert_array_equal(fs.load("t", ["a"]), [[9, 9, 9]])
    np.testing.assert_array_equal(fs.load("t", ["a"], version=3), [[9, 9, 9]])
    assert fs.ids("t", version=2) == ["a", "b"] and sorted(fs.ids("t")) == ["a", "b", "c"]
    assert fs.ids("t", version=1) == []
    assert fs.read("t", ("stimulus_id", "split"), version=2).to_pydict() == {"stimulus_id": ["a", "b"],
                                                                            "split": ["train", "train"]}
    with pytest.raises(KeyError, match=r"1 stimulus id\(s\) missing from version 2 of feature table 't': c; read the "
                                       "latest version for stimuli added later"):  # c came later
        fs.load("t", ["c"], version=2)
    with pytest.raises(FeatureStoreError, match=r"feature table 't' in store .* has no version 9 \(its versions: 1-4\)"
                                                r".*Read the latest version.*refit the model"):
        fs.load("t", ["a"], version=9)
    for bad in (0, -1, "two", 2.5, True):
        with pytest.raises(FeatureStoreError, match="version of feature table 't' must be a whole number >= 1"):
            fs.load("t", ["a"], version=bad)


def test_versions_list_rows_times_and_tags(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    t0 = time.time()
    _table(fs)
    _rewrite_a(fs.uri, 9.0)
    assert fs.pin("t", 2) == "brainstore-v2"
    assert fs.pin("t", 2) == "brainstore-v2"  # pinning twice is one tag
    lancedb.connect(fs.uri).open_table("t").tags.create("mine", 3)  # a tag of someone else's
    vs = fs.versions("t")
    assert [(v["version"], v["rows"], v["tags"]) for v in vs] == [(1, 0, []), (2, 2, ["brainstore-v2"]),
                                                                  (3, 2, ["mine"])]
    for v in vs:
        ts = time.mktime(time.strptime(v["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert v["timestamp"].endswith("Z") and t0 - 2 <= ts <= time.time() + 1
    assert fs.pinned("t") == [2]  # only our tags pin
    fs.pin("t", 3)
    assert fs.pinned("t") == [2, 3]
    assert fs.unpin("t", 2) is True and fs.unpin("t", 2) is False
    assert fs.pinned("t") == [3]
    with pytest.raises(FeatureStoreError, match="has no version 7"):
        fs.pin("t", 7)


def test_cleanup_and_compact_keep_pinned_versions(tmp_path, monkeypatch):
    fs = FeatureStore(tmp_path / "store")
    _table(fs)
    fs.pin("t", 2)
    _rewrite_a(fs.uri, 9.0)  # version 3
    fs.write("t", ["c"], np.full((1, 3), 7, np.float32))  # version 4
    time.sleep(0.05)
    out = fs.cleanup("t", 0)
    assert out["removed"] == [1, 3] and out["kept"] == [2, 4] and out["bytes_removed"] > 0
    np.testing.assert_array_equal(fs.load("t", ["a", "b"], version=2), A)
    with pytest.raises(FeatureStoreError, match="has no version 3"):
        fs.load("t", ["a"], version=3)
    with pytest.raises(FeatureStoreError, match="older_than_s must be a number of seconds >= 0"):
        fs.cleanup("t", -1)
    # compaction prunes what is older than KEEP_S: set to 0, every old version but the pinned one goes, and an old
    # tagged version (which makes LanceDB's own optimize() fail) is no error
    import brainstore.features._versions as versions

    monkeypatch.setattr(versions, "KEEP_S", 0.0)
    _rewrite_a(fs.uri, 5.0)
    fs.write("t", ["d"], np.full((1, 3), 8, np.float32))
    time.sleep(0.05)
    fs.compact("t")
    kept = [v["version"] for v in fs.versions("t")]
    assert kept[0] == 2 and len(kept) == 2 and kept[1] == fs.version("t") > 6
    np.testing.assert_array_equal(fs.load("t", ["a", "b"], version=2), A)
    np.testing.assert_array_equal(fs.load("t", ["a", "b", "c", "d"]), [[5] * 3, [4, 5, 6], [7] * 3, [8] * 3])
    assert fs.pinned("t") == [2]


def test_a_re_created_table_loses_its_pins_and_restarts_versions(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    _table(fs)
    fs.pin("t", 2)
    old_id = fs.version_id("t", 2)
    fs.drop("t")
    fs.ensure_table("t", 3, META)
    fs.write("t", ["a", "b"], -A)
    assert fs.version("t") == 2 and fs.pinned("t") == []
    np.testing.assert_array_equal(fs.load("t", ["a", "b"], version=2), -A)  # the same number, other content
    assert fs.version_id("t", 2) != old_id  # ... which the version's content id tells apart


def test_version_ids_follow_content(tmp_path):
    fs = FeatureStore(tmp_path / "store")
    _table(fs)
    v2 = fs.version_id("t", 2)
    assert fs.version_id("t") == v2 == fs.version_id("t", 2) and len(v2) == 64
    _rewrite_a(fs.uri, 9.0)  # an update: new data and deletion files
    assert fs.version_id("t") not in (v2, fs.version_id("t", 1)) and fs.version_id("t", 2) == v2


def test_pin_and_read_at_a_version_on_s3(s3_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv(ENV, json.dumps(s3_server["options"]))
    uri = f"s3://{BUCKET}/versions"
    fs = FeatureStore(uri)
    assert _table(fs) == 2
    assert fs.pin("t", 2) == "brainstore-v2"
    _rewrite_a(uri, 9.0, storage_options={k: str(v).lower() if isinstance(v, bool) else v
                                          for k, v in s3_server["options"].items()})
    np.testing.assert_array_equal(fs.load("t", ["a", "b"], version=2), A)
    np.testing.assert_array_equal(fs.load("t", ["a"]), [[9, 9, 9]])
    assert [(v["version"], v["tags"]) for v in fs.versions("t")] == [(1, []), (2, ["brainstore-v2"]), (3, [])]
    time.sleep(0.05)
    assert fs.cleanup("t", 0)["removed"] == [1]
    fs.compact("t")
    np.testing.assert_array_equal(fs.load("t", ["a", "b"], version=2), A)
    assert fs.pinned("t") == [2] and fs.unpin("t", 2) and fs.pinned("t") == []

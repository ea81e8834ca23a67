"""An extraction job's options: keywords and one ExtractSpec are the same call; unknown options and dtypes are refused."""

import dataclasses

import pytest

from brainstore.features import ExtractSpec, extract


def test_keywords_replace_the_fields_of_a_spec():
    assert ExtractSpec.of(None, {}) == ExtractSpec()
    assert ExtractSpec.of(None, {"batch_size": 8, "limit": 3}) == ExtractSpec(batch_size=8, limit=3)
    base = ExtractSpec(limit=3, dtype="float16")
    assert ExtractSpec.of(base, {}) is base
    assert ExtractSpec.of(base, {"batch_size": 2}) == ExtractSpec(limit=3, dtype="float16", batch_size=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.limit = 4


def test_unknown_options_and_dtypes_are_refused_before_any_work(tmp_path):
    with pytest.raises(TypeError, match=r"extract\(\) got an unexpected keyword argument 'bogus'.*batch_size"):
        extract("data", "text", tmp_path / "store", bogus=1)
    with pytest.raises(TypeError, match="spec must be an ExtractSpec"):
        extract("data", "text", tmp_path / "store", {"batch_size": 2})
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', 'float16'\], got 'int8'"):
        extract("data", "text", tmp_path / "store", dtype="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        ExtractSpec(dtype="int8")
    assert not (tmp_path / "store").exists()

"""The facade (``brainstore/__init__.py``): ``import brainstore as bs`` is light, and every name it offers
resolves to the package's own object (one convention for notebooks and the CLI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "ray", "lancedb", "pyarrow", "open_clip", "transformers")


def test_import_brainstore_is_light():
    code = ("import sys, time; t = time.perf_counter(); import brainstore; dt = time.perf_counter() - t; "
            f"print(dt, [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    dt, loaded = out.split(" ", 1)
    assert loaded.strip() == "[]", f"import brainstore imported {loaded}"
    assert float(dt) < 1.0


def test_every_facade_name_resolves_to_its_package_object():
    import brainstore as bs
    import brainstore.cluster
    import brainstore.datasets
    import brainstore.features
    import brainstore.fitting
    import brainstore.serving

    owners = {"open_dataset": brainstore.datasets, "make_dataset": brainstore.datasets,
              "FeatureStore": brainstore.features, "extract": brainstore.features, "fit": brainstore.fitting,
              "FitSpec": brainstore.fitting, "fit_decoder": brainstore.fitting, "DecoderSpec": brainstore.fitting,
              "ModelRegistry": brainstore.fitting, "evaluate": brainstore.fitting, "predict": brainstore.fitting,
              "predict_to_table": brainstore.fitting, "lineage": brainstore.fitting,
              "run_pipeline": brainstore.cluster, "serve": brainstore.serving, "app_builder": brainstore.serving}
    assert set(bs.__all__) == {"__version__", *owners}
    for name, pkg in owners.items():
        obj = getattr(bs, name)
        assert obj is getattr(pkg, name), name
        assert callable(obj) and (obj.__doc__ or "").strip(), f"brainstore.{name} has no docstring"
        assert name in dir(bs)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bs.nope  # noqa: B018


def test_stores_and_registries_are_accepted_as_uri_or_object(tmp_path):
    """The one convention: a URI (folder, s3://) or the object, wherever a store or registry is taken."""
    from brainstore._storage import uri_of
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry

    fs, reg = FeatureStore(tmp_path / "fs"), ModelRegistry(tmp_path / "reg")
    assert uri_of(fs) == uri_of(str(tmp_path / "fs")) == str(tmp_path / "fs")
    assert uri_of(reg) == uri_of(tmp_path / "reg") == str(tmp_path / "reg")
    assert uri_of("s3://bucket/prefix") == "s3://bucket/prefix"
    assert uri_of("relative/store") == str(Path.cwd() / "relative/store")  # Ray tasks run elsewhere


def test_every_public_callable_has_a_docstring():
    """Each package's public face documents itself (the API reference renders these docstrings)."""
    import importlib
    import inspect

    missing = []
    for pkg in ("brainstore", "brainstore.datasets", "brainstore.scoring", "brainstore.maps", "brainstore.features",
                "brainstore.features.extractors", "brainstore.fitting", "brainstore.serving", "brainstore.cluster"):
        mod = importlib.import_module(pkg)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not name.startswith("__") and callable(obj) and not (inspect.getdoc(obj) or "").strip():
                missing.append(f"{pkg}.{name}")
    assert not missing, f"public names without a docstring: {missing}"

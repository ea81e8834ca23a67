"""brainstore: a distributed feature store and serving system for brain encoding and decoding models.

The Python API, one call per step (every ``brainstore`` command is a thin layer over these)::

    import brainstore as bs

    ds = bs.open_dataset("data/synth")                              # or bs.make_dataset(...)
    table = bs.extract(ds, "text", store="features").feature         # embed every stimulus
    run = bs.fit(ds, store="features", registry="models")            # encoding models, registered
    ev = bs.evaluate(ds, registry="models", out="report")            # NNMC per ROI, report.html
    print(bs.lineage("models", f"{table}/subj01"))                   # dataset -> features -> fit -> version -> service
    model = bs.ModelRegistry("models").load(f"{table}/subj01")        # .predict(stimulus_ids)
    bs.predict_to_table(table, "subj01", registry="models")           # every stored stimulus -> a store table
    with bs.serve("models", local=True) as url: ...                  # the models over HTTP

Stores and registries are accepted as a URI (a folder, ``s3://...``) or as the object; datasets as a path
or as the object :func:`open_dataset` returns. ``import brainstore`` is light: torch, Ray and LanceDB are
imported by the calls that need them.

Packages
--------
datasets : readers (Algonauts layout, description files, manifests), validation, synthetic generators.
scoring  : the scoring contract (Pearson r, noise-normalized score, NNMC, retrieval).
features : extractors, Ray Data extraction into the LanceDB feature store.
fitting  : solvers, encoding models, decoders, the model registry, evaluation and reports.
serving  : the HTTP app, in-process backend, Ray Serve deployments and configs.
cluster  : Ray connection, the ``brainstore`` CLI, whole-pipeline runs.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below, for type checkers and the API reference (imported lazily at run time)
    from .cluster import run_pipeline
    from .datasets import make_dataset, open_dataset
    from .features import FeatureStore, extract
    from .fitting import (DecoderSpec, FitSpec, ModelRegistry, evaluate, fit, fit_decoder, lineage, predict,
                          predict_to_table)
    from .serving import app_builder, serve

__version__ = "0.1.0"

#: Public name -> the package that defines it; imported on first access (PEP 562).
_API = {
    # datasets
    "open_dataset": "brainstore.datasets", "make_dataset": "brainstore.datasets",
    # features
    "FeatureStore": "brainstore.features", "extract": "brainstore.features",
    # fitting
    "fit": "brainstore.fitting", "FitSpec": "brainstore.fitting", "fit_decoder": "brainstore.fitting",
    "DecoderSpec": "brainstore.fitting", "ModelRegistry": "brainstore.fitting", "evaluate": "brainstore.fitting",
    "predict": "brainstore.fitting", "predict_to_table": "brainstore.fitting", "lineage": "brainstore.fitting",
    # serving
    "serve": "brainstore.serving", "app_builder": "brainstore.serving",
    # pipelines
    "run_pipeline": "brainstore.cluster",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'brainstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

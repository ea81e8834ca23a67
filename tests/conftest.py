"""Shared fixtures: a small synthetic dataset (session-scoped), environment for offline runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep every Ray node and driver on loopback: with this set Ray resolves "127.0.0.1" to itself
# instead of the machine's external address (needed for multi-node clusters on one machine).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray Train's controller collects a worker's ray.train.report when it polls the worker group, every 2 s by
# default, and the worker waits for it (a result queue of one): an adaptor epoch of the small dataset took ~3 s,
# nearly all of it that wait. Polled every 0.1 s (a wait, not a check: a late poll is only retried), an epoch
# takes a few tenths. Ray Train passes it from the driver to its controller and workers; subprocesses inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """2 subjects, 120 train / 40 test images, ~300 vertices per hemisphere (read-only: copy to modify)."""
    from brainstore.datasets import make_dataset

    root = tmp_path_factory.mktemp("data") / "synth"
    return make_dataset(root, n_subjects=2, n_train=120, n_test=40, n_vertices=300, seed=3, image_size=64, progress=False)


@pytest.fixture()
def dataset_copy(small_dataset, tmp_path) -> Path:
    """A private, modifiable copy of the small dataset."""
    dst = tmp_path / "synth"
    shutil.copytree(small_dataset, dst)
    return dst


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the session, on loopback, 2 CPUs (tests needing their own cluster shut it down)."""
    import logging

    import ray

    from brainstore._ray import keep_loopback, serve_ingress_env

    if not ray.is_initialized():
        keep_loopback()
        serve_ingress_env()  # Serve's ingress as users get it from an embedded cluster (HAProxy)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1",
                 object_store_memory=300 * 1024 * 1024)
    yield ray


@pytest.fixture(scope="session")
def serving_models(small_dataset, tmp_path_factory, ray_local) -> dict:
    """A registry to serve: encoders "img" (tiny CLIP image table, random weights) and "both" (image + caption
    tables) for both subjects of the small dataset, and a ridge decoder per subject into the caption table."""
    from brainstore.features import extract
    from brainstore.features.extractors.testing import register_tiny_models
    from brainstore.fitting import FitSpec, fit_decoders, fit_encoding_models

    register_tiny_models()
    root = tmp_path_factory.mktemp("serving")
    store, registry = str(root / "store"), str(root / "registry")
    img = extract(small_dataset, "clip:arch=brainstore-tiny-clip,pretrained=none", store, progress=False).feature
    txt = extract(small_dataset, "text", store, progress=False).feature
    spec = FitSpec(dataset=str(small_dataset), alphas=[1.0, 100.0, 10000.0], folds=3,
                   models=[{"name": "img", "features": [img]}, {"name": "both", "features": [img, txt]}])
    run = fit_encoding_models(spec, store=store, registry=registry, out=root / "run", progress=False)
    assert not run.failures, run.failures
    drun = fit_decoders(small_dataset, txt, store=store, registry=registry, out=root / "dec", progress=False)
    assert not drun.failures, drun.failures
    return {"store": store, "registry": registry, "img": img, "txt": txt, "data": small_dataset}

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

    from brainstore._ray import keep_loopback

    if not ray.is_initialized():
        keep_loopback()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1",
                 object_store_memory=300 * 1024 * 1024)
    yield ray

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

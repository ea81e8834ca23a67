"""Running an adaptor's training: the Ray Train trainer (restarts from the last checkpoint), the checkpoints a
run folder holds, and the hash of the settings a checkpoint was made with (a run folder refuses another's)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ._adaptor_train import CKPT_FILE, train_loop

__all__ = ["MAX_FAILURES", "run_trainer", "latest_checkpoint", "spec_hash"]

#: Restarts of the Ray Train worker group after a worker (or its node) dies, each from the last checkpoint.
MAX_FAILURES = 3
#: What the checkpoint's spec hash covers.
_SPEC_KEYS = ("params", "subjects", "targets", "n_voxels", "target_dims", "trainable", "fraction", "adapters",
              "adapt_subjects", "unlabeled", "init_from")


def spec_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps({k: cfg.get(k) for k in _SPEC_KEYS}, sort_keys=True).encode()).hexdigest()[:16]


def latest_checkpoint(storage: Path) -> tuple[int, Path, str] | None:
    """(epoch, folder, spec hash) of the newest complete checkpoint under ``storage``, or None."""
    import torch

    best = None
    for f in storage.rglob(CKPT_FILE) if storage.exists() else []:
        try:
            saved = torch.load(f, map_location="cpu", weights_only=False)
        except Exception:  # a checkpoint being written when the run was killed
            continue
        if best is None or saved["epoch"] > best[0]:
            best = (int(saved["epoch"]), f.parent, saved["spec_hash"])
    return best


def run_trainer(cfg: dict, num_workers: int, use_gpu: bool, storage: Path, callbacks: list | None = None) -> dict:
    """Run :func:`~._adaptor_train.train_loop` on ``num_workers`` Ray Train workers (``callbacks``: Ray Train
    callbacks, a search's report to Tune); the last checkpoint."""
    import torch
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name="adaptor", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),  # restarts resume
                             logging_config=LoggingConfig(log_level="WARNING"),  # our history is the report
                             callbacks=callbacks or None))
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)

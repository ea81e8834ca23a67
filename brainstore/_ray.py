"""Connecting to Ray: an embedded local cluster on loopback by default, or a cluster address."""

from __future__ import annotations

import logging
import os

__all__ = ["connect", "quiet_ray_data"]


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_memory: int | None = None) -> dict:
    """Initialize Ray once per process and return the cluster's resources.

    Parameters
    ----------
    address : str, optional
        ``None``: start an embedded single-node cluster bound to 127.0.0.1. ``"auto"``: join the
        cluster this machine belongs to. ``"ray://host:10001"`` or ``"host:6379"``: connect to a
        remote cluster (e.g. one started from ``ray_config.yaml``).
    """
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
                     _node_ip_address="127.0.0.1", **kwargs)
    quiet_ray_data()
    return ray.cluster_resources()


def quiet_ray_data(progress_bars: bool | None = None) -> None:
    """Keep Ray Data's per-operator logs out of the way: brainstore shows its own progress bar."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress_bars) if progress_bars is not None else False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

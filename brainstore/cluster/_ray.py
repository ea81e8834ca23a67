"""Connecting to Ray: the CLI's re-export of the one connection helper (:mod:`brainstore._ray`)."""

from .._ray import connect, ensure_connected, quiet_ray_data

__all__ = ["connect", "ensure_connected", "quiet_ray_data"]

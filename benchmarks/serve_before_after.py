"""The plain server's request path before and after a change, side by side in one run. Last stdout line: JSON.

Checks out ``--before`` (a commit) into a temporary git worktree, and starts ``brainstore serve --local`` from it
and from this checkout on the same registry (``--registry``: e.g. serve_load.py's ``OUT/registry``), each in its
own process. Then ``--rounds`` rounds, alternating the servers (so a change in the machine's load falls on both),
of ``--seconds`` of ``--clients`` closed-loop clients posting ``/v1/encode`` with a random stored stimulus id.
Optionally (``--profile``) py-spy samples each server's GIL holder during one extra round and the JSON lists the
functions holding it most (the share of samples each function is on the stack for).

``--serve``: the Ray Serve app instead (each round a fresh embedded Ray cluster and Serve app built by that
checkout's ``build_app`` with its default options, in a child process whose ``PYTHONPATH`` is the checkout).

Usage: python benchmarks/serve_before_after.py --registry /tmp/bs-serve-load/registry --before 3411c7d [--serve]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_load import _load, _wait  # noqa: E402  (the same closed-loop load generator)


def _server(src: Path, registry: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "brainstore.cluster.cli", "serve", "--local", "--registry", registry,
                             "--port", str(port)], cwd=str(src), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _serve_child(registry: str, seconds: float, clients: int) -> None:
    """(In a child process, on the checkout's PYTHONPATH.) The Ray Serve app of this checkout under load: one
    JSON line with the closed-loop figures."""
    from ray import serve

    from brainstore.cluster._quiet import quiet_serve
    from brainstore.cluster._ray import connect
    from brainstore.serving import free_port
    from brainstore.serving._deploy import APP_NAME, build_app

    bodies = _encode_bodies(registry)[1]
    connect(None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with quiet_serve():
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        try:
            serve.run(build_app(registry), name=APP_NAME, route_prefix="/")
            _wait(url)
            asyncio.run(_load(url, "/v1/encode", bodies[:8], 4, 3))
            print(json.dumps(asyncio.run(_load(url, "/v1/encode", bodies, clients, seconds))), flush=True)
        finally:
            serve.shutdown()


def _encode_bodies(registry: str):
    """The registry's first encoding model and 256 encode bodies, each a random stored stimulus of its table."""
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry

    reg = ModelRegistry(registry, create=False)
    rec = next(r for r in reg.list() if r.meta.get("kind") not in ("decoder", "adaptor") and r.meta.get("store"))
    model, subject = rec.name.rsplit("/", 1)
    ids = FeatureStore(rec.meta["store"], create=False).ids(rec.meta["features"][0])
    rng = random.Random(0)
    return rec, [json.dumps({"subject": subject, "model": model, "stimulus_id": rng.choice(ids)}).encode()
                 for _ in range(256)]


def _serve_round(src: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, str(HERE / "serve_before_after.py"), "--child", "--registry", args.registry,
                        "--before", args.before, "--seconds", str(args.seconds), "--clients", str(args.clients)],
                       cwd=str(src), env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise SystemExit(f"the Serve round of {src} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def _top(raw: Path, n: int = 12) -> list[tuple[str, float]]:
    """The functions most often on the GIL holder's stack (inclusive share of the samples)."""
    incl, total = collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, k = line.rpartition(" ")
        frames = {re.sub(r" \((.*?):\d+\)$", lambda m: " (" + m.group(1).split("site-packages/")[-1] + ")", f)
                  for f in stack.split(";")}
        total += int(k)
        for f in frames:
            incl[f] += int(k)
    skip = ("threading.py", "runners.py", "_compat.py", "server.py")
    return [(f, round(v / max(total, 1), 3)) for f, v in incl.most_common(80) if not any(s in f for s in skip)][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--before", required=True, help="the commit to compare with (e.g. the one before the change)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="py-spy each server during one more round")
    ap.add_argument("--serve", action="store_true", help="the Ray Serve app of each checkout instead")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _serve_child(args.registry, args.seconds, args.clients)

    from brainstore.serving import free_port

    rec, bodies = _encode_bodies(args.registry)
    tmp = Path(tempfile.mkdtemp(prefix="bs-before-"))
    repo = HERE.parent
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tmp / "before"), args.before],
                   check=True, capture_output=True)
    servers, out = {}, {"before": [], "after": []}
    if args.serve:
        try:
            for r in range(args.rounds):
                for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    res = _serve_round(tmp / "before" if name == "before" else repo, args)
                    out[name].append(res)
                    print(f"round {r} {name} (Ray Serve): {res['rps']} rps, p50 {res['p50_ms']} ms", flush=True)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tmp / "before")],
                           capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
        return _report(args, rec, out, {})
    try:
        for name, src in (("before", tmp / "before"), ("after", repo)):
            port = free_port()
            servers[name] = (_server(src, args.registry, port), f"http://127.0.0.1:{port}")
            _wait(servers[name][1])
            asyncio.run(_load(servers[name][1], "/v1/encode", bodies[:8], 4, 3))  # warm-up
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                res = asyncio.run(_load(servers[name][1], "/v1/encode", bodies, args.clients, args.seconds))
                out[name].append(res)
                print(f"round {r} {name}: {res['rps']} rps, p50 {res['p50_ms']} ms, errors {res['errors']}", flush=True)
        profiles = {}
        if args.profile and shutil.which("py-spy"):
            for name, (proc, url) in servers.items():
                raw = tmp / f"{name}.raw"
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "-d", str(int(args.seconds)),
                                        "-r", "200", "-f", "raw", "--gil", "--nonblocking", "-o", str(raw)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                asyncio.run(_load(url, "/v1/encode", bodies, args.clients, args.seconds + 1))
                spy.wait(timeout=120)
                profiles[name] = _top(raw) if raw.exists() else []
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tmp / "before")],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _report(args, rec, out, profiles)


def _report(args, rec, out: dict, profiles: dict) -> None:
    mean = {k: sum(r["rps"] for r in v) / len(v) for k, v in out.items()}
    print(json.dumps({"before": args.before, "server": "ray-serve" if args.serve else "local", "model": rec.ref, "clients": args.clients, "seconds": args.seconds,
                      "rounds": args.rounds, "before_rps": [r["rps"] for r in out["before"]],
                      "after_rps": [r["rps"] for r in out["after"]],
                      "before_p50_ms": [r["p50_ms"] for r in out["before"]],
                      "after_p50_ms": [r["p50_ms"] for r in out["after"]],
                      "after_vs_before_rps": round(mean["after"] / max(mean["before"], 1e-9), 3),
                      "profiles": profiles, "loadavg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()

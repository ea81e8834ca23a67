"""The plain server's request path before and after a change, side by side in one run. Last stdout line: JSON.

Checks out ``--before`` (a commit) into a temporary git worktree, and starts ``brainstore serve --local`` from it
and from this checkout on the same registry (``--registry``: e.g. serve_load.py's ``OUT/registry``), each in its
own process. Then ``--rounds`` rounds, alternating the servers (so a change in the machine's load falls on both),
of ``--seconds`` of ``--clients`` closed-loop clients posting ``/v1/encode`` with a random stored stimulus id.
Optionally (``--profile``) py-spy samples each server's GIL holder during one extra round and the JSON lists the
functions holding it most (the share of samples each function is on the stack for).

Usage: python benchmarks/serve_before_after.py --registry /tmp/bs-serve-load/registry --before 3411c7d
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
    args = ap.parse_args()

    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry
    from brainstore.serving import free_port

    reg = ModelRegistry(args.registry, create=False)
    rec = next(r for r in reg.list() if r.meta.get("kind") not in ("decoder", "adaptor") and r.meta.get("store"))
    model, subject = rec.name.rsplit("/", 1)
    table = rec.meta["features"][0]
    ids = FeatureStore(rec.meta["store"], create=False).ids(table)
    rng = random.Random(0)
    bodies = [json.dumps({"subject": subject, "model": model, "stimulus_id": rng.choice(ids)}).encode()
              for _ in range(256)]
    tmp = Path(tempfile.mkdtemp(prefix="bs-before-"))
    repo = HERE.parent
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tmp / "before"), args.before],
                   check=True, capture_output=True)
    servers, out = {}, {"before": [], "after": []}
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
    mean = {k: sum(r["rps"] for r in v) / len(v) for k, v in out.items()}
    print(json.dumps({"before": args.before, "model": rec.ref, "clients": args.clients, "seconds": args.seconds,
                      "rounds": args.rounds, "before_rps": [r["rps"] for r in out["before"]],
                      "after_rps": [r["rps"] for r in out["after"]],
                      "before_p50_ms": [r["p50_ms"] for r in out["before"]],
                      "after_p50_ms": [r["p50_ms"] for r in out["after"]],
                      "after_vs_before_rps": round(mean["after"] / max(mean["before"], 1e-9), 3),
                      "profiles": profiles, "loadavg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()

"""Serving follows aliases without downtime (issue 28), on 127.0.0.1. Last stdout line: JSON.

Builds (once, under ``--out``) a small synthetic dataset of one subject, the tiny random-weight CLIP
image table and a ridge encoder ``img/subj01`` (version 1), then version 2 (its coefficients doubled, so
its answers differ) with ``champion`` -> 1. Side by side in this run, both on the same registry:

* local: ``brainstore serve --local`` (uvicorn, models in its process) in a subprocess;
* serve: the Ray Serve application (ingress, extractor, encoder, decoder deployments) started here;

both with the default ``refresh_s`` (2 s). ``--clients`` closed-loop clients per server (asyncio + aiohttp,
one process) post ``/v1/encode`` by bare name (``model: img``, a random stored stimulus id) for the whole
run; ``--phase`` seconds in, ``champion`` moves to version 2 (``reg.set_alias``); a phase later the alias
is removed (the bare name then serves its latest version: still 2) and version 3 is saved (coefficients
tripled), so the bare name moves to 3. Every answer names its version (``model_version``, header
``X-Brainstore-Model``). Per server: ``failed_requests`` (any answer but a 200, or none), and per change
``switch_s``: from the change until every answer carries the new version (the last older answer's arrival;
requests in flight at the change may finish on the old one).

Usage: python benchmarks/serve_swap.py [--clients 8 --phase 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "img/subj01"


def _say(msg: str) -> None:
    print(f"[serve_swap {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(out: Path) -> dict:
    """Dataset, image table and a registry holding ``img/subj01`` versions 1 and 2 under ``out/base`` (reused
    when there); each run serves a fresh copy of it (``out/registry``) with champion -> 1."""
    import shutil

    from brainstore.datasets import make_dataset
    from brainstore.features import FeatureStore, extract
    from brainstore.features.extractors.testing import register_tiny_models
    from brainstore.fitting import FitSpec, ModelRegistry, fit_encoding_models

    register_tiny_models()
    data, store, base = out / "data", str(out / "store"), out / "base"
    done = base / "done.json"
    if done.exists():
        img = json.loads(done.read_text())["table"]
    else:
        shutil.rmtree(base, ignore_errors=True)
        if not data.exists():
            make_dataset(data, n_subjects=1, n_train=240, n_test=40, n_vertices=1000, image_size=64, seed=0,
                         progress=False)
        img = extract(data, "clip:arch=brainstore-tiny-clip,pretrained=none", store, progress=False).feature
        _say("fitting img/subj01 (ridge on the tiny CLIP table)")
        spec = FitSpec(dataset=str(data), alphas=[1.0, 100.0, 10000.0], folds=3, models=[{"name": "img", "features": [img]}])
        run = fit_encoding_models(spec, store=store, registry=str(base), out=out / "fit", progress=False)
        assert not run.failures, run.failures
        _scaled(ModelRegistry(base), 2.0, "coefficients doubled")
        done.write_text(json.dumps({"table": img, "models": "img/subj01 versions 1 and 2"}))
    registry = out / "registry"
    shutil.rmtree(registry, ignore_errors=True)
    shutil.copytree(base, registry, ignore=shutil.ignore_patterns("done.json"))
    ModelRegistry(registry).set_alias(MODEL, "champion", 1)
    return {"data": data, "store": store, "registry": str(registry), "ids": FeatureStore(store, create=False).ids(img)}


def _scaled(reg, factor: float, note: str):
    """A new version of ``img/subj01``: version 1's coefficients times ``factor``."""
    tensors, rec = reg.load_arrays(f"{MODEL}@1")
    return reg.save(MODEL, {k: v * factor if k.endswith("coef_") else v for k, v in tensors.items()},
                    {**rec.meta, "note": note})


async def _client(url: str, bodies: list[bytes], seed: int, t_end: float, answers: list) -> None:
    import aiohttp

    rng = random.Random(seed)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                async with session.post(f"{url}/v1/encode", data=bodies[rng.randrange(len(bodies))],
                                        headers={"Content-Type": "application/json"}) as r:
                    doc = await r.json(content_type=None)
                    status, version = r.status, r.headers.get("X-Brainstore-Model")
                    if status == 200 and doc.get("model_version") != version:
                        status = -2  # the field and the header disagree: counted as a failure
            except Exception:
                status, version = -1, None
            answers.append((t0, time.monotonic(), status, version))


async def _load(urls: dict[str, str], bodies: list[bytes], clients: int, duration: float, events) -> dict:
    """``clients`` closed-loop clients per server for ``duration`` s; ``events``: [(at_s, fn)] run meanwhile
    (in a thread); returns each server's answers and each event's time."""
    t_start = time.monotonic()
    answers = {k: [] for k in urls}
    times = []

    async def changes() -> None:
        for at, fn in events:
            await asyncio.sleep(max(0.0, t_start + at - time.monotonic()))
            times.append(time.monotonic())
            await asyncio.to_thread(fn)

    tasks = [_client(u, bodies, 1000 * i + k, t_start + duration, answers[name])
             for i, (name, u) in enumerate(urls.items()) for k in range(clients)]
    await asyncio.gather(changes(), *tasks)
    return {"answers": answers, "times": times, "t_start": t_start, "wall": time.monotonic() - t_start}


def _switch_s(answers: list, t_change: float, t_next: float, new: str) -> float | None:
    """Seconds from ``t_change`` until every answer names ``new`` (the last other answer's arrival before
    ``t_next``); None when no answer named it."""
    window = [a for a in answers if t_change < a[1] < t_next]
    if not any(a[3] == new for a in window):
        return None
    late = [a[1] for a in window if a[3] != new]
    return round(max(late) - t_change, 2) if late else 0.0


def _figures(answers: list, times: list[float], wall: float) -> dict:
    import numpy as np

    lat = np.array([a[1] - a[0] for a in answers]) * 1000
    versions: dict[str, int] = {}
    for a in answers:
        versions[str(a[3])] = versions.get(str(a[3]), 0) + 1
    codes: dict[str, int] = {}
    for a in answers:
        codes[str(a[2])] = codes.get(str(a[2]), 0) + 1
    return {"requests": len(answers), "failed_requests": sum(a[2] != 200 for a in answers),
            "rps": round(len(answers) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "alias_switch_s": _switch_s(answers, times[0], times[1], f"{MODEL}@2"),
            "save_switch_s": _switch_s(answers, times[1], float("inf"), f"{MODEL}@3"),
            "versions": dict(sorted(versions.items())), "codes": codes}


def _wait(url: str, timeout: float = 180) -> None:
    import requests

    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="closed-loop clients per server")
    ap.add_argument("--phase", type=float, default=10.0, help="seconds before, between and after the changes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import logging

    import requests
    from ray import serve

    from brainstore.cluster._quiet import drop_stderr_lines, quiet_serve
    from brainstore.cluster._ray import connect
    from brainstore.fitting import ModelRegistry
    from brainstore.serving import free_port
    from brainstore.serving._deploy import APP_NAME, build_app

    t_all = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="bs-serve-swap-"))
    connect(None)
    with drop_stderr_lines():
        b = build(out)
    reg = ModelRegistry(b["registry"])
    rng = random.Random(0)
    bodies = [json.dumps({"subject": "subj01", "model": "img", "stimulus_id": rng.choice(b["ids"])}).encode()
              for _ in range(256)]
    urls = {"local": f"http://127.0.0.1:{free_port()}", "serve": f"http://127.0.0.1:{free_port()}"}
    local = subprocess.Popen([sys.executable, "-m", "brainstore.cluster.cli", "serve", "--local", "--registry",
                              b["registry"], "--port", urls["local"].rpartition(":")[2]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    quiet = quiet_serve()
    quiet.__enter__()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": int(urls["serve"].rpartition(":")[2])},
                    logging_config={"log_level": "WARNING"})
        serve.run(build_app(b["registry"]), name=APP_NAME, route_prefix="/")
        for u in urls.values():
            _wait(u)
            assert requests.post(f"{u}/v1/encode", data=bodies[0], timeout=60).json()["model_version"] == f"{MODEL}@1"
        asyncio.run(_load(urls, bodies[:8], 2, 3.0, []))  # warm-up
        setup_s = time.time() - t_all
        _say(f"load: {args.clients} clients per server; champion -> 2 at {args.phase:g} s, version 3 saved at "
             f"{2 * args.phase:g} s, end at {3 * args.phase:g} s")

        def save_v3() -> None:
            reg.remove_alias(MODEL, "champion")  # the bare name serves its latest version: 2, then 3 once saved
            _scaled(reg, 3.0, "coefficients tripled")

        run = asyncio.run(_load(urls, bodies, args.clients, 3 * args.phase,
                                [(args.phase, lambda: reg.set_alias(MODEL, "champion", 2, expect=1)),
                                 (2 * args.phase, save_v3)]))
        res = {k: _figures(v, run["times"], run["wall"]) for k, v in run["answers"].items()}
        for k, v in res.items():
            _say(f"{k}: {v}")
        cat = {k: requests.get(f"{u}/v1/models", timeout=60).json()["models"][MODEL] for k, u in urls.items()}
    finally:
        serve.shutdown()
        time.sleep(1.0)
        quiet.__exit__(None, None, None)
        local.terminate()
        local.wait(timeout=60)
    switches = [v[k] for v in res.values() for k in ("alias_switch_s", "save_switch_s")]
    print(json.dumps({
        "clients_per_server": args.clients, "phase_s": args.phase, "refresh_s": 2.0,
        "failed_requests": sum(v["failed_requests"] for v in res.values()),
        "switch_s": None if None in switches else max(switches),
        "requests": sum(v["requests"] for v in res.values()),
        "local": res["local"], "serve": res["serve"],
        "models_after": cat,
        "setup_s": round(setup_s, 1), "wall_s": round(time.time() - t_all, 1),
        "run_dir": str(out),
        "machine": {"cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
    }))


if __name__ == "__main__":
    main()

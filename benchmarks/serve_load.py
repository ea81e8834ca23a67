"""Serving under load on 127.0.0.1: Ray Serve against the same app under plain uvicorn. Last stdout line: JSON.

Builds (once, under ``--out``) a synthetic dataset of one subject with 10,000 training images, their
caption embeddings (the real all-MiniLM-L6-v2) through the extraction pipeline, a ridge encoding
model on them and a ridge decoder into them, so that decoding searches every one of the >= 10,000
stimuli of the table. Then, side by side in this run, for each server:

* plain: ``brainstore serve --local`` (uvicorn, models in its process) in a subprocess;
* serve: the Ray Serve application (ingress, extractor, encoder, decoder deployments) started here;

a bounded load of ``--duration`` seconds at ``--clients`` concurrent clients (asyncio + aiohttp, one
process) per route: ``/v1/encode`` (a random stored stimulus id) and ``/v1/decode`` (a random test
response, top-5 of the whole table). Then the fault run: Serve with two encoder replicas, one killed
(``ray.kill``) a third of the way into an encode load; the error rate over that load is
``fault_error_rate``.

Usage: python benchmarks/serve_load.py [--duration 60 --clients 32] [--out DIR]
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


def _say(msg: str) -> None:
    print(f"[serve_load {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(out: Path, n_train: int) -> dict:
    """Dataset, caption table, encoder and decoder under ``out`` (reused when already there)."""
    from brainstore.datasets import AlgonautsDataset, make_dataset
    from brainstore.features import extract
    from brainstore.fitting import FitSpec, ModelRegistry, fit_decoders, fit_encoding_models

    data, store, registry = out / "data", str(out / "store"), str(out / "registry")
    if not data.exists():
        _say(f"making the dataset ({n_train} training images) in {data}")
        make_dataset(data, n_subjects=1, n_train=n_train, n_test=200, n_vertices=1000, image_size=64, seed=0,
                     progress=False)
    rep = extract(data, "text", store, progress=False)
    txt = rep.feature
    reg = ModelRegistry(registry)
    if not any(r.meta.get("model") == "captions" for r in reg.list()):
        _say("fitting the encoder (ridge on the caption embeddings) and the decoder")
        spec = FitSpec(dataset=str(data), alphas=[10.0, 100.0, 1000.0, 10000.0], folds=3,
                       models=[{"name": "captions", "features": [txt]}])
        run = fit_encoding_models(spec, store=store, registry=registry, out=out / "fit", progress=False)
        assert not run.failures, run.failures
        drun = fit_decoders(data, txt, store=store, registry=registry, out=out / "dec", progress=False)
        assert not drun.failures, drun.failures
    ds = AlgonautsDataset(data)
    from brainstore.fitting import Decoder
    from brainstore.fitting import response_matrix

    dec = Decoder.load(registry, f"decoder-ridge-{txt}/subj01")
    R = response_matrix(ds, "subj01", "test", dec.voxels)
    from brainstore.features import FeatureStore

    ids = FeatureStore(store, create=False).ids(txt)
    return {"data": data, "store": store, "registry": registry, "table": txt, "ids": ids, "responses": R}


async def _load(url: str, route: str, bodies: list[bytes], clients: int, duration: float, on_third=None) -> dict:
    import aiohttp

    lat, errors, codes = [], 0, {}
    t_end = time.perf_counter() + duration
    fired = {"done": on_third is None}

    async def client(k: int, session) -> None:
        nonlocal errors
        rng = random.Random(k)
        while time.perf_counter() < t_end:
            body = bodies[rng.randrange(len(bodies))]
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}{route}", data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    status = r.status
            except Exception:
                status = -1
            lat.append(time.perf_counter() - t0)
            codes[status] = codes.get(status, 0) + 1
            if status != 200:
                errors += 1
            if not fired["done"] and time.perf_counter() > t_end - duration * 2 / 3:
                fired["done"] = True
                await asyncio.to_thread(on_third)

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, session) for k in range(clients)))
        wall = time.perf_counter() - t0
    import numpy as np

    ms = np.array(lat) * 1000
    return {"requests": len(lat), "rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "errors": errors,
            "codes": {str(k): v for k, v in sorted(codes.items())}}


def _bodies(b: dict, n: int = 256) -> dict[str, list[bytes]]:
    rng = random.Random(0)
    enc = [json.dumps({"subject": "subj01", "model": "captions", "stimulus_id": rng.choice(b["ids"])}).encode()
           for _ in range(n)]
    from brainstore.serving import encode_array

    R = b["responses"]
    dec = [json.dumps({"subject": "subj01", "responses": encode_array(R[rng.randrange(len(R))][None]),
                       "top_k": 5}).encode() for _ in range(n)]
    return {"/v1/encode": enc, "/v1/decode": dec}


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
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per route and server")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--train", type=int, default=10000, help="training images (the decoding table's size)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from brainstore.cluster._quiet import drop_stderr_lines, quiet_serve
    from brainstore.cluster._ray import connect
    from brainstore.serving import free_port

    t_all = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="bs-serve-load-"))
    connect(None)
    with drop_stderr_lines():
        b = build(out, args.train)
    bodies = _bodies(b)
    _say(f"decode table {b['table']}: {len(b['ids']):,} stimuli")
    res: dict = {}

    # plain uvicorn in its own process (no GIL shared with the load generator)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    plain = subprocess.Popen([sys.executable, "-m", "brainstore.cluster.cli", "serve", "--local", "--registry",
                              b["registry"], "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(url)
        for route in bodies:
            asyncio.run(_load(url, route, bodies[route][:8], 4, 3))  # warm-up (models loaded, index built)
            res[f"plain{route}"] = asyncio.run(_load(url, route, bodies[route], args.clients, args.duration))
            _say(f"plain {route}: {res[f'plain{route}']}")
    finally:
        plain.terminate()
        plain.wait(timeout=60)

    import logging

    from ray import serve

    from brainstore.serving._deploy import APP_NAME, build_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    quiet = quiet_serve()
    quiet.__enter__()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(build_app(b["registry"]), name=APP_NAME, route_prefix="/")
        _wait(url)
        for route in bodies:
            asyncio.run(_load(url, route, bodies[route][:8], 4, 3))
            res[f"serve{route}"] = asyncio.run(_load(url, route, bodies[route], args.clients, args.duration))
            _say(f"serve {route}: {res[f'serve{route}']}")
        # fault: two encoder replicas, one killed a third of the way into the load
        serve.run(build_app(b["registry"], options={"Encoder": {"num_replicas": 2}}), name=APP_NAME, route_prefix="/")
        _wait(url)
        asyncio.run(_load(url, "/v1/encode", bodies["/v1/encode"][:8], 4, 3))
        killed = {}

        def kill_one() -> None:
            import ray

            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "Encoder" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
            killed["name"] = names[0]
            ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
            _say(f"killed {names[0]}")

        res["fault"] = asyncio.run(_load(url, "/v1/encode", bodies["/v1/encode"], args.clients, args.duration, kill_one))
        res["fault"]["killed"] = killed.get("name")
        _say(f"fault run: {res['fault']}")
    finally:
        serve.shutdown()
        time.sleep(1.0)
        quiet.__exit__(None, None, None)

    e, d = res["serve/v1/encode"], res["serve/v1/decode"]
    pe, pd = res["plain/v1/encode"], res["plain/v1/decode"]
    print(json.dumps({
        "duration_s": args.duration, "clients": args.clients, "decode_table_rows": len(b["ids"]),
        "encode_rps": e["rps"], "encode_p50_ms": e["p50_ms"], "encode_p99_ms": e["p99_ms"],
        "decode_rps": d["rps"], "decode_p50_ms": d["p50_ms"], "decode_p99_ms": d["p99_ms"],
        "errors": e["errors"] + d["errors"],
        "plain_encode_rps": pe["rps"], "plain_encode_p50_ms": pe["p50_ms"], "plain_encode_p99_ms": pe["p99_ms"],
        "plain_decode_rps": pd["rps"], "plain_decode_p50_ms": pd["p50_ms"], "plain_decode_p99_ms": pd["p99_ms"],
        "plain_errors": pe["errors"] + pd["errors"],
        "serve_vs_plain_rps_ratio": round((e["rps"] + d["rps"]) / max(pe["rps"] + pd["rps"], 1e-9), 3),
        "serve_vs_plain_encode_rps_ratio": round(e["rps"] / max(pe["rps"], 1e-9), 3),
        "serve_vs_plain_decode_rps_ratio": round(d["rps"] / max(pd["rps"], 1e-9), 3),
        "fault_error_rate": round(res["fault"]["errors"] / max(res["fault"]["requests"], 1), 5),
        "fault": res["fault"],
        "runs": res,
        "wall_s": round(time.time() - t_all, 1),
        "run_dir": str(out),
        "machine": {"cpu_count": os.cpu_count()},
    }))


if __name__ == "__main__":
    main()

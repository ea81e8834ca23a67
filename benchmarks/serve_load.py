"""Serving under load on 127.0.0.1: Ray Serve against the same app under plain uvicorn. Last stdout line: JSON.

Builds (once, under ``--out``) a synthetic dataset of one subject with 10,000 training images, their
caption embeddings (the real all-MiniLM-L6-v2) through the extraction pipeline, a ridge encoding
model on them and a ridge decoder into them, so that decoding searches every one of the >= 10,000
stimuli of the table. Then, side by side in this run, for each server:

* plain: ``brainstore serve --local`` (uvicorn, models in its process) in a subprocess;
* serve: the Ray Serve application (Ingress replicas holding the models, an Extractor) started here on an
  embedded cluster, so behind HAProxy (``ingress``: ``haproxy``; ``serve-proxy`` where ``RAY_SERVE_ENABLE_HA_PROXY=0``);

three loads per route (asyncio + aiohttp in this process), ``/v1/encode`` (a random stored stimulus id) and
``/v1/decode`` (a random test response, top-5 of the whole table):

* saturation: ``--clients`` closed-loop clients for ``--duration`` seconds (``encode_rps``, ``plain_encode_rps``...),
  a Serve app with its Ingress at :data:`REPLICAS` replicas (``ingress_replicas``: the default autoscaling's
  maximum, fixed: the service at its scale-out, not the autoscaler's reaction time);
* latency at a stated load: an open-loop generator, Poisson arrivals at ``--rate`` requests/s for
  ``--open-duration`` seconds, each request sent at its arrival time whatever the earlier ones are doing, its
  latency counted from that time (``encode_p50_ms``, ``encode_p99_ms``, ``decode_p99_ms``; ``plain_`` too);
* batches: 256 stimulus ids per ``/v1/encode`` request, 4 closed-loop clients (``batch_stimuli_per_s``).

Before them, ``serve_ready_s``: from starting ``brainstore serve`` (the Ray Serve app, its own Ray) to
``/readyz`` 200, and ``plain_ready_s`` for ``brainstore serve --local``. Last, the fault run: Serve with two
replicas of the deployment answering encodes, one killed (``ray.kill``) a third of the way into an encode
load; the error rate over that load is ``fault_error_rate``.

What HAProxy bought, side by side: the same app behind Serve's own Python proxy, saturation of both routes
(``proxy_encode_rps``, ``proxy_decode_rps``, ``haproxy_vs_proxy_encode_rps_ratio``; ``--no-proxy`` skips it).

Usage: python benchmarks/serve_load.py [--duration 60 --clients 32 --rate 50 --open-duration 30] [--out DIR]
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


async def _post(session, url: str, body: bytes) -> int:
    """POST a JSON body, read the whole answer: its status (-1: no answer)."""
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            return r.status
    except Exception:
        return -1


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
            status = await _post(session, f"{url}{route}", body)
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


async def _open_loop(url: str, route: str, bodies: list[bytes], rate: float, duration: float, seed: int = 0) -> dict:
    """Poisson arrivals at ``rate`` per second for ``duration`` s: each request sent at its arrival time (no
    connection limit, so none waits in this client), its latency from that time to its answer's last byte."""
    import aiohttp
    import numpy as np

    rng = random.Random(seed)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        times.append(t)
    lat, codes = [], {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(at: float, body: bytes) -> None:
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            start = t0 + at  # the arrival time: a late send counts against the service, not hidden
            status = await _post(session, f"{url}{route}", body)
            lat.append(loop.time() - start)
            codes[status] = codes.get(status, 0) + 1

        await asyncio.gather(*(one(at, bodies[rng.randrange(len(bodies))]) for at in times))
    ms = np.array(lat) * 1000
    return {"requests": len(lat), "offered_rps": rate, "achieved_rps": round(len(lat) / duration, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "errors": sum(v for k, v in codes.items() if k != 200),
            "codes": {str(k): v for k, v in sorted(codes.items())}}


def _ready_time(args: list[str], url: str, timeout: float = 300) -> float:
    """Seconds from starting ``brainstore serve ARGS`` to ``/readyz`` 200; the server is stopped after (Ctrl-C)."""
    import signal

    import requests

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "brainstore.cluster.cli", "serve", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"brainstore serve {' '.join(args)} exited with {proc.returncode} before ready")
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return round(time.perf_counter() - t0, 2)
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise SystemExit(f"brainstore serve {' '.join(args)}: not ready after {timeout} s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def _bodies(b: dict, n: int = 256) -> dict[str, list[bytes]]:
    rng = random.Random(0)
    enc = [json.dumps({"subject": "subj01", "model": "captions", "stimulus_id": rng.choice(b["ids"])}).encode()
           for _ in range(n)]
    from brainstore.serving import encode_array

    R = b["responses"]
    dec = [json.dumps({"subject": "subj01", "responses": encode_array(R[rng.randrange(len(R))][None]),
                       "top_k": 5}).encode() for _ in range(n)]
    return {"/v1/encode": enc, "/v1/decode": dec}


def _batch_bodies(b: dict, size: int = 256, n: int = 32) -> list[bytes]:
    rng = random.Random(1)
    return [json.dumps({"subject": "subj01", "model": "captions", "stimulus_id": rng.sample(b["ids"], size)}).encode()
            for _ in range(n)]


def _ingress_replicas() -> int:
    """Running replicas of the Serve app's Ingress deployment."""
    from ray import serve

    from brainstore.serving._deploy import APP_NAME

    dep = serve.status().applications[APP_NAME].deployments["Ingress"]
    return int(dep.replica_states.get("RUNNING", 0))


#: The Ingress replicas the Serve app is measured with: the default autoscaling's maximum, fixed, so that the
#: figures are the service at its scale-out and not the autoscaler's reaction time (runs up to 5 measured the
#: upscale inside the 30 s window; a run of 2026-12-08 saw the autoscaler stay at one replica for 64 s of load).
REPLICAS = 2


def _measure(url: str, bodies: dict, batch: list[bytes] | None, args, res: dict, who: str) -> None:
    """The three loads of one server: saturation and open loop per route, then batches (``batch`` None: saturation
    only)."""
    if who != "plain":
        res[f"{who}_ingress_replicas"] = _ingress_replicas()
    for route in bodies:
        asyncio.run(_load(url, route, bodies[route][:8], 4, 3))  # warm-up (models loaded, index built)
        res[f"{who}{route}"] = asyncio.run(_load(url, route, bodies[route], args.clients, args.duration))
        _say(f"{who} {route} saturation: {res[f'{who}{route}']}")
        if batch is None:
            continue
        res[f"{who}{route}@open"] = asyncio.run(_open_loop(url, route, bodies[route], args.rate, args.open_duration))
        _say(f"{who} {route} open loop at {args.rate:g}/s: {res[f'{who}{route}@open']}")
    if batch is None:
        return
    r = asyncio.run(_load(url, "/v1/encode", batch, 4, args.duration / 2))
    r["stimuli_per_s"] = round(r["rps"] * BATCH, 1)
    res[f"{who}/v1/encode@batch"] = r
    _say(f"{who} batches of {BATCH}: {r}")


BATCH = 256


def _start_app(registry: str) -> str:
    """The Ray Serve app on a free port of this process's cluster, its Ingress at :data:`REPLICAS`, ready: its URL."""
    from ray import serve

    from brainstore.serving import free_port
    from brainstore.serving._deploy import APP_NAME, build_app

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(build_app(registry, options={"Ingress": {"num_replicas": REPLICAS}}), name=APP_NAME, route_prefix="/")
    _wait(url)
    return url


def _proxy_run(b: dict, bodies: dict, args, res: dict) -> None:
    """Saturation of both routes on the Serve app behind Serve's own Python proxy (``RAY_SERVE_ENABLE_HA_PROXY=0``,
    a fresh embedded cluster), side by side with the HAProxy run above."""
    import ray
    from ray import serve

    from brainstore._ray import CHOSEN_ENV, HAPROXY_ENV
    from brainstore.cluster._quiet import quiet_serve
    from brainstore.cluster._ray import connect

    ray.shutdown()
    saved = {k: os.environ.get(k) for k in (HAPROXY_ENV, CHOSEN_ENV)}
    os.environ[HAPROXY_ENV] = "0"
    os.environ.pop(CHOSEN_ENV, None)
    try:
        connect(None)
        with quiet_serve():
            try:
                _measure(_start_app(b["registry"]), bodies, None, args, res, "proxy")
            finally:
                serve.shutdown()
                time.sleep(1.0)
        ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    ap.add_argument("--rate", type=float, default=50.0, help="open loop: Poisson arrivals per second")
    ap.add_argument("--open-duration", type=float, default=30.0, help="open loop: seconds per route and server")
    ap.add_argument("--train", type=int, default=10000, help="training images (the decoding table's size)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-proxy", action="store_true",
                    help="skip the side-by-side saturation run of the Serve app behind Serve's own Python proxy")
    args = ap.parse_args()

    from brainstore.cluster._quiet import drop_stderr_lines, quiet_serve
    from brainstore._ray import HAPROXY_ENV
    from brainstore.cluster._ray import connect
    from brainstore.serving import free_port

    t_all = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="bs-serve-load-"))
    connect(None)
    with drop_stderr_lines():
        b = build(out, args.train)
    bodies, batch = _bodies(b), _batch_bodies(b)
    import ray

    ray.shutdown()  # the build's Ray workers (a Ray Data worker kept ~0.4 CPU busy) stay off the measurements
    _say(f"decode table {b['table']}: {len(b['ids']):,} stimuli")
    res: dict = {}
    # time to ready: each server started as users start it (the Ray Serve app with its own Ray)
    port = free_port()
    res["serve_ready_s"] = _ready_time(["--registry", b["registry"], "--port", str(port)], f"http://127.0.0.1:{port}")
    port = free_port()
    res["plain_ready_s"] = _ready_time(["--local", "--registry", b["registry"], "--port", str(port)],
                                       f"http://127.0.0.1:{port}")
    _say(f"ready after {res['serve_ready_s']} s (Ray Serve), {res['plain_ready_s']} s (--local)")

    # plain uvicorn in its own process (no GIL shared with the load generator)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    plain = subprocess.Popen([sys.executable, "-m", "brainstore.cluster.cli", "serve", "--local", "--registry",
                              b["registry"], "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(url)
        _measure(url, bodies, batch, args, res, "plain")
    finally:
        plain.terminate()
        plain.wait(timeout=60)

    import logging

    from ray import serve

    from brainstore.serving._deploy import APP_NAME, build_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    connect(None)  # a fresh embedded cluster for the Ray Serve app
    res["ingress"] = "haproxy" if os.environ.get(HAPROXY_ENV) == "1" else "serve-proxy"
    _say(f"Ray Serve ingress: {res['ingress']}")
    quiet = quiet_serve()
    quiet.__enter__()
    try:
        url = _start_app(b["registry"])
        _measure(url, bodies, batch, args, res, "serve")
        # fault: two encoder replicas, one killed a third of the way into the load
        serve.run(build_app(b["registry"], options={"Ingress": {"num_replicas": 2}}), name=APP_NAME, route_prefix="/")
        _wait(url)
        asyncio.run(_load(url, "/v1/encode", bodies["/v1/encode"][:8], 4, 3))
        killed = {}

        def kill_one() -> None:
            import ray

            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "Ingress" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
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

    if not args.no_proxy:  # what HAProxy bought: the same app behind Serve's own proxy, saturation only
        _proxy_run(b, bodies, args, res)

    e, d = res["serve/v1/encode"], res["serve/v1/decode"]
    pe, pd = res["plain/v1/encode"], res["plain/v1/decode"]
    oe, od, ope, opd = (res[f"{w}/v1/{r}@open"] for w in ("serve", "plain") for r in ("encode", "decode"))
    errors = sum(v["errors"] for k, v in res.items() if isinstance(v, dict) and k.startswith("serve/"))
    plain_errors = sum(v["errors"] for k, v in res.items() if isinstance(v, dict) and k.startswith("plain/"))
    print(json.dumps({
        "duration_s": args.duration, "clients": args.clients, "decode_table_rows": len(b["ids"]),
        "open_loop_rps": args.rate, "open_loop_s": args.open_duration, "batch_size": BATCH,
        "encode_rps": e["rps"], "decode_rps": d["rps"], "plain_encode_rps": pe["rps"], "plain_decode_rps": pd["rps"],
        "serve_vs_plain_rps_ratio": round((e["rps"] + d["rps"]) / max(pe["rps"] + pd["rps"], 1e-9), 3),
        "serve_vs_plain_encode_rps_ratio": round(e["rps"] / max(pe["rps"], 1e-9), 3),
        "serve_vs_plain_decode_rps_ratio": round(d["rps"] / max(pd["rps"], 1e-9), 3),
        "encode_p50_ms": oe["p50_ms"], "encode_p99_ms": oe["p99_ms"], "decode_p50_ms": od["p50_ms"],
        "decode_p99_ms": od["p99_ms"], "plain_encode_p50_ms": ope["p50_ms"], "plain_encode_p99_ms": ope["p99_ms"],
        "plain_decode_p50_ms": opd["p50_ms"], "plain_decode_p99_ms": opd["p99_ms"],
        "saturated_p50_ms": {k: v["p50_ms"] for k, v in res.items() if isinstance(v, dict) and "@" not in k
                             and k != "fault"},
        "batch_stimuli_per_s": res["serve/v1/encode@batch"]["stimuli_per_s"],
        "plain_batch_stimuli_per_s": res["plain/v1/encode@batch"]["stimuli_per_s"],
        "serve_ready_s": res["serve_ready_s"], "plain_ready_s": res["plain_ready_s"],
        "ingress": res["ingress"], "ingress_replicas": res["serve_ingress_replicas"],
        **({"proxy_encode_rps": res["proxy/v1/encode"]["rps"], "proxy_decode_rps": res["proxy/v1/decode"]["rps"],
            "haproxy_vs_proxy_encode_rps_ratio": round(e["rps"] / max(res["proxy/v1/encode"]["rps"], 1e-9), 3),
            "haproxy_vs_proxy_decode_rps_ratio": round(d["rps"] / max(res["proxy/v1/decode"]["rps"], 1e-9), 3)}
           if "proxy/v1/encode" in res else {}),
        "errors": errors, "plain_errors": plain_errors,
        "fault_error_rate": round(res["fault"]["errors"] / max(res["fault"]["requests"], 1), 5),
        "fault": res["fault"],
        "runs": res,
        "wall_s": round(time.time() - t_all, 1),
        "run_dir": str(out),
        "machine": {"cpu_count": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
    }))


if __name__ == "__main__":
    main()

"""Scale-out on one machine: extraction and fitting on a local Ray cluster of 1 versus 2 worker nodes.

Each configuration is a fresh local cluster (``ray.cluster_utils.Cluster``, every node on 127.0.0.1):
a head with 0 CPUs (the driver's node: GCS, no tasks) and N worker nodes of ``--cpus-per-node``
CPUs each (default: half this machine's cores, so that 2 nodes fill it). On it, timed stage by stage:

* ``cluster_start_s``: head + N workers started and the driver connected (``brainstore._ray.connect``);
* ``extract_s``: ``extract()`` of every ``--extractors`` spec into a fresh store (default: the tiny
  random-weight CLIP image tower, decode-bound, and the bundled all-MiniLM-L6-v2 captions,
  model-bound), model actors' start-up included; ``extract_by_table_s`` splits it;
* ``fit_s``: ``fit_encoding_models(default_spec(..., include_random=True))`` (ridge per table,
  banded ridge on their union, per-ROI choice, average ensemble; every subject x hemisphere),
  predictions written and models registered into a fresh registry.

``scale_1node_s`` / ``scale_2node_s`` are extraction + fitting (the work; the cluster start is
reported beside it), and ``speedup_2_vs_1`` their ratio, both configurations measured in this run
(``--repeats`` alternates them and keeps each stage's best). The dataset (synthetic, cached in
``--data``) is made once, before any timing. Progress goes to stderr; the last line of stdout is
one JSON object.

Usage: python benchmarks/scale.py [--subjects 2] [--train 600] [--test 100] [--vertices 2000]
       [--image-size 128] [--cpus-per-node N] [--repeats 1] [--extractors SPEC ...] [--data DIR]
Bigger: e.g. --train 4000 --vertices 10000 (fit-bound), --cpus-per-node 4 on a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every node on loopback: Ray resolves 127.0.0.1 to itself (see brainstore._ray.keep_loopback)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

DEFAULT_EXTRACTORS = ["clip:arch=brainstore-tiny-clip,pretrained=none", "text"]
NODE_OBJECT_STORE = 256 * 1024 * 1024  # per node


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2 ** 20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    import ray

    return {"cpu_count": os.cpu_count(), "memory_gb": mem_gb, "platform": platform.platform(),
            "python": platform.python_version(), "ray": ray.__version__,
            "gpu": False if not shutil.which("nvidia-smi") else "nvidia-smi present (not used)",
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def make_data(data: Path, args) -> Path:
    from brainstore.datasets import make_dataset

    ds = data / f"dataset-{args.subjects}s-{args.train}-{args.test}-{args.vertices}-{args.image_size}px"
    if not (ds / "synthetic.json").exists():
        log(f"making the dataset in {ds}")
        make_dataset(ds, n_subjects=args.subjects, n_train=args.train, n_test=args.test, n_vertices=args.vertices,
                     image_size=args.image_size, seed=0, overwrite=True, progress=False)
    return ds


def run_config(n_nodes: int, cpus: float, ds: Path, work: Path, extractors: list[str]) -> dict:
    """One configuration on a fresh cluster: its stage times and what it made."""
    import ray
    from ray.cluster_utils import Cluster

    from brainstore._ray import connect
    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import extract
    from brainstore.fitting import default_spec, fit_encoding_models

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store, registry = str(work / "store"), str(work / "registry")
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False,
                                                            "object_store_memory": NODE_OBJECT_STORE})
    try:
        for _ in range(n_nodes):
            cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", object_store_memory=NODE_OBJECT_STORE)
        res = connect(address=cluster.address)
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == n_nodes + 1 and res.get("CPU") == n_nodes * cpus, (alive, res)
        start_s = time.time() - t0
        log(f"{n_nodes} worker node(s) x {cpus:g} CPU: cluster up in {start_s:.1f} s")
        t0 = time.time()
        by_table = {}
        for spec in extractors:
            rep = extract(ds, spec, store, progress=False)
            by_table[rep.feature] = round(rep.seconds, 2)
            log(f"  extract {rep.feature}: {rep.written} rows in {rep.seconds:.1f} s")
        extract_s = time.time() - t0
        t0 = time.time()
        fspec = default_spec(ds, store, registry, include_random=True)
        run = fit_encoding_models(fspec, store=store, registry=registry, out=work / "run", progress=False)
        fit_s = time.time() - t0
        if run.failures:
            raise RuntimeError(f"fit failures: {run.failures}")
        log(f"  fit {len(run.registered)} models in {fit_s:.1f} s")
        return {"cluster_start_s": round(start_s, 2), "extract_s": round(extract_s, 2), "fit_s": round(fit_s, 2),
                "extract_by_table_s": by_table, "n_models_registered": len(run.registered),
                "n_fit_tasks": len(fspec.models) * len(fspec.hemispheres) * len(AlgonautsDataset(ds).subjects)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--train", type=int, default=600, help="training images per subject")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--vertices", type=int, default=2000, help="vertices per hemisphere (about)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--cpus-per-node", type=float, default=None,
                    help="CPUs of each worker node (default: half this machine's cores, at least 1)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the configurations this many times; best kept")
    ap.add_argument("--extractors", nargs="+", default=DEFAULT_EXTRACTORS)
    ap.add_argument("--data", type=Path, default=None, help="cache folder for the dataset (and scratch space)")
    args = ap.parse_args()
    cpus = args.cpus_per_node or max(1, (os.cpu_count() or 2) // 2)
    data = (args.data or Path(os.environ.get("TMPDIR", "/tmp")) / "bs-scale").absolute()
    data.mkdir(parents=True, exist_ok=True)

    # Lance's at-fork warnings are false alarms here (Ray starts nodes by fork + exec)
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    logging.getLogger("ray").setLevel(logging.WARNING)
    from brainstore.features.extractors.testing import register_tiny_models

    register_tiny_models(with_open_clip=False)
    ds = make_data(data, args)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.repeats):
        for n in (1, 2):
            log(f"repeat {r + 1}/{args.repeats}: {n} worker node(s)")
            runs[n].append(run_config(n, cpus, ds, data / f"work-{n}node", args.extractors))
    stages = {}
    for n, rs in runs.items():
        best = {k: min(x[k] for x in rs) for k in ("cluster_start_s", "extract_s", "fit_s")}
        stages[n] = {**best, "extract_by_table_s": rs[0]["extract_by_table_s"] if len(rs) == 1 else
                     {t: min(x["extract_by_table_s"][t] for x in rs) for t in rs[0]["extract_by_table_s"]},
                     "runs": rs if len(rs) > 1 else None}
    total = {n: round(s["extract_s"] + s["fit_s"], 2) for n, s in stages.items()}
    out = {"scale_1node_s": total[1], "scale_2node_s": total[2],
           "speedup_2_vs_1": round(total[1] / total[2], 3),
           "extract_speedup_2_vs_1": round(stages[1]["extract_s"] / stages[2]["extract_s"], 3),
           "fit_speedup_2_vs_1": round(stages[1]["fit_s"] / stages[2]["fit_s"], 3),
           "stages_1node": stages[1], "stages_2node": stages[2],
           "cpus_per_node": cpus, "extractors": args.extractors, "repeats": args.repeats,
           "size": {"subjects": args.subjects, "train": args.train, "test": args.test, "vertices": args.vertices,
                    "image_size": args.image_size, "models": runs[1][0]["n_models_registered"]},
           "machine": machine()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

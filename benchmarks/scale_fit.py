"""The full default fit at Algonauts subject-1 scale: wall time and memory of driver and workers.

Set-up (not timed, cached in ``--data``): a synthetic dataset of ``--subjects`` subjects at subject-1
scale (9,841 train + 159 test images, ~19,004 vertices per hemisphere) and two feature tables,
p = 512 (a small random-weight CLIP image tower with a 512-d projection, through the extraction
pipeline) and p = 384 (caption embeddings, the real all-MiniLM-L6-v2).

Timed: ``fit_encoding_models(default_spec(..., include_random=True))``, i.e. ridge per table, banded
ridge on their union, the per-ROI choice and the average ensemble, every subject x hemisphere, with
predictions written to the run folder and every model registered. ``wall_s`` is that call alone;
``driver_peak_rss_gb`` is this process's peak resident memory measured right after it (set-up runs in
child processes so it does not count); ``worker_peak_rss_gb`` is the largest peak of any fit or
assembly worker (each reports its own ``ru_maxrss``).

Then, side by side for one subject x hemisphere and the p = 512 table: the same cross-validated ridge
(same 5 folds, same alphas, alpha per vertex by Pearson r) with ours (``RidgeCVEncoder.fit``) and with
himalaya's ``RidgeCV`` (torch backend on CPU): ``ridge_speedup_vs_himalaya_loop`` = himalaya / ours.

Progress goes to stderr; the last line of stdout is one JSON object.

Usage: python benchmarks/scale_fit.py [--subjects 2] [--data DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH_CLIP = "brainstore-bench-clip-512"
BENCH_CLIP_CONFIG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
FULL = dict(n_train=9841, n_test=159, n_vertices=19004)
QUICK = dict(n_train=600, n_test=60, n_vertices=1500)


def log(msg: str) -> None:
    print(f"[scale-fit {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def prepare(data: Path, subjects: int, size: dict) -> None:
    """Child process: make the dataset and extract both feature tables (resumable; skipped when done)."""
    from brainstore._ray import connect
    from brainstore.datasets import make_dataset
    from brainstore.features import extract
    from brainstore.features import register_clip_config

    ds_dir, store = data / "dataset", str(data / "store")
    if not (ds_dir / "synthetic.json").exists():
        log(f"making the dataset in {ds_dir} ({subjects} subjects, {size})")
        make_dataset(ds_dir, n_subjects=subjects, image_size=96, overwrite=True, seed=0, **size)
    connect()
    register_clip_config(BENCH_CLIP, BENCH_CLIP_CONFIG)
    for spec in (f"clip:arch={BENCH_CLIP},pretrained=none", "text"):
        rep = extract(ds_dir, spec, store, batch_size=128)
        log(f"{rep.feature}: {rep.written} written, {rep.already_stored} already stored ({rep.seconds:.1f} s)")


def himalaya_side_by_side(data: Path) -> dict:
    """Ours vs himalaya RidgeCV on subject 1, lh, the 512-d table: same folds, alphas and scoring."""
    import numpy as np
    import torch
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import correlation_score

    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import FitSpec, RidgeCVEncoder, design_matrix, subject_stimuli

    ds, fs = AlgonautsDataset(data / "dataset"), FeatureStore(data / "store")
    table = next(n for n in fs.names() if n.startswith("clip-"))
    X = design_matrix(fs, [table], subject_stimuli(ds, "subj01", "train"))
    Y = np.asarray(ds.responses("subj01", "lh"), dtype=np.float32)
    alphas = np.asarray(FitSpec(dataset=".", models=[{"name": "m", "features": ["f"]}]).alphas)
    from sklearn.model_selection import KFold

    folds = list(KFold(5).split(X))
    torch.set_num_threads(os.cpu_count() or 1)
    log(f"ours: RidgeCVEncoder on X {X.shape}, Y {Y.shape}")
    t0 = time.perf_counter()
    RidgeCVEncoder(alphas=tuple(alphas), n_folds=5, device="cpu").fit(X, Y, folds=folds)
    ours_s = time.perf_counter() - t0
    log(f"ours: {ours_s:.1f} s; himalaya RidgeCV (torch backend, CPU)")
    set_backend("torch", on_error="raise")
    t0 = time.perf_counter()
    RidgeCV(alphas=alphas, cv=folds, fit_intercept=True,
            solver_params=dict(score_func=correlation_score, n_targets_batch=4096)).fit(X, Y)
    h_s = time.perf_counter() - t0
    log(f"himalaya: {h_s:.1f} s")
    set_backend("numpy")
    return {"ridge_table": table, "ridge_size": {"n": int(X.shape[0]), "p": int(X.shape[1]), "t": int(Y.shape[1])},
            "ridge_ours_s": round(ours_s, 2), "ridge_himalaya_s": round(h_s, 2),
            "ridge_speedup_vs_himalaya_loop": round(h_s / ours_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="cache folder for the dataset and store (reused)")
    ap.add_argument("--quick", action="store_true", help="a small size, to check the benchmark itself")
    ap.add_argument("--skip-himalaya", action="store_true")
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = QUICK if args.quick else FULL
    data = (args.data or Path(os.environ.get("TMPDIR", "/tmp")) / f"bs-scale-fit-{args.subjects}s{'-quick' if args.quick else ''}")
    data = data.absolute()
    if args.prepare_only:
        prepare(data, args.subjects, size)
        return
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subprocess.run([sys.executable, __file__, "--prepare-only", "--subjects", str(args.subjects), "--data", str(data)]
                   + (["--quick"] if args.quick else []), check=True)
    prep_s = time.time() - t0

    from brainstore._ray import connect
    from brainstore.fitting import default_spec, fit_encoding_models

    res = connect()
    registry = data / f"registry-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = default_spec(data / "dataset", str(data / "store"), str(registry), include_random=True)
    log(f"fitting {len(spec.models)} base models ({', '.join(m.method for m in spec.models)}), "
        f"{len(spec.per_roi)} per-ROI, {len(spec.ensembles)} ensemble(s) for {args.subjects} subjects x 2 hemispheres")
    t0 = time.time()
    run = fit_encoding_models(spec, store=str(data / "store"), registry=str(registry), out=registry / "_run")
    wall_s = time.time() - t0
    driver = peak_rss_gb()
    log(f"fit: {wall_s:.1f} s, driver peak RSS {driver:.2f} GB, worker peak RSS {run.worker_peak_rss_gb:.2f} GB, "
        f"failures {run.failures}")
    out = {"subjects": args.subjects, "size": size, "models": run.models, "kinds": run.kinds,
           "registered": len(run.registered), "failures": run.failures,
           "wall_s": round(wall_s, 1), "driver_peak_rss_gb": round(driver, 3),
           "worker_peak_rss_gb": round(run.worker_peak_rss_gb, 3),
           "goals": {"driver_peak_rss_gb": "<= 1.5", "wall_s": "<= 900 on 2 cores"},
           "nnmc": {m: round(sum(v["both"]["test_nnmc"] for v in by_s.values()) / len(by_s), 2)
                    for m, by_s in run.metrics.items()},
           "setup_s": round(prep_s, 1)}
    if not args.skip_himalaya:
        out.update(himalaya_side_by_side(data))
    out["machine"] = {"cpu_count": os.cpu_count(), "ray_cpus": res.get("CPU"), "platform": platform.platform(),
                      "loadavg": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

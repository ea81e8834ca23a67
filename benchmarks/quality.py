"""Encoding-model quality on the synthetic dataset. Last stdout line: one JSON object.

Runs the demo pipeline (synthetic dataset -> CLIP image, caption text and Gabor motion-energy
features -> ridge per feature table, banded ridge on their union, per-ROI choice on the
validation fold, average ensemble) and reports the test NNMC per ROI for each model, mean over
subjects, with the oracle's NNMC beside them. ``early_visual`` compares, in the same run, the best
early-visual (prf-visualrois) NNMC of the models using motion-energy features with that of the
models that do not.

``--video`` measures the synthetic video dataset instead (``make-dataset --kind video``: continuous
runs, HRF-convolved BOLD): motion energy over the clips and CLIP over the frames (pooled per TR),
each with and without FIR delays (1-4 TRs), and their banded combination (delayed), fitted with
leave-one-run-out folds; test Pearson r and NNMC per ROI family next to the oracle (the noiseless
BOLD scored the same way).

Usage: python benchmarks/quality.py [--subjects 2 --train 600 --test 100 --vertices 2000]
       [--image-extractor SPEC] [--out DIR]
       python benchmarks/quality.py --video [--subjects 2 --runs 6 --trs 50 --vertices 600]
       [--image-extractor SPEC] [--resample average|lanczos] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--vertices", type=int, default=None, help="per hemisphere (default 2000; video 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-extractor", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--video", action="store_true", help="the synthetic video dataset (time series) instead")
    ap.add_argument("--runs", type=int, default=6, help="video: training runs")
    ap.add_argument("--trs", type=int, default=50, help="video: TRs per run")
    ap.add_argument("--resample", default="average", help="video: average or lanczos")
    args = ap.parse_args()
    if args.video:
        return video_quality(args)
    args.vertices = args.vertices or 2000

    import numpy as np

    from brainstore.cluster._demo import run_demo
    from brainstore.features import FeatureStore

    out = Path(args.out or tempfile.mkdtemp(prefix="bs-quality-"))
    res = run_demo(out, n_subjects=args.subjects, n_train=args.train, n_test=args.test, n_vertices=args.vertices,
                   seed=args.seed, image_extractor=args.image_extractor)
    fs = FeatureStore(out / "store")
    tables = {t.name: {"random_init": t.metadata.get("random_init"), "pretrained": t.metadata.get("pretrained")}
              for t in fs.tables()}
    fams = ["prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words"]
    oracle = {f: float(np.mean([o[f] for o in res["oracle"].values()])) for f in ["all", *fams]}
    # derived models (per-ROI, ensemble) draw on every table; base models on the tables in their name
    uses_me = {r["model"]: r["method"] in ("per-roi", "ensemble") or "motion-energy" in r["model"] for r in res["rows"]}
    prf = {r["model"]: r["prf-visualrois"] for r in res["rows"]}
    with_me = max(v for m, v in prf.items() if uses_me[m])
    without = max(v for m, v in prf.items() if not uses_me[m])
    print(json.dumps({
        "dataset": {"subjects": args.subjects, "train": args.train, "test": args.test, "vertices": args.vertices,
                    "seed": args.seed},
        "feature_tables": tables,
        "models": {r["model"]: {"method": r["method"], "nnmc": round(r["nnmc"], 2), "val_r": round(r["val_r"], 4),
                                **{f: round(r[f], 2) for f in fams}} for r in res["rows"]},
        "early_visual": {"best_with_motion_energy": round(with_me, 2), "best_without_motion_energy": round(without, 2),
                         "gain": round(with_me - without, 2)},
        "oracle_nnmc": {k: round(v, 2) for k, v in oracle.items()},
        "run_dir": str(out),
    }))


def _roi_r(ds, subject: str, preds: dict, truth_of) -> dict:
    """Mean test Pearson r over the vertices of each ROI family (hemispheres pooled) and over all."""
    import numpy as np

    from brainstore.scoring import pearson_r

    r = {h: pearson_r(np.asarray(preds[h], dtype=np.float64), np.asarray(truth_of(h), dtype=np.float64))
         for h in ("lh", "rh")}
    out = {"all": float(np.mean(np.concatenate([r["lh"], r["rh"]])))}
    for fam in ds.report_families(subject):
        sel = np.concatenate([r[h][ds.roi_masks(subject, h, families=[fam])[fam]] for h in ("lh", "rh")])
        out[fam] = float(np.mean(sel))
    return out


def video_quality(args) -> None:
    import time

    import numpy as np

    from brainstore.cluster._demo import _image_spec
    from brainstore.datasets import make_video_dataset, open_dataset
    from brainstore.features import FeatureStore, derive_delays, extract_timeseries
    from brainstore.fitting import FitSpec, fit_encoding_models, score_submission

    out = Path(args.out or tempfile.mkdtemp(prefix="bs-quality-video-"))
    t0 = time.time()
    root = make_video_dataset(out / "data", n_subjects=args.subjects, n_train_runs=args.runs, trs_per_run=args.trs,
                              n_vertices=args.vertices or 600, seed=args.seed,
                              overwrite=True, progress=False)
    ds = open_dataset(root)
    store = str(out / "store")
    secs = {"dataset": time.time() - t0}
    tables = {}
    for key, spec in (("motion-energy", "motion-energy:modality=video"), ("clip", _image_spec(args.image_extractor))):
        t = time.time()
        rep = extract_timeseries(root, spec, store, resample=args.resample, progress=False)
        tables[key] = rep.feature
        tables[key + " delays 1-4"] = derive_delays(store, rep.feature, root, (1, 2, 3, 4))
        secs[f"extract {key}"] = time.time() - t
    models = [{"name": k.replace(" ", "_"), "features": [v]} for k, v in tables.items()]
    models.append({"name": "banded_me+clip_delays", "method": "banded",
                   "features": [tables["motion-energy delays 1-4"], tables["clip delays 1-4"]]})
    spec = FitSpec(dataset=str(ds.root), folds=min(args.runs, 10), models=models)
    t = time.time()
    run = fit_encoding_models(spec, store=store, registry=str(out / "registry"), out=out / "run", progress=False)
    secs["fit"] = time.time() - t
    assert not run.failures, run.failures
    gt = ds.ground_truth_dir()
    oracle_nnmc = score_submission(ds, gt)
    fams = ["all", *ds.report_families(ds.subjects[0])]

    def mean_over_subjects(per_subject):
        return {f: round(float(np.mean([v[f] for v in per_subject])), 3) for f in fams}

    result = {}
    for m in run.metrics:
        subs = ds.subjects
        r = [_roi_r(ds, s, run.test_preds[(m, s)], lambda h, s=s: ds.responses(s, h, "test")) for s in subs]
        nn = [{"all": run.metrics[m][s]["both"]["test_nnmc"], **run.metrics[m][s]["both"]["test_nnmc_roi"]} for s in subs]
        result[m] = {"test_r": mean_over_subjects(r), "nnmc": {k: round(v, 2) for k, v in mean_over_subjects(nn).items()}}
    oracle_r = [_roi_r(ds, s, {h: np.load(gt / s / f"{h}_pred_test.npy") for h in ("lh", "rh")},
                       lambda h, s=s: ds.responses(s, h, "test")) for s in ds.subjects]
    oracle = {"test_r": mean_over_subjects(oracle_r),
              "nnmc": {k: round(v, 2) for k, v in mean_over_subjects([o["both"]["roi"] for o in oracle_nnmc.values()]).items()}}
    fs = FeatureStore(store)
    print(json.dumps({
        "dataset": {"kind": "video", "subjects": args.subjects, "train_runs": args.runs, "trs_per_run": args.trs,
                    "tr_s": ds.timeseries.tr, "fps": ds.timeseries.fps, "test_repeats": 3, "seed": args.seed,
                    "resample": args.resample, "folds": spec.folds},
        "feature_tables": {k: {"table": v, "dim": fs.info(v).dim, "random_init": fs.metadata(v).get("random_init")}
                           for k, v in tables.items()},
        "models": result,
        "delay_gain_nnmc": {k: round(result[f"{k}_delays_1-4"]["nnmc"]["all"] - result[k]["nnmc"]["all"], 2)
                            for k in ("motion-energy", "clip")},
        "oracle": oracle,
        "seconds": {k: round(v, 1) for k, v in secs.items()},
        "run_dir": str(out),
    }))


if __name__ == "__main__":
    main()

"""Encoding-model quality on the synthetic dataset. Last stdout line: one JSON object.

Runs the demo pipeline (synthetic dataset -> CLIP image, caption text and Gabor motion-energy
features -> ridge per feature table, banded ridge on their union, per-ROI choice on the
validation fold, average ensemble) and reports the test NNMC per ROI for each model, mean over
subjects, with the oracle's NNMC beside them. ``early_visual`` compares, in the same run, the best
early-visual (prf-visualrois) NNMC of the models using motion-energy features with that of the
models that do not.

Usage: python benchmarks/quality.py [--subjects 2 --train 600 --test 100 --vertices 2000]
       [--image-extractor SPEC] [--out DIR]
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
    ap.add_argument("--vertices", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-extractor", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()

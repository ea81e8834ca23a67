"""``decode.py --regimes``: the searched adaptor decoder against the ridge decoder across data regimes, on
data the adaptor's defaults were not tuned on.

A regime is a vertex space (``own``: no voxel correspondence across subjects; ``shared``: one template
tuning correlated 0.9) and a noise level (noise sd relative to signal sd); its dataset comes from
:mod:`_independent_data` (make_dataset's stimuli, an independent voxel model). For each training size
(the first ``size`` of each subject's training images: the spec's ``fraction``), ``fit_decoder`` searches
the adaptor's settings (Ray Tune, ASHA, ``SearchParams``), trains the winner and compares it with the ridge
decoder fitted on the same training rows and judged on the same validation split; both are scored on the
test split (top-1 among 300 test images, both ways). The gap is the adaptor's test top-1 minus the ridge's,
brain -> stimulus (``decode.py``'s "fwd"); the goal is a worst gap over regimes and subjects >= -0.02.

Each fit's figures are kept in its run folder (``figures.json``): run again on the same ``--out``, a
finished fit with the same settings is read back, not refitted (``reused`` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GOAL_GAP = -0.02  # the adaptor may trail ridge by at most this much (test top-1, brain -> stimulus)
_B2S, _S2B = "top1_brain_to_stimulus", "top1_stimulus_to_brain"


def _say(msg: str) -> None:
    print(f"[decode {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_regime_arguments(ap: argparse.ArgumentParser) -> None:
    """The ``--regimes`` mode's options."""
    from brainstore.fitting import SearchParams

    g = ap.add_argument_group("regimes (--regimes: the searched adaptor against ridge, independent data)")
    g.add_argument("--regimes", action="store_true", help="run the regimes benchmark instead of the default one")
    g.add_argument("--regimes-sizes", type=lambda s: [int(x) for x in _floats(s)], default=[300, 1000, 3000],
                   help="training images per subject fitted on (comma-separated; each <= --regimes-train)")
    g.add_argument("--regimes-trials", type=int, default=SearchParams().trials, help="search trials per fit")
    g.add_argument("--regimes-noise", type=_floats, default=[0.5, 1.5],
                   help="noise levels (noise sd / signal sd of the stored responses)")
    g.add_argument("--regimes-spaces", type=lambda s: s.split(","), default=["own", "shared"])
    g.add_argument("--regimes-train", type=int, default=3000, help="training images per subject generated")
    g.add_argument("--regimes-test", type=int, default=300, help="test images generated")
    g.add_argument("--regimes-vertices", type=int, default=1000, help="vertices per hemisphere (own: +-10 %%)")
    g.add_argument("--regimes-epochs", type=int, default=None,
                   help="adaptor epochs (default: AdaptorParams' own; fewer for a quick dry run)")


def run_regimes(args: argparse.Namespace) -> None:
    """Generate each regime's dataset, fit every training size, print a table per regime and, last, the JSON."""
    import tempfile

    from _independent_data import SPACES, make_independent_dataset

    t_all = time.time()
    bad = [s for s in args.regimes_spaces if s not in SPACES] + [n for n in args.regimes_sizes
                                                                 if not 0 < n <= args.regimes_train]
    if bad:
        raise SystemExit(f"--regimes: bad spaces or sizes {bad} (spaces {SPACES}; sizes in 1..{args.regimes_train})")
    out = Path(args.out or tempfile.mkdtemp(prefix="bs-regimes-")).resolve()
    regimes = {}
    for space in args.regimes_spaces:
        for noise in args.regimes_noise:
            key = f"{space}-noise{noise:g}"
            t0 = time.time()
            _say(f"{key}: making the dataset ({args.regimes_train} training images a subject, {args.regimes_vertices} "
                 f"vertices a hemisphere) and its caption table in {out / key}")
            root, table = make_independent_dataset(
                out / key / "data", out / key / "store", space=space, noise=noise, n_train=args.regimes_train,
                n_test=args.regimes_test, n_vertices=args.regimes_vertices, seed=args.seed)
            data_s = time.time() - t0
            _say(f"{key}: dataset and {table} ready ({data_s:.0f} s)")
            fits = {size: _fit_size(args, out / key, root, table, key, size) for size in args.regimes_sizes}
            regimes[key] = {"space": space, "noise": noise, "data_s": round(data_s, 1), "fits": fits}
            print(_markdown(key, fits), flush=True)
    print(json.dumps(_summary(args, regimes, out, time.time() - t_all)))


def _fit_size(args, folder: Path, root: Path, table: str, key: str, size: int) -> dict:
    """One fit (searched adaptor and its ridge comparison) on the first ``size`` training images: its figures."""
    from brainstore.cluster._quiet import drop_stderr_lines
    from brainstore.fitting import AdaptorParams, DecoderSpec, SearchParams, fit_decoder

    run_dir = folder / f"fit-{size}"
    spec = DecoderSpec(target=table, method="adaptor", search=SearchParams(trials=args.regimes_trials),
                       adaptor=AdaptorParams(epochs=args.regimes_epochs) if args.regimes_epochs else None,
                       fraction=size / args.regimes_train, workers=2, name=f"regimes-{key}-{size}")
    # what the figures depend on: the spec and the dataset's parameters (a regenerated dataset is refitted)
    data = json.loads((root / "independent.json").read_text())["params"]
    settings = {**json.loads(spec.model_dump_json()), "data": data}
    kept = run_dir / "figures.json"
    if kept.exists() and (old := json.loads(kept.read_text())).get("spec") == settings:
        _say(f"{key}, {size} images: figures of an earlier run read back from {kept}")
        return {**{k: v for k, v in old.items() if k != "spec"}, "reused": True}
    _say(f"{key}, {size} images a subject (fraction {spec.fraction:.3g}): searching the adaptor "
         f"({args.regimes_trials} trials) and comparing with ridge")
    t0 = time.time()
    with drop_stderr_lines():  # Ray's per-run actor-restart notice (ray#53727), as the CLI does
        run = fit_decoder(spec, dataset=root, store=str(folder / "store"), registry=str(folder / "registry"),
                          out=run_dir, progress=False)
    fig = _figures(run, table, time.time() - t0)
    kept.write_text(json.dumps({**fig, "spec": settings}, indent=2))
    _say(f"{key}, {size} images: winner {fig['winner']}, gap (adaptor - ridge, test top-1 brain->stimulus) "
         + ", ".join(f"{s} {v['gap']:+.3f}" for s, v in fig["subjects"].items())
         + f"; search {fig['search_s']:.0f} s, {fig['trials']} trials, {fig['epochs_run']} epochs")
    return {**fig, "reused": False}


def _figures(run, table: str, fit_s: float) -> dict:
    """A fit's figures: per subject the adaptor's and the ridge's test top-1 both ways (with the spread of
    the draws), both validation top-1 and the gap; the winner on validation and the search's cost."""
    subjects = {}
    for s, m in run.metrics[table].items():
        c = run.comparison[s]
        r = c["ridge_test"]
        subjects[s] = {
            "adaptor_b2s": m[_B2S], "adaptor_b2s_ci95": m.get(f"{_B2S}_ci95"),
            "adaptor_s2b": m[_S2B], "adaptor_s2b_ci95": m.get(f"{_S2B}_ci95"),
            "ridge_b2s": r[_B2S], "ridge_b2s_ci95": r.get(f"{_B2S}_ci95"),
            "ridge_s2b": r[_S2B], "ridge_s2b_ci95": r.get(f"{_S2B}_ci95"),
            "adaptor_val_top1": c["adaptor_val_top1"], "ridge_val_top1": c["ridge_val_top1"],
            "ridge_alpha": c.get("ridge_alpha"), "n_fit": c.get("n_fit"), "n_val": c.get("n_val"),
            "adaptor_val": c.get("adaptor_val"), "ridge_val": c.get("ridge_val"),
            "chance": m.get("chance"), "gap": m[_B2S] - r[_B2S], "gap_s2b": m[_S2B] - r[_S2B]}
    search = run.search or {}
    trials = search.get("trials", [])
    best = next((t for t in trials if t.get("trial") == search.get("best")), None)
    return {"subjects": subjects, "winner": run.winner, "floor_held": getattr(run, "floor_held", None),
            "search_s": round(float(search.get("seconds", 0.0)), 1),
            "trials": len(trials), "epochs_run": int(sum(t.get("epochs", 0) for t in trials)),
            "best_trial": best and {k: best.get(k) for k in ("trial", "config", "val_top1", "best_epoch", "epochs")},
            "stops": [t.get("stopped") for t in trials], "fit_s": round(fit_s, 1)}


def _markdown(key: str, fits: dict) -> str:
    """A regime's table: a row per training size and subject."""
    lines = [f"\n### {key}\n",
             "| train | subject | adaptor b->s | ridge b->s | gap | adaptor s->b | ridge s->b | gap s->b | val adaptor / ridge "
             "| winner | kept | trials | epochs | search s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for size, f in fits.items():
        for s, v in f["subjects"].items():
            lines.append(f"| {size} | {s} | {v['adaptor_b2s']:.3f} | {v['ridge_b2s']:.3f} | {v['gap']:+.3f} | "
                         f"{v['adaptor_s2b']:.3f} | {v['ridge_s2b']:.3f} | {v['gap_s2b']:+.3f} | "
                         f"{v['adaptor_val_top1']:.3f} / {v['ridge_val_top1']:.3f} | {f['winner']} | {_kept(f)} | "
                         f"{f['trials']} | {f['epochs_run']} | "
                         f"{f['search_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _kept(f: dict) -> str:
    b = f.get("best_trial") or {}
    where = "start" if b.get("best_epoch") == -1 else f"epoch {b.get('best_epoch')}"
    return f"trial {b.get('trial')}, {where}" + ("" if f.get("floor_held", True) is not False else ", floor missed")


def _summary(args, regimes: dict, out: Path, wall_s: float) -> dict:
    """The last stdout line: the per-regime figures, the worst gap and whether the goal is met."""
    gaps = [(v["gap"], key, size, s) for key, r in regimes.items() for size, f in r["fits"].items()
            for s, v in f["subjects"].items()]
    worst = min(gaps) if gaps else None
    gaps_s2b = [(v["gap_s2b"], key, size, s) for key, r in regimes.items() for size, f in r["fits"].items()
                for s, v in f["subjects"].items() if "gap_s2b" in v]
    worst_s2b = min(gaps_s2b) if gaps_s2b else None
    def r4(x):
        return round(x, 4) if isinstance(x, float) else [r4(y) for y in x] if isinstance(x, list) else x

    return {
        "mode": "regimes",
        "dataset": {"generator": "benchmarks/_independent_data.py", "subjects": 2, "train": args.regimes_train,
                    "test": args.regimes_test, "vertices": args.regimes_vertices, "seed": args.seed},
        "sizes": args.regimes_sizes, "search_trials": args.regimes_trials, "adaptor_epochs": args.regimes_epochs,
        "gap": "adaptor test top-1 - ridge test top-1, brain -> stimulus (decode.py's fwd), ridge on the same rows",
        # retrieval_metrics' ci95 is the spread of its draws of 300 candidates: [x, x] with 300 test images
        "ci95": "spread of the 30 draws of 300 candidates among the test images (degenerate with 300 test images)",
        "regimes": {key: {**{k: v for k, v in r.items() if k != "fits"},
                          "fits": {str(size): {**f, "subjects": {s: {k: r4(x) for k, x in v.items()}
                                                                 for s, v in f["subjects"].items()}}
                                   for size, f in r["fits"].items()}} for key, r in regimes.items()},
        "worst_gap": r4(worst[0]) if worst else None,
        "worst_gap_at": {"regime": worst[1], "train": worst[2], "subject": worst[3]} if worst else None,
        "worst_gap_s2b": r4(worst_s2b[0]) if worst_s2b else None,
        "worst_gap_s2b_at": {"regime": worst_s2b[1], "train": worst_s2b[2], "subject": worst_s2b[3]} if worst_s2b else None,
        "goal": f"worst_gap >= {GOAL_GAP} (brain -> stimulus); both ways: worst_gap_s2b >= {GOAL_GAP} too",
        "goal_met": bool(worst is not None and worst[0] >= GOAL_GAP),
        "goal_met_both_ways": bool(worst is not None and worst[0] >= GOAL_GAP and worst_s2b is not None
                                   and worst_s2b[0] >= GOAL_GAP),
        "search_s_total": round(sum(f["search_s"] for r in regimes.values() for f in r["fits"].values()), 1),
        "wall_s": round(wall_s, 1),
        "run_dir": str(out),
    }

"""Evaluation reports: comparison tables (Algonauts 2023 Table 1 shape), per-ROI plots, scatter
plots of predicted vs measured responses, and the submission-layout predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..datasets import HEMISPHERES, REPORT_FAMILIES, ROI_FAMILY_LABELS, AlgonautsDataset
from ..features import FeatureStore
from ..scoring import pearson_r
from ._evaluate import score_subject
from ._registry import ModelRegistry

__all__ = ["comparison_rows", "write_report", "write_predictions", "evaluate_registered"]

SHORT = ROI_FAMILY_LABELS


def comparison_rows(metrics: dict, kinds: dict[str, str]) -> list[dict]:
    """One row per model: mean over subjects of test NNMC (all vertices and per ROI) and CV r."""
    rows = []
    for model, by_subj in metrics.items():
        subs = list(by_subj.values())
        row = {"model": model, "method": kinds.get(model, ""), "subjects": len(subs),
               "cv_r": float(np.mean([m["both"]["cv_r_mean"] for m in subs]))}
        if all("test_nnmc" in m["both"] for m in subs):
            row["nnmc"] = float(np.mean([m["both"]["test_nnmc"] for m in subs]))
            for fam in REPORT_FAMILIES:
                row[fam] = float(np.nanmean([m["both"]["test_nnmc_roi"][fam] for m in subs]))
        else:
            for fam in REPORT_FAMILIES:
                row[fam] = float(np.nanmean([m["both"]["cv_r_roi"][fam] for m in subs]))
        rows.append(row)
    return rows


def _markdown(rows: list[dict], test: bool) -> str:
    metric = "NNMC" if test else "CV r"
    head = ["Features and methods", "method", f"{metric} (all)", *[f"{SHORT[f]}" for f in REPORT_FAMILIES], "CV r"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(rows, key=lambda r: r.get("nnmc", r["cv_r"]))
    for r in rows:
        main = r.get("nnmc", r["cv_r"])
        cell = f"{main:.3f}" if not test else f"{main:.2f}"
        if r is best:
            cell = f"**{cell}**"
        lines.append("| " + " | ".join([r["model"], r["method"], cell, *[f"{r[f]:.2f}" if test else f"{r[f]:.3f}" for f in REPORT_FAMILIES], f"{r['cv_r']:.3f}"]) + " |")
    return "\n".join(lines)


def write_predictions(test_preds: dict, out: Path) -> list[Path]:
    """Submission layout: ``out/subjNN/{lh,rh}_pred_test.npy`` (float32)."""
    paths = []
    for subject, by_hemi in test_preds.items():
        d = Path(out) / subject
        d.mkdir(parents=True, exist_ok=True)
        for h, arr in by_hemi.items():
            p = d / f"{h}_pred_test.npy"
            tmp = p.with_suffix(".tmp.npy")
            np.save(tmp, np.asarray(arr, dtype=np.float32))
            tmp.replace(p)  # never a half-written prediction file
            paths.append(p)
    return paths


def write_report(metrics: dict, kinds: dict[str, str], test_preds: dict, ds: AlgonautsDataset, out: Path,
                 title: str = "encoding models") -> dict:
    """Write metrics.json, comparison.md/.csv, per-ROI bar plot, scatter plot and predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(metrics, kinds)
    test = all("nnmc" in r for r in rows)
    (out / "metrics.json").write_text(json.dumps({"kinds": kinds, "metrics": metrics, "comparison": rows}, indent=1))
    md = _markdown(rows, test)
    (out / "comparison.md").write_text(f"# {title}\n\n{md}\n")
    cols = ["model", "method", "subjects", "nnmc" if test else "cv_r", *REPORT_FAMILIES, "cv_r"]
    (out / "comparison.csv").write_text("\n".join([",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]) + "\n")

    # per-ROI bars, one bar per model
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(REPORT_FAMILIES) + 0.4 * len(rows)), 4.2))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(REPORT_FAMILIES))
    for k, r in enumerate(rows):
        ax.bar(x + k * width - 0.4 + width / 2, [r[f] for f in REPORT_FAMILIES], width, label=_label(r["model"]))
    ax.set_xticks(x, [SHORT[f] for f in REPORT_FAMILIES])
    ax.set_ylabel("NNMC (test)" if test else "Pearson r (cross-validated)")
    ax.set_title(f"{title}: per-ROI {'NNMC' if test else 'CV r'}, mean over subjects")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "roi_scores.png", dpi=120)
    plt.close(fig)

    # predicted vs measured: best model, first subject, best vertex of each ROI family
    best = max(rows, key=lambda r: r.get("nnmc", r["cv_r"]))["model"]
    subject = sorted(metrics[best])[0]
    preds = test_preds.get((best, subject))
    if preds is not None and ds.has_test_responses(subject):
        fig, axes = plt.subplots(1, len(REPORT_FAMILIES), figsize=(3.2 * len(REPORT_FAMILIES), 3.2))
        h = HEMISPHERES[0]
        true = np.asarray(ds.responses(subject, h, "test"))
        r = pearson_r(preds[h], true)
        masks = ds.roi_masks(subject, h, families=REPORT_FAMILIES)
        for ax, fam in zip(axes, REPORT_FAMILIES):
            idx = np.flatnonzero(masks[fam])
            if len(idx):
                v = idx[np.argmax(r[idx])]
                ax.scatter(preds[h][:, v], true[:, v], s=9, alpha=0.7)
                ax.set_title(f"{SHORT[fam]} vertex {v}\nr = {r[v]:.2f}", fontsize=9)
            ax.set_xlabel("predicted")
        axes[0].set_ylabel("measured (test)")
        fig.suptitle(f"{_label(best)} ({subject}, {h})", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "pred_vs_measured.png", dpi=120)
        plt.close(fig)
    for (model, subject), by_hemi in test_preds.items():
        write_predictions({subject: by_hemi}, out / "predictions" / _label(model, 80).replace("/", "_"))
    return {"rows": rows, "markdown": md, "dir": str(out), "best": best}


def _label(name: str, n: int = 48) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


def evaluate_registered(reg: ModelRegistry, fs: FeatureStore, ds: AlgonautsDataset, *, models: list[str] | None = None,
                        subjects: list[str] | None = None) -> tuple[dict, dict, dict]:
    """Predict the test split with registered models and score them (test NNMC when test
    responses exist; CV metrics come from the registry). Returns (metrics, kinds, test_preds)."""
    from ._encoding import subject_stimuli
    from ._run import predict_model

    recs = [r for r in reg.list() if r.meta.get("dataset") == str(ds.root)]
    if models:
        recs = [r for r in recs if r.meta["model"] in models]
    if subjects:
        recs = [r for r in recs if r.meta["subject"] in subjects]
    metrics: dict = {}
    kinds: dict = {}
    test_preds: dict = {}
    caches: dict = {}
    for rec in recs:
        model, s = rec.meta["model"], rec.meta["subject"]
        ids = subject_stimuli(ds, s, "test")
        pred = predict_model(reg, model, s, fs, ids, caches.setdefault(s, {}))
        kinds[model] = rec.meta["kind"]
        test_preds[(model, s)] = pred
        both = {"cv_r_mean": rec.meta["metrics"]["both"]["cv_r_mean"], "cv_r_roi": rec.meta["metrics"]["both"]["cv_r_roi"]}
        if ds.has_test_responses(s) and all(ds.noise_ceiling(s, h) is not None for h in pred):
            roi = score_subject(ds, s, pred)["both"]["roi"]
            both["test_nnmc"] = roi["all"]
            both["test_nnmc_roi"] = roi
        metrics.setdefault(model, {})[s] = {"both": both}
    return metrics, kinds, test_preds

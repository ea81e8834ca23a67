"""Evaluation reports: comparison tables (Algonauts 2023 Table 1 shape), per-ROI and named-ROI
tables, per-ROI plots, predicted-vs-measured scatter plots, banded ridge's split of the prediction
between feature spaces, and the submission-layout predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...datasets import HEMISPHERES, REPORT_FAMILIES, ROI_FAMILY_LABELS, AlgonautsDataset
from ...features import FeatureStore
from ...scoring import pearson_r
from ..encoding import pooled_split_scores, pooled_test_scores, score_test_split
from ..registry import NON_ENCODER_KINDS, ModelRegistry, RegistryError, RunLayout, write_array

__all__ = ["comparison_rows", "named_rows", "report_families", "row_families", "split_rows", "write_report",
           "write_predictions", "write_split_plot", "write_decoding_plot", "evaluate_registered"]

SHORT = ROI_FAMILY_LABELS
VAL = "val r"  # column label of the validation score (see fitting._choice)


def _mean(values) -> float:
    """Mean over subjects ignoring NaN; NaN (without a warning) when no subject has a value, e.g. an ROI
    family that a described dataset does not have."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


_ROW_KEYS = ("model", "method", "subjects", "val_r", "nnmc", "space", "all")


def report_families(metrics: dict) -> list[str]:
    """The ROI families the metrics score: Algonauts' five (``REPORT_FAMILIES``, a missing one shown
    as "-") then any other scored family, or, when none of the five is scored, the dataset's own
    families in order (a described dataset with its own names, e.g. a video dataset's)."""
    found: list[str] = []
    for by_subj in metrics.values():
        for m in by_subj.values():
            for key in ("test_nnmc_roi", "val_r_roi"):
                found += [f for f in m.get("both", {}).get(key, {}) if f != "all" and f not in found]
    if not found or set(found) & set(REPORT_FAMILIES):  # Algonauts names: all five, then any others
        return list(REPORT_FAMILIES) + [f for f in found if f not in REPORT_FAMILIES]
    return found


def row_families(rows: list[dict]) -> list[str]:
    """The ROI-family columns of :func:`comparison_rows` / :func:`split_rows` rows."""
    return [k for k in (rows[0] if rows else {f: 0 for f in REPORT_FAMILIES}) if k not in _ROW_KEYS]


def comparison_rows(metrics: dict, kinds: dict[str, str]) -> list[dict]:
    """One row per model: mean over subjects of test NNMC (all vertices and per ROI family) and val r.

    Without test NNMC the ROI columns hold the validation r.
    """
    rows = []
    families = report_families(metrics)
    for model, by_subj in metrics.items():
        subs = list(by_subj.values())
        row = {"model": model, "method": kinds.get(model, ""), "subjects": len(subs),
               "val_r": float(np.mean([m["both"]["val_r_mean"] for m in subs]))}
        if all("test_nnmc" in m["both"] for m in subs):
            row["nnmc"] = float(np.mean([m["both"]["test_nnmc"] for m in subs]))
            for fam in families:  # (a family the dataset lacks: NaN, shown as "-")
                row[fam] = _mean([m["both"]["test_nnmc_roi"].get(fam) for m in subs])
        else:
            for fam in families:
                row[fam] = _mean([m["both"]["val_r_roi"].get(fam) for m in subs])
        rows.append(row)
    return rows


def named_rows(metrics: dict) -> tuple[list[str], list[dict]]:
    """Test NNMC per named ROI (V1v ... VWFA-2), mean over subjects: (ROI names, one row per model)."""
    names: list[str] = []
    rows = []
    for model, by_subj in metrics.items():
        subs = [m["both"]["test_nnmc_named"] for m in by_subj.values() if "test_nnmc_named" in m["both"]]
        if not subs:
            continue
        names += [k for k in subs[0] if k != "all" and k not in names]
        rows.append({"model": model, **{k: float(np.nanmean([s.get(k, np.nan) for s in subs])) for k in subs[0]}})
    return names, rows


def _fmt(v: float, test: bool) -> str:
    return "-" if v is None or np.isnan(v) else (f"{v:.2f}" if test else f"{v:.3f}")


def _markdown(rows: list[dict], test: bool) -> str:
    metric = "NNMC" if test else VAL
    fams = row_families(rows)
    head = ["Features and methods", "method", f"{metric} (all)", *[SHORT.get(f, f) for f in fams], VAL]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(rows, key=lambda r: r.get("nnmc", r["val_r"]))
    for r in rows:
        cell = _fmt(r.get("nnmc", r["val_r"]), test)
        cell = f"**{cell}**" if r is best else cell
        lines.append("| " + " | ".join([r["model"], r["method"], cell, *[_fmt(r[f], test) for f in fams],
                                        _fmt(r["val_r"], False)]) + " |")
    return "\n".join(lines)


def _named_markdown(names: list[str], rows: list[dict]) -> str:
    lines = ["| model | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines += ["| " + " | ".join([r["model"], *[_fmt(r.get(n, np.nan), True) for n in names]]) + " |" for r in rows]
    return "\n".join(lines)


def write_predictions(test_preds: dict, out: Path) -> list[Path]:
    """Submission layout: ``out/subjNN/{lh,rh}_pred_test.npy`` (float32), from {subject: {hemi: array}}."""
    paths = []
    for subject, by_hemi in test_preds.items():
        for h, arr in by_hemi.items():
            paths.append(write_array(Path(out) / subject / f"{h}_pred_test.npy", arr))
    return paths


def _label(name: str, n: int = 48) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


def _plot_roi_bars(rows: list[dict], test: bool, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fams = row_families(rows)
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(fams) + 0.4 * len(rows)), 4.2))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(fams))
    for k, r in enumerate(rows):
        ax.bar(x + k * width - 0.4 + width / 2, [r[f] for f in fams], width, label=_label(r["model"]))
    ax.set_xticks(x, [SHORT.get(f, f) for f in fams])
    ax.set_ylabel("NNMC (test)" if test else "Pearson r (validation fold)")
    ax.set_title(f"{title}: per-ROI {'NNMC' if test else VAL}, mean over subjects")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_scatter(ds: AlgonautsDataset, model: str, subject: str, preds: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fams = ds.report_families(subject)
    fig, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 3.2), squeeze=False)
    axes = axes[0]
    h = HEMISPHERES[0]
    true = np.asarray(ds.responses(subject, h, "test"))
    pred = np.asarray(preds[h])
    r = pearson_r(pred, true)
    masks = ds.roi_masks(subject, h, families=ds.report_families(subject))
    for ax, fam in zip(axes, fams):
        idx = np.flatnonzero(masks[fam]) if fam in masks else []  # (a family the dataset lacks: empty panel)
        if len(idx):
            v = idx[np.argmax(r[idx])]
            ax.scatter(pred[:, v], true[:, v], s=9, alpha=0.7)
            ax.set_title(f"{SHORT.get(fam, fam)} vertex {v}\nr = {r[v]:.2f}", fontsize=9)
        ax.set_xlabel("predicted")
    axes[0].set_ylabel("measured (test)")
    fig.suptitle(f"{_label(model)} ({subject}, {h})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def split_rows(metrics: dict) -> list[dict]:
    """Banded models: test r per ROI family split between feature spaces, mean over subjects."""
    rows = []
    families = report_families(metrics)
    for model, by_subj in metrics.items():
        subs = [m["both"]["split_test_r_roi"] for m in by_subj.values() if "split_test_r_roi" in m["both"]]
        if not subs:
            continue
        for space in subs[0]:
            rows.append({"model": model, "space": space,
                         **{f: _mean([s[space].get(f) for s in subs]) for f in ["all", *families]}})
    return rows


def write_split_plot(rows: list[dict], path) -> None:
    """Stacked bars: each feature space's share of the test r per ROI family, one panel per banded model.

    Parameters
    ----------
    rows : list of dict
        :func:`split_rows` of the metrics (one row per banded model and feature space).
    path : Path or binary file object
        Where the PNG goes (``split_scores.png`` of a report; a buffer for the HTML report).
    """
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.2), squeeze=False)
    cols = ["all", *row_families(rows)]
    for ax, model in zip(axes[0], models):
        bottom_pos, bottom_neg = np.zeros(len(cols)), np.zeros(len(cols))
        for r in (r for r in rows if r["model"] == model):
            v = np.array([r[c] for c in cols])
            base = np.where(v >= 0, bottom_pos, bottom_neg)
            ax.bar(np.arange(len(cols)), v, bottom=base, label=_label(r["space"], 40))
            bottom_pos += np.clip(v, 0, None)
            bottom_neg += np.clip(v, None, 0)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(cols)), [SHORT.get(c, c) for c in cols])
        ax.set_ylabel("test Pearson r, split by feature space")
        ax.set_title(_label(model, 70), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_decoding_plot(decoders: dict, path: Path) -> Path:
    """Bar plot of retrieval top-1 (both directions, oracle and chance marked) per decoder and subject."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{model[:28]}\n{s}", m) for model, by_s in decoders.items() for s, m in by_s.items()
            if "top1_brain_to_stimulus" in m]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 4.2))
    x = np.arange(len(rows))
    for off, key, label in ((-0.2, "top1_brain_to_stimulus", "brain -> stimulus"),
                            (0.2, "top1_stimulus_to_brain", "stimulus -> brain")):
        vals = [m[key] for _, m in rows]
        # (identical draws give a zero-width interval that rounding can put a hair off the mean)
        err = np.maximum(np.array([[m[key] - m[key + "_ci95"][0], m[key + "_ci95"][1] - m[key]]
                                   for _, m in rows]).T, 0)
        ax.bar(x + off, vals, width=0.38, yerr=err if len(rows) else None, capsize=3, label=label)
    for i, (_, m) in enumerate(rows):
        if "oracle_top1_brain_to_stimulus" in m:
            ax.plot([i - 0.4, i + 0.4], [m["oracle_top1_brain_to_stimulus"]] * 2, "k--", lw=1)
        ax.plot([i - 0.4, i + 0.4], [m["chance"]] * 2, color="grey", lw=1)
    ax.set_xticks(x, [r for r, _ in rows], fontsize=8)
    ax.set_ylabel("top-1 retrieval (mean over draws, 95 % interval)")
    ax.set_ylim(0, 1)
    ax.set_title("decoders: retrieval among n test images (dashed: oracle, grey: chance)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(metrics: dict, kinds: dict[str, str], test_preds: dict, ds: AlgonautsDataset, out: Path,
                 title: str = "encoding models") -> dict:
    """Write metrics.json, comparison.md/.csv, named_rois.md, roi_scores.png, pred_vs_measured.png,
    split_scores.png (banded models) and the predictions (``predictions/<model>/subjNN/``).

    ``test_preds``: (model, subject) -> {hemi: array}; predictions already at their place in ``out``
    (a fit's run folder) are not copied.
    """
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(metrics, kinds)
    test = all("nnmc" in r for r in rows)
    names, nrows = named_rows(metrics)
    srows = split_rows(metrics)
    (out / "metrics.json").write_text(json.dumps({"kinds": kinds, "metrics": metrics, "comparison": rows,
                                                  "named_rois": nrows, "split": srows}, indent=1))
    md = _markdown(rows, test)
    (out / "comparison.md").write_text(f"# {title}\n\n{md}\n")
    cols = ["model", "method", "subjects", "nnmc" if test else "val_r", *row_families(rows), "val_r"]
    (out / "comparison.csv").write_text("\n".join([",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols)
                                                                      for r in rows]) + "\n")
    if nrows:
        (out / "named_rois.md").write_text(f"# {title}: test NNMC per named ROI (mean over subjects)\n\n"
                                           f"{_named_markdown(names, nrows)}\n")
    _plot_roi_bars(rows, test, title, out / "roi_scores.png")
    if srows:
        write_split_plot(srows, out / "split_scores.png")
    best = max(rows, key=lambda r: r.get("nnmc", r["val_r"]))["model"]
    subject = sorted(metrics[best])[0]
    if (best, subject) in test_preds and ds.has_test_responses(subject):
        _plot_scatter(ds, best, subject, test_preds[(best, subject)], out / "pred_vs_measured.png")
    layout = RunLayout(out)
    for (model, s), by_hemi in test_preds.items():
        for h, arr in by_hemi.items():
            dst = layout.test_pred(model, s, h)
            if not (dst.exists() and isinstance(arr, np.memmap) and Path(arr.filename).samefile(dst)):
                write_array(dst, arr)
    return {"rows": rows, "markdown": md, "named": (names, nrows), "split": srows, "dir": str(out), "best": best}


def _model_records(reg: ModelRegistry, ds: AlgonautsDataset, recs: list, models: list[str]) -> list[tuple[str, object]]:
    """``(model as given, record)`` per subject of each of ``models``: a model name (what each subject's bare name
    loads), or ``MODEL@3`` / ``MODEL@alias`` (that version of each subject that has it), so two versions of one
    model are scored side by side; a RegistryError names what is not there."""
    from ..registry import model_base, model_ref

    known = sorted({r.meta["model"] for r in recs})
    bases = {m: model_base(m) for m in models}
    unknown = [m for m in models if bases[m] not in known]
    if unknown:
        raise RegistryError(f"no model {', '.join(map(repr, unknown))} fitted on {ds.root} in registry {reg.root}; "
                            f"models there: {', '.join(known) or 'none (run `brainstore fit` first)'} (a version: "
                            "MODEL@3, MODEL@champion)")
    pairs = []
    for m in dict.fromkeys(models):
        if m == bases[m]:
            pairs += [(m, r) for r in recs if r.meta["model"] == m]
            continue
        found, errors = [], []
        for r in (r for r in recs if r.meta["model"] == bases[m]):
            try:
                found.append((m, reg.record(model_ref(m, r.meta["subject"]))))
            except RegistryError as e:  # this subject lacks that version: left out of the row
                errors.append(str(e))
        if not found:
            raise RegistryError(f"no subject of model {bases[m]!r} has {m!r}: {errors[0] if errors else 'no fit'}")
        other = [f"{r.ref} ({r.meta.get('dataset')})" for _, r in found if r.meta.get("dataset") != str(ds.root)]
        if other:
            raise RegistryError(f"{m!r}: {', '.join(other)} was fitted on another dataset, not {ds.root}; compare "
                                "versions fitted on the dataset evaluated")
        pairs += found
    return pairs


def evaluate_registered(reg: ModelRegistry, ds: AlgonautsDataset, *, store: str | FeatureStore | None = None,
                        models: list[str] | None = None, subjects: list[str] | None = None
                        ) -> tuple[dict, dict, dict]:
    """Predict the test split with registered models (verified first) and score them.

    Test NNMC per ROI family and per named ROI when the dataset has test responses and noise
    ceilings; banded models also get the split of their test r between feature spaces. Validation
    scores come from the registry. ``store`` None reads each model's own store. ``models`` may name versions
    (``["clip@1", "clip@2"]``): each is scored as its own model, keyed as given.

    Returns
    -------
    (metrics, kinds, test_preds)
    """
    from ...scoring import correlation_split
    from ..encoding import EncodingModel, subject_stimuli

    recs = [r for r in reg.list() if r.meta.get("dataset") == str(ds.root)
            and r.meta.get("kind") not in NON_ENCODER_KINDS]  # encoders only (decoders: evaluate_decoders)
    pairs = [(r.meta["model"], r) for r in recs]
    if models:
        pairs = _model_records(reg, ds, recs, models)
    if subjects:
        pairs = [(m, r) for m, r in pairs if r.meta["subject"] in subjects]
    metrics: dict = {}
    kinds: dict = {}
    test_preds: dict = {}
    loaded: dict = {}
    features: dict = {}
    for model, rec in pairs:
        s = rec.meta["subject"]
        ids = subject_stimuli(ds, s, "test")
        em = EncodingModel.load(reg, model, s, store, loaded)
        pred = em.predict(ids, features.setdefault((s, em.store.uri), {}))
        kinds[model] = rec.meta["kind"]
        test_preds[(model, s)] = pred
        both = {k: rec.meta["metrics"]["both"][k] for k in ("val_r_mean", "val_r_roi")}
        if ds.has_test_responses(s) and all(ds.noise_ceiling(s, h) is not None for h in pred):
            both.update(pooled_test_scores(ds, s, {h: score_test_split(ds, s, h, pred[h])["score"] for h in pred}))
            if em.kind == "banded":
                split = em.predict_split(ids)
                per_h = {h: correlation_split(split[h], np.asarray(ds.responses(s, h, "test"))) for h in split}
                both["split_test_r_roi"] = pooled_split_scores(ds, s, per_h, rec.meta["features"])
        metrics.setdefault(model, {})[s] = {"both": both}
    return metrics, kinds, test_preds

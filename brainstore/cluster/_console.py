"""What the CLI, the pipeline and the demo print (rich): the console, tables built from plain dicts (so
libraries stay free of rich), and the score, named-ROI and decoder tables all three print."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from rich.console import Console

from rich.table import Table

from ..datasets import ROI_FAMILY_LABELS

# Wide enough for per-ROI tables when output is piped (CI logs, files).
console = Console(width=None if Console().is_terminal else 160)

SHORT = ROI_FAMILY_LABELS


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def _count(v) -> str:
    """A count of a dataset summary, or "unreadable" where its files could not be read (None)."""
    return "[red]unreadable[/]" if v is None else str(v)


def dataset_table(summary: Mapping) -> Table:
    """One row per subject x hemisphere: images, vertices, ROI sizes, noise ceiling."""
    subjects = summary["subjects"]
    fams: list[str] = []
    for s in subjects.values():
        for h in s["hemispheres"].values():
            fams += [f for f in h.get("rois", {}) if f not in fams]
    t = Table(title=f"dataset {summary['root']} ({summary['captions']} captions)")
    for c in ["subject", "hemi", "train", "test", "test fMRI", "vertices", "space", *[SHORT.get(f, f) for f in fams],
              "NC mean"]:
        t.add_column(c, justify="right" if c not in ("subject", "hemi") else "left")
    for name, s in subjects.items():
        for hemi, h in s["hemispheres"].items():
            # a summary holds None where a file could not be read (missing, malformed, inconsistent): the
            # problems listed under the table say which and why
            readable = h["vertices"] is not None
            t.add_row(name, hemi, _count(s["train_images"]), _count(s["test_images"]),
                      "yes" if s["test_responses"] else "no", _count(h["vertices"]), _space(s.get("space")),
                      *[str(h.get("rois", {}).get(f, 0)) if readable else "-" for f in fams],
                      _fmt(h.get("noise_ceiling_mean", float("nan"))))
    return t


def _space(text: str | None) -> str:
    """The space column: the space's name (``fsaverage``, ``volume`` ...), "unreadable" (validate says why), "-"."""
    if not text:
        return "-"
    return "unreadable" if text.startswith("unreadable") else text.split(" (")[0].replace(" surface", "")


def named_roi_table(summary: Mapping) -> Table:
    """Vertices per named ROI (rows) for each subject x hemisphere (columns), family by family."""
    cols = [(s, h) for s, v in summary["subjects"].items() for h in v["hemispheres"]]
    names: list[str] = []
    for s, h in cols:
        names += [n for n in summary["subjects"][s]["hemispheres"][h].get("named_rois", {}) if n not in names]
    t = Table(title="named ROIs (vertices)")
    t.add_column("ROI")
    for s, h in cols:
        t.add_column(f"{s} {h}", justify="right")
    for n in names:
        cells = []
        for s, h in cols:
            hemi = summary["subjects"][s]["hemispheres"][h]
            cells.append("-" if hemi.get("vertices", 0) is None else str(hemi.get("named_rois", {}).get(n, 0)))
        t.add_row(n, *cells)
    return t


def score_table(title: str, rows: Iterable[tuple[str, Mapping[str, float]]], columns: list[str] | None = None) -> Table:
    """A table of per-ROI scores: one row per (label, {roi: value})."""
    rows = list(rows)
    cols = columns or list(dict.fromkeys(k for _, r in rows for k in r))
    t = Table(title=title)
    t.add_column("")
    for c in cols:
        t.add_column(SHORT.get(c, c), justify="right")
    for label, r in rows:
        t.add_row(label, *[_fmt(r.get(c, float("nan"))) for c in cols])
    return t


def decoder_table(metrics: Mapping, title: str) -> Table:
    """One row per decoder x subject: retrieval both ways with the 95 % interval, two-way, cosine,
    the oracle and chance."""
    t = Table(title=f"{title}: top-1 retrieval among n test images (MindEye protocol: mean of draws [95 % spread of "
                    "the draws]; MindEye's \"fwd\" is stimulus->brain)")
    for c in ("decoder", "subject", "n", "brain->stimulus", "stimulus->brain", "2-way", "cosine", "oracle b->s",
              "chance", "whole store top-1 / top-5", "alpha"):
        t.add_column(c)
    for model, by_s in metrics.items():
        for s, m in by_s.items():
            alpha = f"{m['alpha']:.3g}" if "alpha" in m else "-"  # (adaptors have none)
            if "top1_brain_to_stimulus" not in m:
                t.add_row(model[:48], s, "-", "(no test responses)", "", "", "", "", "", "", alpha)
                continue
            lo, hi = m["top1_brain_to_stimulus_ci95"]
            lo2, hi2 = m["top1_stimulus_to_brain_ci95"]
            t.add_row(model[:48], s, str(m["n_candidates"]), f"{m['top1_brain_to_stimulus']:.3f} [{lo:.2f}, {hi:.2f}]",
                      f"{m['top1_stimulus_to_brain']:.3f} [{lo2:.2f}, {hi2:.2f}]", f"{m['two_way']:.3f}",
                      f"{m['cosine']:.3f}",
                      f"{m['oracle_top1_brain_to_stimulus']:.3f}" if "oracle_top1_brain_to_stimulus" in m else "-",
                      f"{m['chance']:.4f}",
                      f"{m['store_top1']:.3f} / {m['store_top5']:.3f} of {m['store_candidates']}" if "store_top1" in m
                      else "-", alpha)
    return t


def print_comparison(rows: list[dict], title: str, extra_rows: list[tuple[str, dict]] = ()) -> None:
    """The models' scores per ROI family (test NNMC when every row has it, else validation r)."""
    from ..fitting import row_families

    test = all("nnmc" in r for r in rows)
    key = "nnmc" if test else "val_r"
    fams = row_families(rows)
    table_rows = [(f"{r['model'][:60]} ({r['method']})", {"all": r[key], **{f: r[f] for f in fams}, "val r": r["val_r"]})
                  for r in rows]
    table_rows += list(extra_rows)
    console.print(score_table(f"{title}: {'test NNMC' if test else 'validation Pearson r'} per ROI (mean over subjects)",
                              table_rows, ["all", *fams, "val r"]))


def print_named(named: tuple[list[str], list[dict]], title: str) -> None:
    """Test NNMC per named ROI: one row per ROI, one column per model."""
    names, rows = named
    if rows:  # one row per named ROI, one column per model (models are fewer than ROIs)
        console.print(score_table(f"{title}: test NNMC per named ROI (mean over subjects)",
                                  [(n, {r["model"][:24]: r.get(n, float("nan")) for r in rows}) for n in names],
                                  [r["model"][:24] for r in rows]))


def print_decoders(metrics: dict, title: str) -> None:
    """The decoders' retrieval figures (:func:`decoder_table`)."""
    console.print(decoder_table(metrics, title))


def adaptor_comparison_table(comparison: Mapping, metrics: Mapping | None, winner: str | None) -> Table:
    """The adaptor against the ridge decoder fitted on the same rows: validation top-1 of both (what decides),
    and test top-1 of both (what was reported), per subject."""
    t = Table(title=f"adaptor vs ridge on the same validation split (winner: {winner})")
    for c in ("subject", "val rows", "adaptor val top-1", "ridge val top-1", "adaptor val b->s / s->b",
              "ridge val b->s / s->b", "adaptor test top-1", "ridge test top-1"):
        t.add_column(c)

    def ways(v):
        return "-" if not v else f"{v['b2s']:.3f} / {v['s2b']:.3f}"

    for s, c in comparison.items():
        a_test = (metrics or {}).get(s, {}).get("top1_brain_to_stimulus")
        r_test = c.get("ridge_test", {}).get("top1_brain_to_stimulus")
        t.add_row(s, str(c["n_val"]), f"{c['adaptor_val_top1']:.3f}", f"{c['ridge_val_top1']:.3f}",
                  ways(c.get("adaptor_val")), ways(c.get("ridge_val")),
                  "-" if a_test is None else f"{a_test:.3f}", "-" if r_test is None else f"{r_test:.3f}")
    return t


def search_trials_table(search: Mapping) -> Table:
    """The search's trials: settings, validation top-1 at the best epoch, epochs run, why each stopped."""
    t = Table(title=f"adaptor search: {len(search['trials'])} trials, {search['epochs_run']} epochs, "
                    f"{search['seconds']:.0f} s (* kept)")
    for c in ("trial", "settings", "val top-1", "best epoch", "epochs", "stopped"):
        t.add_column(c)
    for r in search["trials"]:
        mark = "*" if r["trial"] == search["best"] else ""
        t.add_row(f"{r['trial']}{mark}", " ".join(f"{k}={v}" for k, v in sorted(r["config"].items())),
                  f"{r['val_top1']:.3f}", "-" if r["best_epoch"] is None else str(r["best_epoch"]), str(r["epochs"]),
                  r["stopped"])
    return t


def print_adaptor_outcome(run, target: str, method: str) -> None:
    """After an adaptor's fit (``method`` adaptor or auto): the search's trials, the comparison with ridge, and
    what was kept; ridge's win on validation is said, never left for the reader to find."""
    if getattr(run, "search", None):
        console.print(search_trials_table(run.search))
    if not getattr(run, "comparison", None):
        return
    metrics = run.metrics.get(target) if hasattr(run, "history") else None
    console.print(adaptor_comparison_table(run.comparison, metrics, run.winner))
    mean = {k: sum(c[f"{k}_val_top1"] for c in run.comparison.values()) / len(run.comparison)
            for k in ("adaptor", "ridge")}
    if run.winner == "ridge" and method == "auto":
        console.print(f"[yellow]ridge wins on validation[/] (mean top-1 {mean['ridge']:.3f} against the adaptor's "
                      f"{mean['adaptor']:.3f}): method auto kept the ridge decoders")
    elif run.winner == "ridge":
        console.print(f"[yellow]warning: ridge beats this adaptor on validation[/] (mean top-1 {mean['ridge']:.3f} "
                      f"against {mean['adaptor']:.3f}); fit the ridge decoders (--method ridge), or use --method "
                      "auto to keep whichever wins")
    else:
        console.print(f"the adaptor beats ridge on validation (mean top-1 {mean['adaptor']:.3f} against "
                      f"{mean['ridge']:.3f})")
    if getattr(run, "floor_held", None) is False:
        console.print("[yellow]warning: no epoch of this adaptor held ridge's validation top-1 in both directions[/] "
                      "(the kept one is below it one way by more than the margin); compare both ways above")

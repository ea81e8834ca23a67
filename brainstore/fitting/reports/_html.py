"""The self-contained HTML report of a registry's models on one dataset.

:func:`write_html_report` writes ONE file: inline CSS, the plots as base64 PNG data URIs drawn
with matplotlib's Agg backend, no script but the maps' 3-D view (inline, in a sandboxed iframe), no external
URL, font or asset (it opens offline and can be mailed or archived as it is). Every string that comes from
data (model and table names, captions, metadata, ``provenance_extra``) is HTML-escaped.

Sections, each computed from the dataset, the registry and the metrics:

1. per-ROI test NNMC per subject for every encoding model, beside the mean noise ceiling (%)
   and the oracle (the dataset's noiseless responses, ``ground_truth/``, when it has them);
2. the comparison in the shape of Table 1 of the Algonauts 2023 report ("Features and Methods" |
   "NNMC score", mean over subjects, best in bold); then the maps on the cortex (``_html_maps``);
3. retrieval top-1 both ways (brain -> stimulus, stimulus -> brain) with 95 % intervals and chance,
   per subject and decoding model (ridge decoders and adaptors): a table and a plot;
4. decoded captions beside the true ones for a few test images (decoders into a caption table);
5. banded models' split of the test r between feature spaces;
6. lineage: per model and subject version, its chain from the dataset to the services (``_html_lineage``);
7. provenance: package versions, every feature table the models use with its metadata (a RANDOM
   WEIGHTS badge for ``pretrained=none`` tables), the dataset and its summary, registry and store,
   creation time and the caller's ``provenance_extra``.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ...datasets import (HEMISPHERES, REPORT_FAMILIES, ROI_FAMILY_LABELS, AlgonautsDataset, BrainDataset, DatasetError,
                        open_dataset)
from ._html_adaptors import adaptor_outcomes
from ._markup import esc as _esc, img as _img

__all__ = ["write_html_report"]

#: Test images per subject and decoder whose decoded caption is shown.
N_CAPTIONS = 4
#: Distributions whose versions the provenance section lists.
VERSIONED = ("brainstore", "numpy", "scipy", "torch", "ray", "lancedb", "pylance", "pyarrow", "scikit-learn",
             "safetensors", "open_clip_torch", "transformers", "sentence-transformers", "pymoten", "matplotlib")
COLUMNS = ["all", *REPORT_FAMILIES]  # per-ROI columns: all vertices, then the five reported families

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
header{background:#1d2a44;color:#fff;padding:22px 28px}
header h1{margin:0 0 4px;font-size:1.6em}header p{margin:0;opacity:.85}
nav{margin:14px 0 0}nav a{color:#cfe0ff;margin-right:16px;text-decoration:none;font-size:.92em}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:18px 22px;margin:20px 0}
h2{margin:0 0 10px;font-size:1.25em;color:#1d2a44}h3{font-size:1.02em;margin:18px 0 8px}
p.note{color:#5a6272;font-size:.9em;margin:4px 0 10px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.88em}
th,td{border-bottom:1px solid #e3e6ec;padding:4px 10px;text-align:left;vertical-align:top;overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%}
th{background:#eef1f6;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ref td{font-style:italic;color:#4b5366;background:#fafbfc}
table.table1{font-size:.95em;min-width:520px}table.table1 td.score{text-align:right}
img{max-width:100%;height:auto;display:block;margin:8px 0;border:1px solid #eceef2}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.86em}
code.id{white-space:nowrap}.table-card{border:1px solid #e3e6ec;border-radius:6px;padding:8px 12px;margin:10px 0}
.table-card h4{margin:2px 0 4px;font-size:.95em}
.badge{display:inline-block;padding:1px 7px;border-radius:4px;font-size:.75em;font-weight:700;
letter-spacing:.03em;margin-left:6px;vertical-align:1px}
.random{background:#c62828;color:#fff}.pretrained{background:#2e7d32;color:#fff}
.how{display:block;color:#5a6272;font-size:.85em}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:8px 0;font-size:.9em}
.caption-true{color:#1d2330}.caption-decoded{color:#1f4f9a}
details{margin:4px 0}summary{cursor:pointer;color:#1f4f9a}
"""


# ------------------------------------------------------------------------------------------ helpers
def _num(v: Any, digits: int = 2) -> str:
    """A number for a table cell ('-' for missing or NaN)."""
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    return "-" if math.isnan(f) else f"{f:.{digits}f}"


def _table(head: list[str] | None, rows: Iterable[list[str]], *, cls: str = "", numeric_from: int = 1,
           row_classes: list[str] | None = None) -> str:
    """An HTML table; ``head`` and ``rows`` hold already-escaped HTML. Columns from ``numeric_from`` on are right-aligned."""
    ths = "".join(f'<th class="num">{h}</th>' if i >= numeric_from else f"<th>{h}</th>" for i, h in enumerate(head or []))
    body = []
    for k, r in enumerate(rows):
        rc = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        body.append(f"<tr{rc}>" + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                                         for i, c in enumerate(r)) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    thead = f"<thead><tr>{ths}</tr></thead>" if head else ""
    return f'<div class="scroll"><table{c}>{thead}<tbody>{"".join(body)}</tbody></table></div>'


def _png(fig) -> str:
    """An ``<img>`` holding the figure as a base64 PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return _img(buf.getvalue(), "plot")


def _saved_png(draw, *args) -> bytes:
    """PNG bytes of a report function that saves its own figure to a path (given a file object here)."""
    buf = io.BytesIO()
    draw(*args, buf)
    return buf.getvalue()


def _is_random(meta: Mapping) -> bool:
    return str(meta.get("pretrained", "")).lower() == "none" or str(meta.get("random_init", "")).lower() == "true"


def _badge(meta: Mapping) -> str:
    return '<span class="badge random">RANDOM WEIGHTS</span>' if _is_random(meta) else ""


def _roi_label(col: str) -> str:
    return ROI_FAMILY_LABELS.get(col, col)


# ------------------------------------------------------------------------------------------ the writer
def write_html_report(path: str | os.PathLike, *, dataset: AlgonautsDataset | str | os.PathLike,
                      registry: Any, store: str | None = None, metrics: dict | None = None,
                      kinds: dict | None = None, decoders: dict | None = None, title: str = "brainstore report",
                      provenance_extra: Mapping | None = None, maps=None) -> Path:
    """Write the self-contained HTML report of the models fitted on ``dataset`` and return its path.

    Parameters
    ----------
    path : the ``.html`` file to write (its folder is created; the file is replaced atomically).
    dataset : an :class:`AlgonautsDataset` or its folder.
    registry : a :class:`~brainstore.fitting.ModelRegistry` or its path / URI.
    store : feature store URI (default: the store each model was fitted with).
    metrics, kinds : encoding metrics and kinds as :func:`~brainstore.fitting.evaluate_registered`
        (or ``fit_encoding_models(...).metrics / .kinds``) returns them; None: computed with
        ``evaluate_registered``. ``{}``: no encoding section.
    decoders : retrieval metrics as :func:`~brainstore.fitting.evaluate_decoders` returns them; None:
        computed when the registry holds decoders or adaptors of the dataset. ``{}``: none.
    title : the report's title.
    provenance_extra : a dict shown as a table in the provenance section (nested dicts as nested tables).
    maps : the maps on the cortex that ``evaluate`` wrote (``Evaluation.maps_info``); None: a note says where.

    Raises
    ------
    ValueError
        ``path`` lies under a file or in a folder that cannot be written, or ``provenance_extra`` is not a dict.
    """
    from ..._paths import check_folder
    from ..decoding import decoding_models, evaluate_decoders
    from ..registry import ModelRegistry
    from ._html_lineage import section_lineage, versioned_records
    from ._html_maps import section_maps
    from ._report import evaluate_registered

    out = Path(path).expanduser().absolute()
    if out.is_dir():
        raise ValueError(f"HTML report path {out} is a folder; pass a file name such as {out / 'report.html'}")
    check_folder(out.parent, "HTML report folder", "write_html_report(path=...)", create=True)
    if provenance_extra is not None and not isinstance(provenance_extra, Mapping):
        raise ValueError(f"provenance_extra must be a dict (shown as a table), not {type(provenance_extra).__name__}")
    ds = dataset if isinstance(dataset, BrainDataset) else open_dataset(dataset)
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()

    recs = [r for r in reg.list() if r.meta.get("dataset") == str(ds.root)]
    if metrics is None:
        metrics, kinds, _ = evaluate_registered(reg, ds, store=store)
    by_model: dict[str, list] = {}
    for r in recs:
        by_model.setdefault(r.meta.get("model", r.name.split("/")[0]), []).append(r)
    by_model.update(versioned_records(reg, metrics))  # "clip@2": what that version recorded
    kinds = dict(kinds or {})
    for m in metrics:
        if m not in kinds and m in by_model:
            kinds[m] = by_model[m][0].meta.get("kind", "")
    dmodels = decoding_models(reg, ds.root)
    if decoders is None:
        decoders = evaluate_decoders(reg, ds, store=store) if dmodels else {}

    import matplotlib
    matplotlib.use("Agg")
    with matplotlib.rc_context({"savefig.format": "png", "figure.max_open_warning": 0}):
        oracle, oracle_note = _oracle(ds)
        sections = [
            ("encoding", "Per-ROI encoding scores", _section_rois(ds, metrics, kinds, oracle, oracle_note)),
            ("table1", "Comparison (Algonauts 2023 Table 1 shape)", _section_table1(metrics, kinds, by_model, oracle)),
            ("maps", "Maps on the cortex", section_maps(maps, metrics, kinds)),
            ("retrieval", "Retrieval from decoded embeddings", _section_retrieval(decoders, dmodels)
             + adaptor_outcomes(reg, dmodels)),
            ("captions", "Decoded captions", _section_captions(ds, reg, store, decoders, dmodels)),
            ("split", "Feature-space contributions (banded models)", _section_split(metrics)),
            ("lineage", "Lineage", section_lineage(reg, store, by_model, [*metrics, *decoders])),
            ("provenance", "Run provenance", _section_provenance(ds, reg, store, metrics, decoders, by_model, dmodels,
                                                                 created, provenance_extra)),
        ]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(_page(title, ds, metrics, decoders, sections, created), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _page(title: str, ds: AlgonautsDataset, metrics: dict, decoders: dict, sections: list, created: str) -> str:
    """The whole HTML document: header (dataset, model and subject counts, creation time), navigation, sections."""
    nav = "".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(name)}</h2>{content}</section>' for sid, name, content in sections)
    n_subj = len({s for by_s in metrics.values() for s in by_s})
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{_esc(title)}</h1><p>dataset {_esc(ds.root)} &middot; {len(metrics)} encoding model(s), "
            f"{len(decoders)} decoding model(s), {n_subj or len(ds.subjects)} subject(s) &middot; created {_esc(created)}"
            f"</p><nav>{nav}</nav></header><main>{body}</main></body></html>\n")


# ------------------------------------------------------------------------------------------ 1. per-ROI bars
def _oracle(ds: AlgonautsDataset) -> tuple[dict, str]:
    """Per-subject per-ROI NNMC of the noiseless responses (``ground_truth/``), or ({}, why there is none)."""
    from ._evaluate import score_submission

    gt = ds.ground_truth_dir()
    if gt is None:
        return {}, (f"no oracle: {ds.root} has no ground_truth/ folder of noiseless test responses"
                    if ds.root.is_dir() else f"no oracle: {ds.root} describes no ground_truth: folder")
    try:
        return {s: r["both"]["roi"] for s, r in score_submission(ds, gt).items()}, ""
    except (DatasetError, ValueError, OSError) as e:
        return {}, f"no oracle: {e}"


def _noise_ceiling(ds: AlgonautsDataset, subject: str) -> dict[str, float] | None:
    """Mean noise ceiling (%) per ROI, hemispheres pooled (as the demo prints it); None without one."""
    from ._evaluate import mean_noise_ceiling

    try:
        if any(ds.noise_ceiling(subject, h) is None for h in HEMISPHERES):
            return None
        return mean_noise_ceiling(ds, subject)
    except DatasetError:
        return None


def _model_scores(m: dict) -> tuple[dict[str, float], bool]:
    """One subject's per-ROI figures of a model: test NNMC (True) or, without it, validation r (False)."""
    both = m["both"]
    if "test_nnmc" in both:
        return {"all": both["test_nnmc"], **both["test_nnmc_roi"]}, True
    return {"all": both["val_r_mean"], **both["val_r_roi"]}, False


def _section_rois(ds, metrics: dict, kinds: dict, oracle: dict, oracle_note: str) -> str:
    if not metrics:
        return '<p class="note">No encoding model was evaluated (none fitted on this dataset, or only decoders were asked for).</p>'
    from ._report import report_families

    cols = ["all", *report_families(metrics)]
    subjects = sorted({s for by_s in metrics.values() for s in by_s})
    parts = ['<p class="note">Test NNMC (noise-normalized squared correlation, 100 = at the noise ceiling) per ROI '
             "family, hemispheres pooled, beside the mean noise ceiling (NC, % of explainable variance) and the "
             "oracle: the same score for the dataset's noiseless responses, the best any model can reach here.</p>"]
    if oracle_note:
        parts.append(f'<p class="warn">{_esc(oracle_note)}</p>')
    for s in subjects:
        rows, test_all = [], True
        for model, by_s in metrics.items():
            if s in by_s:
                vals, test = _model_scores(by_s[s])
                test_all &= test
                rows.append((model, kinds.get(model, ""), vals))
        refs = []
        if test_all:
            nc = _noise_ceiling(ds, s)
            if nc is not None:
                refs.append(("noise ceiling (mean NC, %)", nc))
            if s in oracle:
                refs.append(("oracle: noiseless responses", oracle[s]))
        metric = "test NNMC" if test_all else "validation r"
        parts.append(f'<h3 id="rois-{_esc(s)}">{_esc(s)}: per-ROI {metric}</h3>')
        if not test_all:
            parts.append(f'<p class="warn">{_esc(s)} has no test responses or noise ceiling: validation r is '
                         "shown (no NC or oracle to compare with).</p>")
        parts.append(_plot_rois(s, rows, refs, metric, cols))
        head = ["model", "method", *[_esc(_roi_label(c)) for c in cols]]
        body = [[_esc(m), _esc(k), *[_num(v.get(c), 2 if test_all else 3) for c in cols]] for m, k, v in rows]
        body += [[_esc(label), "", *[_num(v.get(c)) for c in cols]] for label, v in refs]
        parts.append(_table(head, body, numeric_from=2, cls=f"rois subject-{_esc(s)}",
                            row_classes=[""] * len(rows) + ["ref"] * len(refs)))
    return "".join(parts)


def _plot_rois(subject: str, rows: list, refs: list, metric: str, cols: list[str] = COLUMNS) -> str:
    import matplotlib.pyplot as plt

    series = [(m, v, {}) for m, _, v in rows]
    styles = {"noise ceiling (mean NC, %)": {"color": "#c9ced8", "hatch": "//", "edgecolor": "#8a90a0"},
              "oracle: noiseless responses": {"color": "#3b4252"}}
    series += [(label, v, styles.get(label, {})) for label, v in refs]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(cols) + 0.25 * len(series) * len(cols) / 2), 3.8))
    width = 0.84 / max(len(series), 1)
    x = np.arange(len(cols))
    for k, (label, vals, style) in enumerate(series):
        y = [float(vals.get(c, np.nan)) for c in cols]
        ax.bar(x + k * width - 0.42 + width / 2, y, width, label=label if len(label) <= 40 else label[:37] + "...",
               **style)
    ax.set_xticks(x, [_roi_label(c) for c in cols])
    ax.set_ylabel(metric)
    ax.set_title(f"{subject}: per-ROI {metric}" + (" (NC in %)" if refs else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------------------------------ 2. Table 1
def _describe(model: str, kind: str, recs: list) -> str:
    """'ridge on table, table' / 'per-roi of a, b' from the model's registry record."""
    meta = recs[0].meta if recs else {}
    if meta.get("members"):
        return f"{kind or meta.get('kind', '')} of {', '.join(meta['members'])}"
    feats = meta.get("features") or []
    return f"{kind or meta.get('kind', '')} on {', '.join(feats)}" if feats else (kind or "")


def _uses_random(recs: list) -> bool:
    return any(_is_random(m) for r in recs[:1] for m in (r.meta.get("feature_versions") or {}).values())


def _section_table1(metrics: dict, kinds: dict, by_model: dict, oracle: dict) -> str:
    from ._report import comparison_rows

    if not metrics:
        return '<p class="note">No encoding model to compare.</p>'
    rows = comparison_rows(metrics, kinds)
    test = all("nnmc" in r for r in rows)
    key = "nnmc" if test else "val_r"
    best = max(rows, key=lambda r: r[key] if not math.isnan(r[key]) else -math.inf)
    body = []
    for r in rows:
        recs = by_model.get(r["model"], [])
        badge = '<span class="badge random">RANDOM WEIGHTS</span>' if _uses_random(recs) else ""
        label = (f'<span class="model">{_esc(r["model"])}</span>{badge}'
                 f'<span class="how">{_esc(_describe(r["model"], r["method"], recs))}</span>')
        cell = _num(r[key], 2 if test else 3)
        cell = f"<b>{cell}</b>" if r is best else cell
        body.append(f'<tr><td>{label}</td><td class="score" data-value="{r[key]!r}">{cell}</td></tr>')
    foot = ""
    subjects = sorted({s for by_s in metrics.values() for s in by_s})
    if test and oracle and all(s in oracle for s in subjects):
        o = float(np.mean([oracle[s]["all"] for s in subjects]))
        foot = (f'<tfoot><tr class="ref"><td>oracle: noiseless responses (reference)</td>'
                f'<td class="score" data-value="{o!r}">{_num(o)}</td></tr></tfoot>')
    what = ("NNMC score: mean over subjects of the test NNMC over all vertices (0-100)" if test else
            "no test NNMC (test responses or noise ceilings missing): the score is the validation r")
    return (f'<p class="note">{_esc(what)}; best in bold. {len(subjects)} subject(s).</p>'
            f'<table class="table1"><thead><tr><th>Features and Methods</th><th class="num">'
            f'{"NNMC score" if test else "val r"}</th></tr></thead><tbody>{"".join(body)}</tbody>{foot}</table>')


# ------------------------------------------------------------------------------------------ 3. retrieval
def _method(key: str, m: dict, dmodels: dict) -> str:
    if m.get("method"):
        return str(m["method"])
    kind = dmodels.get(key.split(":")[0], {}).get("kind")
    return "ridge" if kind in (None, "decoder") else str(kind)


def _ci(m: dict, key: str) -> str:
    lo, hi = m.get(key + "_ci95", (None, None))
    return f"{_num(m[key], 3)} <small>[{_num(lo)}, {_num(hi)}]</small>"


def _plot_retrieval(rows: list[tuple[str, str, dict]]) -> str:
    """Grouped bars: top-1 both ways with 95 % intervals per (decoder, subject); chance and oracle marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(rows) + 3.5), 3.8))
    x = np.arange(len(rows))
    for off, key, label in ((-0.2, "top1_brain_to_stimulus", "brain -> stimulus"),
                            (0.2, "top1_stimulus_to_brain", "stimulus -> brain")):
        vals = np.array([float(m[key]) for _, _, m in rows])
        ci = np.array([m.get(key + "_ci95", (m[key], m[key])) for _, _, m in rows], dtype=float).reshape(-1, 2)
        err = np.maximum(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0)  # (a zero-width interval may round off)
        ax.bar(x + off, vals, width=0.38, yerr=err, capsize=3, label=label)
    for i, (_, _, m) in enumerate(rows):
        ax.plot([i - 0.42, i + 0.42], [m["chance"]] * 2, color="#888", lw=1.2,
                label="chance (1/n)" if i == 0 else None)
        if "oracle_top1_brain_to_stimulus" in m:
            ax.plot([i - 0.42, i + 0.42], [m["oracle_top1_brain_to_stimulus"]] * 2, "k--", lw=1,
                    label="oracle brain -> stimulus" if i == 0 else None)
    ax.set_xticks(x, [f"{k if len(k) <= 30 else k[:27] + '...'}\n{s}" for k, s, _ in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-1 retrieval")
    ax.set_title("top-1 retrieval among n test images (mean of draws, 95 % interval)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)


def _section_retrieval(decoders: dict, dmodels: dict) -> str:
    if not decoders:
        return '<p class="note">No decoder or adaptor was fitted on this dataset.</p>'
    head = ["decoder", "method", "target", "subject", "n", "brain&rarr;stimulus top-1 [95 %]",
            "stimulus&rarr;brain top-1 [95 %]", "chance", "2-way", "oracle b&rarr;s", "whole store top-1 / top-5"]
    body, scored = [], False
    for key, by_s in decoders.items():
        for s, m in by_s.items():
            if "top1_brain_to_stimulus" not in m:
                body.append([_esc(key), _esc(_method(key, m, dmodels)), _esc(m.get("target", "")), _esc(s),
                             "-", "(no test responses)", "", "", "", "", ""])
                continue
            scored = True
            store = (f"{_num(m['store_top1'], 3)} / {_num(m['store_top5'], 3)} of {int(m['store_candidates'])}"
                     if "store_top1" in m else "-")
            body.append([_esc(key), _esc(_method(key, m, dmodels)), _esc(m.get("target", "")), _esc(s),
                         str(int(m.get("n_candidates", 0))), _ci(m, "top1_brain_to_stimulus"),
                         _ci(m, "top1_stimulus_to_brain"), _num(m["chance"], 4), _num(m.get("two_way"), 3),
                         _num(m.get("oracle_top1_brain_to_stimulus"), 3), store])
    parts = ['<p class="note">Top-1 retrieval among n test images (MindEye protocol: mean over random draws of n '
             "candidates; the 95 % interval is the spread of the draws, not an interval of the mean as MindEye "
             "reports). brain&rarr;stimulus: the decoded embedding picks its image; stimulus&rarr;brain: the "
             "image&#x27;s embedding picks its response (MindEye&#x27;s &quot;fwd&quot; compares with "
             "stimulus&rarr;brain, its &quot;bwd&quot; with brain&rarr;stimulus). Chance is 1/n; the oracle is the "
             "same method fitted and tested on noiseless responses (ridge decoders of a synthetic dataset).</p>",
             _table(head, body, numeric_from=4, cls="retrieval")]
    if scored:
        parts.append(_plot_retrieval([(key, s, m) for key, by_s in decoders.items() for s, m in by_s.items()
                                      if "top1_brain_to_stimulus" in m]))
    return "".join(parts)


# ------------------------------------------------------------------------------------------ 4. captions
def _section_captions(ds, reg, store: str | None, decoders: dict, dmodels: dict) -> str:
    from ...features import FeatureStoreError
    from ..decoding import decode_subject, retrieved_captions
    from ..encoding import subject_stimuli
    from ..registry import RegistryError

    if not decoders:
        return '<p class="note">No decoder: nothing decoded.</p>'
    if not ds.captions:
        return f'<p class="note">{_esc(ds.root)} has no captions (captions.csv / captions.parquet).</p>'
    parts, cache, stores, shown = [], {}, {}, 0
    for model, info in dmodels.items():
        for target in info["targets"]:
            key = model if model in decoders else f"{model}:{target}"
            if key not in decoders:
                continue
            subjects = [s for s in sorted(decoders[key]) if s in info["subjects"] and ds.has_test_responses(s)]
            rows = []
            try:
                for s in subjects:
                    D, fs = decode_subject(reg, model, s, ds, target, store, cache=cache)
                    if stores.setdefault((fs.uri, target), fs.metadata(target).get("extractor")) != "text":
                        break  # not a caption table
                    train_ids = subject_stimuli(ds, s, "train")
                    test_ids = subject_stimuli(ds, s, "test")[:N_CAPTIONS]
                    best, decoded = retrieved_captions(ds, s, np.asarray(D)[:N_CAPTIONS], fs.load(target, train_ids),
                                                       train_ids)
                    t = ds.stimuli([s], splits=("test",))
                    truth = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
                    for sid, b, cap in zip(test_ids, best, decoded):
                        rows.append([_esc(s), f"<code class=\"id\">{_esc(sid)}</code>",
                                     f'<span class="caption-true" data-stimulus="{_esc(sid)}">{_esc(truth.get(sid) or "")}</span>',
                                     f'<span class="caption-decoded" data-stimulus="{_esc(train_ids[b])}">{_esc(cap)}</span>'
                                     f' <small>({_esc(train_ids[b])})</small>'])
            except (RegistryError, FeatureStoreError, DatasetError, ValueError) as e:
                parts.append(f'<p class="warn">{_esc(key)}: cannot decode ({_esc(str(e).splitlines()[0])})</p>')
                continue
            if rows:
                shown += 1
                parts.append(f"<h3>{_esc(key)} <small>({_esc(_method(key, {}, dmodels))} into {_esc(target)})</small></h3>")
                parts.append(_table(["subject", "test image", "true caption", "decoded caption (nearest training stimulus)"],
                                    rows, numeric_from=99, cls="captions"))
    if not shown and not parts:
        return '<p class="note">No decoder targets a caption (text) table.</p>'
    intro = (f'<p class="note">For the first {N_CAPTIONS} test images of each subject: the true caption, and the '
             "caption of the training stimulus nearest (cosine) to the decoded embedding, as the caption_* metrics "
             "score it; test captions are never candidates.</p>")
    return intro + "".join(parts)


# ------------------------------------------------------------------------------------------ 5. split
def _section_split(metrics: dict) -> str:
    from ._report import row_families, split_rows, write_split_plot

    rows = split_rows(metrics)
    if not rows:
        return '<p class="note">No banded model (or no test responses to split): nothing to split.</p>'
    cols = ["all", *row_families(rows)]
    head = ["model", "feature space", *[_esc(_roi_label(c)) for c in cols]]
    body = [[_esc(r["model"]), _esc(r["space"]), *[_num(r[c], 3) for c in cols]] for r in rows]
    return ('<p class="note">Banded ridge: each feature space&#x27;s share of the test Pearson r per ROI family, mean '
            "over subjects (the shares of a model add up to its test r).</p>"
            + _table(head, body, numeric_from=2, cls="split")
            + _img(_saved_png(write_split_plot, rows), "test r split between feature spaces"))


# ------------------------------------------------------------------------------------------ 6. provenance
def _kv_table(d: Mapping, cls: str = "kv") -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            cell = _kv_table(v, "kv nested") if v else "<i>empty</i>"
        elif isinstance(v, (list, tuple)):
            cell = _esc(", ".join(json.dumps(x) if not isinstance(x, str) else x for x in v))
        else:
            cell = _esc(v)
        rows.append([_esc(k), cell])
    return _table(["key", "value"], rows, numeric_from=99, cls=cls)


def _pretrained(meta: Mapping) -> str:
    tag = meta.get("pretrained_tag") or meta.get("pretrained") or "-"
    return _esc(tag) + _badge(meta)


def _section_provenance(ds, reg, store, metrics: dict, decoders: dict, by_model: dict, dmodels: dict,
                        created: str, extra: Mapping | None) -> str:
    from ..._provenance import package_versions

    parts = ["<h3>Run</h3>", _kv_table({
        "created (UTC)": created, "dataset": str(ds.root), "registry": str(reg.root),
        "feature store": store or ", ".join(sorted({r.meta["store"] for rs in by_model.values() for r in rs
                                                   if "store" in r.meta})) or "-",
        "encoding models": ", ".join(metrics) or "-", "decoding models": ", ".join(decoders) or "-"})]
    parts += ["<h3>Package versions</h3>",
              _kv_table({k: v or "not installed" for k, v in package_versions(*VERSIONED).items()})]
    # every feature table a reported model reads, with the metadata it was fitted with
    used = [m for m in metrics] + [k.split(":")[0] for k in decoders]
    tables: dict[str, dict] = {}
    users: dict[str, list[str]] = {}
    for model in dict.fromkeys(used):
        for r in by_model.get(model, []):
            for t, meta in (r.meta.get("feature_versions") or {}).items():
                tables.setdefault(t, meta)
                if model not in users.setdefault(t, []):
                    users[t].append(model)
    parts.append("<h3>Feature tables</h3>")
    if tables:
        n_random = sum(_is_random(m) for m in tables.values())
        if n_random:
            parts.append(f'<p class="warn"><span class="badge random">RANDOM WEIGHTS</span> {n_random} of the '
                         f"{len(tables)} feature table(s) were made with randomly initialized weights "
                         "(pretrained=none): their scores say nothing about the pretrained model.</p>")
        for t, m in tables.items():
            facts = {"used by": ", ".join(users[t]), "extractor": m.get("extractor", "-"),
                     "architecture": m.get("architecture", "-"), "modality": m.get("modality", "-"),
                     "dim": m.get("dim", "-")}
            rows = [[_esc(k), _esc(v)] for k, v in facts.items()]
            rows.append(["pretrained", _pretrained(m)])
            rows.append(["weights sha256", f"<code>{_esc(m.get('weights_sha256', '-'))}</code>"])
            rows.append(["weights source", _esc(m.get("weights_source", "-"))])
            if m.get("transform"):
                rows.append(["derivation", _esc(f"{m['transform']} of {m.get('derived_from', '?')} "
                                                 f"(fitted on {m.get('n_fit', '?')} {m.get('fit_split', '')} rows, "
                                                 f"projection sha256 {m.get('projection_sha256', '?')})")])
            rows += [["spec", f"<code>{_esc(m.get('spec', '-'))}</code>"], ["created", _esc(m.get("created", "-"))]]
            parts.append(f'<div class="table-card"><h4><code>{_esc(t)}</code>{_badge(m)}</h4>'
                         + _table(None, rows, numeric_from=99, cls="table-meta")
                         + f"<details><summary>all metadata of {_esc(t)}</summary>{_kv_table(m)}</details></div>")
    else:
        parts.append('<p class="note">No feature table (no model reported).</p>')
    parts += ["<h3>Dataset</h3>", _dataset_table(ds.summary())]
    if extra:
        parts += ["<h3>Extra</h3>", _kv_table(extra, "kv extra")]
    return "".join(parts)


def _dataset_table(summary: Mapping) -> str:
    fams: list[str] = []
    for s in summary["subjects"].values():
        for h in s["hemispheres"].values():
            fams += [f for f in h.get("rois", {}) if f not in fams]
    head = ["subject", "hemi", "train", "test", "test fMRI", "vertices", *[_esc(_roi_label(f)) for f in fams],
            "NC mean"]
    rows = []
    for name, s in summary["subjects"].items():
        for hemi, h in s["hemispheres"].items():
            rows.append([_esc(name), _esc(hemi), str(s["train_images"]), str(s["test_images"]),
                         "yes" if s["test_responses"] else "no", str(h["vertices"]),
                         *[str(h.get("rois", {}).get(f, 0)) for f in fams], _num(h.get("noise_ceiling_mean"), 3)])
    return (f'<p class="note">{_esc(summary["root"])} ({_esc(summary["name"])}): {len(summary["subjects"])} subject(s), '
            f'{int(summary["captions"])} caption(s).</p>' + _table(head, rows, numeric_from=2, cls="dataset"))

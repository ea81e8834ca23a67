"""The HTML report's account of each adaptor beside its retrieval figures: the ridge decoder fitted on the
same rows and judged on the same validation split (validation and test top-1 of both, the winner; a ridge
win is marked), and the search's trials (settings, validation top-1 at the best epoch, epochs, why each
stopped; the kept one starred), as the adaptor's registered record holds them."""

from __future__ import annotations

from ._markup import esc as _esc

__all__ = ["adaptor_outcomes"]


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _table(head: list[str], rows: list[list[str]], cls: str) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _comparison(name: str, meta: dict) -> str:
    comp, metrics = meta.get("comparison") or {}, (meta.get("metrics") or {}).get(meta["targets"][0], {})
    if not comp:
        return ""
    rows = [[_esc(s), str(c["n_val"]), _f(c["adaptor_val_top1"]), _f(c["ridge_val_top1"]),
             _f(metrics.get(s, {}).get("top1_brain_to_stimulus")),
             _f(c.get("ridge_test", {}).get("top1_brain_to_stimulus"))] for s, c in comp.items()]
    mean = {k: sum(c[f"{k}_val_top1"] for c in comp.values()) / len(comp) for k in ("adaptor", "ridge")}
    if meta.get("winner") == "ridge":
        verdict = (f'<p class="warn"><b>Ridge wins on validation</b> for {_esc(name)} (mean top-1 '
                   f'{mean["ridge"]:.3f} against {mean["adaptor"]:.3f}): the ridge decoders are the better model '
                   "here (<code>method: auto</code> keeps them).</p>")
    else:
        verdict = (f'<p class="note">{_esc(name)} beats ridge on validation (mean top-1 {mean["adaptor"]:.3f} '
                   f'against {mean["ridge"]:.3f}).</p>')
    head = ["subject", "validation images", "adaptor val top-1", "ridge val top-1", "adaptor test top-1",
            "ridge test top-1"]
    return (f"<h3>{_esc(name)} against ridge on the same validation split</h3>" + verdict
            + _table(head, rows, "retrieval"))


def _search(name: str, meta: dict) -> str:
    search = meta.get("search")
    if not search:
        return ""
    rows = [[f"{r['trial']}{' *' if r['trial'] == search['best'] else ''}",
             _esc(" ".join(f"{k}={v}" for k, v in sorted(r["config"].items()))), _f(r["val_top1"]),
             "-" if r["best_epoch"] is None else str(r["best_epoch"]), str(r["epochs"]), _esc(r["stopped"])]
            for r in search["trials"]]
    s = search["settings"]
    note = (f'<p class="note">Ray Tune, ASHA (grace {s["grace"]} epochs, reduction {s["reduction"]}), '
            f'{len(search["trials"])} trials, {search["epochs_run"]} epochs in all, {search["seconds"]:.0f} s; '
            "trial 0 is the spec&#x27;s own settings; * the one kept (its best epoch).</p>")
    return (f"<h3>{_esc(name)}: the search of its settings</h3>" + note
            + _table(["trial", "settings", "val top-1", "best epoch", "epochs", "stopped"], rows, "retrieval"))


def adaptor_outcomes(reg, dmodels: dict) -> str:
    """The comparison and search blocks of every adaptor among ``dmodels`` (:func:`~..decoding.decoding_models`)."""
    from ..registry import RegistryError

    parts = []
    for name, d in dmodels.items():
        if d.get("kind") != "adaptor":
            continue
        try:
            meta = reg.record(f"{name}/shared").meta
        except RegistryError:
            continue
        parts.append(_comparison(name, meta) + _search(name, meta))
    return "".join(parts)

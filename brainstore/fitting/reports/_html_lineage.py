"""The HTML report's "Lineage" section: for every model the report shows and each subject's version of it, the
chain of :func:`~._lineage.lineage` (dataset -> stimuli -> feature table versions -> fit and run -> model version
-> aliases -> services) in a collapsed ``<details>`` block, with what changed since the fit marked; and the
records of versioned model keys (``clip@2``) the other sections describe."""

from __future__ import annotations

from ._lineage import Lineage, lineage
from ._markup import esc as _esc

__all__ = ["section_lineage", "versioned_records"]

def versioned_records(reg, metrics: dict) -> dict[str, list]:
    """``{model key: [record per subject]}`` of the keys of ``metrics`` that name a version (``clip@2``): what the
    report says of them is what that version recorded, not what the bare name loads now."""
    from ..registry import RegistryError, model_ref

    out: dict[str, list] = {}
    for key, by_subject in metrics.items():
        if "@" not in key:
            continue
        for s in sorted(by_subject):
            try:
                out.setdefault(key, []).append(reg.record(model_ref(key, s)))
            except RegistryError:  # removed since it was scored: the section says nothing of it
                pass
    return out


def _rows(chain: Lineage) -> str:
    body = []
    for link in chain.links:
        changed = "".join(f"<div>&#9888; {_esc(c)}</div>" for c in link.changed)
        body.append(f'<tr data-link="{_esc(link.kind)}"><th>{_esc(link.kind)}</th><td>{_esc(link.summary)}</td>'
                    f'<td class="changed">{changed}</td></tr>')
    members = "".join(_block(m) for m in chain.members)
    return f'<table class="lineage-chain"><tbody>{"".join(body)}</tbody></table>{members}'


def _block(chain: Lineage) -> str:
    n = len(chain.changed)
    flag = f" &middot; <b>{n} change(s) since the fit</b>" if n else ""
    return (f'<details class="table-card lineage" data-ref="{_esc(chain.ref)}"><summary><code>{_esc(chain.ref)}</code> '
            f"{_esc(chain.kind or '')}{flag}</summary>{_rows(chain)}</details>")


def section_lineage(reg, store, by_model: dict, models: list[str]) -> str:
    """One collapsed chain per shown model (``models``: the encoders' and decoders' keys) and subject version."""
    from ..registry import RegistryError

    try:
        services = reg.services()
    except RegistryError:
        services = None
    cache: dict = {}
    parts = []
    for model in dict.fromkeys(models):
        for rec in by_model.get(model.split(":")[0], []):
            try:
                parts.append(_block(lineage(reg, rec.ref, store=store, services=services, cache=cache)))
            except RegistryError as e:
                parts.append(f'<p class="warn">{_esc(rec.ref)}: {_esc(str(e).splitlines()[0])}</p>')
    if not parts:
        return '<p class="note">No model to trace.</p>'
    served = ("no service announced in the registry" if not services else
              f"{len(services)} service(s) announced in the registry" if services is not None else
              "the services' announcements could not be read")
    return ('<p class="note">Where each version comes from: the dataset (path, digest of the responses and ids the fit '
            "read), the stimulus table, each feature table at the version the fit pinned (extractor, weights), the "
            "fit and its run folder, the version, its aliases and the services serving it "
            f"({_esc(served)}). &#9888; marks what changed since the fit.</p>" + "".join(parts))

"""The HTML report's "Maps on the cortex" section: the best model's pictures (NNMC and test r per subject,
the subject average when there is one, the noise ceiling once) as base64 PNG data URIs, and one interactive
3-D view (nilearn's viewer, plotly.js inline) in an ``<iframe srcdoc>``: its scripts run sandboxed, apart
from the report, and nothing is fetched."""

from __future__ import annotations

import numpy as np

from ._maps import AVERAGE, DATA, METRICS, CortexMaps
from ._markup import esc as _esc, img as _img

__all__ = ["section_maps"]

#: Height of the interactive view (CSS pixels).
VIEW_HEIGHT = 560


def _picture(path, alt: str) -> str:
    return _img(path.read_bytes(), alt, "map")


def _best(pictures: dict, metrics: dict, kinds: dict) -> str:
    """The best model (the comparison's order: test NNMC, else validation r) among those with pictures."""
    from ._report import comparison_rows

    rows = [r for r in comparison_rows({m: metrics[m] for m in metrics if m in pictures}, kinds)]
    if not rows:
        return sorted(m for m in pictures if m != DATA)[0]
    return max(rows, key=lambda r: r.get("nnmc", r["val_r"]))["model"]


def _subjects(by_subject: dict) -> list[str]:
    return sorted(s for s in by_subject if s != AVERAGE) + ([AVERAGE] if AVERAGE in by_subject else [])


def _interactive(maps: CortexMaps, model: str) -> str:
    """The iframe of the 3-D view of the model's NNMC (else test r): the subject average, else the first subject."""
    from ...maps import read_map, surface_view_html

    by_subject = maps.pictures.get(model, {})
    subject = AVERAGE if AVERAGE in by_subject else _subjects(by_subject)[0]
    metric = "nnmc" if maps.surface(model, subject, "nnmc") else "test_r"
    files = maps.surface(model, subject, metric)
    space = maps.spaces.get(subject)
    if not files or space is None or space.kind != "surface":
        return '<p class="note">No interactive view: the maps are volumes (see the pictures and the NIfTI files).</p>'
    values = {h: np.asarray(read_map(p), dtype=np.float32) for h, p in files.items()}
    title = f"{model} · {subject} · {METRICS[metric]}"
    page = surface_view_html(values, space, title=title, meshes=maps.meshes_for(space))
    return (f'<h3>Interactive view: {_esc(title)}</h3><p class="note">Drag to rotate, scroll to zoom; the menu '
            "picks a view. Both hemispheres on their inflated meshes, sulcal depth underneath.</p>"
            f'<iframe class="brain3d" title="{_esc(title)}" sandbox="allow-scripts" '
            f'style="width:100%;height:{VIEW_HEIGHT}px;border:1px solid #eceef2" srcdoc="{_esc(page)}"></iframe>')


def _intro(maps: CortexMaps, model: str) -> str:
    spaces = sorted({s.describe() for s in maps.spaces.values()})
    return (f'<p class="note">Per vertex, on the cortex: the best model&#x27;s ({_esc(model)}) NNMC (test, % of the '
            "noise ceiling) and test Pearson r, and the noise ceiling (%). Blank: vertices not measured. Outlines: "
            f"the dataset&#x27;s ROIs. Space: {_esc('; '.join(spaces))}. Every model&#x27;s maps are files under "
            "<code>maps/MODEL/SUBJECT/</code> beside this report (GIfTI <code>{lh,rh}.{test_r,nnmc}.func.gii</code> "
            "for nilearn, Workbench, Freeview or pycortex; NIfTI for volumes); the noise ceiling under "
            "<code>maps/_data/</code>.</p>")


def section_maps(maps: CortexMaps | None, metrics: dict, kinds: dict) -> str:
    """The section's HTML (already escaped) for :func:`~._maps.write_cortex_maps`'s result, or a note why
    there are no maps."""
    if maps is None:
        return ('<p class="note">No maps here: <code>brainstore evaluate</code> writes them (<code>maps/</code> '
                "beside its report.html) for datasets that say where their response columns sit.</p>")
    notes = "".join(f'<p class="warn">{_esc(n)}</p>' for n in maps.notes)
    models = [m for m in maps.pictures if m != DATA]
    if not models:
        return notes or '<p class="note">No maps were written.</p>'
    model = _best(maps.pictures, metrics, kinds)
    parts = [_intro(maps, model), notes]
    for subject in _subjects(maps.pictures[model]):
        pics = maps.pictures[model][subject]
        what = "mean over subjects" if subject == AVERAGE else f"subject {subject}"
        parts.append(f"<h3>{_esc(model)}: {_esc(what)}</h3>")
        parts += [_picture(pics[m], f"{model} {subject} {METRICS[m]}") for m in ("nnmc", "test_r") if m in pics]
    nc = maps.pictures.get(DATA, {})
    if nc:
        subject = AVERAGE if AVERAGE in nc else _subjects(nc)[0]
        what = "mean over subjects" if subject == AVERAGE else f"subject {subject}"
        parts += [f"<h3>Noise ceiling: {_esc(what)}</h3>",
                  _picture(nc[subject]["noise_ceiling"], f"noise ceiling {subject}")]
    parts.append(_interactive(maps, model))
    return "".join(parts)

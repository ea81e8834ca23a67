"""Selectivity of an encoding model: the stored stimuli whose predicted response in an ROI is highest.

What BrainSCUBA and LaVCa do with captions, done with the feature store: a registered encoding
model predicts every stimulus held in all of its feature tables (not only the dataset's test
images), the prediction is averaged over the vertices of an ROI (a named ROI or ROI family of the
dataset's masks, both hemispheres unless one is asked for; or explicit vertex indices), and the
top stimuli come back with their score, its z-score across all stimuli, their caption and image
file where the dataset has them. :func:`write_contact_sheet` draws them as one PNG.

Prediction is :meth:`~._predict.EncodingModel.predict` (drift-checked load, per-ROI models and
ensembles composed as at fit time), fed chunk by chunk: each feature table is read once for all
stimuli, predictions exist one chunk of stimuli at a time (73,000 stimuli x 40,000 vertices are
never in memory together), and only the ROI mean of each stimulus is kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ...datasets import HEMISPHERES, AlgonautsDataset, BrainDataset, DatasetError, open_dataset
from ...features import FeatureStore
from ..registry import NON_ENCODER_KINDS, ModelRegistry, RegistryError, model_base, model_ref

__all__ = ["Explanation", "ExplainedStimulus", "explain_roi", "write_contact_sheet", "sheet_size"]

#: Predicted values held at once per chunk (float32): 2**26 = 256 MB across the model's members.
_CHUNK_VALUES = 2 ** 26


@dataclass(frozen=True)
class ExplainedStimulus:
    """One of the top stimuli: rank (1 = highest), id, ROI-mean prediction and its z-score across all
    scored stimuli, caption (None when unknown) and image file (None when the dataset lacks it)."""

    rank: int
    stimulus_id: str
    score: float
    z: float
    caption: str | None
    image: str | None


@dataclass
class Explanation:
    """The result of :func:`explain_roi`.

    Attributes
    ----------
    model, subject : the registered model (``<model>/<subject>``).
    roi : what was averaged: the ROI name(s), or ``vertices[n]``.
    hemispheres : the hemispheres whose vertices were averaged.
    n_vertices : vertices averaged (all hemispheres together).
    n_stimuli : stimuli scored (every id in all of the model's feature tables, or those asked for).
    tables : the model's feature tables (all members' for per-ROI models and ensembles).
    store, dataset : where features, captions and images came from (dataset None: no captions).
    top : the top stimuli, best first.
    stimulus_ids, scores : every scored stimulus (sorted ids) and its ROI-mean prediction.
    """

    model: str
    subject: str
    roi: str
    hemispheres: list[str]
    n_vertices: int
    n_stimuli: int
    tables: list[str]
    store: str
    dataset: str | None
    top: list[ExplainedStimulus]
    score_mean: float
    score_std: float
    stimulus_ids: list[str] = field(default_factory=list, repr=False)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def title(self) -> str:
        return f"{self.model} / {self.subject} / {self.roi}"

    def to_dict(self) -> dict:
        """JSON-ready summary (without the per-stimulus arrays)."""
        keys = ("model", "subject", "roi", "hemispheres", "n_vertices", "n_stimuli", "tables", "store", "dataset",
                "score_mean", "score_std")
        return {**{k: getattr(self, k) for k in keys}, "top": [dataclasses.asdict(t) for t in self.top]}


# ---------------------------------------------------------------------------------------------- model
def _model_subjects(reg: ModelRegistry, model: str) -> tuple[list[str], list[str]]:
    """Subjects ``model`` is registered for, and every encoding model's name (for messages)."""
    recs = [r for r in reg.list() if r.meta.get("kind") not in NON_ENCODER_KINDS]
    subjects = sorted(str(r.meta.get("subject", r.name.rsplit("/", 1)[-1])) for r in recs
                      if r.meta.get("model", r.name.rsplit("/", 1)[0]) == model)
    names = sorted({str(r.meta.get("model", r.name.rsplit("/", 1)[0])) for r in recs})
    return subjects, names


def _resolve_model(reg: ModelRegistry, model: str, subject: str | None) -> tuple[str, str]:
    """(model, subject), with one-line errors for an unknown model or a subject it was not fitted for."""
    if not isinstance(model, str) or not model.strip():
        raise RegistryError("give the encoding model's name (`brainstore models` lists them)")
    model = model.strip().strip("/")
    model, sel = model_base(model), model[len(model_base(model)):]  # clip@2: clip and "@2"
    subjects, names = _model_subjects(reg, model)
    if not subjects and "/" in model:  # "model/subject" written as one name
        head, tail = model.rsplit("/", 1)
        sub2, _ = _model_subjects(reg, head)
        if tail in sub2 and subject in (None, tail):
            model, subject, subjects = head, tail, sub2
    if not subjects:
        if reg.exists(model) and reg.record(model).meta.get("kind") in NON_ENCODER_KINDS:
            kind = reg.record(model).meta["kind"]
            raise RegistryError(f"model {model!r} in registry {reg.root} is a {kind}, not an encoding model; "
                                "explain takes an encoding model (`brainstore models` lists them)")
        import difflib

        close = difflib.get_close_matches(model, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none yet"
        raise RegistryError(f"no encoding model {model!r} in registry {reg.root}; {hint}models: {shown} "
                            "(fit one with `brainstore fit`, or pass the right --registry)")
    if subject is None:
        subject = subjects[0]
    elif subject not in subjects:
        raise RegistryError(f"model {model!r} has no fit for subject {subject!r} in registry {reg.root}; it is "
                            f"fitted for {', '.join(subjects)}: pass one of them with --subject")
    if sel:
        reg.resolve(model_ref(model + sel, subject))  # that version or alias exists (else its versions are named)
    return model + sel, subject


def _base_models(em) -> list:
    """The base (feature-reading) models under a registered model, depth first, without repeats."""
    from ..encoding import BASE_KINDS

    out, stack, seen = [], [em], set()
    while stack:
        m = stack.pop(0)
        if id(m) in seen:
            continue
        seen.add(id(m))
        if m.kind in BASE_KINDS:
            out.append(m)
        else:
            stack[:0] = list(m.members)
    return out


# ---------------------------------------------------------------------------------------------- ROIs
def _model_vertices(rec, ds: AlgonautsDataset | None, subject: str, hemis: list[str]) -> dict[str, int]:
    """Vertices the model predicts per hemisphere (recorded in model.json; else the dataset's)."""
    recorded = rec.meta.get("n_vertices") or {}
    out = {}
    for h in hemis:
        if h in recorded:
            out[h] = int(recorded[h])
        elif ds is not None:
            out[h] = ds.n_vertices(subject, h)
        else:
            raise RegistryError(f"model {rec.name!r} does not record its vertex count for {h}; pass the "
                                "dataset it was fitted on (--dataset)")
    return out


def _roi_vertices(ds: AlgonautsDataset | None, subject: str, hemis: list[str], n_vert: dict[str, int],
                  roi: str | Sequence[str] | None, vertices: Sequence[int] | None,
                  hemisphere: str | None) -> tuple[dict[str, np.ndarray], str]:
    """Vertex indices per hemisphere to average, and a label for them."""
    if (roi is None) == (vertices is None):
        raise ValueError("give exactly one of an ROI name (--roi) or vertex indices (--vertices)")
    if vertices is not None:
        v = np.asarray(list(vertices))
        if v.size == 0:
            raise ValueError("--vertices lists no vertex; give comma-separated vertex indices, e.g. 0,5,17")
        if not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"vertex indices must be integers, got {list(v[:5])}")
        sizes = [n_vert[h] for h in hemis]
        total = sum(sizes)
        where = f"{hemisphere} of {subject}" if hemisphere else f"{subject}: {' then '.join(hemis)} concatenated"
        bad = v[(v < 0) | (v >= total)]
        if bad.size:
            raise ValueError(f"vertex index {int(bad[0])} is out of range: the model predicts {total} vertices "
                             f"({where}), so indices run from 0 to {total - 1}")
        v = np.unique(v)
        out, start = {}, 0
        for h, n in zip(hemis, sizes):
            out[h] = v[(v >= start) & (v < start + n)] - start
            start += n
        return out, f"vertices[{v.size}]"
    names = [r.strip() for r in ([roi] if isinstance(roi, str) else list(roi)) for r in r.split(",") if r.strip()]
    if not names:
        raise ValueError("the ROI name is empty; give a named ROI (FFA-1) or an ROI family (floc-faces)")
    if ds is None:
        raise DatasetError(f"ROI {', '.join(names)}: the ROI masks come from the dataset the model was fitted on, "
                           "which is not recorded or not found; pass it with --dataset")
    out = {}
    for h in hemis:
        regions = ds.regions(subject, h)
        unknown = [n for n in names if n not in regions]
        if unknown:
            raise DatasetError(f"unknown ROI {unknown[0]!r} for {subject} in {ds.root}; known ROIs: "
                               f"{', '.join(regions)}")
        mask = np.zeros(len(regions[names[0]]), dtype=bool)
        for n in names:
            mask |= np.asarray(regions[n], dtype=bool)
        if len(mask) != n_vert[h]:
            raise DatasetError(f"{subject} {h}: the ROI masks of {ds.root} have {len(mask)} vertices but the model "
                               f"predicts {n_vert[h]}; pass the dataset the model was fitted on (--dataset)")
        out[h] = np.flatnonzero(mask)
    label = ",".join(names)
    if sum(len(x) for x in out.values()) == 0:
        raise DatasetError(f"ROI {label!r} has no vertices in {subject} ({', '.join(hemis)}) of {ds.root}; pick "
                           f"another ROI{'' if hemisphere is None else ' or the other hemisphere'}")
    return out, label


def _dataset(ds: str | Path | AlgonautsDataset | None, recorded: str | None) -> AlgonautsDataset | None:
    if isinstance(ds, BrainDataset):
        return ds
    if ds is not None:
        return open_dataset(ds)
    if recorded and Path(recorded).exists():
        return open_dataset(recorded)
    return None


def _stimulus_info(ds: AlgonautsDataset | None, ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """stimulus id -> (caption, image file) for ``ids``, from every subject of the dataset."""
    if ds is None:
        return {}
    want, out = set(ids), {}
    t = ds.stimuli()
    for sid, cap, path in zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist(),
                              t.column("path").to_pylist()):
        if sid in want:
            old = out.get(sid, (None, None))
            out[sid] = (old[0] or cap or None, old[1] or (path if path and Path(path).is_file() else None))
    return out


# ---------------------------------------------------------------------------------------------- explain
def explain_roi(registry: str | Path | ModelRegistry, model: str, subject: str | None, *,
                store: str | FeatureStore | None = None, dataset: str | Path | AlgonautsDataset | None = None,
                roi: str | Sequence[str] | None = None, vertices: Sequence[int] | None = None,
                hemisphere: str | None = None, top: int = 20, table_ids: Sequence[str] | None = None,
                chunk: int | None = None) -> Explanation:
    """The stored stimuli whose predicted mean response in an ROI is highest.

    Parameters
    ----------
    registry : the model registry (a folder or a :class:`ModelRegistry`).
    model : encoding model name (``"clip-image"``; ``"clip-image/subj01"`` also works with ``subject`` None).
    subject : the subject (None: the first subject the model is fitted for).
    store : feature store to read (default: the one the model was fitted with).
    dataset : dataset for ROI masks, captions and images (default: the one the model was fitted on).
    roi : named ROI (``FFA-1``), ROI family (``floc-faces``) or several (list or comma-separated: their union).
    vertices : instead of ``roi``: vertex indices, into ``hemisphere`` when given, else into the model's
        hemispheres concatenated (lh then rh).
    hemisphere : ``lh`` or ``rh`` only (default: every hemisphere the model predicts).
    top : how many stimuli to return (>= 1).
    table_ids : stimulus ids to score (default: every id held in all of the model's feature tables).
    chunk : stimuli predicted at once (default: bounded by ~256 MB of predictions).

    Raises
    ------
    RegistryError : unknown model, a subject it is not fitted for, drifted inputs.
    DatasetError : unknown ROI (the known ones are listed), an ROI without vertices, no dataset for ROIs.
    ValueError : ``top`` < 1, vertex indices out of range, ``table_ids`` missing from the tables.
    """
    from ..encoding import EncodingModel

    _check_counts(top, chunk, hemisphere)
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
    model, subject = _resolve_model(reg, model, subject)
    # the ROI is checked from model.json before the weights and features are read
    rec = reg.record(model_ref(model, subject))
    hemis = list(rec.meta.get("hemispheres", HEMISPHERES))
    if hemisphere is not None:
        if hemisphere not in hemis:
            raise ValueError(f"model {rec.name!r} predicts {', '.join(hemis)} only, not {hemisphere}")
        hemis = [hemisphere]
    ds = _dataset(dataset, rec.meta.get("dataset"))
    if ds is not None and subject not in ds.subjects:
        raise DatasetError(f"subject {subject!r} is not in dataset {ds.root} (subjects: {', '.join(ds.subjects)}); "
                           "pass the dataset the model was fitted on (--dataset)")
    n_vert = _model_vertices(rec, ds, subject, hemis)
    sel, label = _roi_vertices(ds, subject, hemis, n_vert, roi, vertices, hemisphere)
    em = EncodingModel.load(reg, model, subject, store)
    bases = _base_models(em)
    tables = list(dict.fromkeys(t for b in bases for t in b.record.meta["features"]))
    ids = _scored_ids(em, tables, table_ids)
    scores = _roi_scores(em, ids, bases, sel, n_vert, chunk)
    n_sel = int(sum(len(v) for v in sel.values()))
    mu, sd = float(scores.mean()), float(scores.std())
    z = (scores - mu) / sd if sd > 0 else np.zeros_like(scores)
    order = np.argsort(-scores, kind="stable")[: int(top)]
    info = _stimulus_info(ds, [ids[i] for i in order])
    best = [ExplainedStimulus(rank=r + 1, stimulus_id=ids[i], score=float(scores[i]), z=float(z[i]),
                              caption=info.get(ids[i], (None, None))[0], image=info.get(ids[i], (None, None))[1])
            for r, i in enumerate(order)]
    return Explanation(model=model, subject=subject, roi=label, hemispheres=[h for h in hemis if len(sel[h])],
                       n_vertices=n_sel, n_stimuli=len(ids), tables=tables, store=em.store.uri,
                       dataset=str(ds.root) if ds is not None else None, top=best, score_mean=mu, score_std=sd,
                       stimulus_ids=ids, scores=scores)


def _check_counts(top, chunk, hemisphere) -> None:
    """``top`` and ``chunk`` whole numbers >= 1 (chunk may be None), ``hemisphere`` None or a hemisphere."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a whole number >= 1 (how many stimuli to show), got {top!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk must be a whole number >= 1 (stimuli predicted at once), got {chunk!r}")
    if hemisphere is not None and hemisphere not in HEMISPHERES:
        raise ValueError(f"hemisphere must be one of {', '.join(HEMISPHERES)}, not {hemisphere!r}")


def _scored_ids(em, tables: list[str], table_ids: Sequence[str] | None) -> list[str]:
    """The stimuli to score, sorted: ``table_ids`` (refused unless every table holds them), else every stimulus
    held in all of the model's tables."""
    fs = em.store
    common = set(fs.ids(tables[0]))
    for t in tables[1:]:
        common &= set(fs.ids(t))
    if table_ids is not None:
        want = list(dict.fromkeys(table_ids))
        missing = [i for i in want if i not in common]
        if missing:
            raise ValueError(f"{len(missing)} stimulus id(s) are not in every feature table of {em.record.name!r} "
                             f"({', '.join(tables)}): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        ids = sorted(want)
    else:
        ids = sorted(common)
    if not ids:
        raise ValueError(f"no stimulus is held in all of {em.record.name!r}'s feature tables ({', '.join(tables)}) "
                         f"in store {fs.uri}; run `brainstore extract` for them")
    return ids


def _roi_scores(em, ids: list[str], bases: list, sel: dict[str, np.ndarray],
                n_vert: dict[str, int], chunk: int | None) -> np.ndarray:
    """The mean predicted response over the selected vertices of every stimulus (n_ids,) float64: predictions
    chunk by chunk through the model's own predict path (its tables held in memory at their pinned versions);
    only the ROI sums are kept."""
    n_sel = int(sum(len(v) for v in sel.values()))
    per_row = sum(n_vert.values()) * (len(bases) + 1)
    step = int(chunk) if chunk else int(max(16, min(8192, _CHUNK_VALUES // max(1, per_row))))
    scores = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), step):
        rows = slice(start, start + step)
        cache = em.designs(ids[rows])
        pred = em.predict(ids[rows], cache)
        for h in sel:
            if pred[h].shape[1] != n_vert[h]:
                raise RegistryError(f"model {em.record.name!r} predicts {pred[h].shape[1]} {h} vertices but records "
                                    f"{n_vert[h]}; refit it with `brainstore fit`")
        acc = np.zeros(len(ids[rows]), dtype=np.float64)
        for h, v in sel.items():
            if len(v):
                acc += np.asarray(pred[h][:, v], dtype=np.float64).sum(1)
        scores[rows] = acc / n_sel
        del pred, cache
    return scores


# ---------------------------------------------------------------------------------------------- contact sheet
#: Contact sheet layout (pixels): image tile side, gap, line height and lines under each tile, title band.
TILE = 192
GAP = 10
LINE = 14
TEXT_LINES = 5  # rank/id/score, then up to four caption lines
TITLE = 42


def sheet_size(n: int, columns: int = 5) -> tuple[int, int]:
    """(width, height) of the contact sheet of ``n`` stimuli in ``columns`` columns."""
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    cell_h = TILE + TEXT_LINES * LINE + GAP
    return GAP + cols * (TILE + GAP), TITLE + GAP + rows * cell_h


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except Exception:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines; cut text ends with an ellipsis."""
    lines: list[str] = []
    cur = ""
    for w in text.split():
        trial = f"{cur} {w}".strip()
        if cur and draw.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = w
        else:
            cur = trial
    if cur:
        lines.append(cur)
    cut = len(lines) > max_lines
    lines = lines[:max_lines]
    return [_fit(draw, ln, font, width, cut and i == len(lines) - 1) for i, ln in enumerate(lines)]


def _fit(draw, text: str, font, width: int, cut: bool = False) -> str:
    """``text`` if it fits in ``width`` pixels, else shortened with an ellipsis (always when ``cut``)."""
    if not cut and draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def write_contact_sheet(explanation: Explanation, path: str | Path, columns: int = 5) -> Path:
    """Draw the top stimuli as one PNG grid: each image (or a grey tile with its id when the dataset has
    no file for it) with rank, id, score and z beneath, then its caption wrapped; a title line names
    the model, subject and ROI. Returns the path written."""
    from PIL import Image, ImageDraw, ImageOps

    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a whole number >= 1, got {columns!r}")
    items = explanation.top
    n = max(1, len(items))
    cols = max(1, min(int(columns), n))
    width, height = sheet_size(n, cols)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    title_font, font, small = _font(16), _font(12), _font(11)
    e = explanation
    title = f"{e.model} | {e.subject} | ROI {e.roi}"
    sub = (f"{e.n_vertices} vertices ({'+'.join(e.hemispheres)}); top {len(items)} of {e.n_stimuli} stored stimuli "
           "by mean predicted response")
    d.text((GAP, 6), _fit(d, title, title_font, width - 2 * GAP), fill=(0, 0, 0), font=title_font)
    d.text((GAP, 26), _fit(d, sub, small, width - 2 * GAP), fill=(70, 70, 70), font=small)
    cell_h = TILE + TEXT_LINES * LINE + GAP
    for k, it in enumerate(items):
        x = GAP + (k % cols) * (TILE + GAP)
        y = TITLE + GAP + (k // cols) * cell_h
        img = None
        if it.image:
            try:
                with Image.open(it.image) as im:
                    img = ImageOps.contain(im.convert("RGB"), (TILE, TILE))  # small images are scaled up too
            except OSError:
                img = None
        if img is None:
            d.rectangle([x, y, x + TILE - 1, y + TILE - 1], fill=(170, 170, 170))
            d.text((x + TILE // 2, y + TILE // 2), _fit(d, it.stimulus_id, font, TILE - 8), fill=(40, 40, 40),
                   font=font, anchor="mm")
        else:
            sheet.paste(img, (x + (TILE - img.width) // 2, y + (TILE - img.height) // 2))
        head = f"#{it.rank} {it.stimulus_id} {it.score:+.3f} (z {it.z:+.2f})"
        d.text((x, y + TILE + 2), _fit(d, head, font, TILE), fill=(0, 0, 0), font=font)
        if it.caption:
            for j, line in enumerate(_wrap(d, it.caption, small, TILE, TEXT_LINES - 1)):
                d.text((x, y + TILE + 2 + (j + 1) * LINE), line, fill=(70, 70, 70), font=small)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)
    return path

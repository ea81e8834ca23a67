"""Maps on the cortex for :func:`~._evaluation.evaluate`: per vertex, the test r and the NNMC (%) of every
encoder and subject, and the noise ceiling (%), for datasets that say where their response columns sit
(``ds.cortex(subject)``); GIfTI / NIfTI files users load anywhere, and pictures with the ROI outlines.

Layout, under the report folder::

    maps/MODEL/SUBJECT/{lh,rh}.test_r.func.gii, {lh,rh}.nnmc.func.gii   whole space (fsaverage: 163,842
                                                                       values), NaN off the measured vertices
    maps/MODEL/SUBJECT/test_r.png, nnmc.png                            flat map, inflated lateral / medial /
                                                                       ventral views, ROI outlines
    maps/MODEL/average/...                                             nanmean over the subjects that share an
                                                                       fsaverage space (2 or more)
    maps/_data/SUBJECT/{lh,rh}.noise_ceiling.func.gii, noise_ceiling.png   the noise ceiling (%): the same for
    maps/_data/average/...                                             every model, so written once per subject
    volume datasets: maps/MODEL/SUBJECT/{test_r,nnmc}.nii.gz (+ .png), maps/_data/SUBJECT/noise_ceiling.nii.gz

Model names cannot start with ``_`` (the registry refuses them), so ``_data`` is no model's folder.

:meth:`CortexMaps.save` writes what the maps are (pictures, spaces, notes) as JSON and
:func:`read_cortex_maps` reads it back: the pipeline's report stage draws the maps its evaluate stage wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...datasets import HEMISPHERES, DatasetError
from ...maps import Space, SpaceError, load_meshes, render_surface_map, render_volume_map, write_gifti, write_nifti
from ..encoding import score_test_split

__all__ = ["CortexMaps", "write_cortex_maps", "read_cortex_maps", "METRICS", "DATA", "AVERAGE"]

#: The maps, file stem -> colour bar label.
METRICS = {"test_r": "test r", "nnmc": "NNMC (%)", "noise_ceiling": "noise ceiling (%)"}
#: The folder of the maps that are no model's (the noise ceiling), beside the models' folders.
DATA = "_data"
#: The subject folder of the average over subjects.
AVERAGE = "average"


@dataclass
class CortexMaps:
    """What :func:`write_cortex_maps` wrote.

    Attributes
    ----------
    root : the ``maps`` folder.
    files : every file written (GIfTI, NIfTI, PNG).
    pictures : ``{folder: {subject: {metric: PNG path}}}``; folder a model or ``_data`` (the noise ceiling),
        subject a subject or ``average``.
    spaces : ``{subject or "average": Space}`` of the maps written.
    meshes : the ``--meshes`` folder (None: found as :func:`brainstore.maps.load_meshes` finds them).
    notes : why maps are missing (the dataset places no column, a subject has no test responses ...).
    seconds : the time the maps took.
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    pictures: dict = field(default_factory=dict)
    spaces: dict = field(default_factory=dict)
    meshes: str | Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    loaded: dict = field(default_factory=dict, repr=False)

    def surface(self, folder: str, subject: str, metric: str) -> dict[str, Path]:
        """The GIfTI files of one surface map, ``{hemi: path}`` (empty when there is none)."""
        d = self.root / folder / subject
        return {h: d / f"{h}.{metric}.func.gii" for h in HEMISPHERES if (d / f"{h}.{metric}.func.gii").is_file()}

    def meshes_for(self, space: Space):
        """The meshes of ``space``, loaded once."""
        key = (space.name, repr(sorted(space.meshes.items())))
        if key not in self.loaded:
            self.loaded[key] = load_meshes(space, self.meshes)
        return self.loaded[key]

    def save(self, path: str | Path) -> Path:
        """Write what the maps are to ``path`` (JSON: files and pictures relative to :attr:`root`, the spaces,
        the notes), for :func:`read_cortex_maps`; the maps themselves stay where they are."""
        root = self.root.resolve()
        doc = {"root": str(root), "files": [_rel(p, root) for p in self.files],
               "pictures": {f: {s: {m: _rel(p, root) for m, p in by_m.items()} for s, by_m in by_s.items()}
                            for f, by_s in self.pictures.items()},
               "spaces": {s: _space_doc(sp) for s, sp in self.spaces.items()},
               "meshes": None if self.meshes is None else str(self.meshes), "notes": self.notes,
               "seconds": self.seconds}
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)
        return path


def read_cortex_maps(path: str | Path) -> CortexMaps:
    """The :class:`CortexMaps` that :meth:`CortexMaps.save` wrote to ``path``."""
    doc = json.loads(Path(path).read_text())
    root = Path(doc["root"])
    return CortexMaps(root, files=[root / f for f in doc["files"]],
                      pictures={f: {s: {m: root / p for m, p in by_m.items()} for s, by_m in by_s.items()}
                                for f, by_s in doc["pictures"].items()},
                      spaces={s: _space_from(d) for s, d in doc["spaces"].items()}, meshes=doc["meshes"],
                      notes=list(doc["notes"]), seconds=float(doc["seconds"]))


def _rel(p: Path, root: Path) -> str:
    return Path(p).resolve().relative_to(root).as_posix()


def _space_doc(space: Space) -> dict:
    return {"kind": space.kind, "name": space.name, "n_vertices": space.n_vertices,
            "meshes": {h: {k: str(v) for k, v in m.items()} for h, m in space.meshes.items()},
            "shape": None if space.shape is None else list(space.shape),
            "affine": None if space.affine is None else np.asarray(space.affine).tolist()}


def _space_from(doc: dict) -> Space:
    return Space(doc["kind"], doc["name"], n_vertices=doc["n_vertices"], meshes=doc["meshes"],
                 shape=None if doc["shape"] is None else tuple(doc["shape"]),
                 affine=None if doc["affine"] is None else np.asarray(doc["affine"], dtype=np.float64))


class _Average:
    """Running nan-sums of whole-space maps: the subject average (a vertex measured by any subject)."""

    def __init__(self):
        self.sums: dict = {}

    def add(self, folder: str, metric: str, space: Space, subject: str, whole: dict) -> None:
        entry = self.sums.setdefault((folder, metric, space.name), {"space": space, "subjects": set(), "hemis": {}})
        entry["subjects"].add(subject)
        for h, v in whole.items():
            s, n = entry["hemis"].setdefault(h, (np.zeros(v.shape, np.float64), np.zeros(v.shape, np.int32)))
            finite = np.isfinite(v)
            s[finite] += v[finite]
            n[finite] += 1

    def means(self):
        """(folder, metric, space, subjects, {hemi: mean}) for every map that two or more subjects share."""
        for (folder, metric, _), e in self.sums.items():
            if len(e["subjects"]) >= 2:
                mean = {}
                for h, (s, n) in e["hemis"].items():
                    m = np.full(s.shape, np.nan, np.float32)
                    m[n > 0] = s[n > 0] / n[n > 0]
                    mean[h] = m
                yield folder, metric, e["space"], sorted(e["subjects"]), mean


def _write(out: CortexMaps, folder: str, subject: str, metric: str, whole: dict, space: Space, *, rois=None,
           cortex=None, meta: dict) -> None:
    """One map: GIfTI per hemisphere and the picture (surfaces), or NIfTI and its picture (volumes)."""
    d = out.root / folder / subject
    who = "the noise ceiling" if folder == DATA else folder
    title = f"{who} · {subject} · {METRICS[metric]}"
    if space.kind == "volume":
        vol = cortex.volume({h: cortex.from_space(v, h) for h, v in whole.items()})
        out.files.append(write_nifti(d / f"{metric}.nii.gz", vol, space.affine))
        png = render_volume_map(vol, space.affine, d / f"{metric}.png", title=title, label=METRICS[metric])
    else:
        for h, v in whole.items():
            out.files.append(write_gifti(d / f"{h}.{metric}.func.gii", v, hemi=h,
                                         meta={**meta, "metric": metric, "units": METRICS[metric], "space": space.name}))
        png = render_surface_map(whole, space, d / f"{metric}.png", title=title, label=METRICS[metric], rois=rois,
                                 meshes=out.meshes_for(space))
    out.files.append(png)
    out.pictures.setdefault(folder, {}).setdefault(subject, {})[metric] = png
    out.spaces.setdefault(subject, space)


def _cortices(ds, subjects: list[str], out: CortexMaps) -> dict:
    """The placement of each subject that has one and test responses; notes for the others."""
    found = {}
    for s in subjects:
        try:
            cortex = ds.cortex(s)
        except (DatasetError, SpaceError) as e:
            out.notes.append(f"{s}: no maps: {str(e).splitlines()[0]}")
            continue
        if cortex is None:
            continue
        if not ds.has_test_responses(s):
            out.notes.append(f"{s}: no maps: the dataset has no test responses for it (maps score the test split)")
            continue
        found[s] = cortex
    if not found and not out.notes:
        out.notes.append(f"no maps: {ds.root} does not say where its response columns sit (Algonauts layout: "
                         "roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy; a described dataset: its space: field "
                         "or a volume's brain mask)")
    return found


def _subject_maps(out: CortexMaps, avg: _Average, ds, model: str, s: str, cortex, pred: dict) -> None:
    """A model's test r and NNMC maps of one subject (NNMC only where the dataset has noise ceilings)."""
    maps: dict = {"test_r": {}, "nnmc": {}}
    for h in (h for h in HEMISPHERES if h in pred and h in cortex.vertices):
        t = score_test_split(ds, s, h, pred[h], require_noise_ceiling=False)
        maps["test_r"][h] = cortex.to_space(t["r"], h)
        if t["score"] is not None:
            maps["nnmc"][h] = cortex.to_space(t["score"], h)
    note = f"{s}: no NNMC map: the dataset has no noise ceiling for it (test r only)"
    if maps["test_r"] and len(maps["nnmc"]) < len(maps["test_r"]) and note not in out.notes:
        out.notes.append(note)
    for metric, whole in maps.items():
        if whole and (metric == "test_r" or len(whole) == len(maps["test_r"])):
            _write(out, model, s, metric, whole, cortex.space, rois=cortex.rois, cortex=cortex,
                   meta={"model": model, "subject": s})
            if cortex.space.is_fsaverage:
                avg.add(model, metric, cortex.space, s, whole)


def _noise_ceiling(out: CortexMaps, avg: _Average, ds, s: str, cortex) -> None:
    nc = {}
    for h in (h for h in HEMISPHERES if h in cortex.vertices):
        v = ds.noise_ceiling(s, h)
        if v is None:
            return
        nc[h] = cortex.to_space(np.asarray(v, dtype=np.float64) * 100, h)
    if nc:
        _write(out, DATA, s, "noise_ceiling", nc, cortex.space, rois=cortex.rois, cortex=cortex,
               meta={"model": "(data)", "subject": s})
        if cortex.space.is_fsaverage:
            avg.add(DATA, "noise_ceiling", cortex.space, s, nc)


def write_cortex_maps(ds, preds: dict, root: str | Path, *, meshes: str | Path | None = None,
                      progress: bool = True) -> CortexMaps:
    """Write the maps of the test predictions ``preds`` (``{(model, subject): {hemi: (n_test, n_columns)}}``,
    as :func:`~._report.evaluate_registered` returns them) under ``root`` (the layout in the module's docstring).

    Subjects whose dataset gives no placement (``ds.cortex(subject)`` None) or no test responses get no
    maps, and :attr:`CortexMaps.notes` says why; no error. ``meshes``: a FreeSurfer fsaverage folder
    for the pictures (default: found, else the fsaverage5 nilearn bundles)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out = CortexMaps(Path(root), meshes=meshes)
    cortices = _cortices(ds, sorted({s for _, s in preds}), out)
    jobs = [(m, s) for (m, s) in preds if s in cortices]
    avg = _Average()
    with tqdm(total=len(jobs) + len(cortices), desc="maps", unit="map", disable=not progress or not jobs) as bar:
        for s, cortex in sorted(cortices.items()):
            _noise_ceiling(out, avg, ds, s, cortex)
            bar.update()
        for model, s in jobs:
            bar.set_postfix_str(f"{model} {s}", refresh=False)
            _subject_maps(out, avg, ds, model, s, cortices[s], preds[(model, s)])
            bar.update()
        for folder, metric, space, subjects, mean in avg.means():
            _write(out, folder, AVERAGE, metric, mean, space,
                   meta={"model": folder if folder != DATA else "(data)", "subject": f"mean of {', '.join(subjects)}"})
    out.seconds = time.perf_counter() - start
    return out

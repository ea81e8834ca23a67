"""The meshes maps are drawn on: fsaverage5 as nilearn's wheel bundles it (pial, inflated, flat, sulcal
depth: nothing to download), full fsaverage from a local FreeSurfer copy when there is one, or a
subject's own surface files named in the dataset description."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._spaces import FSAVERAGE_VERTICES, HEMIS, Space, SpaceError

__all__ = ["Meshes", "load_meshes", "find_fsaverage", "MESHES_ENV"]

#: An environment variable naming a FreeSurfer fsaverage folder (``surf/lh.inflated`` ...); the option
#: ``--meshes`` of ``evaluate`` and ``plot`` does the same.
MESHES_ENV = "BRAINSTORE_FSAVERAGE"
_NILEARN = {"inflated": "inflated", "flat": "flat", "pial": "pial", "sphere": "sphere"}


@dataclass
class Meshes:
    """Per hemisphere, the surfaces pictures use: ``surfaces[hemi][kind] = (coords (n, 3), faces (m, 3))`` for
    ``kind`` in inflated, flat (when there is one), pial, sphere (bundled); ``sulc[hemi]`` (sulcal depth, or None).

    ``name`` says which mesh it is (``fsaverage5 (bundled with nilearn)``, ``fsaverage (/usr/local/...)``);
    ``n_vertices`` its vertices per hemisphere."""

    name: str
    n_vertices: int
    surfaces: dict = field(default_factory=dict)
    sulc: dict = field(default_factory=dict)

    def has(self, kind: str) -> bool:
        return all(kind in self.surfaces.get(h, {}) for h in HEMIS)


def find_fsaverage(folder: str | Path | None = None) -> Path | None:
    """A local full-resolution fsaverage (FreeSurfer's ``subjects/fsaverage``): ``folder``, else
    ``$BRAINSTORE_FSAVERAGE``, ``$SUBJECTS_DIR/fsaverage``, ``$FREESURFER_HOME/subjects/fsaverage``; None
    when none holds ``surf/lh.inflated``. A ``folder`` given but unusable is an error naming what is missing."""
    if folder is not None:
        p = Path(folder).expanduser()
        if not (p / "surf" / "lh.inflated").is_file() and (p / "fsaverage" / "surf" / "lh.inflated").is_file():
            p = p / "fsaverage"
        if not (p / "surf" / "lh.inflated").is_file():
            raise SpaceError(f"--meshes {folder}: no surf/lh.inflated there; pass FreeSurfer's subjects/fsaverage "
                             "folder (surf/{lh,rh}.inflated, .sulc), or leave the option out for the bundled fsaverage5")
        return p
    for base in (os.environ.get(MESHES_ENV), os.environ.get("SUBJECTS_DIR"), os.environ.get("FREESURFER_HOME")):
        if not base:
            continue
        for p in (Path(base), Path(base) / "fsaverage", Path(base) / "subjects" / "fsaverage"):
            if (p / "surf" / "lh.inflated").is_file() and (p / "surf" / "rh.inflated").is_file():
                return p
    return None


def load_meshes(space: Space, folder: str | Path | None = None) -> Meshes:
    """The meshes to draw maps of ``space`` on.

    fsaverage spaces: a local fsaverage (:func:`find_fsaverage`) of the space's resolution, else the bundled fsaverage5 (maps are decimated to it, see :meth:`Space.decimate`). A subject's
    own surface: the files its description names."""
    if space.kind != "surface":
        raise SpaceError(f"a {space.kind} space has no surface to draw on")
    if space.is_fsaverage:
        local = find_fsaverage(folder)
        if local is not None and space.name != "fsaverage5":
            meshes = _freesurfer_meshes(local)
            if meshes.n_vertices == space.n_vertices["lh"]:
                return meshes
            if folder is not None:
                raise SpaceError(f"--meshes {folder}: its meshes have {meshes.n_vertices:,} vertices, the maps' "
                                 f"{space.name} has {space.n_vertices['lh']:,}; pass the matching fsaverage folder")
        return _bundled_fsaverage5()
    return _native_meshes(space)


def _bundled_fsaverage5() -> Meshes:
    from nilearn.datasets import load_fsaverage, load_fsaverage_data

    mesh = load_fsaverage("fsaverage5")
    sulc = load_fsaverage_data("fsaverage5", data_type="sulcal").data.parts
    out = Meshes("fsaverage5 (bundled with nilearn)", FSAVERAGE_VERTICES["fsaverage5"])
    for h, part in zip(HEMIS, ("left", "right")):
        out.surfaces[h] = {k: (np.asarray(mesh[v].parts[part].coordinates), np.asarray(mesh[v].parts[part].faces))
                           for k, v in _NILEARN.items()}
        out.sulc[h] = np.asarray(sulc[part], dtype=np.float32)
    return out


def _freesurfer_meshes(folder: Path) -> Meshes:
    import nibabel.freesurfer as fs

    surf = folder / "surf"
    out: Meshes | None = None
    for h in HEMIS:
        found = {}
        for kind, fname in (("inflated", f"{h}.inflated"), ("pial", f"{h}.pial")):
            if (surf / fname).is_file():
                found[kind] = tuple(np.asarray(a) for a in fs.read_geometry(str(surf / fname)))
        if "inflated" not in found:
            raise SpaceError(f"{surf / f'{h}.inflated'} is missing; a FreeSurfer fsaverage has both hemispheres")
        n = len(found["inflated"][0])
        for fname in (f"{h}.full.flat.patch.3d", f"{h}.flat.patch.3d", f"{h}.cortex.patch.flat"):
            if (surf / fname).is_file():
                found["flat"] = read_flat_patch(surf / fname, found["inflated"][1], n)
                break
        if out is None:
            out = Meshes(f"fsaverage ({folder})" if n == FSAVERAGE_VERTICES["fsaverage"] else f"{folder.name} ({folder})", n)
        out.surfaces[h] = found
        out.sulc[h] = np.asarray(fs.read_morph_data(str(surf / f"{h}.sulc")), np.float32) if (surf / f"{h}.sulc").is_file() else None
    return out


def read_flat_patch(path: Path, faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """A FreeSurfer flat patch (``?h.full.flat.patch.3d``) as a mesh over all vertices: the patch's 2-D
    coordinates, faces kept where all three corners are in the patch (vertices outside it keep coordinates
    of 0 and belong to no face)."""
    raw = path.read_bytes()
    if len(raw) < 8 or np.frombuffer(raw[:4], ">i4")[0] != -1:
        raise SpaceError(f"{path} is not a FreeSurfer patch file (no -1 header)")
    npts = int(np.frombuffer(raw[4:8], ">i4")[0])
    rec = np.frombuffer(raw[8:8 + npts * 16], dtype=[("v", ">i4"), ("x", ">f4"), ("y", ">f4"), ("z", ">f4")])
    vno = np.abs(rec["v"]) - 1
    coords = np.zeros((n_vertices, 3), np.float32)
    coords[vno, 0], coords[vno, 1] = rec["x"], rec["y"]
    inside = np.zeros(n_vertices, bool)
    inside[vno] = True
    return coords, faces[inside[faces].all(1)]


def _native_meshes(space: Space) -> Meshes:
    """A subject's own surface: GIfTI or FreeSurfer geometry files per hemisphere, as its description names."""
    import nibabel as nib
    import nibabel.freesurfer as fs

    out = Meshes("subject surface", 0)
    for h in HEMIS:
        files = space.meshes.get(h, {})
        if "inflated" not in files:
            raise SpaceError(f"the subject's surface has no inflated mesh for {h}; name one under space.meshes.{h}.inflated")
        found = {}
        for kind in ("inflated", "flat", "pial"):
            if kind in files:
                p = Path(files[kind])
                if p.name.endswith(".gii"):
                    img = nib.load(str(p))
                    found[kind] = (np.asarray(img.darrays[0].data), np.asarray(img.darrays[1].data))
                else:
                    found[kind] = tuple(np.asarray(a) for a in fs.read_geometry(str(p)))
        out.surfaces[h] = found
        s = files.get("sulc")
        if s:
            s = Path(s)
            out.sulc[h] = (np.asarray(nib.load(str(s)).darrays[0].data) if s.name.endswith(".gii")
                           else np.asarray(fs.read_morph_data(str(s)))).astype(np.float32)
        else:
            out.sulc[h] = None
        out.n_vertices = len(found["inflated"][0])
    return out

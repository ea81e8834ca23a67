"""The interactive 3-D view of a surface map: nilearn's ``view_surf`` (plotly.js, bundled with nilearn and
inlined in the page) on the inflated meshes of both hemispheres side by side, sulcal depth underneath.
The page is standalone: every script inline, no CDN, no favicon; it opens offline."""

from __future__ import annotations

import html as _html
import re

import numpy as np

from ._render import _on_mesh, color_scale
from ._spaces import HEMIS, Space, SpaceError

__all__ = ["surface_view_html"]

_GAP = 4.0  # mm between the two inflated hemispheres
_FAVICON = re.compile(r"<link\s+rel=\"icon\"[^>]*>", re.IGNORECASE)
_TITLE = re.compile(r"<title>.*?</title>", re.IGNORECASE | re.DOTALL)


def _both_hemispheres(meshes, maps: dict, space: Space) -> tuple:
    """One mesh of the hemispheres given (the left moved left of x = 0, the right right of it), their values
    and sulcal depth concatenated."""
    coords, faces, values, sulc, offset = [], [], [], [], 0
    for h in (h for h in HEMIS if h in maps):
        c, f = meshes.surfaces[h]["inflated"]
        c = np.asarray(c, dtype=np.float64)
        shift = (c[:, 0].max() + _GAP / 2) if h == "lh" else (c[:, 0].min() - _GAP / 2)
        coords.append(c - [shift if len(maps) > 1 else 0.0, 0.0, 0.0])
        faces.append(np.asarray(f) + offset)
        values.append(_on_mesh(maps[h], space, meshes.n_vertices, f"the {h} map").astype(np.float64))
        s = meshes.sulc.get(h)
        sulc.append(np.zeros(len(c)) if s is None else np.asarray(s, dtype=np.float64))
        offset += len(c)
    return (np.vstack(coords), np.vstack(faces)), np.concatenate(values), np.concatenate(sulc)


def surface_view_html(maps: dict, space: Space, *, title: str, meshes=None, cmap=None, vmin=None, vmax=None) -> str:
    """A standalone HTML page showing a surface map in 3-D (rotate, zoom; nilearn's view buttons).

    Parameters
    ----------
    maps : ``{hemi: whole-space values}`` for one or both hemispheres (NaN: not measured, shown as sulcal
        depth only); both are shown side by side on their inflated meshes.
    space : the maps' :class:`Space` (fsaverage maps are decimated to the meshes' resolution).
    title : the page's and the view's title.
    meshes : a :class:`Meshes`, a FreeSurfer fsaverage folder, or None (:func:`load_meshes`).
    cmap, vmin, vmax : the colour scale (default :func:`color_scale`).

    Returns
    -------
    str: the page, all JavaScript inline (plotly.js from nilearn's wheel); no ``http(s)`` script source.
    """
    from nilearn import plotting

    from ._meshes import Meshes, load_meshes

    if not any(h in maps for h in HEMIS):
        raise SpaceError("no map to show; give {'lh': values, 'rh': values} (one or both)")
    if not isinstance(meshes, Meshes):
        meshes = load_meshes(space, meshes)
    mesh, values, sulc = _both_hemispheres(meshes, maps, space)
    name, lo, hi = color_scale(values, cmap, vmin, vmax)
    symmetric = lo < 0 and np.isclose(lo, -hi)
    view = plotting.view_surf(mesh, values, bg_map=sulc, cmap=name, symmetric_cmap=bool(symmetric),
                              vmin=None if symmetric else lo, vmax=hi, title=title, title_fontsize=16,
                              colorbar_fontsize=12, view="left")
    page = _FAVICON.sub("", view.get_standalone())
    return _TITLE.sub(lambda _: f"<title>{_html.escape(title)}</title>", page, count=1)

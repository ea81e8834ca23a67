"""Pictures of maps: a surface map as flat map and inflated lateral, medial and ventral views per
hemisphere (sulcal depth underneath, ROI outlines, one colour bar), and a volume map as nilearn's
stat-map slices and glass brain. Matplotlib's Agg backend; matplotlib and nilearn are imported by the
functions that draw, so ``import brainstore.maps`` stays light."""

from __future__ import annotations

from pathlib import Path

import warnings

import numpy as np

from ._spaces import FSAVERAGE_VERTICES, HEMIS, Space, SpaceError

__all__ = ["render_surface_map", "render_volume_map", "color_scale", "PANELS", "panel_boxes"]

#: The columns of a surface picture: (title, mesh kind, (elevation, azimuth) per hemisphere). The flat map
#: is seen from above (nilearn's flat fsaverage5 lies in the x-y plane), the inflated views as nilearn's
#: lateral, medial and ventral.
PANELS = (("flat map", "flat", {"lh": (90, 270), "rh": (90, 270)}),
          ("lateral", "inflated", {"lh": (0, 180), "rh": (0, 0)}),
          ("medial", "inflated", {"lh": (0, 0), "rh": (0, 180)}),
          ("ventral", "inflated", {"lh": (270, 0), "rh": (270, 0)}))
#: The fewest faces of the drawn mesh a labelled region covers for its outline to be drawn.
MIN_REGION_FACES = 8
#: Outline colours of the ROI families, in the order the families come.
ROI_COLORS = ("#00e000", "#00b0ff", "#ff30ff", "#ffe000", "#ff7000", "#00ffd0", "#000000")
_NILEARN_HEMI = {"lh": "left", "rh": "right"}
_HEMI_TITLE = {"lh": "left hemisphere", "rh": "right hemisphere"}
# figure geometry (inches): panel size, margins for row labels, the title and the colour bar
_PANEL_W, _PANEL_H, _LEFT, _TOP, _BOTTOM = 2.9, 2.3, 0.35, 0.75, 0.9


def color_scale(values, cmap=None, vmin=None, vmax=None) -> tuple[str, float, float]:
    """The colour map and limits of a map (any array or list of arrays; NaN ignored): values with
    negatives get the diverging ``RdBu_r``, symmetric around 0 at the 99th percentile of |values|;
    non-negative ones the sequential ``inferno`` from 0 to their 99th percentile. Given limits win."""
    parts = [np.asarray(v, dtype=np.float64).ravel() for v in (values if isinstance(values, (list, tuple)) else [values])]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    finite = flat[np.isfinite(flat)]
    negative = bool(finite.size and finite.min() < 0)
    if negative:
        top = float(np.percentile(np.abs(finite), 99))
        top = top if top > 0 else 1.0
        lo, hi, name = -top, top, "RdBu_r"
    else:
        top = float(np.percentile(finite, 99)) if finite.size else 1.0
        lo, hi, name = 0.0, (top if top > 0 else 1.0), "inferno"
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if not hi > lo:
        raise SpaceError(f"the colour scale needs vmin < vmax, got vmin={lo:g}, vmax={hi:g}")
    return (cmap or name), lo, hi


def panel_boxes(n_rows: int, n_cols: int) -> tuple[tuple[float, float], list[list[tuple[float, float, float, float]]]]:
    """The figure size (inches) and, per row and column, the panel's box (left, bottom, width, height)
    in figure fractions: a picture's layout, the same for every map (tests find the panels with it)."""
    w = _LEFT + n_cols * _PANEL_W + 0.1
    h = _TOP + n_rows * _PANEL_H + _BOTTOM
    boxes = [[((_LEFT + c * _PANEL_W) / w, (_BOTTOM + (n_rows - 1 - r) * _PANEL_H) / h, _PANEL_W / w, _PANEL_H / h)
              for c in range(n_cols)] for r in range(n_rows)]
    return (w, h), boxes


def _on_mesh(values, space: Space, n_mesh: int, what: str) -> np.ndarray:
    """A whole-space array as the mesh's per-vertex values: decimated from a finer fsaverage to the mesh's."""
    values = np.asarray(values)
    if values.shape[-1] == n_mesh:
        return values
    coarse = next((k for k, v in FSAVERAGE_VERTICES.items() if v == n_mesh), None)
    if space.is_fsaverage and coarse is not None and values.shape[-1] == FSAVERAGE_VERTICES[space.name] > n_mesh:
        return space.decimate(values, to=coarse)
    raise SpaceError(f"{what} has {values.shape[-1]:,} values but the mesh has {n_mesh:,} vertices; give a whole-space "
                     f"map of {space.describe()} (Cortex.to_space)")


def _outline(ax, fig, mesh, labels: np.ndarray, color: str, hemi: str) -> bool:
    """Outline every label of one ROI family (not 0) that covers a region of the mesh as drawn: at least
    ``MIN_REGION_FACES`` faces, and more inside it than along its edge (the outline of specks would hide the
    values it surrounds); False when none does."""
    from nilearn import plotting

    on_faces = np.asarray(labels)[np.asarray(mesh[1])]
    levels = []
    for lab in np.unique(on_faces):
        if lab == 0 or not np.isfinite(lab):
            continue
        hit = on_faces == lab
        inside, ring = int(hit.all(axis=1).sum()), int((hit.any(axis=1) & ~hit.all(axis=1)).sum())
        if inside >= max(MIN_REGION_FACES, ring):  # a region, not specks the outline would cover
            levels.append(lab)
    if not levels:
        return False
    try:
        plotting.plot_surf_contours(mesh, labels, levels=levels, colors=[color] * len(levels), axes=ax, figure=fig,
                                    hemi=_NILEARN_HEMI[hemi])
    except ValueError:  # a label set nilearn cannot outline: the picture goes without it
        return False
    return True


def _unit(sulc) -> np.ndarray | None:
    """Sulcal depth scaled to [0, 1] over the whole hemisphere: nilearn then draws it as it is, the same grey
    for the same depth in every view (it would rescale each view's faces to their own range)."""
    if sulc is None:
        return None
    sulc = np.asarray(sulc, dtype=np.float64)
    lo, hi = np.nanmin(sulc), np.nanmax(sulc)
    return (sulc - lo) / (hi - lo) if hi > lo else np.full(sulc.shape, 0.5)


def _facing(mesh, view: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A closed mesh less the faces turned away from the camera at ``view`` (elevation, azimuth): they are
    hidden by the others, and matplotlib then draws half the polygons (the picture is the same)."""
    coords, faces = np.asarray(mesh[0], dtype=np.float64), np.asarray(mesh[1])
    elev, azim = np.radians(view)
    eye = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    v0 = coords[faces[:, 0]]
    normals = np.cross(coords[faces[:, 1]] - v0, coords[faces[:, 2]] - v0)
    if np.einsum("ij,ij->", v0 - coords.mean(axis=0), normals) < 0:  # faces wound inward: turn the normals out
        normals = -normals
    keep = normals @ eye >= -0.05 * np.linalg.norm(normals, axis=1)
    return coords, faces[keep]


def _draw_panel(fig, box, mesh, values, sulc, hemi, view, scale, rois, colors) -> set:
    """One view of one hemisphere: the map over the sulcal depth, then the ROI outlines; the families drawn."""
    from nilearn import plotting

    cmap, lo, hi = scale
    ax = fig.add_axes(box, projection="3d")
    with warnings.catch_warnings():  # (a hemisphere with nothing measured: nilearn's range of no value)
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        plotting.plot_surf_stat_map(mesh, values, bg_map=sulc, hemi=_NILEARN_HEMI[hemi], view=view,
                                    engine="matplotlib", axes=ax, figure=fig, colorbar=False, cmap=cmap, vmin=lo,
                                    vmax=hi, symmetric_cbar=False, threshold=None)
    drawn = set()
    for family, (labels, _) in rois.items():
        if _outline(ax, fig, mesh, labels, colors[family], hemi):
            drawn.add(family)
    return drawn


def render_surface_map(maps: dict, space: Space, path: str | Path, *, title: str, label: str = "",
                       rois: dict | None = None, meshes=None, cmap=None, vmin=None, vmax=None) -> Path:
    """Draw a per-vertex map on the cortex and save it as PNG.

    Parameters
    ----------
    maps : ``{hemi: whole-space values}`` for one or both hemispheres (NaN: not measured, drawn blank
        over the sulcal depth).
    space : the maps' :class:`Space` (fsaverage maps on the bundled fsaverage5 are decimated to it).
    path : the PNG to write.
    title : what the map is (model, subject, metric); the mesh's name is added.
    label : the colour bar's label ("test r", "NNMC (%)").
    rois : :attr:`Cortex.rois` (``{hemi: {family: (labels on the whole space, {label: name})}}``): each
        family's regions outlined in one colour (a label set that forms no region is skipped).
    meshes : a :class:`Meshes`, a FreeSurfer fsaverage folder, or None (:func:`load_meshes` finds them).
    cmap, vmin, vmax : the colour scale (default :func:`color_scale`).

    Returns
    -------
    Path of the PNG: one row per hemisphere; columns flat map (when the meshes have one), inflated
    lateral, medial, ventral.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._meshes import Meshes, load_meshes

    hemis = [h for h in HEMIS if h in maps]
    if not hemis:
        raise SpaceError(f"{path}: no map to draw; give {{'lh': values, 'rh': values}} (one or both)")
    if not isinstance(meshes, Meshes):
        meshes = load_meshes(space, meshes)
    values = {h: _on_mesh(maps[h], space, meshes.n_vertices, f"the {h} map").astype(np.float64) for h in hemis}
    outlines = {h: {f: (_on_mesh(lab, space, meshes.n_vertices, f"ROI {f} ({h})"), m)
                    for f, (lab, m) in ((rois or {}).get(h) or {}).items()} for h in hemis}
    scale = color_scale([values[h] for h in hemis], cmap, vmin, vmax)
    sulc = {h: _unit(meshes.sulc.get(h)) for h in hemis}
    colors = {f: ROI_COLORS[k % len(ROI_COLORS)] for k, f in enumerate(_families(outlines))}
    panels = [p for p in PANELS if meshes.has(p[1])]
    size, boxes = panel_boxes(len(hemis), len(panels))
    fig = plt.figure(figsize=size)
    try:
        drawn: set = set()
        for r, h in enumerate(hemis):
            for c, (name, kind, view) in enumerate(panels):
                mesh = meshes.surfaces[h][kind]
                mesh = mesh if kind == "flat" else _facing(mesh, view[h])
                drawn |= _draw_panel(fig, boxes[r][c], mesh, values[h], sulc[h], h, view[h], scale, outlines[h],
                                     colors)
                if r == 0:
                    fig.text(boxes[0][c][0] + boxes[0][c][2] / 2, boxes[0][c][1] + boxes[0][c][3], name, ha="center",
                             va="bottom", fontsize=10)
            fig.text(0.1 / size[0], boxes[r][0][1] + boxes[r][0][3] / 2, _HEMI_TITLE[h], rotation=90, ha="left",
                     va="center", fontsize=10)
        _decorate(fig, size, scale, label, f"{title}\non {meshes.name}", {f: c for f, c in colors.items() if f in drawn})
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Write the figure as a PNG (its folder made) and close it."""
    import matplotlib.pyplot as plt

    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def _families(outlines: dict) -> list[str]:
    return list(dict.fromkeys(f for by_f in outlines.values() for f in by_f))


def _decorate(fig, size, scale, label: str, title: str, families: dict) -> None:
    """The title, the one colour bar (bottom centre) and the legend of the outlined ROI families."""
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    cmap, lo, hi = scale
    fig.suptitle(title, fontsize=11, y=1 - 0.08 / size[1], va="top")
    w = min(0.4, 4.0 / size[0])
    cax = fig.add_axes(((1 - w) / 2, 0.5 / size[1], w, 0.14 / size[1]))
    bar = ColorbarBase(cax, cmap=cmap, norm=Normalize(lo, hi), orientation="horizontal")
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    if families:
        handles = [Line2D([], [], color=c, lw=3, label=f) for f, c in families.items()]
        fig.legend(handles=handles, loc="lower right", fontsize=7, ncol=min(3, len(handles)), frameon=False,
                   title="ROI outlines", title_fontsize=7)


def render_volume_map(volume: np.ndarray, affine: np.ndarray, path: str | Path, *, title: str, label: str = "",
                      cmap=None, vmin=None, vmax=None) -> Path:
    """Draw a 3-D map (NaN outside the brain mask) as nilearn's stat-map slices (axial cuts, no
    background: the grid need not be MNI's) and glass brain, one above the other, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn import plotting

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise SpaceError(f"{path}: a volume map is 3-D, not shape {volume.shape}")
    name, lo, hi = color_scale(volume, cmap, vmin, vmax)
    img = nib.Nifti1Image(np.nan_to_num(volume, nan=0.0), np.asarray(affine, dtype=np.float64))
    fig = plt.figure(figsize=(11, 6.4))
    symmetric = lo < 0
    common = dict(cmap=name, vmin=lo if symmetric else None, vmax=hi, symmetric_cbar=symmetric, colorbar=True, figure=fig)
    try:
        with warnings.catch_warnings():  # (a map of zeros, say NNMC of a model with no positive r: nothing to cut at)
            warnings.filterwarnings("ignore", "empty mask", UserWarning)
            plotting.plot_stat_map(img, bg_img=None, display_mode="z", cut_coords=7, axes=(0.0, 0.5, 1.0, 0.42),
                                   title=f"{label} (axial slices)" if label else None, draw_cross=False, **common)
            plotting.plot_glass_brain(img, display_mode="lyrz", plot_abs=False, threshold=1e-6,
                                      axes=(0.0, 0.02, 1.0, 0.44), title="glass brain (maximum projection)", **common)
        fig.suptitle(title, fontsize=11)
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)

"""Maps as files and pictures (``brainstore.maps``: ``_render``, ``_interactive``): a known pattern through
GIfTI, surface pictures that are not blank and change where (and only where) the values change, the
volume picture, and the offline interactive page."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from brainstore.maps import (FSAVERAGE_VERTICES, Cortex, Space, SpaceError, color_scale, load_meshes,
                             render_surface_map, render_volume_map, surface_view_html, write_gifti)

N5 = FSAVERAGE_VERTICES["fsaverage5"]


@pytest.fixture(scope="module")
def meshes():
    return load_meshes(Space.fsaverage("fsaverage5"))


def _pixels(path) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(str(path))[..., :3]


def _panels(img: np.ndarray, n_rows: int, n_cols: int) -> list[list[np.ndarray]]:
    """The picture cut into its panels, as render_surface_map lays them out."""
    from brainstore.maps._render import panel_boxes

    (w, h), boxes = panel_boxes(n_rows, n_cols)
    H, W = img.shape[:2]
    assert (W, H) == (round(w * 100), round(h * 100))  # 100 dpi
    out = []
    for row in boxes:
        out.append([img[int(H - (b + bh) * H):int(H - b * H), int(x * W):int((x + bw) * W)] for x, b, bw, bh in row])
    return out


def test_known_pattern_lands_on_its_vertices_through_gifti(tmp_path):
    """value = fsaverage vertex index: Cortex.to_space -> write_gifti -> nibabel puts each on its vertex."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    space = Space.fsaverage("fsaverage")
    vertices = {h: np.sort(rng.choice(FSAVERAGE_VERTICES["fsaverage"], 5000, replace=False)) for h in ("lh", "rh")}
    cortex = Cortex(space, vertices)
    for h in ("lh", "rh"):
        whole = cortex.to_space(vertices[h].astype(np.float32), h)
        path = write_gifti(tmp_path / f"{h}.pattern.func.gii", whole, hemi=h, meta={"metric": "index"})
        img = nib.load(str(path))
        got = np.asarray(img.darrays[0].data)
        assert got.shape == (FSAVERAGE_VERTICES["fsaverage"],) and got.dtype == np.float32
        measured = np.zeros(got.size, bool)
        measured[vertices[h]] = True
        assert np.array_equal(np.isnan(got), ~measured)  # NaN exactly off the measured vertices
        assert np.array_equal(got[measured], np.flatnonzero(measured).astype(np.float32))  # value = its index
        assert img.darrays[0].meta["metric"] == "index"
        assert img.meta["AnatomicalStructurePrimary"] == {"lh": "CortexLeft", "rh": "CortexRight"}[h]


def test_color_scale():
    assert color_scale(np.array([-0.2, 0.1, np.nan, 0.5])) [0] == "RdBu_r"
    cmap, lo, hi = color_scale(np.r_[np.linspace(-1, 1, 1000), np.nan])
    assert lo == -hi and 0.97 < hi < 1.0  # symmetric at the 99th percentile of |values|
    cmap, lo, hi = color_scale([np.linspace(0, 50, 1001), np.full(3, np.nan)])
    assert (cmap, lo) == ("inferno", 0.0) and hi == pytest.approx(49.5)
    assert color_scale(np.full(4, np.nan)) == ("inferno", 0.0, 1.0)  # nothing measured: a scale all the same
    assert color_scale(np.ones(3), cmap="hot", vmin=0.5, vmax=2) == ("hot", 0.5, 2.0)
    with pytest.raises(SpaceError, match="vmin < vmax"):
        color_scale(np.ones(3), vmin=2, vmax=1)


@pytest.mark.slow
def test_surface_picture_changes_where_the_values_change(meshes, tmp_path):
    """Two maps that differ on a medial occipital patch only: their pictures differ in the panels that
    show that patch (flat map, medial view) far more than in the lateral view; equal maps draw equal pictures."""
    space = Space.fsaverage("fsaverage")  # full fsaverage maps, drawn decimated on the bundled fsaverage5
    pial = meshes.surfaces["lh"]["pial"][0]
    patch = (pial[:, 0] > -12) & (pial[:, 1] < -80)  # medial occipital (cuneus / lingual gyrus near the pole)
    assert 20 < patch.sum() < 400
    base = np.full(FSAVERAGE_VERTICES["fsaverage"], np.nan, np.float32)
    base[:N5] = np.sin(pial[:, 2] / 15) * 0.3  # every fsaverage5 vertex measured, a smooth pattern
    changed = base.copy()
    changed[:N5][patch] = 0.9
    scale = {"vmin": -1.0, "vmax": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on a normal run
        a = render_surface_map({"lh": base}, space, tmp_path / "a.png", title="a", label="test r", meshes=meshes, **scale)
    b = render_surface_map({"lh": changed}, space, tmp_path / "b.png", title="a", label="test r", meshes=meshes, **scale)
    a2 = render_surface_map({"lh": base}, space, tmp_path / "a2.png", title="a", label="test r", meshes=meshes, **scale)
    pa, pb, pa2 = (_pixels(p) for p in (a, b, a2))
    assert np.array_equal(pa, pa2)  # the same values: not one pixel differs
    (flat, lateral, medial, ventral), = _panels(pa, 1, 4)
    for panel in (flat, lateral, medial, ventral):
        assert panel.reshape(-1, 3).std(axis=0).max() > 0.05  # not blank: the brain is drawn
    diff = [int((np.abs(x - y).max(axis=-1) > 0.05).sum()) for x, y in zip(_panels(pa, 1, 4)[0], _panels(pb, 1, 4)[0])]
    d_flat, d_lateral, d_medial, d_ventral = diff
    print("differing pixels (flat, lateral, medial, ventral):", diff)
    assert d_medial > 200 and d_flat > 100, diff
    assert d_medial > 5 * max(d_lateral, 1) and d_flat > 3 * max(d_lateral, 1), diff


@pytest.mark.slow
def test_blank_where_not_measured_and_outlines(meshes, tmp_path):
    """NaN vertices are drawn as sulcal depth only; ROI outlines are drawn, and a label set that forms no
    region (scattered vertices) is skipped without failing the picture."""
    space = Space.fsaverage("fsaverage5")
    pial = meshes.surfaces["rh"]["pial"][0]
    occipital = pial[:, 1] < -60
    values = np.where(occipital, 0.5, np.nan).astype(np.float32)
    labels = np.zeros(N5, np.int32)
    labels[occipital & (pial[:, 2] > 0)] = 1
    scattered = np.zeros(N5, np.int32)
    scattered[:50] = 3  # fsaverage's first vertices are icosahedron corners far apart: no face holds two
    rois = {"rh": {"prf-visualrois": (labels, {1: "V1d"}), "odd": (scattered, {3: "x"})}}
    kw = dict(title="t", label="NNMC (%)", meshes=meshes, vmin=0, vmax=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing measured, a label set that forms no region: no warning either
        plain = _pixels(render_surface_map({"rh": values}, space, tmp_path / "plain.png", **kw))
        empty = _pixels(render_surface_map({"rh": np.full(N5, np.nan)}, space, tmp_path / "empty.png", **kw))
        outlined = _pixels(render_surface_map({"rh": values}, space, tmp_path / "roi.png", rois=rois, **kw))
    assert plain.shape[:2] == empty.shape[:2] == outlined.shape[:2]
    (_, lateral_plain, medial_plain, _), = _panels(plain, 1, 4)
    (_, lateral_empty, medial_empty, _), = _panels(empty, 1, 4)
    # nothing measured: grey sulcal depth only (no saturated colour); the map adds colour
    sat = lambda p: (p.max(axis=-1) - p.min(axis=-1) > 0.25).sum()  # noqa: E731
    assert sat(medial_empty) == 0 and sat(medial_plain) > 500
    assert (np.abs(outlined - plain).max(axis=-1) > 0.05).sum() > 100  # outlines drawn
    with pytest.raises(SpaceError, match="mesh has 10,242 vertices"):
        render_surface_map({"rh": values[:100]}, space, tmp_path / "x.png", **kw)
    with pytest.raises(SpaceError, match="no map to draw"):
        render_surface_map({}, space, tmp_path / "x.png", **kw)


@pytest.mark.slow
def test_volume_picture(tmp_path):
    shape = (18, 22, 16)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-36, -48, -30]
    ijk = np.indices(shape).astype(float)
    mask = ((ijk[0] - 9) ** 2 / 60 + (ijk[1] - 11) ** 2 / 90 + (ijk[2] - 8) ** 2 / 50) < 1
    vol = np.full(shape, np.nan, np.float32)
    vol[mask] = np.sin(ijk[0][mask] / 3) * 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = render_volume_map(vol, affine, tmp_path / "v.png", title="m · s · test r", label="test r")
    img = _pixels(path)
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert (img.max(axis=-1) - img.min(axis=-1) > 0.25).sum() > 1000  # coloured voxels drawn
    zero = np.where(mask, 0.0, np.nan).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a map of zeros (NNMC of a poor model) draws without a warning
        other = _pixels(render_volume_map(zero, affine, tmp_path / "z.png", title="m · s · test r", label="test r"))
    assert img.shape != other.shape or not np.array_equal(img, other)
    with pytest.raises(SpaceError, match="3-D"):
        render_volume_map(vol[0], affine, tmp_path / "bad.png", title="x")


@pytest.mark.slow
def test_interactive_view_is_offline(meshes):
    space = Space.fsaverage("fsaverage")
    maps = {}
    for h in ("lh", "rh"):
        v = np.full(FSAVERAGE_VERTICES["fsaverage"], np.nan, np.float32)
        v[:N5] = np.linspace(0, 40, N5)
        maps[h] = v
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = surface_view_html(maps, space, title="best <model> · average · NNMC", meshes=meshes)
    assert page.lstrip().lower().startswith("<!doctype html")
    assert not re.findall(r"<script[^>]*\bsrc\s*=", page, re.I)  # every script inline
    assert not re.findall(r"<link[^>]*href\s*=\s*[\"']?https?:", page, re.I)  # no favicon or stylesheet fetched
    assert "Plotly" in page and len(page) > 1_000_000  # plotly.js itself, inline
    assert "<title>best &lt;model&gt; · average · NNMC</title>" in page
    one = surface_view_html({"rh": maps["rh"]}, space, title="one", meshes=meshes)
    assert len(one) < len(page)  # one hemisphere: half the mesh

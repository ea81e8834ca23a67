"""Synthetic vertices placed on the cortex: a distinct fsaverage vertex for every vertex of a hemisphere.

The generators draw ROI labels per vertex; :func:`place` puts the vertices of one hemisphere on fsaverage,
among its first 10,242 vertices (fsaverage5's, which fsaverage keeps first and in the same order, so the
maps are drawn on fsaverage5 without loss), with the anatomy a flat map and inflated views show:

* early visual cortex in retinotopic bands along the calcarine sulcus. V1 straddles its fundus (the
  horizontal meridian); V2 and V3 lie beyond it, dorsally on the cuneus (lower visual field) and ventrally
  on the lingual gyrus (upper visual field); hV4 lies ventrally beyond V3v. Polar angle runs across the
  bands (V1/V2 border: vertical meridian, V2/V3 border: horizontal meridian) and eccentricity grows with
  the geodesic distance from the occipital pole (compressed near the fovea); each hemisphere sees the
  contralateral hemifield. pRF centres are in image coordinates, ``cy`` growing downward;
* category-selective regions (faces, bodies, places, words, MT ...) as compact, connected patches grown
  on the mesh from seeds at their usual MNI coordinates (fsaverage is MNI305), jittered by a few mm per
  subject;
* the remaining vertices around those regions, nearest first, anterior cortex last.

Geometry is nilearn's bundled fsaverage5 (no download): distances along the edges of the inflated
surface (smooth: no fold is crossed twice), pial coordinates (MNI305 mm) to find seeds, sulcal depth
for the calcarine fundus, and the flat patch for what can be seen: vertices in none of its faces (the
medial wall, the cuts) take synthetic vertices only when nothing else is free.
A hemisphere of more than 10,242 vertices does not fit (:func:`fits`); its dataset stays in native space.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["FSAVERAGE_VERTICES", "CAPACITY", "EARLY_VISUAL", "Placement", "fits", "place", "position_of"]

FSAVERAGE_VERTICES = 163842  # full fsaverage, per hemisphere (the release's fsaverage-space files)
CAPACITY = 10242  # fsaverage5's vertices: the first CAPACITY indices of fsaverage

# Early visual bands from the calcarine outward: dorsal (lower visual field) and ventral (upper field).
_DORSAL = ("V1d", "V2d", "V3d")
_VENTRAL = ("V1v", "V2v", "V3v", "hV4")
EARLY_VISUAL = _DORSAL + _VENTRAL + ("V1", "V2", "V3")  # whole areas are split in dorsal and ventral halves
# Polar angle (degrees, upper visual field positive) at each band's inner and outer edge.
_ANGLES = {"V1d": (-2, -88), "V2d": (-88, -2), "V3d": (-2, -88), "V1v": (2, 88), "V2v": (88, 2), "V3v": (2, 88),
           "hV4": (88, -88)}
# Seeds of the patches, MNI mm in the left hemisphere (x is mirrored in the right one).
_SEEDS: dict[str, tuple[float, float, float]] = {
    "OFA": (-40, -82, -10), "FFA-1": (-40, -64, -18), "FFA-2": (-40, -48, -20), "mTL-faces": (-52, -42, 4),
    "aTL-faces": (-34, -6, -34), "FFA": (-40, -54, -18),
    "EBA": (-46, -74, 2), "FBA-1": (-44, -54, -14), "FBA-2": (-42, -40, -20), "mTL-bodies": (-52, -60, 10),
    "OPA": (-30, -84, 22), "PPA": (-26, -44, -10), "RSC": (-14, -52, 14),
    "OWFA": (-46, -70, -12), "VWFA-1": (-46, -58, -12), "VWFA-2": (-48, -46, -12), "mfs-words": (-36, -38, -18),
    "mTL-words": (-58, -32, -6),
    "MT": (-44, -68, 4), "cars": (-30, -56, -12), "animals": (-44, -62, -14),
}
_EV_ASPECT = 0.35  # width of one bank's bands / their length along the calcarine (a mean bank)
_SEED_JITTER_MM = 3.0


def fits(n_vertices: int) -> bool:
    """Whether a hemisphere of ``n_vertices`` can be placed (one fsaverage5 vertex each)."""
    return 0 < int(n_vertices) <= CAPACITY


@dataclass(frozen=True)
class Placement:
    """Where one hemisphere's synthetic vertices sit.

    Attributes
    ----------
    vertex : int64 array (n,)
        The fsaverage vertex (< 10,242) of every synthetic vertex, in the caller's order; distinct.
    cx, cy : float arrays (n,)
        Early visual vertices: pRF centre from position (image coordinates in (0, 1), ``cy`` downward);
        NaN elsewhere.
    ecc : float array (n,)
        Early visual vertices: eccentricity as a fraction of the largest in that direction, in [0, 1]
        (pRF sizes grow with it); NaN elsewhere.
    """

    vertex: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    ecc: np.ndarray


@dataclass(frozen=True)
class _Anatomy:
    """One hemisphere of fsaverage5: pial coordinates, the graph of edge lengths (inflated surface, mm), the
    vertices the flat map shows, and the early visual chart: distance ``u`` from the occipital pole (the
    most posterior vertex) and signed distance ``w`` from the calcarine fundus (dorsal positive, by height
    against the nearest fundus vertex), both along the edges of the vertices the flat map shows."""

    pial: np.ndarray
    graph: object  # scipy.sparse csr, symmetric, pial edge lengths (mm)
    usable: np.ndarray
    pole: int
    calcarine: np.ndarray
    u: np.ndarray
    w: np.ndarray


@functools.lru_cache(maxsize=1)
def _meshes():
    from ...maps import Space, load_meshes

    return load_meshes(Space.fsaverage("fsaverage5"))


@functools.lru_cache(maxsize=2)
def _anatomy(hemi: str) -> _Anatomy:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    meshes = _meshes()
    pial, faces = (np.asarray(a) for a in meshes.surfaces[hemi]["pial"])
    pial = pial.astype(np.float64)
    infl = np.asarray(meshes.surfaces[hemi]["inflated"][0], np.float64)
    sulc = np.asarray(meshes.sulc[hemi], np.float64)
    n = len(pial)
    usable = np.zeros(n, bool)
    usable[np.asarray(meshes.surfaces[hemi]["flat"][1]).ravel()] = True
    e = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1), axis=0)
    length = np.linalg.norm(infl[e[:, 0]] - infl[e[:, 1]], axis=1)

    def graph(weight: np.ndarray, keep: np.ndarray):
        ok = keep[e[:, 0]] & keep[e[:, 1]]
        g = coo_matrix((weight[ok], (e[ok, 0], e[ok, 1])), shape=(n, n)).tocsr()
        return g + g.T

    full, cortex = graph(length, np.ones(n, bool)), graph(length, usable)
    pole = int(np.flatnonzero(usable)[np.argmin(pial[usable, 1])])
    # The calcarine fundus: the path from the pole to the sulcus's anterior end that stays deepest.
    end = _nearest(pial, usable, (12.0 * _side(hemi), -60.0, 5.0))
    _, pred = dijkstra(graph(length * np.exp(-3.0 * sulc[e].mean(1)), usable), indices=pole, return_predecessors=True)
    path = [end]
    while path[-1] != pole:
        path.append(int(pred[path[-1]]))
    calcarine = np.array(path[::-1])
    u = dijkstra(cortex, indices=pole)
    dist, _, src = dijkstra(cortex, indices=calcarine, min_only=True, return_predecessors=True)
    w = np.where(infl[:, 2] >= infl[np.maximum(src, 0), 2], 1.0, -1.0) * dist
    return _Anatomy(pial, full, usable, pole, calcarine, u, w)


def _side(hemi: str) -> float:
    return -1.0 if hemi == "lh" else 1.0


def _nearest(pial: np.ndarray, allowed: np.ndarray, xyz) -> int:
    idx = np.flatnonzero(allowed)
    return int(idx[np.argmin(((pial[idx] - np.asarray(xyz, float)) ** 2).sum(1))])


def position_of(hemi: str, vertex: np.ndarray) -> np.ndarray:
    """Pial coordinates (MNI305 mm, ``(n, 3)``) of fsaverage vertices below 10,242."""
    return _anatomy(hemi).pial[np.asarray(vertex)]


def place(hemi: str, regions: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> Placement:
    """Put ``n`` synthetic vertices of hemisphere ``hemi`` on fsaverage.

    Parameters
    ----------
    hemi : "lh" or "rh"
    regions : dict
        Region name -> indices (into ``range(n)``) of its vertices; regions do not overlap, vertices in
        none are placed around them. Names: early visual bands (``V1v V1d V2v V2d V3v V3d hV4``, or whole
        areas ``V1 V2 V3``, split in a dorsal and a ventral half) and the patches of ``_SEEDS`` (``FFA-1``,
        ``EBA``, ``PPA``, ``MT`` ...).
    n : int
        Vertices of the hemisphere (at most 10,242, see :func:`fits`).
    rng : numpy Generator
        Jitters the patches' seeds (a subject's own anatomy).

    Returns
    -------
    Placement
    """
    if not fits(n):
        raise ValueError(f"{n} vertices do not fit on fsaverage5's {CAPACITY} per hemisphere")
    unknown = set(regions) - set(EARLY_VISUAL) - set(_SEEDS)
    if unknown:
        raise ValueError(f"no place known for the regions {sorted(unknown)}")
    anat = _anatomy(hemi)
    regions = {k: np.asarray(v, np.int64) for k, v in regions.items() if len(v)}
    bands = _bands(regions)
    vertex = np.full(n, -1, np.int64)
    cx, cy, ecc = (np.full(n, np.nan) for _ in range(3))
    free = np.ones(len(anat.pial), bool)
    for name, (fs, x, y, t) in _early_visual(hemi, anat, {k: len(v) for k, v in bands.items()}, free).items():
        vertex[bands[name]], cx[bands[name]], cy[bands[name]], ecc[bands[name]] = fs, x, y, t
    for name, idx in regions.items():
        if name in _SEEDS:
            seed = np.array(_SEEDS[name]) * (-_side(hemi), 1.0, 1.0) + rng.normal(0, _SEED_JITTER_MM, 3)
            vertex[idx] = _grow(anat, free, seed, len(idx))
    rest = np.flatnonzero(vertex < 0)
    vertex[rest] = _fill(anat, free, len(rest))
    return Placement(vertex, cx, cy, ecc)


def _bands(regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Early visual regions by band: a whole area's vertices split in its dorsal and ventral halves."""
    out = {}
    for name, idx in regions.items():
        if name in ("V1", "V2", "V3"):
            half = (len(idx) + 1) // 2
            out[name + "d"], out[name + "v"] = idx[:half], idx[half:]
        elif name in EARLY_VISUAL:
            out[name] = idx
    return out


def _early_visual(hemi: str, anat: _Anatomy, counts: dict[str, int], free: np.ndarray) -> dict:
    """The early visual bands: per band, its fsaverage vertices and their pRF centres and eccentricity
    fractions. Each bank's region is the superellipse of the (u, |w|) chart nearest the pole and the
    calcarine (as long as ``1 / _EV_ASPECT`` times a mean bank's width); its vertices are ordered by |w|
    over the region's half-width at their u and cut in bands by the bands' counts, V1 innermost."""
    sides = [(names, s, sum(counts.get(b, 0) for b in names)) for names, s in ((_DORSAL, 1.0), (_VENTRAL, -1.0))]
    mean = max(sum(c for _, _, c in sides) / 2.0, 1.0)
    out = {}
    for names, sign, n_side in sides:
        if n_side == 0:
            continue
        near = free & anat.usable & np.isfinite(anat.u)
        cand = np.flatnonzero(near & ((anat.w >= 0) if sign > 0 else (anat.w < 0)))
        if len(cand) < n_side:  # more than a bank holds (not with the generators' fractions)
            cand = np.flatnonzero(near)
        aspect = _EV_ASPECT * n_side / mean
        cost = (anat.u[cand] ** 4 + (np.abs(anat.w[cand]) / aspect) ** 4) ** 0.25
        pick = np.argsort(cost, kind="stable")[:n_side]
        chosen, cost = cand[pick], cost[pick]
        free[chosen] = False
        # across-band coordinate: |w| over the region's half-width at that distance from the pole
        radius = cost.max() if len(chosen) else 1.0
        u = np.minimum(anat.u[chosen], radius * 0.999)
        q = np.abs(anat.w[chosen]) / (aspect * (radius**4 - u**4) ** 0.25)
        order = np.lexsort((u, q))
        start = 0
        for b in names:
            nb = counts.get(b, 0)
            if nb:
                take = chosen[order[start : start + nb]]
                out[b] = (take, *_retinotopy(hemi, b, anat.u[take], q[order[start : start + nb]]))
                start += nb
    return out


def _retinotopy(hemi: str, band: str, u: np.ndarray, q: np.ndarray):
    """pRF centres (image coordinates) and eccentricity fractions of one band's vertices from their distance
    ``u`` from the pole and their across-band coordinate ``q``."""
    def unit(x: np.ndarray) -> np.ndarray:  # ranks scaled to [0, 1]
        r = np.argsort(np.argsort(x, kind="stable"))
        return r / max(len(x) - 1, 1)

    a0, a1 = _ANGLES[band]
    theta = np.deg2rad(a0 + (a1 - a0) * unit(q))
    frac = np.expm1(2.0 * unit(u)) / np.expm1(2.0)  # cortical magnification: the fovea takes more cortex
    e_max = 0.45 / np.maximum(np.abs(np.cos(theta)), np.abs(np.sin(theta)))  # inside [0.05, 0.95]^2
    e = 0.01 + (e_max - 0.01) * frac
    cx = 0.5 - _side(hemi) * e * np.cos(theta)  # lh sees the right hemifield
    cy = 0.5 - e * np.sin(theta)  # upper visual field: small cy
    return cx, cy, frac


def _grow(anat: _Anatomy, free: np.ndarray, seed_xyz: np.ndarray, count: int) -> np.ndarray:
    """``count`` free vertices nearest (geodesically, through free vertices) to a seed: the free vertex
    nearest ``seed_xyz`` whose free component can hold them (the flat map's vertices first). One connected
    patch, unless no free component is large enough."""
    from scipy.sparse.csgraph import connected_components, dijkstra

    taken: list[int] = []
    while len(taken) < count:
        need = count - len(taken)
        pool = free & anat.usable if (free & anat.usable).sum() >= need else free
        idx = np.flatnonzero(pool)
        sub = anat.graph[idx][:, idx]
        _, comp = connected_components(sub, directed=False)
        sizes = np.bincount(comp)
        big = sizes[comp] >= min(need, sizes.max())
        start = int(np.flatnonzero(big)[np.argmin(((anat.pial[idx[big]] - seed_xyz) ** 2).sum(1))])
        d = dijkstra(sub, indices=start)
        reach = np.flatnonzero(np.isfinite(d))
        got = idx[reach[np.argsort(d[reach], kind="stable")[:need]]]
        free[got] = False
        taken.extend(got.tolist())
    return np.array(taken, np.int64)


def _fill(anat: _Anatomy, free: np.ndarray, count: int) -> np.ndarray:
    """``count`` free vertices nearest the placed ones, anterior cortex last and the vertices the flat map
    does not show only when nothing else is left."""
    from scipy.sparse import diags
    from scipy.sparse.csgraph import dijkstra

    if count == 0:
        return np.zeros(0, np.int64)
    placed = np.flatnonzero(~free)
    if len(placed) == 0:
        placed = np.array([anat.pole])
    y = anat.pial[:, 1]
    penalty = 1.0 + np.maximum(0.0, (y + 40.0) / 20.0) ** 2 + np.where(anat.usable, 0.0, 1e4)
    d = dijkstra(anat.graph @ diags(penalty), indices=placed, min_only=True)
    d[~free] = np.inf
    cand = np.flatnonzero(free)
    got = cand[np.argsort(d[cand], kind="stable")[:count]]
    free[got] = False
    return got.astype(np.int64)

"""Where a dataset's response columns sit: a :class:`Space` (fsaverage at some resolution, a subject's own
surface, or a volume) and a :class:`Cortex`, one subject's placement of its measured vertices in it.

numpy only: the dataset readers build these, the map writers and the renderers read them.

fsaverage's meshes are icosahedral subdivisions that keep the coarser mesh's vertices first and in order:
fsaverage5's 10,242 vertices are the first 10,242 of fsaverage6 (40,962) and of fsaverage (163,842), so a
map on a finer fsaverage is shown on a coarser one by taking its first values (:meth:`Space.decimate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Space", "Cortex", "FSAVERAGE_VERTICES", "SpaceError"]

HEMIS = ("lh", "rh")
#: Vertices per hemisphere of the fsaverage meshes (icosahedron order 7, 6, 5, 4, 3).
FSAVERAGE_VERTICES = {"fsaverage": 163842, "fsaverage6": 40962, "fsaverage5": 10242, "fsaverage4": 2562,
                      "fsaverage3": 642}


class SpaceError(ValueError):
    """A space or a placement that cannot be: wrong lengths, indices off the surface, a file of the wrong size."""


@dataclass(frozen=True)
class Space:
    """The space a dataset's maps live in.

    Attributes
    ----------
    kind : "surface" or "volume"
    name : "fsaverage", "fsaverage6", "fsaverage5" (..), "native" (a subject's own surface) or "volume".
    n_vertices : per hemisphere, the vertices of the surface (surface spaces).
    meshes : a subject's own surface files, ``{hemi: {"inflated": path, "flat": path, "sulc": path, ...}}``
        (``native`` spaces; fsaverage's come from the bundled or a local FreeSurfer copy).
    shape, affine : the voxel grid of a volume space.
    """

    kind: str
    name: str
    n_vertices: dict = field(default_factory=dict)
    meshes: dict = field(default_factory=dict)
    shape: tuple | None = None
    affine: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def fsaverage(cls, name: str = "fsaverage") -> "Space":
        if name not in FSAVERAGE_VERTICES:
            raise SpaceError(f"unknown fsaverage mesh {name!r}; known: {', '.join(FSAVERAGE_VERTICES)}")
        n = FSAVERAGE_VERTICES[name]
        return cls("surface", name, {h: n for h in HEMIS})

    @classmethod
    def volume(cls, shape, affine) -> "Space":
        return cls("volume", "volume", shape=tuple(int(s) for s in shape), affine=np.asarray(affine, dtype=np.float64))

    @property
    def is_fsaverage(self) -> bool:
        return self.name in FSAVERAGE_VERTICES

    def describe(self) -> str:
        """One line for ``info`` and the pictures' titles."""
        if self.kind == "volume":
            return f"volume {'x'.join(map(str, self.shape))} (affine in the mask)"
        n = ", ".join(f"{h} {v:,}" for h, v in self.n_vertices.items())
        return f"{self.name} surface ({n} vertices)" if self.is_fsaverage else f"subject surface ({n} vertices)"

    def decimate(self, values: np.ndarray, to: str = "fsaverage5") -> np.ndarray:
        """A per-vertex map of this fsaverage space shown on the coarser fsaverage ``to``: its first
        ``FSAVERAGE_VERTICES[to]`` values (icosahedral meshes keep the coarser vertices first)."""
        if not self.is_fsaverage:
            raise SpaceError(f"only fsaverage maps decimate; this is a {self.name} space")
        n = FSAVERAGE_VERTICES[to]
        if FSAVERAGE_VERTICES[self.name] < n:
            raise SpaceError(f"{self.name} is coarser than {to}")
        return np.asarray(values)[..., :n]


@dataclass(frozen=True)
class Cortex:
    """One subject's measured vertices placed in a :class:`Space`.

    Attributes
    ----------
    space : Space
    vertices : ``{hemi: int array}``, the surface vertex (surface spaces) or the flat C-order voxel index
        (volumes) of every response column, in column order.
    rois : ``{hemi: {family: (labels on the whole space, {label: name})}}``: the ROI outlines pictures
        draw (may be empty).
    source : what the placement was read from (a file or a description), for messages.
    """

    space: Space
    vertices: dict
    rois: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        for h, idx in self.vertices.items():
            idx = np.asarray(idx)
            size = self.size(h)
            if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= size)):
                raise SpaceError(f"{self.source or 'placement'} {h}: vertex indices must lie in [0, {size}) of "
                                 f"{self.space.describe()}")
            if np.unique(idx).size != idx.size:
                raise SpaceError(f"{self.source or 'placement'} {h}: two response columns share one place")

    def size(self, hemi: str) -> int:
        """The number of places of ``hemi`` in the space (surface vertices, or voxels of the whole grid)."""
        if self.space.kind == "volume":
            return int(np.prod(self.space.shape))
        return int(self.space.n_vertices[hemi])

    def n_measured(self, hemi: str) -> int:
        return int(len(self.vertices[hemi]))

    def measured(self, hemi: str) -> np.ndarray:
        """Boolean over the whole space: True where a response column sits."""
        m = np.zeros(self.size(hemi), bool)
        m[self.vertices[hemi]] = True
        return m

    def to_space(self, values: np.ndarray, hemi: str) -> np.ndarray:
        """Per-column values (``(n_columns,)`` or ``(..., n_columns)``) laid on the whole space, float32 with
        NaN off the measured vertices."""
        values = np.asarray(values)
        n = self.n_measured(hemi)
        if values.shape[-1] != n:
            raise SpaceError(f"{hemi}: {values.shape[-1]} values for {n} measured vertices of {self.source or 'the subject'}")
        out = np.full(values.shape[:-1] + (self.size(hemi),), np.nan, np.float32)
        out[..., self.vertices[hemi]] = values
        return out

    def from_space(self, values: np.ndarray, hemi: str) -> np.ndarray:
        """The inverse of :meth:`to_space`: a whole-space map's values at the measured vertices, column order."""
        values = np.asarray(values)
        if values.shape[-1] != self.size(hemi):
            raise SpaceError(f"{hemi}: a map of {values.shape[-1]} values; {self.space.describe()} has {self.size(hemi)}")
        return values[..., self.vertices[hemi]]

    def volume(self, by_hemi: dict) -> np.ndarray:
        """Volume spaces: per-column values of both hemispheres as one 3-D array, NaN outside the mask."""
        if self.space.kind != "volume":
            raise SpaceError("volume() is for volume spaces")
        flat = np.full(int(np.prod(self.space.shape)), np.nan, np.float32)
        for h, v in by_hemi.items():
            flat[self.vertices[h]] = np.asarray(v, dtype=np.float32)
        return flat.reshape(self.space.shape)


def indices_from_mask(mask: np.ndarray, n_vertices: int, path: str | Path, hemi: str, *,
                      size: int | None = None) -> np.ndarray:
    """The measured vertices of a release-style ``{hemi}.all-vertices_fsaverage_space.npy``: 1 where a
    challenge-space vertex sits, in challenge order (= ascending index); checked against the response
    columns ``n_vertices``. ``size``: the surface's vertex count when it is not an fsaverage mesh (a
    subject's own surface); by default the mask must cover an fsaverage mesh."""
    mask = np.asarray(mask)
    if mask.ndim != 1:
        raise SpaceError(f"{path} has shape {mask.shape}; it holds one value per "
                         f"{'fsaverage' if size is None else 'surface'} vertex")
    if size is not None and mask.size != size:
        raise SpaceError(f"{path} has {mask.size:,} values; the {hemi} surface has {size:,} vertices")
    if size is None and mask.size not in FSAVERAGE_VERTICES.values():
        raise SpaceError(f"{path} has {mask.size:,} values; an fsaverage mask has one per vertex "
                         f"({', '.join(f'{k}: {v:,}' for k, v in FSAVERAGE_VERTICES.items())})")
    if not np.isin(mask, (0, 1)).all():
        raise SpaceError(f"{path} holds values other than 0 and 1; it marks measured vertices with 1")
    idx = np.flatnonzero(mask)
    if idx.size != n_vertices:
        raise SpaceError(f"{path} marks {idx.size:,} vertices but the {hemi} responses have {n_vertices:,} columns; "
                         "the 1s must be the response columns, one each (use the subject's own mask)")
    return idx

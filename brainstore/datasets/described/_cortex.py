"""Where the columns of :class:`~._described.DescribedDataset` sit (``space:``): the vertex files of a
surface space (fsaverage at a resolution, or the subject's own surface with its meshes), or a volume's
brain-mask grid; as a :class:`brainstore.maps.Cortex` with the described ROIs laid on the whole space."""

from __future__ import annotations

import numpy as np

from ...maps import Cortex, Space, SpaceError, indices_from_mask
from .._errors import DatasetError
from .._layout import HEMISPHERES
from ._rois import RoisMixin

__all__ = ["CortexMixin"]


class CortexMixin(RoisMixin):
    """:meth:`cortex`: the subject's placement, read once."""

    def cortex(self, subject: str) -> Cortex | None:
        """Where ``subject``'s response columns sit (:class:`brainstore.maps.Cortex`): a volume's mask grid, the
        ``space:`` a surface dataset declares, or None when it declares none."""
        return self._memoized(("cortex", subject), lambda: self._read_cortex(self._check_subject(subject)))

    def space_problems(self, subject: str) -> list[str]:
        """The problems of the subject's ``space:`` (for ``validate``): empty when it reads or is absent."""
        try:
            self.cortex(subject)
        except DatasetError as e:
            return [str(e)]
        return []

    def _read_cortex(self, subject: str) -> Cortex | None:
        spec = self._field(subject, "space")
        if spec is None and not self._responses_spec(subject).is_volume:
            return None  # a surface dataset that does not say where its columns sit
        src = self._sources(subject)
        if src.volume:
            g = src.geometry
            flat = np.flatnonzero(g.mask.ravel())  # C order, as the columns are
            return Cortex(Space.volume(g.shape, g.affine), {h: flat[g.hemi_index[h]] for h in HEMISPHERES},
                          source=str(g.mask_path))
        where = self._where(subject, self._loc(subject, "space"))
        if spec.surface == "native":
            space = self._native_space(subject, spec)
        else:
            space = Space.fsaverage(spec.surface)
        vertices = {}
        for h in HEMISPHERES:
            n = src.n_vertices[h]
            if spec.vertices is None:
                if n != space.n_vertices[h]:
                    raise DatasetError(f"{where}: {h} has {n:,} response columns but {space.name} has {space.n_vertices[h]:,} "
                                       f"vertices; give space.vertices (the vertex of every column) or the whole surface")
                vertices[h] = np.arange(n)
            else:
                vertices[h] = self._vertex_file(subject, h, spec.vertices[h], space, n)
        try:
            cortex = Cortex(space, vertices, source=where)
        except SpaceError as e:
            raise DatasetError(str(e)) from None
        return Cortex(space, vertices, rois=self._space_rois(subject, cortex), source=where)

    def _native_space(self, subject: str, spec) -> Space:
        import nibabel as nib
        import nibabel.freesurfer as fs

        meshes, n = {}, {}
        for h in HEMISPHERES:
            files = {k: str(self._path(subject, v)) for k, v in spec.meshes[h].model_dump().items() if v}
            what = self._where(subject, self._loc(subject, "space", "meshes", h, "inflated"))
            p = files["inflated"]
            try:
                coords = nib.load(p).darrays[0].data if p.endswith(".gii") else fs.read_geometry(p)[0]
            except Exception as e:  # nibabel raises several types for unreadable files
                raise DatasetError(f"{what}: cannot read the mesh {p} ({type(e).__name__}); give a GIfTI surface "
                                   "(.surf.gii) or a FreeSurfer surface (lh.inflated)") from None
            meshes[h], n[h] = files, len(coords)
        return Space("surface", "native", n, meshes)

    def _vertex_file(self, subject: str, hemi: str, value: str, space: Space, n_columns: int) -> np.ndarray:
        """The vertex of every column: an index array (length = columns) or a 0/1 mask over the surface."""
        path = self._path(subject, value)
        what = self._where(subject, self._loc(subject, "space", "vertices", hemi))
        if not path.is_file():
            raise DatasetError(f"{what}: {path} does not exist")
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"{what}: {path} is not a plain numeric .npy ({e})") from None
        size = space.n_vertices[hemi]
        if a.ndim == 1 and a.size == size == n_columns and size > 2 and np.isin(a, (0, 1)).all() and a.all():
            return np.arange(size)  # a mask marking the whole surface
        if a.ndim == 1 and a.size == size and a.size != n_columns and np.isin(a, (0, 1)).all():
            try:  # a release-style mask: 1 where a column sits, columns in ascending vertex order
                return indices_from_mask(a, n_columns, f"{what}: {path}", hemi, size=size)
            except SpaceError as e:
                raise DatasetError(str(e)) from None
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise DatasetError(f"{what}: {path} holds {a.dtype} of shape {a.shape}; give the vertex index of every "
                               f"response column (1-D integers, {n_columns:,} of them) or a 0/1 mask of the {size:,} vertices")
        if a.size != n_columns:
            raise DatasetError(f"{what}: {path} has {a.size:,} vertex indices but {hemi} has {n_columns:,} response "
                               "columns; give one index per column")
        if a.size and (a.min() < 0 or a.max() >= size):
            raise DatasetError(f"{what}: {path} has indices outside [0, {size:,}) of {space.describe()}")
        if np.unique(a).size != a.size:
            raise DatasetError(f"{what}: {path} places two columns on one vertex; every column needs its own")
        return a.astype(np.int64)

    def _space_rois(self, subject: str, cortex: Cortex) -> dict:
        """Every described ROI family laid on the whole space (0 off the measured vertices), for outlines."""
        out: dict = {}
        for h in HEMISPHERES:
            out[h] = {}
            for fam in self.roi_families(subject):
                try:
                    labels, mapping = self.roi_labels(subject, h, fam)
                except DatasetError:
                    continue  # validate names it; the maps draw no outline for it
                full = np.zeros(cortex.size(h), np.int32)
                full[cortex.vertices[h]] = labels
                out[h][fam] = (full, mapping)
        return out


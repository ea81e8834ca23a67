"""ROIs of :class:`~._described.DescribedDataset`: label files per family (surface files, .annot,
{name: FILE.label}, label volumes) and their label -> name mappings."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .._errors import DatasetError
from .._layout import check_hemi
from . import _readers as rd
from ._description import RoiFamily
from ._responses import ResponsesMixin

__all__ = ["RoisMixin"]


class RoisMixin(ResponsesMixin):
    """ROI families, labels and mappings (ROI labels are checked against the responses' vertices)."""

    def roi_families(self, subject: str) -> list[str]:
        """The ROI families described for the subject, in file order."""
        return list(self._field(self._check_subject(subject), "rois") or {})

    def roi_labels(self, subject: str, hemi: str, family: str) -> tuple[np.ndarray, dict[int, str]]:
        """Integer label per vertex (0 = outside) and the label -> ROI name mapping of one family."""
        hemi = check_hemi(hemi)
        fams = self._field(self._check_subject(subject), "rois") or {}
        if family not in fams:
            raise DatasetError(f"{subject} has no ROI family {family!r} in {self.root}; its families: "
                               f"{', '.join(fams) or 'none (add rois: to the description)'}")
        return self._memoized(("roi", subject, hemi, family), lambda: self._read_roi(subject, hemi, family, fams[family]))

    def _read_roi(self, subject: str, hemi: str, family: str, spec: RoiFamily):
        what = self._where(subject, self._loc(subject, "rois", family, "volume" if spec.volume else hemi))
        self_named = False
        if spec.volume:
            src = self._sources(subject)
            if not src.volume:
                raise DatasetError(f"{what}: a label volume needs volume responses; give lh and rh label files")
            labels, names = rd.read_volume_labels(self._path(subject, spec.volume), src.geometry, what)[hemi], None
        else:
            files = getattr(spec, hemi)
            self_named = isinstance(files, dict) or files.lower().endswith(".annot")
            files = ({k: str(self._path(subject, v)) for k, v in files.items()} if isinstance(files, dict)
                     else str(self._path(subject, files)))
            labels, names = rd.read_surface_labels(files, self.n_vertices(subject, hemi), what)
        if spec.mapping is not None:
            if self_named:
                raise DatasetError(f"{self._where(subject, self._loc(subject, 'rois', family, 'mapping'))}: the label "
                                   "files name their ROIs themselves (.annot / {name: FILE.label}); remove mapping")
            mapping = rd.read_mapping(spec.mapping if isinstance(spec.mapping, dict) else
                                      str(self._path(subject, spec.mapping)),
                                      self._where(subject, self._loc(subject, "rois", family, "mapping")))
        elif names is not None:
            mapping = names
        else:
            raise DatasetError(f"{self._where(subject, self._loc(subject, 'rois', family))}: ROI family {family!r} "
                               "needs mapping: (label -> ROI name, e.g. {1: FFA-1, 2: FFA-2}, or a .json file); "
                               "only .label.gii, .annot and {name: FILE.label} name their labels themselves")
        return labels, mapping

    def report_families(self, subject: str) -> list[str]:
        """Every ROI family the dataset describes for the subject (Algonauts names or its own)."""
        return self.roi_families(subject)

    def _mask_families(self, subject: str, families: Iterable[str]) -> list[str]:
        """Families the dataset does not describe are absent from :meth:`roi_masks` (reports show them as
        NaN / "-")."""
        have = self.roi_families(subject)
        return [f for f in families if f in have]

"""Responses from any dataset: :class:`DescribedDataset` reads a dataset description file (YAML,
see the README's "Dataset description files") and offers the interface of
:class:`~brainstore.datasets.AlgonautsDataset` (:class:`~brainstore.datasets.BrainDataset`), so extraction, fitting,
decoders, evaluation and serving use it unchanged.

Design (ARCHITECTURE.md, "datasets"):

* **Rows.** The trial table lists every trial (``stimulus_id``, ``split``, ``session``, ``run``,
  optional ``onset``, ``duration``, ``row``: its row in the response arrays, default the table's
  order). Test rows are the unique test stimuli in order of first presentation, each the mean of
  its repetitions (as NSD and MindEye evaluate). Training rows likewise with ``train_trials:
  average`` (default); with ``train_trials: single`` one row per trial, grouped stimulus by
  stimulus (stimuli in order of first presentation, a stimulus's repeats adjacent in presentation
  order) so that brainstore's contiguous K folds keep a stimulus's repeats in one fold, except
  for at most K - 1 stimuli whose repeats straddle a fold boundary.
* **z-scoring** (``zscore: session``): each session's trials, per vertex, with the mean and
  standard deviation (ddof 0) of that session's training trials; a session with fewer than two
  training trials uses those of all training trials; test trials never contribute statistics.
  A zero deviation counts as 1.
* **Volumes.** The voxels inside the brain mask (finite, nonzero), in C order of (i, j, k), are
  the "vertices"; they are split into ``lh`` (RAS x < 0 through the mask's affine) and ``rh``
  (x >= 0), since every later stage works per hemisphere and several (decoders, adaptors,
  submissions, reports) need both.
* **Cache.** Assembled float32 matrices are written once (atomically, under a file lock) to
  ``<cache>/<subject>/<key>/`` (``cache:``, default ``.brainstore-cache`` beside the description)
  and memory-mapped; the key hashes the input files' sizes and mtimes and the options. Sources are
  read lazily in trial blocks (nibabel ``dataobj``, h5py), never whole.

Parts, by role (each a class the next builds on): ``_fields`` (the description, paths, where a
field is written), ``_trials`` (trial tables, the rows of each split, clips), ``_stimuli``,
``_responses`` (sources, cache, assembly, noise ceilings), ``_rois``, ``_checks`` (``validate``,
``input_files``); here the dataset and its summary.
"""

from __future__ import annotations

import numpy as np

from .._base import DESCRIPTION_NAME
from .._errors import DatasetError
from .._layout import HEMISPHERES
from ._checks import ChecksMixin

__all__ = ["DescribedDataset", "DESCRIPTION_NAME"]


class DescribedDataset(ChecksMixin):
    """A dataset read from a description file (YAML); see the module docstring and the README.

    Parameters
    ----------
    path : the description file, or a folder holding ``brainstore-dataset.yaml``.
    name : dataset name recorded in stimulus tables (default: the description's ``name``, else the
        file's stem, or its folder's name for ``brainstore-dataset.yaml``).

    Raises
    ------
    DescriptionError
        The description does not parse: every problem with its file, line, field and fix.
    """

    def summary(self) -> dict:
        """Counts per subject (as :meth:`~brainstore.datasets.AlgonautsDataset.summary`, plus trial counts); parts that cannot
        be read are left out (``validate`` names why)."""
        try:
            n_caps = len(self.captions)
        except DatasetError:
            n_caps = 0
        out = {"root": str(self.root), "name": self.name, "captions": n_caps, "subjects": {},
               "description": {"train_trials": self.spec.train_trials, "zscore": self.spec.zscore}}
        if self.is_timeseries:
            ts, _ = self._timeseries_result()
            out["description"]["timeseries"] = {
                "tr": self.spec.timeseries.tr, "fps": self.spec.timeseries.fps,
                "clips": None if ts is None else len(ts.clips),
                "trs": None if ts is None else sum(c.n_trs for c in ts.clips)}
        for s in self.subjects:
            entry: dict = {"train_images": None, "test_images": None, "test_responses": False, "hemispheres": {},
                           "space": None}
            try:
                cortex = self.cortex(s)
                entry["space"] = cortex.space.describe() if cortex else None
            except DatasetError as e:
                entry["space"] = f"unreadable: {e}"
            try:
                t = self._trials(s)
                entry.update(train_images=self.n_images(s, "train"), test_images=self.n_images(s, "test"),
                             test_responses=self.has_test_responses(s), train_trials=int((t.split == "train").sum()),
                             test_trials=int((t.split == "test").sum()))
            except DatasetError:
                pass
            for h in HEMISPHERES:
                hemi: dict = {"vertices": None, "rois": {}, "named_rois": {}}
                try:
                    hemi["vertices"] = self.n_vertices(s, h)
                    hemi["rois"] = {k: int(v.sum()) for k, v in self.roi_masks(s, h, families=self.roi_families(s)).items()}
                    hemi["named_rois"] = {k: int(v.sum()) for k, v in
                                          self.roi_masks(s, h, level="roi", families=self.roi_families(s)).items()}
                except DatasetError:
                    pass
                try:
                    nc = self.noise_ceiling(s, h)
                    if nc is not None:
                        hemi["noise_ceiling_mean"] = float(np.nanmean(nc))
                        hemi["noise_ceiling_median"] = float(np.nanmedian(nc))
                except DatasetError:
                    pass
                entry["hemispheres"][h] = hemi
            out["subjects"][s] = entry
        return out

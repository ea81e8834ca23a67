"""The interface every response dataset offers the later stages (extraction, fitting, decoders,
evaluation, serving): :class:`BrainDataset`.

Two implementations: :class:`~.algonauts.AlgonautsDataset` (the Algonauts 2023 folders) and
:class:`~.described.DescribedDataset` (any layout, read through a dataset description file).
``str(ds.root)`` is the dataset's identity (recorded in models; Ray tasks reopen the dataset from it
with :func:`brainstore.datasets.open_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from ._errors import DatasetValidationError
from ._layout import REPORT_FAMILIES

__all__ = ["BrainDataset", "DESCRIPTION_NAME"]

#: The description file a dataset folder may hold (``open_dataset(folder)`` reads it).
DESCRIPTION_NAME = "brainstore-dataset.yaml"


class BrainDataset:
    """Base class of the dataset readers: what every stage may call.

    Attributes
    ----------
    root : Path
        The dataset's identity and what :func:`~brainstore.datasets.open_dataset` reopens it from
        (a folder for the Algonauts layout, the description file for a described dataset).
    name : str
        Recorded in stimulus tables.
    subjects : list of str
    captions : dict
        Caption per stimulus key (empty when the dataset has none).

    Methods
    -------
    stimuli(subjects, splits) -> pyarrow.Table
        :data:`~._layout.STIMULUS_SCHEMA`; ``index`` = the row in the subject's response matrix.
    responses(subject, hemi, split) -> float32 (rows x vertices), memory-mapped, rows in ``index`` order.
    n_images(subject, split), n_vertices(subject, hemi), has_test_responses(subject)
    noise_ceiling(subject, hemi) -> fraction in [0, 1] per vertex, or None
    roi_labels(subject, hemi, family), roi_masks(subject, hemi, level=, families=), regions(subject, hemi)
    validate(check_images=, subjects=) -> list of problems; check(); summary()
    cv_groups(subject, split) -> group label per row (time series: the clip) or None
    ground_truth_dir() -> folder of noiseless responses (the oracle) or None
    """

    root: Path
    name: str

    # ------------------------------------------------------------------ required by subclasses
    @property
    def subjects(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def captions(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def stimuli(self, subjects: Iterable[str] | None = None,
                splits: Iterable[str] = ("train", "test")) -> pa.Table:  # pragma: no cover - interface
        raise NotImplementedError

    def responses(self, subject: str, hemi: str, split: str = "train") -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def has_test_responses(self, subject: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def noise_ceiling(self, subject: str, hemi: str) -> np.ndarray | None:  # pragma: no cover - interface
        raise NotImplementedError

    def roi_labels(self, subject: str, hemi: str, family: str):  # pragma: no cover - interface
        raise NotImplementedError

    def roi_families(self, subject: str) -> list[str]:  # pragma: no cover - interface
        """The ROI families a subject has (every one :meth:`regions` lists)."""
        raise NotImplementedError

    def validate(self, *, check_images: bool = True, subjects: list[str] | None = None) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def summary(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    #: Continuous runs, one response row per TR (``DescribedDataset`` with ``timeseries:``).
    is_timeseries: bool = False
    #: The clips of a time-series dataset (:class:`~.described.TimeSeries`), else None.
    timeseries = None

    def report_families(self, subject: str) -> list[str]:
        """The ROI families reports score by default: Algonauts' ``REPORT_FAMILIES`` (a described
        dataset: every family it describes)."""
        return list(REPORT_FAMILIES)

    def cv_groups(self, subject: str, split: str = "train") -> np.ndarray | None:
        """A label per row of ``split`` that cross-validation folds keep together (a time series'
        clips), or None: contiguous folds."""
        return None

    def cortex(self, subject: str):
        """Where ``subject``'s response columns sit (:class:`brainstore.maps.Cortex`: the space, the vertex
        of every column, ROI labels on the whole space for outlines), or None when the dataset does not say."""
        return None

    def ground_truth_dir(self) -> Path | None:
        """The folder of noiseless responses (``<subject>/{lh,rh}_pred_test.npy``: the oracle), or None."""
        p = Path(self.root) / "ground_truth"
        return p if p.is_dir() else None

    def _mask_families(self, subject: str, families: Iterable[str]) -> list[str]:
        """The families of ``families`` whose masks :meth:`roi_masks` returns (all of them by default)."""
        return list(families)

    def roi_masks(self, subject: str, hemi: str, *, level: str = "family",
                  families: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Boolean masks by ROI family (``level="family"``) or by named ROI (``level="roi"``);
        ``families`` defaults to the reported ones (:meth:`report_families`).

        Named ROIs are every label of the families' mappings except 0 (``V1v`` ... ``hV4``, ``EBA``,
        ``FFA-1``, ``PPA``, ``VWFA-1``, ``early`` ... for ``streams``), keyed by name, in family order
        then label order. A name used by two families is keyed ``family/name``.
        """
        if level not in ("family", "roi"):
            raise ValueError(f"level must be 'family' or 'roi', not {level!r}")
        if families is None:
            families = self.report_families(subject)
        out: dict[str, np.ndarray] = {}
        named: list[tuple[str, str, np.ndarray]] = []
        for family in self._mask_families(subject, families):
            labels, mapping = self.roi_labels(subject, hemi, family)
            if level == "family":
                out[family] = labels > 0
            else:
                named += [(family, name, labels == lab) for lab, name in sorted(mapping.items()) if lab > 0]
        names = [n for _, n, _ in named]
        for family, name, mask in named:
            out[f"{family}/{name}" if names.count(name) > 1 else name] = mask
        return out

    def regions(self, subject: str, hemi: str) -> dict[str, np.ndarray]:
        """Every ROI a rule or a report can name: the subject's families, then every named ROI of them
        (see :meth:`roi_masks`)."""
        fams = self.roi_families(subject)
        return {**self.roi_masks(subject, hemi, families=fams),
                **self.roi_masks(subject, hemi, level="roi", families=fams)}

    def n_images(self, subject: str, split: str) -> int:
        """Rows of the subject's response matrix for ``split`` (stimuli; trials with ``train_trials: single``)."""
        return int(self.stimuli([subject], splits=(split,)).num_rows)

    def n_vertices(self, subject: str, hemi: str) -> int:
        return int(self.responses(subject, hemi, "train").shape[1])

    def check(self, *, check_images: bool = True):
        """Validate and raise :class:`DatasetValidationError` listing every problem found."""
        problems = self.validate(check_images=check_images)
        if problems:
            raise DatasetValidationError(str(self.root), problems)
        return self

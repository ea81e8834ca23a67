"""brainstore.datasets: readers, validation and the synthetic benchmark dataset.

The Algonauts 2023 layout is read by :class:`AlgonautsDataset`; any other collection (images,
video clips, text) comes in through a manifest (:func:`read_manifest`). Both give a stimulus
table with the columns of :data:`STIMULUS_SCHEMA`.
"""

from pathlib import Path

from ._algonauts import (
    HEMISPHERES,
    REPORT_FAMILIES,
    ROI_FAMILIES,
    ROI_FAMILY_LABELS,
    STIMULUS_SCHEMA,
    AlgonautsDataset,
    stimulus_id_for,
)
from ._errors import DatasetError, DatasetValidationError
from ._images import MAX_PIXELS, decode_image, image_problem
from ._manifest import MODALITIES, read_manifest
from ._synthetic import make_dataset

__all__ = [
    # readers
    "AlgonautsDataset",
    "read_manifest",
    "open_stimuli",
    "STIMULUS_SCHEMA",
    "HEMISPHERES",
    "ROI_FAMILIES",
    "REPORT_FAMILIES",
    "ROI_FAMILY_LABELS",
    "MODALITIES",
    "stimulus_id_for",
    # images
    "decode_image",
    "image_problem",
    "MAX_PIXELS",
    # errors
    "DatasetError",
    "DatasetValidationError",
    # synthetic
    "make_dataset",
]


def open_stimuli(source: str | Path):
    """Stimulus table of a dataset folder (Algonauts layout) or a manifest file (.parquet/.csv)."""
    p = Path(source)
    if p.is_dir():
        return AlgonautsDataset(p).stimuli()
    return read_manifest(p)

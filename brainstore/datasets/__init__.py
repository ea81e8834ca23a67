"""brainstore.datasets: readers, validation and the synthetic benchmark dataset.

The Algonauts 2023 layout is read by :class:`AlgonautsDataset`; responses in any other layout
(npy, HDF5, GIfTI, MGH, NIfTI volumes; trial tables; image bricks) by :class:`DescribedDataset`
from a dataset description file; :func:`open_dataset` picks the reader. Both implement
:class:`BrainDataset`. Any other stimulus collection (images, video clips, text) comes in through a
manifest (:func:`read_manifest`). All give a stimulus table with the columns of
:data:`STIMULUS_SCHEMA`.

Rooms: the shared names and pieces at the top (``_layout``: hemispheres, splits, ROI families, the
stimulus schema; ``_base``: the interface; ``_errors``; ``_arrays`` and ``_images``: image bricks and
decoding; ``_manifest``; ``_timeseries``: TR timing; ``_open``), one subpackage per reader
(``algonauts``, ``described``: imported when first used) and ``synthetic`` (the generators).
"""

from ._arrays import (MAX_PIXELS, ArrayRef, BrickError, BrickFileError, BrickFormatError, array_ref, brick_info,
                      close_bricks, parse_array_ref, range_error, read_array_refs)
from ._base import DESCRIPTION_NAME, BrainDataset
from ._errors import DatasetError, DatasetValidationError
from ._images import decode_image, image_problem
from ._layout import HEMISPHERES, REPORT_FAMILIES, ROI_FAMILIES, ROI_FAMILY_LABELS, STIMULUS_SCHEMA, stimulus_id_for
from ._manifest import MODALITIES, read_manifest
from ._open import is_description, open_dataset, open_stimuli
from ._timeseries import event_weights, frames_of_tr, lanczos_kernel, n_trs, run_starts, split_tr_id, tr_id
from .algonauts import AlgonautsDataset
from .synthetic import make_dataset, make_video_dataset

__all__ = [
    # readers
    "BrainDataset",
    "AlgonautsDataset",
    "DescribedDataset",
    "open_dataset",
    "is_description",
    "DESCRIPTION_NAME",
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
    # image bricks (array references FILE.hdf5#KEY[INDEX] as stimulus paths)
    "ArrayRef",
    "array_ref",
    "parse_array_ref",
    "read_array_refs",
    "brick_info",
    "range_error",
    "BrickError",
    "BrickFileError",
    "BrickFormatError",
    "close_bricks",
    # time series (TR timing of frames and events, runs)
    "tr_id",
    "split_tr_id",
    "n_trs",
    "frames_of_tr",
    "event_weights",
    "lanczos_kernel",
    "run_starts",
    # errors
    "DatasetError",
    "DatasetValidationError",
    "DescriptionError",
    # synthetic
    "make_dataset",
    "make_video_dataset",
]


def __getattr__(name: str):  # the described reader (pydantic, yaml) is imported when first used
    if name in ("DescribedDataset", "DescriptionError"):
        from . import described

        return getattr(described, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

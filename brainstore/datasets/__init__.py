"""brainstore.datasets: readers, validation and the synthetic benchmark dataset.

The Algonauts 2023 layout is read by :class:`AlgonautsDataset`; responses in any other layout
(npy, HDF5, GIfTI, MGH, NIfTI volumes; trial tables; image bricks) by :class:`DescribedDataset`
from a dataset description file; :func:`open_dataset` picks the reader. Both implement
:class:`BrainDataset`. Any other stimulus collection (images, video clips, text) comes in through a
manifest (:func:`read_manifest`). All give a stimulus table with the columns of
:data:`STIMULUS_SCHEMA`.
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
from ._arrays import (ArrayRef, BrickError, BrickFileError, BrickFormatError, brick_info, parse_array_ref, range_error,
                      read_array_refs)
from ._base import DESCRIPTION_NAME, BrainDataset
from ._errors import DatasetError, DatasetValidationError
from ._images import MAX_PIXELS, decode_image, image_problem
from ._manifest import MODALITIES, read_manifest
from ._synthetic import make_dataset
from ._timeseries import event_weights, frames_of_tr, lanczos_kernel, run_starts
from ._video_synthetic import make_video_dataset

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
    "parse_array_ref",
    "read_array_refs",
    "brick_info",
    "range_error",
    "BrickError",
    "BrickFileError",
    "BrickFormatError",
    # time series (TR timing of frames and events, runs)
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

_DESCRIPTION_SUFFIXES = (".yaml", ".yml")


def __getattr__(name: str):  # the described reader (pydantic, yaml) is imported when first used
    if name == "DescribedDataset":
        from ._described import DescribedDataset

        return DescribedDataset
    if name == "DescriptionError":
        from ._description import DescriptionError

        return DescriptionError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_description(path: str | Path) -> bool:
    """True for a description file (.yaml / .yml) or a folder holding ``brainstore-dataset.yaml``."""
    p = Path(path).expanduser()
    return (p.is_file() and p.suffix.lower() in _DESCRIPTION_SUFFIXES) or (p / DESCRIPTION_NAME).is_file()


def open_dataset(path: "str | Path | BrainDataset") -> BrainDataset:
    """The dataset at ``path``: a description file (.yaml / .yml) or a folder holding
    ``brainstore-dataset.yaml`` -> :class:`DescribedDataset`; any other folder ->
    :class:`AlgonautsDataset`. A dataset object is returned as it is.

    ``str(open_dataset(p).root)`` is the dataset's identity (recorded in models) and reopens it.
    """
    if isinstance(path, BrainDataset):
        return path
    p = Path(path).expanduser()
    if is_description(p):
        from ._described import DescribedDataset

        return DescribedDataset(p)
    if p.is_file():
        raise DatasetError(f"dataset {p} is a file but not a dataset description (.yaml / .yml); give a dataset "
                           "folder (Algonauts layout) or a description file")
    if not p.exists():
        raise DatasetError(f"dataset {p} does not exist; give a dataset folder (Algonauts layout) or a dataset "
                           "description file (.yaml)")
    try:
        return AlgonautsDataset(p)
    except DatasetError as e:
        found = sorted(q.name for q in p.glob("*.y*ml") if q.suffix.lower() in _DESCRIPTION_SUFFIXES) if p.is_dir() else []
        if not found:
            raise
        raise DatasetError(f"{e}; or pass its description file ({', '.join(found)}), or name it "
                           f"{DESCRIPTION_NAME}") from None


def open_stimuli(source: str | Path):
    """Stimulus table of a dataset folder (Algonauts layout), a description file or a manifest file (.parquet/.csv)."""
    p = Path(source)
    if p.is_dir() or is_description(p):
        return open_dataset(p).stimuli()
    return read_manifest(p)

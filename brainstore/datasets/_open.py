"""Opening a dataset by path: :func:`open_dataset` picks the reader (a description file, or a folder
holding one -> :class:`~.described.DescribedDataset`, imported when first needed; any other folder ->
:class:`~.algonauts.AlgonautsDataset`), :func:`open_stimuli` the stimulus table of a dataset or a
manifest."""

from __future__ import annotations

from pathlib import Path

from ._base import DESCRIPTION_NAME, BrainDataset
from ._errors import DatasetError
from ._manifest import read_manifest
from .algonauts import AlgonautsDataset

__all__ = ["is_description", "open_dataset", "open_stimuli"]

_DESCRIPTION_SUFFIXES = (".yaml", ".yml")


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
        from .described import DescribedDataset

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

"""The Algonauts 2023 challenge layout: :class:`AlgonautsDataset` reads it (``_algonauts``), with the
release's folder layout and file readers (``_files``) and whole-dataset validation (``_validate``)."""

from ._algonauts import AlgonautsDataset

__all__ = ["AlgonautsDataset"]

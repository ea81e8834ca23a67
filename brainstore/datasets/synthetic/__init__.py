"""Synthetic benchmark datasets, fully known stand-ins for real experiments: :func:`make_dataset`
(NSD-like images in the Algonauts layout: ``_images``, drawing the procedural scenes of ``_scenes``)
and :func:`make_video_dataset` (video fMRI, a described dataset: ``_video``, the BOLD model, over the
clips ``_movie`` renders). Both build their folder through ``_folder`` (nothing half written); their
options travel as one spec each (``ImageDatasetSpec``, ``VideoDatasetSpec``)."""

from ._images import make_dataset
from ._video import make_video_dataset

__all__ = ["make_dataset", "make_video_dataset"]

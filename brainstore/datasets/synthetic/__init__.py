"""Synthetic benchmark datasets, fully known stand-ins for real experiments: :func:`make_dataset`
(NSD-like images in the Algonauts layout, ``_images`` with the procedural scenes of ``_scenes``) and
:func:`make_video_dataset` (video fMRI: continuous runs, HRF-convolved BOLD; ``_video``)."""

from ._images import make_dataset
from ._video import make_video_dataset

__all__ = ["make_dataset", "make_video_dataset"]

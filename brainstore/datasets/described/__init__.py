"""Datasets in any layout, read through a description file (YAML): :class:`DescribedDataset`.

By role: ``_description`` (the pydantic description; errors name file, line, field and fix),
``_readers`` (response, label and table files read in blocks; the on-disk cache), ``_clips`` (the
clip and event tables of a time series), and the dataset's parts, each a class the next builds on:
``_fields``, ``_trials``, ``_stimuli``, ``_responses``, ``_rois``, ``_checks``, ``_described``.
Importing this package imports pydantic and PyYAML; :mod:`brainstore.datasets` imports it when a
described dataset is first used.
"""

from ._clips import Clip, Event, TimeSeries
from ._described import DescribedDataset
from ._description import DescriptionError

__all__ = ["DescribedDataset", "DescriptionError", "TimeSeries", "Clip", "Event"]

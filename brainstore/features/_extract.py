"""Feature extraction with Ray Data: read -> decode/preprocess (CPU tasks) -> extractor actor pool
(GPUs when present) -> chunked, idempotent commits into the LanceDB feature store.

:func:`extract` is the one entry point: it takes a stimulus table, a dataset (folder, description
or object) or a manifest, and the options as keywords or as one :class:`~._job.ExtractSpec`. A
stimulus table is extracted one row per stimulus (:mod:`._stimuli`, through the Ray Data stages of
:mod:`._stages`); a time-series dataset one row per TR (:mod:`._timeseries`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..datasets import open_stimuli
from ._job import ExtractReport, ExtractSpec
from ._stimuli import extract_table
from ._store import FeatureStore
from ._timeseries import extract_timeseries
from .extractors import get_extractor

__all__ = ["extract"]


def extract(source, extractor, store: str | FeatureStore, spec: ExtractSpec | None = None,
            **options: Any) -> ExtractReport:
    """Extract features for every stimulus of ``source`` into ``store`` (resumable, idempotent).

    Parameters
    ----------
    source : stimulus table (:data:`~brainstore.datasets.STIMULUS_SCHEMA`), dataset folder, description or
        manifest path. A time-series dataset goes to :func:`~._timeseries.extract_timeseries` (one row per TR).
    extractor : spec string (``"clip:arch=ViT-B-32"``) or an extractor object.
    store : FeatureStore or URI.
    spec : how to run (:class:`~._job.ExtractSpec`: ``version``, ``batch_size``, ``concurrency``, ``num_gpus``,
        ``actor_cpus``, ``prep_cpus``, ``dtype``, ``storage_dtype``, ``commit_every``, ``limit``, ``progress``,
        ``compact``); default its defaults.
    **options : those fields as keywords, in place of the spec's (``extract(src, "text", store, batch_size=128)``).

    Returns
    -------
    ExtractReport

    Raises
    ------
    ExtractionError
        When the model's forward pass keeps failing (after :data:`~._stages.FORWARD_ATTEMPTS` tries of a
        batch); rows committed before are kept and a rerun resumes.
    FeatureStoreError
        When the table exists and was made differently (another model, layer, dtype ...).
    StoreAccessError
        When the store cannot be reached or refuses access (a :class:`FeatureStoreError` naming the
        store, the cause and the fix); committed rows are kept and a rerun resumes.
    TypeError
        An option that is no field of :class:`~._job.ExtractSpec`.
    """
    t0 = time.time()
    spec = ExtractSpec.of(spec, options)
    ext = get_extractor(extractor) if isinstance(extractor, str) else extractor
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if not isinstance(source, pa.Table):
        from ..datasets import BrainDataset, is_description, open_dataset

        if isinstance(source, BrainDataset) or is_description(source):
            ds = open_dataset(source)
            if ds.is_timeseries:  # one row per TR: frames embedded, resampled and z-scored per clip
                return extract_timeseries(ds, ext, fs, version=spec.version, concurrency=spec.concurrency,
                                          dtype=spec.dtype, num_gpus=spec.num_gpus, progress=spec.progress)
            source = ds.root
    stimuli = source if isinstance(source, pa.Table) else open_stimuli(Path(source))
    return extract_table(stimuli, ext, fs, spec, t0)

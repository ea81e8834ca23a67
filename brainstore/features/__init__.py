"""brainstore.features: extractors, the LanceDB feature store, and the Ray Data extraction that fills it.

>>> from brainstore.features import FeatureStore, extract, list_extractors
>>> report = extract("data/synth", "text", "store/")          # captions -> sentence embeddings
>>> X = FeatureStore("store/").load(report.feature, ["nsd-00012", "nsd-00007"])

Files by role: ``extractors/`` (the public subpackage: spec strings -> extractors, their weights),
``_extract`` (:func:`extract`, the entry point), ``_job`` (:class:`ExtractSpec`, :class:`ExtractReport`,
:class:`ExtractionError`, the plumbing every extraction shares), ``_stimuli`` (a stimulus table's
extraction), ``_stages`` (its Ray Data stages), ``_timeseries`` (one row per TR, delays), ``_store``
(:class:`FeatureStore`), ``_versions`` (its table versions: reading one, pinning, cleanup, compaction),
``_store_errors`` (the store's errors), ``_derived`` (PCA tables).
"""

from ._derived import derive_pca
from .extractors import (
    DEFAULT_SPECS,
    DTYPES,
    Extractor,
    ExtractorInfo,
    WeightsNotFoundError,
    WeightsPullError,
    WeightsStatus,
    cache_locations,
    check_caches,
    get_extractor,
    hf_weight_files,
    hub_offline,
    list_extractors,
    parse_spec,
    pull_weights,
    register,
    register_clip_config,
    registered_clip_configs,
    use_cache,
    weights_status,
    with_layer,
)
from ._job import ExtractionError, ExtractReport, ExtractSpec
from ._extract import extract
from ._stimuli import select_stimuli
from ._timeseries import (RESAMPLE_METHODS, delay_rows, delayed_table, derive_delays, derive_event_timeseries,
                          extract_timeseries, timeseries_extractor, timeseries_table)
from ._store import (IDENTITY_KEYS, STORAGE_DTYPES, FeatureStore, FeatureStoreError, FeatureTableInfo,
                     MissingStimuliError, StoreAccessError)

__all__ = [
    # extractors
    "DTYPES",
    "Extractor",
    "ExtractorInfo",
    "WeightsNotFoundError",
    "get_extractor",
    "list_extractors",
    "parse_spec",
    "register",
    "with_layer",
    "register_clip_config",
    "registered_clip_configs",
    # model weights (`brainstore weights list|pull`; read offline from local caches)
    "weights_status",
    "pull_weights",
    "check_caches",
    "cache_locations",
    "use_cache",
    "WeightsStatus",
    "WeightsPullError",
    "DEFAULT_SPECS",
    "hub_offline",
    "hf_weight_files",
    # extraction
    "extract",
    "ExtractSpec",
    "ExtractReport",
    "ExtractionError",
    "select_stimuli",
    # store
    "STORAGE_DTYPES",
    "FeatureStore",
    "FeatureStoreError",
    "StoreAccessError",
    "FeatureTableInfo",
    "MissingStimuliError",
    "IDENTITY_KEYS",
    "derive_pca",
    # time series (video fMRI)
    "extract_timeseries",
    "derive_delays",
    "derive_event_timeseries",
    "RESAMPLE_METHODS",
    "timeseries_extractor",
    "timeseries_table",
    "delayed_table",
    "delay_rows",
]

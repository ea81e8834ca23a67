"""brainstore.features: extractor registry and the LanceDB feature store, filled by Ray Data.

>>> from brainstore.features import FeatureStore, extract, list_extractors
>>> report = extract("data/synth", "text", "store/")          # captions -> sentence embeddings
>>> X = FeatureStore("store/").load(report.feature, ["nsd-00012", "nsd-00007"])
"""

from ._derived import derive_pca
from ._extractors import (
    DTYPES,
    Extractor,
    ExtractorInfo,
    WeightsNotFoundError,
    get_extractor,
    list_extractors,
    parse_spec,
    register,
    register_clip_config,
    registered_clip_configs,
    with_layer,
)
from ._extractors._hub import hf_weight_files
from ._extractors._util import hub_offline
from ._extractors._weights import (DEFAULT_SPECS, WeightsPullError, WeightsStatus, cache_locations, check_caches,
                                   pull_weights, use_cache, weights_status)
from ._pipeline import ExtractionError, ExtractReport, extract, select_stimuli
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
    # pipeline
    "extract",
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

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
    with_layer,
)
from ._pipeline import ExtractionError, ExtractReport, extract, select_stimuli
from ._timeseries import RESAMPLE_METHODS, derive_delays, derive_event_timeseries, extract_timeseries
from ._store import (STORAGE_DTYPES, FeatureStore, FeatureStoreError, FeatureTableInfo, MissingStimuliError,
                     StoreAccessError)

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
    "derive_pca",
    # time series (video fMRI)
    "extract_timeseries",
    "derive_delays",
    "derive_event_timeseries",
    "RESAMPLE_METHODS",
]

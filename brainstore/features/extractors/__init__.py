"""Feature extractors: spec strings -> cheap, picklable extractors with lazy weight loading.

>>> ext = get_extractor("clip:arch=ViT-B-32,pretrained=openai,tower=image,layer=final")
>>> ext.version
'clip-vit-b-32-openai-image-final'

Importing this package does not import torch, open_clip, transformers or
segment_anything; they are imported by ``load()`` (and by preprocessing where
a model-specific processor is needed).

Files by role: ``_spec`` (the spec grammar, the option schema and its parsers), ``_base`` (the
:class:`Extractor` base class), ``_registry`` (names -> classes, specs -> extractors), one file
per extractor (``_clip`` with ``_clip_configs``, ``_sam``, ``_hf``, ``_text``, ``_video``,
``_motion``), the helpers they share (``_util``, ``_imaging``, ``_hub``), ``_weights`` (where
weights are looked for, and the one place that downloads them) and :mod:`.testing` (tiny offline
models for tests, demos and benchmarks).
"""

from ._spec import Option, boolean, choice, int_range, layer_or, text
from ._base import DTYPES, MODALITIES, REQUIRED_METADATA_KEYS, Extractor, ExtractorInfo, WeightsNotFoundError
from ._registry import extractor_class, get_extractor, list_extractors, parse_spec, register, with_layer
from . import _clip, _sam, _hf, _motion, _text, _video  # noqa: E402,F401  (register the built-in extractors)
from ._clip_configs import register_clip_config, registered_clip_configs
from ._video import VideoDecodeError, read_frames
from ._hub import hf_weight_files
from ._util import hub_offline
from ._weights import (DEFAULT_SPECS, WeightsPullError, WeightsStatus, cache_locations, check_caches, pull_weights,
                       use_cache, weights_status)

__all__ = [
    # the extractor contract and registry
    "DTYPES", "MODALITIES", "REQUIRED_METADATA_KEYS", "Extractor", "ExtractorInfo", "WeightsNotFoundError",
    "extractor_class", "get_extractor", "list_extractors", "parse_spec", "register", "with_layer",
    # options of a spec (for extractors registered outside brainstore)
    "Option", "boolean", "choice", "int_range", "layer_or", "text",
    # clip configs, video frames
    "register_clip_config", "registered_clip_configs", "VideoDecodeError", "read_frames",
    # model weights (`brainstore weights list|pull`; read offline from local caches)
    "weights_status", "pull_weights", "check_caches", "cache_locations", "use_cache", "WeightsStatus",
    "WeightsPullError", "DEFAULT_SPECS", "hub_offline", "hf_weight_files",
]

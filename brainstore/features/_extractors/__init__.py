"""Feature-extractor registry: spec strings -> cheap, picklable extractors with lazy weight loading.

>>> ext = get_extractor("clip:arch=ViT-B-32,pretrained=openai,tower=image,layer=final")
>>> ext.version
'clip-vit-b-32-openai-image-final'

Importing this package does not import torch, open_clip, transformers or
segment_anything; they are imported by ``load()`` (and by preprocessing where
a model-specific processor is needed).
"""

from ._base import DTYPES, REQUIRED_METADATA_KEYS, Extractor, ExtractorInfo, WeightsNotFoundError
from ._registry import get_extractor, list_extractors, parse_spec, register, with_layer
from . import _clip, _sam, _hf, _motion, _text, _video  # noqa: E402,F401  (register the built-in extractors)
from ._clip_configs import register_clip_config, registered_clip_configs
from ._video import VideoDecodeError, read_frames

__all__ = [
    "DTYPES", "Extractor", "ExtractorInfo", "WeightsNotFoundError", "VideoDecodeError", "REQUIRED_METADATA_KEYS",
    "get_extractor", "list_extractors", "parse_spec", "register", "register_clip_config", "registered_clip_configs",
    "read_frames", "with_layer",
]

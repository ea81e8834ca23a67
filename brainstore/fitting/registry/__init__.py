"""brainstore.fitting.registry: where fitted models and runs are kept.

The model registry (:class:`ModelRegistry`: immutable numbered versions ``<name>/@<v>/model.safetensors`` +
``model.json`` and aliases, in a folder or on object storage, never pickle; references ``NAME``, ``NAME@3``,
``NAME@champion``; a loader per model kind, :func:`register_loader`), the fingerprints
that tie a model to the embeddings it was fitted on, the digests of the dataset inputs it was fitted on
(:func:`dataset_digest`, :func:`stimuli_digest`), the run folders fits and evaluations write, and the
announcements of the services that serve its models (``ModelRegistry.announce`` / ``services``, ``_services.py``).
"""

from ._digests import dataset_digest, stimuli_digest
from ._gc import GcReport, collect_garbage
from ._fingerprint import check_fingerprint, decode_ids, encode_ids, table_fingerprint
from ._records import (DEFAULT_ALIAS, NON_ENCODER_KINDS, ModelRecord, RegistryError, model_base, model_ref, parse_ref,
                       register_loader, safe_name)
from ._registry import ModelRegistry
from ._runfiles import RunLayout, new_array, open_array, remove_partial, run_dir, write_array, write_state

__all__ = [
    "ModelRegistry", "ModelRecord", "RegistryError", "safe_name", "NON_ENCODER_KINDS", "register_loader",
    "DEFAULT_ALIAS", "model_base", "model_ref", "parse_ref", "GcReport", "collect_garbage", "dataset_digest", "stimuli_digest",
    "table_fingerprint", "check_fingerprint", "encode_ids", "decode_ids",
    "RunLayout", "run_dir", "remove_partial", "write_array", "write_state", "new_array", "open_array",
]

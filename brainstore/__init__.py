"""brainstore: a distributed feature store and serving system for brain encoding/decoding models.

Subpackages
-----------
datasets : readers, validation and the synthetic benchmark generator (Algonauts 2023 layout).
scoring  : the scoring contract (Pearson r, noise-normalized score, NNMC, retrieval).
features : extractor registry, Ray Data extraction into a LanceDB feature store.
fitting  : ridge / adaptor models, scoring (Pearson r, NNMC, retrieval), model registry.
serving  : Ray Serve deployments for encoding and decoding.
cluster  : Ray connection, the ``brainstore`` CLI and whole-pipeline runs.

Layering: ``scoring``, ``datasets`` <- ``features`` <- ``fitting`` <- ``serving``; ``cluster`` may import all.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

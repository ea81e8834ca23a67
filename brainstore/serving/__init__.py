"""brainstore.serving: the HTTP service of fitted encoding and decoding models.

One FastAPI app (:func:`make_app`) around a backend: :class:`LocalBackend` serves the registry's
models from this process (plain uvicorn, :class:`LocalServer`). Contract: ``ARCHITECTURE.md``
(Serving).
"""

from ._app import MAKE_TOKEN, TOKEN_MIN_LENGTH, Limits, check_token, make_app
from ._backend import STIMULUS_ID, LocalBackend
from ._codec import NPY, ServingError, array_from_npy, array_to_npy, decode_array, encode_array
from ._local import LocalServer, free_port

__all__ = ["make_app", "Limits", "check_token", "TOKEN_MIN_LENGTH", "MAKE_TOKEN", "LocalBackend", "LocalServer",
           "free_port", "ServingError", "STIMULUS_ID", "NPY", "encode_array", "decode_array", "array_from_npy",
           "array_to_npy"]

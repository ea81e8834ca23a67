"""brainstore.serving: the HTTP service of fitted encoding and decoding models.

One FastAPI app (:func:`make_app`) around a backend: :class:`LocalBackend` serves the registry's
models from this process (plain uvicorn, :class:`LocalServer`). On Ray Serve the same app fronts
deployments (:func:`build_app`); Serve config files (:func:`serve_config`) name the application
builder by its public path ``brainstore.serving:app_builder``. The Ray Serve names (:func:`build_app`,
:data:`APP_NAME`) are imported on first use, so ``import brainstore.serving`` does not import Ray.
Contract: ``ARCHITECTURE.md`` (Serving).
"""

from .._lazy import lazy_names

from ._app import MAKE_TOKEN, TOKEN_MIN_LENGTH, Limits, check_token, make_app
from ._backend import LocalBackend
from ._codec import NPY, ServingError, array_from_npy, array_to_npy, decode_array, encode_array
from ._config import (IMPORT_PATH, LEGACY_IMPORT_PATHS, PROXY_TIMEOUT_MARGIN_S, ServeConfigError, app_args,
                      check_serve_config, deployment_options, read_serve_config, serve_config)
from ._inputs import STIMULUS_ID
from ._local import LocalServer, free_port
from ._routing import DEFAULT_REFRESH_S
from ._service import LOOPBACK_HOSTS, Service, serve

#: Public names whose module imports Ray (Serve deployments): loaded on first access (PEP 562).
_LAZY = {"build_app": "._deploy", "APP_NAME": "._deploy"}

__all__ = ["serve", "Service", "LOOPBACK_HOSTS", "make_app", "Limits", "check_token", "TOKEN_MIN_LENGTH", "MAKE_TOKEN", "LocalBackend", "LocalServer",
           "free_port", "ServingError", "STIMULUS_ID", "NPY", "encode_array", "decode_array", "array_from_npy",
           "array_to_npy",
           # Ray Serve: the application (lazy: ray) and its config files
           "app_builder", "build_app", "APP_NAME", "serve_config", "check_serve_config", "read_serve_config",
           "app_args", "deployment_options", "ServeConfigError", "IMPORT_PATH", "LEGACY_IMPORT_PATHS",
           "PROXY_TIMEOUT_MARGIN_S", "DEFAULT_REFRESH_S"]


def app_builder(args: dict):
    """The Ray Serve application builder that Serve config files name: ``import_path:
    brainstore.serving:app_builder`` (what ``brainstore serve --write-config`` writes).

    Parameters
    ----------
    args : dict
        The application's ``args``: ``registry`` (the model registry folder or URI), and optionally
        ``store`` (the feature store), ``token_env`` (the environment variable holding the bearer
        token), ``limits`` (:class:`Limits` fields) and ``refresh_s`` (seconds between two resolutions of
        model names and aliases; default :data:`DEFAULT_REFRESH_S`).

    Returns
    -------
    ray.serve.Application
        The bound application (:func:`build_app`).

    Raises
    ------
    ValueError
        An unknown arg, no ``registry``, or a ``token_env`` naming a variable that is unset, empty or
        holds a token too short (:func:`check_token`).
    """
    from ._deploy import app_builder as build  # imports Ray

    return build(args)


__getattr__ = lazy_names(__name__, _LAZY, globals())

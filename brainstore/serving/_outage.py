"""The service's own unavailability: a model registry or feature store that cannot be reached (an object
store stopped, a network or DNS failure, refused credentials, a timeout) is answered 503 with
``Retry-After`` and a one-line message of ours. The libraries' own text (obstore's and LanceDB's debug
dumps, with Rust source paths) never reaches a client; the service keeps no state from an outage, so
the next request after the store returns is answered normally."""

from __future__ import annotations

import functools
import traceback

from ._codec import ServingError

__all__ = ["RETRY_AFTER_S", "outage", "unavailable", "served"]

#: Seconds a client is asked to wait before retrying a request refused for an outage.
RETRY_AFTER_S = 5

#: What a library's message says (lower case) -> what we say.
_WHY = (
    (("connection refused", "connectionrefused"), "connection refused"),
    (("timed out", "timedout", "deadline has elapsed"), "timed out"),  # not "timeout": obstore says retry_timeout
    (("dns error", "failed to lookup address", "name or service not known", "no such host"),
     "its host name does not resolve"),
    (("permission denied", "permissiondenied", "access denied", "accessdenied", "forbidden", "unauthenticated",
      "invalidaccesskeyid", "signaturedoesnotmatch", "expiredtoken"), "the credentials were refused"),
    (("connection reset", "broken pipe", "connection closed", "error sending request", "tcp connect error",
      "connect error"), "the connection failed"),
    (("nosuchbucket", "bucket does not exist", "the specified bucket"), "its bucket does not exist"),
)
#: Markers of an object-store or I/O failure inside a ValueError / RuntimeError (LanceDB wraps them so).
_IO_MARKERS = ("generic s3 error", "generic gcs error", "generic microsoftazure error", "generic http error",
               "retryerror", "error sending request", "io { source", "lanceerror(io)", "object_store",
               "store: \"s3\"", "store: \"gcs\"", "store: \"microsoftazure\"")


def _chain(e: BaseException):
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _why(text: str) -> str | None:
    low = text.lower()
    for markers, said in _WHY:
        if any(m in low for m in markers):
            return said
    return None


def _obstore_error(x: BaseException) -> bool:
    try:
        from obstore.exceptions import BaseError
    except ImportError:  # pragma: no cover - obstore is a dependency
        return False
    return isinstance(x, BaseError)


def _kind(x: BaseException) -> str | None:
    """What an exception of an outage is, in general words; None for one that is not an outage."""
    from ..features import StoreAccessError

    if isinstance(x, StoreAccessError):  # the feature store's own sentence for a store it cannot reach
        return "the feature store cannot be reached"
    if _obstore_error(x):
        return "the object store answered with an error"
    if isinstance(x, TimeoutError):
        return "timed out"
    if isinstance(x, FileNotFoundError):
        return "a file it holds is missing"
    if isinstance(x, PermissionError):
        return "permission denied"
    if isinstance(x, ConnectionError):
        return "the connection failed"
    if isinstance(x, OSError):
        return "an input/output error"
    if isinstance(x, (ValueError, RuntimeError)) and any(m in str(x).lower() for m in _IO_MARKERS):
        return "the object store answered with an error"
    return None


def unavailable(e: BaseException) -> str | None:
    """Why ``e`` (or an exception it was raised from) means a registry or store is out of reach: a short
    phrase of ours ("connection refused", "timed out", ...), the most specific one its chain allows; None
    when it is not an outage (a refusal of the request, or a fault of the service's own code)."""
    links = list(_chain(e))
    if not links or isinstance(links[0], ServingError):
        return None
    kinds = [k for k in map(_kind, links) if k]
    if not kinds:
        return None
    return _why(" ".join(str(x) for x in links)) or kinds[0]  # the most specific words any link has


def _which(e: BaseException) -> str | None:
    """"registry" or "store": whose code the innermost recognised frame of the failure belongs to."""
    from ..features import StoreAccessError

    if any(isinstance(x, StoreAccessError) for x in _chain(e)):
        return "store"
    registry_code, store_code = _code_folders()
    for x in reversed(list(_chain(e))):  # the root cause first
        for frame in reversed(traceback.extract_tb(x.__traceback__)):  # its innermost frame first
            f = frame.filename.replace("\\", "/")
            if f.startswith(registry_code) or "/obstore/" in f:
                return "registry"
            if f.startswith(store_code) or "/lancedb/" in f or "/lance/" in f:
                return "store"
    return None


def _code_folders() -> tuple[str, str]:
    """The folders of the registry's and the feature store's code, from the packages themselves (so that
    moving a file inside them cannot silently break the attribution)."""
    from pathlib import Path

    root = Path(__file__).parent.parent  # brainstore/, as the frames name it (the path it was imported by)
    return ((root / "fitting" / "registry").as_posix() + "/", (root / "features").as_posix() + "/")


def outage(e: BaseException, *, registry: str | None = None, store: str | None = None) -> ServingError | None:
    """The 503 (with ``Retry-After``) that answers ``e`` when it is an outage (:func:`unavailable`), naming
    the registry or store it hit when that can be told; else None."""
    why = unavailable(e)
    if why is None:
        return None
    which = _which(e)
    if which == "registry" and registry:
        what = f"the model registry {registry}"
    elif which == "store":
        what = f"the feature store {store}" if store else "a feature store the models read"
    else:
        what = f"the model registry {registry} or a feature store its models read" if registry else \
            "a model registry or feature store the service reads"
    return ServingError(503, f"{what} is unavailable ({why}); retry in a few seconds (the service recovers by "
                             "itself once it is back)", headers={"Retry-After": str(RETRY_AFTER_S)})


def served(fn):
    """A backend method whose failures to reach the registry or a store (obstore, LanceDB, OS errors) are a
    503 with Retry-After and a message of ours (``_outage``); refusals pass unchanged."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except ServingError:
            raise
        except Exception as e:
            err = outage(e, registry=self.registry_uri, store=self.store_uri)
            if err is None:
                raise
            raise err from None

    return wrapper

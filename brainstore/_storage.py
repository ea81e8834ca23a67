"""Object-store options for store and registry URIs (``s3://``, ``gs://``, ``az://``).

Options come from, in increasing priority: the environment variable ``BRAINSTORE_STORAGE_OPTIONS``
(a JSON object, or the path of a YAML/JSON file holding one), then options given in code. Keys are
checked against the ones the object-store layer (LanceDB/Lance, Rust ``object_store``) understands:
LanceDB ignores an unknown key silently, so ``endpiont`` would quietly send credentials to AWS; here
it is an error naming the key and the nearest known ones. The standard variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``, ...) keep working as LanceDB reads them itself.

On a Ray cluster the connection helper (``brainstore._ray.connect``) ships ``BRAINSTORE_STORAGE_OPTIONS``
to the workers, and the fitting drivers put the resolved options in every task's job, so every task
opens the same store with the same options (also on a local Ray started before the variable was set).

Besides LanceDB (the feature store), the model registry and the write locks talk to object stores
directly, through ``obstore`` (the Python face of the same Rust ``object_store`` crate LanceDB uses, so
the same option keys mean the same things): :func:`object_store` opens one rooted at a URI, and
:class:`ObjectLock` is an exclusive lock made of one object created with a conditional PUT
(``If-None-Match: *``), which S3, GCS, Azure and S3-compatible servers honour.

The errors of those layers (LanceDB's and obstore's debug dumps, with Rust source paths) are never
shown: :func:`store_failure` turns one into a line naming the store, the cause and the fix (the endpoint
unreachable, the bucket missing, the credentials refused), which the store and the registry raise as
their own error types.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path

__all__ = ["uri_of", "dataset_root", "ENV", "KNOWN_KEYS", "ObjectLock", "StorageOptionsError", "env_options", "is_remote", "merge_cli_options",
           "object_store", "storage_options", "store_failure", "use_options"]

ENV = "BRAINSTORE_STORAGE_OPTIONS"

#: Keys the object-store layer understands (lower case; values are strings).
KNOWN_KEYS = frozenset({
    # any store
    "allow_http", "allow_invalid_certificates", "timeout", "connect_timeout", "proxy_url", "user_agent",
    "download_retry_count", "client_max_retries", "client_retry_timeout",
    # S3 and S3-compatible (MinIO, Ceph, R2, a local moto server)
    "aws_access_key_id", "access_key_id", "aws_secret_access_key", "secret_access_key", "aws_session_token",
    "session_token", "aws_region", "region", "aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url",
    "aws_virtual_hosted_style_request", "virtual_hosted_style_request", "aws_s3_express", "aws_server_side_encryption",
    "aws_sse_kms_key_id", "aws_unsigned_payload", "aws_skip_signature", "aws_imdsv1_fallback", "aws_metadata_endpoint",
    "aws_container_credentials_relative_uri", "aws_checksum_algorithm", "aws_copy_if_not_exists",
    "aws_conditional_put", "aws_request_payer",
    # Google Cloud Storage
    "google_service_account", "service_account", "google_service_account_path", "service_account_path",
    "google_service_account_key", "service_account_key", "google_bucket", "google_application_credentials",
    # Azure
    "azure_storage_account_name", "account_name", "azure_storage_account_key", "account_key", "access_key",
    "azure_client_id", "client_id", "azure_client_secret", "client_secret", "azure_tenant_id", "tenant_id",
    "azure_storage_sas_key", "sas_key", "azure_storage_token", "bearer_token", "azure_use_emulator", "use_emulator",
    "azure_endpoint", "azure_use_fabric_endpoint", "azure_msi_endpoint", "azure_federated_token_file",
    "azure_use_azure_cli",
})


class StorageOptionsError(ValueError):
    """Storage options that cannot be used (unknown keys, unreadable source)."""


def uri_of(x) -> str:
    """The URI of a store or registry given as a URI, a path, a ``FeatureStore`` (``.uri``) or a
    ``ModelRegistry`` (``.root``): every entry point accepts either form. A local path is made absolute (Ray
    tasks, which reopen stores and registries from their URI, run in other working directories)."""
    if isinstance(x, (str, os.PathLike)):
        s = os.fspath(x)
        if "://" in s:
            return s
        return os.path.abspath(os.path.expanduser(s))
    for attr in ("uri", "root"):
        v = getattr(x, attr, None)
        if v is not None and not callable(v):
            return str(v)
    return str(x)


def dataset_root(x) -> str:
    """A dataset given as a path or as a dataset object (``.root``), as the path every stage reopens."""
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else str(x.root)


def is_remote(uri) -> bool:
    """An object-store URI (``s3://``, ``gs://``, ``az://``, ...), not a local folder or ``file://``."""
    s = str(uri)
    return "://" in s and not s.startswith("file://")


def env_options() -> tuple[dict, str]:
    """The options of ``$BRAINSTORE_STORAGE_OPTIONS`` (a file's content when it names one) and where they came from."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return {}, ""
    if raw.startswith("{"):
        where = f"${ENV}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise StorageOptionsError(f"{where} is not a JSON object: {e}; e.g. "
                                      f"{ENV}='{{\"aws_endpoint\": \"http://127.0.0.1:9000\"}}'") from None
    else:
        where = f"{raw} (from ${ENV})"
        try:
            import yaml

            obj = yaml.safe_load(Path(raw).read_text())
        except FileNotFoundError:
            raise StorageOptionsError(f"{where}: no such file; ${ENV} holds a JSON object or the path of a "
                                      "YAML/JSON file with one") from None
        except Exception as e:
            raise StorageOptionsError(f"{where}: not valid YAML/JSON: {e}") from None
    if not isinstance(obj, dict):
        raise StorageOptionsError(f"{where}: storage options are a mapping of option names to values")
    return obj, where


def _hints(unknown) -> str:
    hints = "; ".join(f"{k!r} (did you mean {', '.join(difflib.get_close_matches(str(k).lower(), KNOWN_KEYS, 3)) or 'none close'}?)"
                      for k in unknown)
    return (f"{hints}. LanceDB would ignore them silently; known keys include aws_endpoint, aws_region, allow_http, "
            "aws_access_key_id, aws_secret_access_key")


def storage_options(uri, given: dict | None = None) -> dict | None:
    """The checked options for ``uri`` (None for local folders), environment first, ``given`` over it."""
    if not is_remote(uri):
        return dict(given) if given else None
    env, where = env_options()
    opts = {**env, **(given or {})}
    unknown = sorted(k for k in opts if str(k).lower() not in KNOWN_KEYS)
    if unknown:
        src = f" in {where}" if where and any(k in env for k in unknown) else ""
        raise StorageOptionsError(f"unknown storage option(s){src} for {uri}: {_hints(unknown)}")
    return {str(k).lower(): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in opts.items()}


#: Keys that are HTTP client settings in ``object_store`` (the rest configure the store itself).
CLIENT_KEYS = frozenset({"allow_http", "allow_invalid_certificates", "timeout", "connect_timeout", "proxy_url",
                         "user_agent"})
#: Keys only Lance reads (its own retry loop): not for ``object_store``.
LANCE_ONLY_KEYS = frozenset({"download_retry_count", "client_max_retries", "client_retry_timeout"})
_SCHEME_KEYS = {  # store keys by scheme: prefixed ones and the short aliases object_store accepts
    "s3": ("aws_", {"access_key_id", "secret_access_key", "session_token", "region", "endpoint", "endpoint_url",
                    "virtual_hosted_style_request"}),
    "gs": ("google_", {"service_account", "service_account_path", "service_account_key"}),
    "az": ("azure_", {"account_name", "account_key", "access_key", "client_id", "client_secret", "tenant_id",
                      "sas_key", "bearer_token", "use_emulator"}),
}
_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az", "abfs": "az", "abfss": "az",
            "adl": "az"}


def object_store(uri, options: dict | None = None):
    """An ``obstore`` store rooted at ``uri`` (its path is the prefix), with the checked options of
    :func:`storage_options` (environment, then ``options``).

    Raises
    ------
    StorageOptionsError
        For a scheme without an object store here, or options the store refuses.
    """
    from obstore.store import from_url

    s = str(uri).rstrip("/")
    scheme = s.split("://", 1)[0].lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise StorageOptionsError(f"{s}: object-store scheme {scheme!r} is not supported; use s3://, gs:// or az:// "
                                  "(or a local folder)")
    opts = storage_options(s, options) or {}
    prefix, short = _SCHEME_KEYS[kind]
    client = {k: (v.lower() == "true" if v.lower() in ("true", "false") else v) for k, v in opts.items()
              if k in CLIENT_KEYS}
    config = {k: v for k, v in opts.items() if k not in CLIENT_KEYS and k not in LANCE_ONLY_KEYS
              and (k.startswith(prefix) or k in short)}
    try:
        return from_url(s, config=config or None, client_options=client or None)
    except Exception as e:  # obstore's own errors: unknown key for this store, a bad URL
        raise StorageOptionsError(f"{s}: cannot open the object store: {str(e).splitlines()[0]}") from None


class ObjectLock:
    """An exclusive lock held as one object ``key`` in ``store``, created with a conditional PUT.

    Acquiring polls until ``timeout`` seconds have passed, then raises ``error`` with ``what`` in the
    message. A lock object older than ``stale_s`` seconds was left by a killed holder (locks are held
    for one commit, seconds) and is removed; so is, at once, one whose holder was a process of this
    machine that no longer runs (a writer that died, or lost the store, between taking the lock and
    removing it). The object holds the holder's host, pid, process start time and time, shown in the
    error. Releasing never hides the error that ends the holder's work: a lock that cannot be removed
    then (the store went away) is left for the next writer to clear as above.
    """

    def __init__(self, store, key: str, *, what: str, timeout: float = 120.0, stale_s: float = 600.0,
                 error: type[Exception] = RuntimeError, where: str = ""):
        self.store, self.key, self.what, self.timeout, self.stale_s = store, key, what, timeout, stale_s
        self.error, self.where = error, where or key

    def __enter__(self) -> "ObjectLock":
        import datetime
        import socket
        import time

        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError

        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
                         "time": time.time()}).encode()
        deadline, wait = time.monotonic() + self.timeout, 0.05
        while True:
            try:
                obstore.put(self.store, self.key, me, mode="create")
                return self
            except (AlreadyExistsError, FileExistsError):
                pass
            try:
                info = obstore.head(self.store, self.key)
                age = (datetime.datetime.now(datetime.timezone.utc) - info["last_modified"]).total_seconds()
                if age > self.stale_s or self._holder_gone():
                    obstore.delete(self.store, self.key)
                    continue
            except (NotFoundError, FileNotFoundError):  # released meanwhile
                continue
            if time.monotonic() > deadline:
                try:
                    holder = json.loads(bytes(obstore.get(self.store, self.key).bytes()))
                except Exception:  # released or unreadable: say what we know
                    holder = {}
                raise self.error(
                    f"{self.what}: another writer ({holder.get('host', '?')}, pid {holder.get('pid', '?')}) has held "
                    f"the lock {self.where} for more than {self.timeout:g} s; wait for it to finish (or end it) and "
                    f"retry; a lock left by a killed writer is removed after {self.stale_s:g} s") from None
            time.sleep(wait)
            wait = min(wait * 2, 0.5)

    def _holder_gone(self) -> bool:
        """Whether the lock's holder was a process of this machine that has ended (pid gone or reused)."""
        import socket

        import obstore

        try:
            holder = json.loads(bytes(obstore.get(self.store, self.key).bytes()))
            pid = int(holder["pid"])
        except Exception:  # released meanwhile, or not ours to judge: wait for it (or for stale_s)
            return False
        if holder.get("host") != socket.gethostname():
            return False
        if pid == os.getpid():
            return False  # this process holds it (another thread): it is alive
        now = _process_start(pid)
        if now is None:
            return True
        return bool(now and holder.get("start") and now != holder["start"])  # the pid now names another process

    def __exit__(self, exc_type, *exc) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.delete(self.store, self.key)
        except (NotFoundError, FileNotFoundError):
            pass
        except Exception:
            if exc_type is None:  # the work succeeded: a lock that stays is this call's failure
                raise
            # the work failed (the store went away): its error is the one to tell; the lock is cleared later


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), None when it does not run; 0 where
    that cannot be read but the process exists."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0


def merge_cli_options(pairs) -> None:
    """Fold ``--storage-option KEY=VALUE`` flags into ``$BRAINSTORE_STORAGE_OPTIONS`` for this process (and the
    Ray workers it starts or ships the variable to); flags win over the variable's own keys.

    Raises
    ------
    StorageOptionsError
        For a flag that is not ``KEY=VALUE`` or names an unknown key.
    """
    if not pairs:
        return
    given = {}
    for p in pairs:
        key, sep, value = str(p).partition("=")
        if not sep or not key.strip():
            raise StorageOptionsError(f"--storage-option {p!r}: expected KEY=VALUE, e.g. --storage-option "
                                      "aws_endpoint=http://127.0.0.1:9000")
        given[key.strip()] = value.strip()
    use_options(given, "--storage-option", over_env=True)


def use_options(given: dict, what: str, *, over_env: bool) -> None:
    """Fold ``given`` options (from ``what``: flags, a pipeline file) into ``$BRAINSTORE_STORAGE_OPTIONS`` for
    this process and the Ray workers it starts or ships the variable to: over the variable's own keys
    (``over_env``), or only where it sets none.

    Raises
    ------
    StorageOptionsError
        For an unknown key (naming the nearest known ones) or an unreadable variable.
    """
    unknown = sorted(str(k) for k in given if str(k).lower() not in KNOWN_KEYS)
    if unknown:
        raise StorageOptionsError(f"{what}: unknown key(s): {_hints(unknown)}")
    given = {str(k): v for k, v in given.items()}
    env = env_options()[0]
    os.environ[ENV] = json.dumps({**env, **given} if over_env else {**given, **env})



# ----------------------------------------------------------------------------------------------- failures
#: Text of an object-store or Lance I/O failure inside the exception types LanceDB raises (ValueError,
#: RuntimeError, OSError); obstore's own exception types are failures by their type.
_IO_MARKERS = ("generic s3 error", "generic gcs error", "generic microsoftazure error", "generic http error",
               "generic localfilesystem error", "retryerror", "error sending request", "io { source",
               "lanceerror(io)", "lance error", "object_store", 'store: "s3"', 'store: "gcs"',
               'store: "microsoftazure"', "failed to connect to namespace", ".cargo/registry/")
_DENIED = ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "access denied", "expiredtoken",
           "invalidtoken", "status: 403", "403 forbidden", "authorizationfailure", "authenticationfailed",
           "unauthenticated", "permissiondenied", "status: 401")
_NO_BUCKET = ("nosuchbucket", "the specified bucket does not exist", "containernotfound")
_UNREACHABLE = ("connection refused", "connectionrefused", "error sending request", "tcp connect error",
                "connect error", "dns error", "failed to lookup address", "name or service not known",
                "timed out", "timedout", "deadline has elapsed", "connection reset", "broken pipe",
                "connection closed", "kind: connect")
_RUST_PATH = re.compile(r",?\s*(?:/\S*)?\.cargo/registry/\S+?\.rs:\d+:\d+")


def _is_storage_failure(e: BaseException) -> bool:
    if type(e).__module__.startswith("obstore"):
        return True
    if isinstance(e, (ValueError, RuntimeError, OSError)):
        low = str(e).lower()
        return any(m in low for m in _IO_MARKERS)
    return False


def _endpoint(text: str, uri: str, options: dict | None) -> str:
    """The endpoint a failed request went to: the URL in the library's message, else the options' or
    the environment's endpoint, else the store's default."""
    m = re.search(r"(https?://[^/\s?\"'),]+)", text)
    if m:
        return m.group(1)
    opts = options or {}
    for k in ("aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url", "azure_endpoint"):
        if opts.get(k):
            return str(opts[k]).rstrip("/")
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        if os.environ.get(k):
            return os.environ[k].rstrip("/")
    scheme = str(uri).split("://", 1)[0]
    return {"s3": "AWS S3", "gs": "Google Cloud Storage", "az": "Azure Blob Storage"}.get(scheme, "the object store")


def _probe(endpoint: str) -> str:
    """What a TCP connection to ``endpoint`` (a URL) meets now: why it fails, or "" when it connects."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(endpoint)
    if not u.hostname:
        return ""
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=3):
            return ""
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror:
        return f"host {u.hostname} does not resolve"
    except (TimeoutError, socket.timeout):
        return "no answer within 3 s"
    except OSError as e:
        return e.strerror or type(e).__name__


def _clean(text: str) -> str:
    """A library's message without Rust source paths, debug dumps and line breaks, cut to a readable length."""
    text = text.split("\n\nDebug source:", 1)[0]
    text = re.sub(r",?\s*location: Location \{[^}]*\}", "", text)
    text = _RUST_PATH.sub("", text)
    text = " ".join(text.split())
    return text if len(text) <= 240 else text[:237] + "..."


def store_failure(e: BaseException, *, what: str, uri, option: str, options: dict | None = None) -> str | None:
    """The one line that says why a store operation failed, or None when ``e`` is not a storage failure.

    Parameters
    ----------
    e : the exception LanceDB, Lance or obstore raised.
    what : what the URI holds ("feature store", "model registry").
    uri : the store's URI.
    option : the command-line option that names it ("--store").
    options : the resolved storage options (for the endpoint, when the message names none).

    Returns
    -------
    str or None
        ``"<what> <uri> unreachable (connection refused at <endpoint>): <fix>"``, or the same for a
        missing bucket or refused credentials; other failures of the layer as ``"<what> <uri>: <the
        library's message without its debug dump>; <fix>"``.
    """
    if not _is_storage_failure(e):
        return None
    text = str(e)
    low = text.lower()
    remote = is_remote(uri)
    if remote:
        endpoint = _endpoint(text, str(uri), options)
        scheme = str(uri).split("://", 1)[0]
        bucket = str(uri).split("://", 1)[1].split("/", 1)[0]
        if any(m in low for m in _NO_BUCKET):
            return (f"{what} {uri}: bucket {bucket!r} does not exist at {endpoint}: create it (e.g. `aws s3 mb "
                    f"{scheme}://{bucket}`) or check {option} and the endpoint (-S aws_endpoint=...)")
        if any(m in low for m in _DENIED):
            code = re.search(r"<Code>([^<]+)</Code>", text)
            said = re.search(r"<Message>([^<]+)</Message>", text)
            why = f"{code.group(1)}: {said.group(1)}" if code and said else ("403 Forbidden" if "403" in low else
                                                                              "access denied")
            return (f"{what} {uri}: access denied by {endpoint} ({_clean(why)}): check the credentials "
                    "(-S aws_access_key_id=... -S aws_secret_access_key=..., $AWS_ACCESS_KEY_ID / "
                    f"$AWS_SECRET_ACCESS_KEY or ${ENV}) and the bucket's policy")
        if any(m in low for m in _UNREACHABLE):
            why = _probe(endpoint) if endpoint.startswith("http") else ""
            if not why:
                why = "no answer" if ("timed out" in low or "deadline" in low) else "the connection failed"
            return (f"{what} {uri} unreachable ({why} at {endpoint}): start the object store, or check {option} "
                    "and the endpoint (-S aws_endpoint=...); rerun once it answers")
    return (f"{what} {uri}: {'the object store' if remote else 'the storage layer'} failed: {_clean(text)}; check "
            f"{option}{' and the storage options' if remote else ''}, then retry")

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
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

__all__ = ["ENV", "KNOWN_KEYS", "ObjectLock", "StorageOptionsError", "env_options", "is_remote", "merge_cli_options",
           "object_store", "storage_options", "use_options"]

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
    for one commit, seconds) and is removed. The object holds the holder's host, pid and time, shown
    in the error.
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

        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}).encode()
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
                if age > self.stale_s:
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

    def __exit__(self, *exc) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.delete(self.store, self.key)
        except (NotFoundError, FileNotFoundError):
            pass


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

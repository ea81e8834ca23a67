"""Object-store options for store and registry URIs (``s3://``, ``gs://``, ``az://``).

Options come from, in increasing priority: the environment variable ``BRAINSTORE_STORAGE_OPTIONS``
(a JSON object, or the path of a YAML/JSON file holding one), then options given in code. Keys are
checked against the ones the object-store layer (LanceDB/Lance, Rust ``object_store``) understands:
LanceDB ignores an unknown key silently, so ``endpiont`` would quietly send credentials to AWS; here
it is an error naming the key and the nearest known ones. The standard variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``, ...) keep working as LanceDB reads them itself.

On a Ray cluster the connection helper (``brainstore._ray.connect``) ships ``BRAINSTORE_STORAGE_OPTIONS``
to the workers, so every task opens the same store with the same options.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

__all__ = ["ENV", "KNOWN_KEYS", "StorageOptionsError", "env_options", "is_remote", "storage_options"]

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


def storage_options(uri, given: dict | None = None) -> dict | None:
    """The checked options for ``uri`` (None for local folders), environment first, ``given`` over it."""
    if not is_remote(uri):
        return dict(given) if given else None
    env, where = env_options()
    opts = {**env, **(given or {})}
    unknown = sorted(k for k in opts if str(k).lower() not in KNOWN_KEYS)
    if unknown:
        hints = "; ".join(f"{k!r} (did you mean {', '.join(difflib.get_close_matches(str(k).lower(), KNOWN_KEYS, 3)) or 'none close'}?)"
                          for k in unknown)
        src = f" in {where}" if where and any(k in env for k in unknown) else ""
        raise StorageOptionsError(f"unknown storage option(s){src} for {uri}: {hints}. LanceDB would ignore them "
                                  "silently; known keys include aws_endpoint, aws_region, allow_http, "
                                  "aws_access_key_id, aws_secret_access_key")
    return {str(k).lower(): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in opts.items()}

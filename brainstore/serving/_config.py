"""Serve config files: written for ``serve run`` / ``serve deploy`` unchanged (host written explicitly,
since Serve config files default to 0.0.0.0), and checked by Serve's own schema plus a walk for unknown
keys (Serve's schema ignores a misspelled key such as ``max_replica``, silently)."""

from __future__ import annotations

import copy
from pathlib import Path

__all__ = ["serve_config", "check_serve_config", "read_serve_config", "deployment_options", "app_args", "ServeConfigError",
           "IMPORT_PATH", "LEGACY_IMPORT_PATHS", "PROXY_TIMEOUT_MARGIN_S"]


#: The application builder configs name (:func:`brainstore.serving.app_builder`).
IMPORT_PATH = "brainstore.serving:app_builder"
#: Import paths of the same builder that configs written by earlier versions name; still built and read.
LEGACY_IMPORT_PATHS = ("brainstore.serving._deploy:app_builder",)
#: Serve's proxy gives up this many seconds after the app's own request timeout (which answers 503 first).
PROXY_TIMEOUT_MARGIN_S = 5.0


class ServeConfigError(ValueError):
    """A serve config file Serve would refuse, or would silently misread."""


def serve_config(registry: str, store: str | None = None, *, host: str = "127.0.0.1", port: int = 8000,
                 token_env: str | None = None, request_timeout_s: float = 30.0, refresh_s: float | None = None) -> dict:
    """A Serve deploy config for the brainstore application (deployment options: ``DEFAULT_OPTIONS``).

    ``request_timeout_s``: the app answers a request it cannot finish in time with 503 + ``Retry-After``;
    Serve's proxy gives up 5 s later (its own 408, the outer bound). ``refresh_s``: seconds between two
    resolutions of bare model names and aliases (written only when given; default 2)."""
    from ._deploy import APP_NAME, DEFAULT_OPTIONS
    from ._routing import check_refresh

    def absolute(uri) -> str:  # `serve run` starts replicas elsewhere: local folders as absolute paths
        return str(uri) if "://" in str(uri) else str(Path(uri).resolve())

    args = {"registry": absolute(registry), "limits": {"request_timeout_s": float(request_timeout_s)}}
    if store:
        args["store"] = absolute(store)
    if token_env:
        args["token_env"] = token_env
    if refresh_s is not None:
        args["refresh_s"] = check_refresh(refresh_s)
    deployments = [{"name": name, **copy.deepcopy(opts)} for name, opts in DEFAULT_OPTIONS.items()]
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": int(port),
                         "request_timeout_s": float(request_timeout_s) + PROXY_TIMEOUT_MARGIN_S},
        "logging_config": {"log_level": "WARNING"},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": args, "deployments": deployments}],
    }


def _schemas() -> dict:
    from ray.serve.schema import (
        AutoscalingConfig,
        DeploymentSchema,
        HTTPOptionsSchema,
        LoggingConfig,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    return {"": ServeDeploySchema, "http_options": HTTPOptionsSchema, "logging_config": LoggingConfig,
            "applications[]": ServeApplicationSchema, "deployments[]": DeploymentSchema,
            "autoscaling_config": AutoscalingConfig, "ray_actor_options": RayActorOptionsSchema}


def _unknown_keys(cfg: dict) -> list[str]:
    S = _schemas()
    out = []

    def walk(obj: dict, schema, where: str) -> None:
        fields = set(schema.model_fields)
        for k, v in obj.items():
            path = f"{where}.{k}" if where else k
            if k not in fields:
                close = sorted(fields, key=lambda f: _distance(f, k))[:3]
                out.append(f"{path} (known here: {', '.join(close)}, ...)")
                continue
            if k in ("http_options", "logging_config", "autoscaling_config", "ray_actor_options") and isinstance(v, dict):
                walk(v, S[k], path)
            elif k in ("applications", "deployments") and isinstance(v, list):
                for i, item in enumerate(v):
                    if isinstance(item, dict):
                        walk(item, S[f"{k}[]"], f"{path}[{i}]")

    walk(cfg, S[""], "")
    return out


def _distance(a: str, b: str) -> int:
    import difflib

    return -int(100 * difflib.SequenceMatcher(None, a, b).ratio())


def check_serve_config(cfg: dict, where: str = "serve config") -> dict:
    """Validate by Serve's schema and refuse unknown keys; returns ``cfg``."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(cfg, dict):
        raise ServeConfigError(f"{where}: a Serve config is a mapping (proxy_location, http_options, applications)")
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ServeConfigError(f"{where}: unknown key(s) that Serve would ignore silently: " + "; ".join(unknown))
    try:
        ServeDeploySchema.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ServeConfigError(f"{where}: {loc}: {first['msg']}") from None
    apps = _brainstore_apps(cfg)
    if not apps:
        raise ServeConfigError(f"{where}: no application with import_path {IMPORT_PATH}")
    from ._deploy import DEFAULT_OPTIONS

    from ._routing import check_refresh

    for a in apps:
        if "refresh_s" in (a.get("args") or {}):
            try:
                check_refresh(a["args"]["refresh_s"])
            except ValueError as e:
                raise ServeConfigError(f"{where}: applications.args.{e}") from None
        limits = (a.get("args") or {}).get("limits")
        if limits is not None:
            from ._app import Limits

            try:
                Limits(**limits)
            except TypeError:
                raise ServeConfigError(f"{where}: applications.args.limits: unknown key(s) in {sorted(limits)}; "
                                       "known: max_body_bytes, max_image_bytes, max_values, request_timeout_s") from None
            except ValueError as e:
                raise ServeConfigError(f"{where}: applications.args.{e}") from None
        from ._deploy import gone_deployments

        for d in a.get("deployments", []):
            gone = gone_deployments([d.get("name")])
            if gone:
                raise ServeConfigError(f"{where}: {gone}, or write the config again (brainstore serve --write-config)")
            if d.get("name") not in DEFAULT_OPTIONS:
                raise ServeConfigError(f"{where}: deployment {d.get('name')!r} is not part of brainstore's application; "
                                       f"deployments: {', '.join(DEFAULT_OPTIONS)}")
    return cfg


def read_serve_config(path: str | Path) -> dict:
    """Read and check a Serve config file (``brainstore serve --config``).

    Parameters
    ----------
    path : str or Path
        A YAML file as ``brainstore serve --write-config`` writes it (its brainstore application may
        name :data:`IMPORT_PATH` or one of :data:`LEGACY_IMPORT_PATHS`).

    Returns
    -------
    dict
        The config, checked by :func:`check_serve_config`.

    Raises
    ------
    ServeConfigError
        The file is missing or not YAML, or Serve would refuse or silently misread it (one line naming
        the file and the key).
    """
    import yaml

    p = Path(path)
    try:
        cfg = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ServeConfigError(f"{p}: no such file (write one with `brainstore serve --write-config {p}`)") from None
    except yaml.YAMLError as e:
        raise ServeConfigError(f"{p}: not valid YAML: {e}") from None
    return check_serve_config(cfg, str(p))


def _brainstore_apps(cfg: dict) -> list[dict]:
    return [a for a in cfg.get("applications", []) if a.get("import_path") in (IMPORT_PATH, *LEGACY_IMPORT_PATHS)]


def app_args(cfg: dict) -> dict:
    """The ``args`` of a checked config's brainstore application (registry, store, token_env, limits, refresh_s)."""
    return dict(_brainstore_apps(cfg)[0].get("args") or {})


def deployment_options(cfg: dict) -> dict[str, dict]:
    """Per deployment name, the options a checked config sets (for ``build_app(options=...)``)."""
    app = _brainstore_apps(cfg)[0]
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}

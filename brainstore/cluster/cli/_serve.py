"""``serve``: the registry's models over HTTP (Ray Serve, or uvicorn with ``--local``), or a Serve config file
(``--write-config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import AddressOpt, RegistryOpt, fail


def serve_cmd(
    registry: str = RegistryOpt,
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: each model's own)."),
    address: Optional[str] = AddressOpt,
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1; anything else needs a token)."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default 8000)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Serve config file (from --write-config): deployments, autoscaling, resources, http options."),
    write_config: Optional[Path] = typer.Option(None, "--write-config", help="Write a Serve config file (`serve run` / `serve deploy` take it unchanged) and exit."),
    token_env: str = typer.Option("BRAINSTORE_TOKEN", "--token-env", help="Environment variable holding the bearer token."),
    local: bool = typer.Option(False, "--local", help="Plain uvicorn with the models in this process (no Ray Serve)."),
    refresh_s: Optional[float] = typer.Option(None, "--refresh-s", help="Seconds between two resolutions of model names and aliases: moving champion or saving a version switches the answers within about this, no restart (default 2)."),
) -> None:
    """Serve the registry's encoding and decoding models over HTTP (Ray Serve; /docs for the API)."""
    from ...serving import (DEFAULT_REFRESH_S, Limits, ServeConfigError, app_args, deployment_options, read_serve_config,
                            serve)

    if refresh_s is not None and not refresh_s > 0:
        fail(f"--refresh-s must be > 0 seconds, got {refresh_s:g}")
    if write_config is not None:
        return _write_config(write_config, registry, store, host, port, token_env, refresh_s)
    cfg = None
    if config is not None:
        try:
            cfg = read_serve_config(config)
        except ServeConfigError as e:
            fail(str(e))
    http = (cfg or {}).get("http_options", {})
    limits = Limits(**((app_args(cfg).get("limits") if cfg else None) or {}))  # checked by read_serve_config
    host = host or http.get("host", "127.0.0.1")
    port = port or http.get("port", 8000)
    token = _serve_token(host, token_env)
    if not Path(registry).is_dir() and "://" not in registry:
        fail(f"--registry {registry} does not exist; fit models first (`brainstore fit`) or pass --registry")
    refresh_s = refresh_s or (app_args(cfg).get("refresh_s") if cfg else None) or DEFAULT_REFRESH_S
    service = serve(registry, store, local=local, host=host, port=port, token=token, limits=limits,
                    options=deployment_options(cfg) if cfg else None, http_options=http, refresh_s=refresh_s)
    _run_service(service, registry, address, token_env)


def _serve_token(host: str, token_env: str) -> str | None:
    """The token in ``$token_env`` (checked; None when unset); a public host is never served without one."""
    import os

    from ...serving import LOOPBACK_HOSTS, MAKE_TOKEN, check_token

    try:
        token = check_token(os.environ.get(token_env) or None, f"${token_env}")
    except ValueError as e:
        fail(str(e))
    if host not in LOOPBACK_HOSTS and not token:
        fail(f"--host {host} exposes the service beyond this machine: set a bearer token in ${token_env} "
             f"(export {token_env}=$({MAKE_TOKEN})), or bind 127.0.0.1")
    return token


def _write_config(path: Path, registry: str, store: str | None, host: str | None, port: int | None,
                  token_env: str, refresh_s: float | None = None) -> None:
    """``--write-config``: the Serve config file (checked by Serve's schema), then exit."""
    import os

    import yaml

    from ...serving import check_serve_config, serve_config
    from .._console import console

    _serve_token(host or "127.0.0.1", token_env)
    cfg = serve_config(registry, store, host=host or "127.0.0.1", port=port or 8000,
                       token_env=token_env if os.environ.get(token_env) else None, refresh_s=refresh_s)
    check_serve_config(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    console.print(f"wrote {path}: `serve run {path}` or `brainstore serve --config {path}`")


def _run_service(service, registry: str, address: str | None, token_env: str) -> None:
    """Start ``service`` (Ray Serve: after connecting to Ray, its notices quietened), then serve until
    SIGINT / SIGTERM / Ctrl-C and stop it."""
    import contextlib
    import logging
    import signal
    import time

    from .._console import console
    from .._quiet import quiet_serve

    url = service.url
    stop = {"now": False}
    quiet = contextlib.nullcontext()

    def on_signal() -> None:  # installed after Ray's start, which installs its own handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *a: stop.update(now=True))

    if service.local:
        on_signal()
        service.start()
        console.print(f"serving {registry} at {url} (plain uvicorn, models in this process); docs: {url}/docs")
    else:
        from .._ray import connect

        res = connect(address)
        on_signal()  # a stop asked for while the app deploys takes effect once it is up
        console.print(f"Ray: {int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU")
        import ray.serve  # noqa: F401  (its import sets up the "ray.serve" logger: quieten it after)

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not "Started Serve", "... is ready" per run
        quiet = quiet_serve()  # Ray Serve's notices on every start and shutdown
        quiet.__enter__()
        service.start()
        console.print(f"serving {registry} at {url} (Ray Serve: Ingress holding the models, Extractor); docs: {url}/docs")
    auth = f' -H "Authorization: Bearer ${token_env}"' if service.token else ""  # double quotes: the shell expands it
    console.print(f"try: curl -s{auth} {url}/v1/models   (Ctrl-C stops)")
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()  # (Ray Serve: its exit notices, relayed late, are still filtered)
        quiet.__exit__(None, None, None)
        console.print("stopped")

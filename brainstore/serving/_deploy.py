"""The Ray Serve application: one hop to the replica that holds the models.

* ``Ingress``: the FastAPI app of ``_app.py`` (auth, validation, answers) over a
  :class:`~._backend.LocalBackend` in the same replica: encoding models and decoders (and the candidate
  embeddings of their target tables) loaded from the registry on demand, least recently used dropped.
  A request that needs only an encoder or a decoder is answered where it lands, no handle call. On an
  embedded cluster the replicas answer HTTP themselves behind HAProxy (``brainstore._ray.serve_ingress_env``:
  no Python proxy in between, a request whose replica died re-sent to another); with
  ``RAY_SERVE_ENABLE_HA_PROXY=0`` Serve's proxy forwards each request to a replica, and subjects are
  multiplexed (``@serve.multiplexed``): a client that sends the ``serve_multiplexed_model_id: <subject>``
  header is routed to a replica that has that subject's models loaded. Autoscaled (1 to 2 replicas by
  default).
* ``Extractor``: uploaded images embedded by each table's own extractor, batched (``@serve.batch``); an
  upload goes there first (one handle call, retried once on a dead replica), then to the Ingress's model.

(Before, an Ingress replica called an ``Encoder`` or a ``Decoder`` deployment for every request: two process
hops, each pickling the request and the answer; the Serve app answered 0.39x the plain server's encodes:
benchmarks/RESULTS.md, serve_load.) Nothing here calls ``ray.init``: the caller connects
(``brainstore.cluster``).
"""

from __future__ import annotations

import asyncio
import copy

from ray import serve

from ._app import Limits, check_token, make_app
from ._backend import LocalBackend
from ._codec import ServingError
from ._heartbeat import ingress_heartbeat
from ._outage import outage
from ._routing import DEFAULT_REFRESH_S, check_refresh

__all__ = ["build_app", "app_builder", "DEFAULT_OPTIONS", "ReplicaBackend", "APP_NAME", "MULTIPLEX_HEADER"]

APP_NAME = "brainstore"
#: Deployment options fitted to a 2-core machine (fractional CPUs); ``serve.yaml`` overrides them.
_QUIET = {"log_level": "WARNING", "enable_access_log": False}  # replicas log problems, not every request
#: Replica event loops: the user code and the handle router run on the replica's main loop instead of one
#: thread each. Every request otherwise crosses two threads per hop, which on a few cores costs a third of
#: the throughput (benchmarks/RESULTS.md, serve_load run 3).
SAME_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def _options(ongoing: int, queued: int, *, autoscaled: bool = False) -> dict:
    """One deployment's defaults: 0.25 CPU, the same-loop env, queue limits (a 503 with ``Retry-After: 1`` past
    them), quiet logs; one replica, or autoscaling between 1 and 2."""
    scale = ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                                     "upscale_delay_s": 5, "downscale_delay_s": 30}} if autoscaled
             else {"num_replicas": 1})
    return {**scale, "ray_actor_options": {"num_cpus": 0.25, "runtime_env": {"env_vars": dict(SAME_LOOP_ENV)}},
            "max_ongoing_requests": ongoing, "max_queued_requests": queued, "logging_config": dict(_QUIET),
            # a request past the queue: the proxy's own 503 says when to retry, as the app's 503s do
            "backpressure_config": {"retry_after_s": 1}}


DEFAULT_OPTIONS = {
    "Ingress": _options(64, 256, autoscaled=True),
    "Extractor": _options(32, 128),
}
#: Deployments of earlier versions, whose models the Ingress now holds (their options are refused with the fix).
_MERGED = ("Encoder", "Decoder")


def gone_deployments(names) -> str | None:
    """The refusal of options for the deployments of earlier versions among ``names`` (None: none of them)."""
    gone = sorted(set(names) & set(_MERGED))
    if not gone:
        return None
    what = f"deployment {gone[0]!r} is" if len(gone) == 1 else f"deployments {', '.join(map(repr, gone))} are"
    return (f"{what} gone: the Ingress deployment holds the encoding models and decoders now (one hop per request); "
            "give their options (replicas, autoscaling, max_ongoing_requests) to Ingress")
#: The HTTP header Serve's proxy routes multiplexed requests by: a subject's requests go to a replica holding it.
MULTIPLEX_HEADER = "serve_multiplexed_model_id"


def _lost_replica(e: BaseException) -> bool:
    """The replica serving a call died or went away (killed, crashed, its node lost)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(e, (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError,
                          DeploymentUnavailableError))


def _unwrap(e: BaseException) -> BaseException:
    """The ServingError a replica raised (handles re-raise it wrapped in a RayTaskError); overload and a
    lost replica become 503 with ``Retry-After`` (the client may retry), not a 500."""
    from ray.serve.exceptions import BackPressureError

    cause = getattr(e, "cause", None)
    if isinstance(cause, ServingError):
        return ServingError(cause.status, cause.message, headers=cause.headers)
    if isinstance(cause, BaseException) and outage(cause) is not None:  # a replica's store out of reach
        return outage(cause)
    if isinstance(e, ServingError) and hasattr(e, "status"):
        return ServingError(e.status, e.message, headers=e.headers)
    if isinstance(e, BackPressureError):
        return ServingError(503, "the service is at capacity (its request queue is full); retry shortly",
                            headers={"Retry-After": "1"})
    if _lost_replica(e):
        return ServingError(503, "the replica serving this request went away; retry (another replica answers)",
                            headers={"Retry-After": "1"})
    return e


class _Refusal:
    """A ServingError sent back as a value: a refused request is an answer, not a replica failure (no
    traceback in the replica's log)."""

    def __init__(self, e: ServingError):
        self.status, self.message, self.headers = e.status, e.message, e.headers


def _answers(fn):
    """Deployment method wrapper: ServingErrors, and a registry or store out of reach (503, ``_outage``), come
    back as :class:`_Refusal` values."""
    import functools

    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        try:
            return await fn(self, *args, **kwargs)
        except ServingError as e:
            return _Refusal(e)
        except Exception as e:
            backend = getattr(self, "backend", None)
            err = outage(e, registry=getattr(backend, "registry_uri", None), store=getattr(backend, "store_uri", None))
            if err is None:
                raise
            return _Refusal(err)

    return wrapper


async def _remote(make, retries: int = 1):
    """Await the handle call ``make()`` returns: a refusal re-raised as its ServingError; a call whose replica
    died under it re-sent (every call here is a read, so safe to repeat) up to ``retries`` times, on another
    replica when there is one; cancelled with the caller (the ingress's request timeout)."""
    for attempt in range(retries + 1):
        call = make()
        try:
            out = await call
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as e:
            if attempt < retries and _lost_replica(e):
                continue
            raise _unwrap(e) from None
        if isinstance(out, _Refusal):
            raise ServingError(out.status, out.message, headers=out.headers)
        return out


class ReplicaBackend:
    """The backend of an Ingress replica's app: its own :class:`~._backend.LocalBackend` for every route (the
    app runs the synchronous methods in its worker threads), and the ``Extractor`` deployment for uploaded
    images. ``subject``: the replica's multiplexed loader (awaited when the request's multiplexing header names
    the subject it asks for)."""

    def __init__(self, local: LocalBackend, extractor, subject):
        self.local, self.extractor, self._subject = local, extractor, subject
        self.catalog, self.decode, self.explain = local.catalog, local.decode, local.explain
        self.decode_now = local.decode_now
        self.registry_uri, self.store_uri, self.reg = local.registry_uri, local.store_uri, local.reg

    @property
    def model_loads(self) -> int:
        return self.local.model_loads

    def ready(self) -> dict:
        return {**self.local.ready(), "deployments": list(DEFAULT_OPTIONS)}

    def encode_now(self, subject: str, *, image: bytes | None = None, **kw) -> dict | None:
        """The local backend's answer made at once (``LocalBackend.encode_now``); None for an upload (it goes to the
        Extractor) and for a request routed by the multiplexing header (its subject is registered first)."""
        if image is not None or serve.get_multiplexed_model_id() == subject:
            return None
        return self.local.encode_now(subject, **kw)

    async def encode(self, subject: str, *, image: bytes | None = None, **kw) -> dict:
        from starlette.concurrency import run_in_threadpool

        if serve.get_multiplexed_model_id() == subject:  # routed here by the multiplexing header
            await self._subject(subject)
        if image is not None:
            if kw.get("stimulus_id") is not None or kw.get("embedding") is not None:
                raise ServingError(422, "give exactly one stimulus: stimulus_id (a store id), embedding, or an "
                                        "uploaded image (got 2)")
            plan = await run_in_threadpool(self.local.image_tables, subject, kw.get("model"))
            emb = await _remote(lambda: self.extractor.embed.remote(plan["store"], tuple(plan["tables"]), image))
            kw = {**kw, "model": plan["model"], "embedding": emb}
        return await run_in_threadpool(self.local.encode, subject, **kw)


class _Subject:
    """A subject's slot in an Ingress replica (Serve's multiplexing LRU): dropping it unloads its models."""

    def __init__(self, backend: LocalBackend, subject: str):
        self.backend, self.subject = backend, subject
        if subject in backend._snapshot()["encoders"]:
            backend._encoder(subject, None)  # its best model, loaded now (others on first use)

    def __del__(self):
        b = self.backend
        mine = f"/{self.subject}"
        with b._lock:  # keys ("encoder", "MODEL/SUBJECT@VERSION")
            for key in [k for k in b._models if k[0] == "encoder" and k[1].rpartition("@")[0].endswith(mine)]:
                b._models.pop(key, None)


@serve.deployment(name="Extractor")
class Extractor:
    def __init__(self, registry: str, store: str | None = None, clip_configs: dict | None = None):
        from ..features import register_clip_config

        for name, cfg in (clip_configs or {}).items():  # architectures registered where the app was built
            register_clip_config(name, cfg)
        self.backend = LocalBackend(registry, store)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, keys: list[tuple], images: list[bytes]) -> list:
        out: list = [None] * len(images)
        for key in dict.fromkeys(keys):  # one batched forward per (store, tables)
            idx = [i for i, k in enumerate(keys) if k == key]
            try:
                res = await asyncio.to_thread(self.backend.embed_images, key[0], list(key[1]), [images[i] for i in idx])
            except ServingError as e:
                res = [e] * len(idx)
            for i, r in zip(idx, res):
                out[i] = r
        return out

    @_answers
    async def embed(self, store: str, tables: tuple, image: bytes) -> dict:
        res = await self._embed((store, tuple(tables)), image)
        if isinstance(res, ServingError):
            raise res
        return res

    def check_health(self) -> None:
        self.backend.reg.list()


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, extractor, token: str | None = None, limits: dict | None = None, registry: str | None = None,
                 store: str | None = None, refresh_s: float = DEFAULT_REFRESH_S, max_models: int = 16,
                 max_memory_rows: int = 100_000):
        self.backend = LocalBackend(registry, store, max_models=max_models, max_memory_rows=max_memory_rows,
                                    refresh_s=refresh_s)
        self._app_backend = ReplicaBackend(self.backend, extractor, self.subject)
        self._token, self._limits = token, limits or {}
        self._heartbeat = ingress_heartbeat(registry)  # announces the versions served in the registry (lineage)

    def __del__(self):  # Serve's graceful shutdown: the announcement withdrawn
        if getattr(self, "_heartbeat", None) is not None:
            self._heartbeat.stop()

    @serve.multiplexed(max_num_models_per_replica=8)
    async def subject(self, subject: str) -> _Subject:
        return await asyncio.to_thread(_Subject, self.backend, subject)

    def __serve_build_asgi_app__(self):
        return make_app(self._app_backend, token=self._token, limits=Limits(**self._limits))

    def check_health(self) -> None:
        self.backend.reg.list()  # the registry is readable


def build_app(registry: str, store: str | None = None, *, token: str | None = None, limits: dict | None = None,
              options: dict | None = None, refresh_s: float = DEFAULT_REFRESH_S):
    """The bound Serve application (``serve.run(build_app(...), name=APP_NAME, route_prefix="/")``).

    ``options``: per deployment name, Serve deployment options (``num_replicas``, ``autoscaling_config``,
    ``ray_actor_options``, ``max_ongoing_requests``, ``max_queued_requests``...) over :data:`DEFAULT_OPTIONS`.
    ``refresh_s``: seconds between two resolutions of bare model names and aliases in each Ingress replica (moving ``champion`` switches the answers within about this time, with no restart).
    """
    refresh_s = check_refresh(refresh_s)
    opts = {}
    for k, v in DEFAULT_OPTIONS.items():  # ray_actor_options merged key by key (num_cpus alone keeps the env)
        mine = (options or {}).get(k, {})
        opts[k] = {**copy.deepcopy(v), **mine}
        if isinstance(mine.get("ray_actor_options"), dict):
            opts[k]["ray_actor_options"] = {**v["ray_actor_options"], **mine["ray_actor_options"]}
    gone = gone_deployments(options or {})
    if gone:
        raise ValueError(gone)
    unknown = sorted(set(options or {}) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown deployment(s) {', '.join(unknown)}; deployments: {', '.join(DEFAULT_OPTIONS)}")
    for o in opts.values():  # a fixed replica count replaces autoscaling, and the other way round
        if "num_replicas" in o and "autoscaling_config" in o:
            o.pop("autoscaling_config" if o["num_replicas"] != "auto" else "num_replicas")
    import json
    import os

    from .._storage import ENV, env_options

    if os.environ.get(ENV):  # replicas (on any node) open object stores with the driver's options
        snapshot = json.dumps(env_options()[0])
        for o in opts.values():
            rao = dict(o.get("ray_actor_options") or {})
            renv = dict(rao.get("runtime_env") or {})
            renv["env_vars"] = {**(renv.get("env_vars") or {}), ENV: snapshot}
            o["ray_actor_options"] = {**rao, "runtime_env": renv}
    from ..features import registered_clip_configs

    registry, store = str(registry), str(store) if store else None
    ext = Extractor.options(**opts["Extractor"]).bind(registry, store, registered_clip_configs())
    return Ingress.options(**opts["Ingress"]).bind(ext, token=token, limits=limits, registry=registry, store=store,
                                                   refresh_s=refresh_s)


def app_builder(args: dict):
    """The application builder of ``serve run`` / ``serve deploy`` config files: ``args: {registry, store?,
    token_env?, limits?, refresh_s?}`` (the token is read from the environment variable named).

    Configs name it by its public path ``brainstore.serving:app_builder``; this module's path
    (``brainstore.serving._deploy:app_builder``), which configs of earlier versions name, keeps working."""
    import os

    args = dict(args or {})
    unknown = sorted(set(args) - {"registry", "store", "token_env", "limits", "refresh_s"})
    if unknown:
        raise ValueError(f"unknown brainstore app arg(s) {', '.join(unknown)}; args: registry, store, token_env, "
                         "limits, refresh_s")
    if "registry" not in args:
        raise ValueError("brainstore app args need registry (the model registry folder or URI)")
    token = None
    if args.get("token_env"):
        token = os.environ.get(args["token_env"])
        if not token:  # a config that asks for a token never serves without one
            raise ValueError(f"the brainstore app's token_env names ${args['token_env']}, which is empty or unset where "
                             "the app is built; set it on every node (e.g. from a Kubernetes Secret) or drop token_env "
                             "and bind 127.0.0.1")
        check_token(token, f"${args['token_env']} (the brainstore app's token_env)")
    return build_app(args["registry"], args.get("store"), token=token, limits=args.get("limits"),
                     refresh_s=args.get("refresh_s", DEFAULT_REFRESH_S))

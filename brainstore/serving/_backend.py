"""In-process models behind the service: registered encoders and decoders loaded on demand (LRU), the
same library code as ``brainstore predict`` (so served answers equal offline ones), and every bad
input turned into a :class:`ServingError` (404 for unknown names, 422 for values, 413 for sizes).

The FastAPI app (``_app.py``) calls a backend through five methods (``catalog``, ``ready``,
``encode``, ``decode``, ``explain``); :class:`LocalBackend` runs them in the serving process (plain
uvicorn, and the baseline of ``benchmarks/serve_load.py``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..datasets import HEMISPHERES, AlgonautsDataset, DatasetError, open_dataset
from ..features import FeatureStore, MissingStimuliError
from ..fitting import (NON_ENCODER_KINDS, ModelRecord, ModelRegistry, NonFiniteOutputError, RegistryError,
                       check_finite_output, model_base, model_ref, parse_ref)
from ._catalog import catalog_of, servable, versions_of
from ._codec import ServingError
from ._images import ImageEmbedding
from ._inputs import check_id, check_voxels, response_rows, table_arrays
from ._outage import outage, served
from ._routing import DEFAULT_REFRESH_S, Routes

__all__ = ["LocalBackend", "INLINE_WORK"]

#: The most multiply-adds of an answer made on the caller's event loop (``encode_now``, ``decode_now``: about a
#: millisecond of one core); a larger one goes to a worker thread, so that the loop keeps taking requests.
INLINE_WORK = 8_000_000


def _overflow(e: NonFiniteOutputError, field: str, what: str, fix: str) -> ServingError:
    rows = ", ".join(map(str, e.rows[:10])) + (f" and {len(e.rows) - 10} more" if len(e.rows) > 10 else "")
    return ServingError(422, f"{field}: {what} gives non-finite values (overflow) for row(s) {rows or '?'}; {fix}")


def _targets(rec: ModelRecord) -> list[str]:
    """The tables a decoding model's version decodes into (the first is the default)."""
    return list(rec.meta.get("targets") or [rec.meta.get("target")])


def _listing(names, limit: int = 20) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


class LocalBackend(ImageEmbedding):
    """Registered models of one registry, served from this process.

    Parameters
    ----------
    registry : the model registry (folder).
    store : feature store to read embeddings from (default: each model's own).
    max_models : loaded models kept (least recently used dropped first), by name and version.
    max_memory_rows : decoding candidates searched in memory up to this many rows (else by LanceDB).
    refresh_s : seconds between two resolutions of bare model names and aliases (``_routing.Routes``): moving
        ``champion``, or saving a new version of a model served by its name, switches the answers within
        about this time, without a restart and without failing a request.
    """

    def __init__(self, registry: str | Path, store: str | None = None, *, max_models: int = 16,
                 max_memory_rows: int = 100_000, refresh_s: float = DEFAULT_REFRESH_S):
        self.registry_uri, self.store_uri = str(registry), store
        self.reg = ModelRegistry(registry, create=False)
        self.routes = Routes(self.reg, refresh_s, self._prepare)
        self.max_models, self.max_memory_rows = int(max_models), int(max_memory_rows)
        self._indexes: dict = {}
        self._caption_maps: dict[str, dict[str, str]] = {}
        self.model_loads = 0
        self._lock = threading.RLock()
        self._models: OrderedDict = OrderedDict()
        self._stores: dict[str, FeatureStore] = {}
        self._datasets: dict[str, AlgonautsDataset] = {}
        self._extractors: dict[str, object] = {}
        self._catalog: dict | None = None
        self._catalog_gen: int | None = None  # the routes' generation the catalog was made from
        self._versions: tuple | None = None  # (time, routes' generation, /v1/models' "models" section)
        self._verified: set = set()  # (model, file stats) whose weights and features were checked

    # ------------------------------------------------------------------------------------------ catalog
    @served
    def catalog(self, refresh: bool = False) -> dict:
        """``{"encoders": {subject: {model: meta}}, "decoders": {model: {...}}, "models": {name: ...}}``: what the
        bare names serve now (``_catalog.catalog_of``) and every served name's versions and aliases
        (``_catalog.versions_of``); resolved again first when older than ``refresh_s`` (or ``refresh``)."""
        self.routes.refresh(force=refresh)
        out = self._snapshot()
        now, gen = time.monotonic(), self.routes.generation
        with self._lock:
            cached = self._versions
        if refresh or cached is None or cached[1] != gen or now - cached[0] >= self.routes.refresh_s:
            serving = {r.name: r for r in self.routes.listing() if servable(r)}
            cached = (now, gen, versions_of(self.reg.all_versions(), serving, self.routes.held_back()))
            with self._lock:
                self._versions = cached
        return {**out, "models": cached[2]}

    def _snapshot(self) -> dict:
        """The encoders and decoders the bare names serve now (resolved again, in the background, when older
        than ``refresh_s``): cheap enough for every request."""
        self.routes.maybe_refresh()
        gen = self.routes.generation
        with self._lock:
            if self._catalog is not None and self._catalog_gen == gen:
                return self._catalog
        cat = catalog_of(self.routes.listing())
        with self._lock:
            self._catalog, self._catalog_gen = cat, gen
        return cat

    @served
    def ready(self) -> dict:
        """Registry readable, every store the models name reachable, and every servable model loadable: its
        weights match the sha256 its model.json records and its feature tables are still the ones it was fit
        on (checked once per version of the files, so polling stays cheap). Raises ServingError(503) naming
        the first model or store that is not, and the fix. A new version that cannot be served is held back
        (its name keeps serving the version before): ``held`` lists them with why."""
        self.routes.refresh(verify=True)
        cat = self._snapshot()
        if not cat["encoders"] and not cat["decoders"]:
            raise ServingError(503, f"no servable model in the registry {self.registry_uri} (run `brainstore fit`)")
        records = [r for r in self.routes.listing() if servable(r)]
        stores = {self.store_uri} if self.store_uri else {r.meta.get("store") for r in records if r.meta.get("store")}
        for s in stores:
            try:
                self._store(s).names()
            except Exception as e:
                err = outage(e, store=s)
                raise err or ServingError(503, f"the feature store {s} cannot be opened ({type(e).__name__}); "
                                               "check that it exists and the storage options") from None
        for r in records:
            self._check_loadable(r)
        out = {"encoders": sum(len(v) for v in cat["encoders"].values()), "decoders": len(cat["decoders"]),
               "models_checked": len(records), "stores": sorted(stores)}
        held = self.routes.held_back()
        return {**out, "held": held} if held else out

    def _check_loadable(self, rec) -> None:
        try:
            key = self.reg.stamp(rec)
        except FileNotFoundError as e:
            raise ServingError(503, f"model {rec.name} is incomplete ({e.filename} is missing): re-save or refit it, "
                                    "or delete it from the registry") from None
        if key in self._verified:
            return
        try:
            self.reg.load(rec.ref)  # the weights' sha256 against model.json, and a readable safetensors file
            uri = self.store_uri or rec.meta.get("store")
            if isinstance(rec.meta.get("feature_versions"), dict) and rec.meta["feature_versions"] and uri:
                self.reg.check_features(rec, self._store(uri))
        except RegistryError as e:
            raise self._unservable(e, str(e)) from None
        with self._lock:
            self._verified.add(key)

    def _unservable(self, e: Exception, message: str) -> ServingError:
        """503 for a model that cannot be served: an outage's message of ours, else ``message``."""
        return outage(e, registry=self.registry_uri, store=self.store_uri) or ServingError(503, message)

    # ------------------------------------------------------------------------------------------ loading
    def _store(self, uri: str | None) -> FeatureStore:
        uri = self.store_uri or uri
        if not uri:
            raise ServingError(503, "the model records no feature store; start the service with --store")
        with self._lock:
            if uri not in self._stores:
                self._stores[uri] = FeatureStore(uri, create=False)
            return self._stores[uri]

    def _dataset(self, root: str | None) -> AlgonautsDataset:
        if not root:
            raise ServingError(422, "the model records no dataset, so ROIs and captions are unknown; ask without roi")
        with self._lock:
            if root not in self._datasets:
                try:
                    self._datasets[root] = open_dataset(root)
                except DatasetError as e:
                    raise ServingError(503, f"the model's dataset {root} cannot be read: {e}") from None
            return self._datasets[root]

    def _cached(self, key: tuple, load):
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        value = load()  # outside the lock: loading one model must not stall requests for the others
        with self._lock:
            self._models[key] = value
            self._models.move_to_end(key)
            self.model_loads += 1
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        return value

    def _loader(self, rec: ModelRecord):
        """(cache key, load) of the version ``rec``: an EncodingModel, a Decoder, or (AdaptorModel, its store);
        cached by name and version, so versions of one name are told apart."""
        from ..fitting import AdaptorModel, Decoder

        kind = rec.meta.get("kind")
        if kind == "decoder":
            return ("decoder", rec.ref), lambda: Decoder.load(self.reg, rec.ref, self.store_uri)
        if kind == "adaptor":
            return ("adaptor", rec.ref), lambda: (AdaptorModel.load(self.reg, rec.ref, self.store_uri),
                                                  self._store(rec.meta.get("store")))
        return ("encoder", rec.ref), lambda: self.reg.load(rec.ref, store=self.store_uri)

    def _held(self, rec: ModelRecord):
        """The loaded model of the version ``rec``; None when it is not in memory (nothing is loaded)."""
        key, _ = self._loader(rec)
        with self._lock:
            return self._models.get(key)

    def _model(self, rec: ModelRecord):
        """The loaded (and verified) model of the version ``rec``; 503 when it cannot be served."""
        key, load = self._loader(rec)

        def checked():
            try:
                return load()
            except RegistryError as e:
                raise self._unservable(e, f"model {rec.ref} cannot be served: {e}") from None

        return self._cached(key, checked)

    def _prepare(self, old: ModelRecord, new: ModelRecord, verify: bool) -> None:
        """Make version ``new`` ready to replace ``old`` (``Routes``): loaded and verified when ``old`` is in use
        (so no request waits for it), else checked when ``verify``; raises when it cannot be served."""
        with self._lock:
            hot = any(k[1] == old.ref for k in self._models)
        if hot:
            key, load = self._loader(new)
            self._cached(key, load)
        elif verify:
            self._check_loadable(new)

    def _resolve(self, ref: str, what: str, *, now: bool = False) -> ModelRecord | None:
        """The version the reference ``ref`` serves now (:class:`Routes`): 422 for a malformed version or alias,
        404 naming the versions and aliases for one the registry does not hold; ``now``: None when the routes
        do not hold it yet (no registry read)."""
        try:
            name, sel = parse_ref(ref)
        except RegistryError as e:
            raise ServingError(422, f"model: {e}") from None
        if now:
            return self.routes.get(ref, cached=True)
        try:
            rec = self.routes.get(ref)
        except RegistryError as e:
            err = outage(e, registry=self.registry_uri, store=self.store_uri)
            if err is not None:
                raise err from None
            rec = None
        if rec is None:
            raise self._unknown(name, sel, what)
        return rec

    def _unknown(self, name: str, sel, what: str) -> ServingError:
        try:
            versions, aliases = [r.version for r in self.reg.versions(name)], self.reg.aliases(name)
        except RegistryError:
            versions, aliases = [], {}
        said = f"version {sel}" if isinstance(sel, int) else f"alias {sel!r}" if sel else "served version"
        shown = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        listed = ", ".join(map(str, versions)) or "none"
        return ServingError(404, f"{what} has no {said} ({name}); its versions: {listed}; aliases: {shown} (ask "
                                 "MODEL@VERSION or MODEL@ALIAS)")

    def _encoder(self, subject: str, model: str | None, *, now: bool = False):
        """``(model name, the version's meta, EncodingModel)`` of ``model`` for ``subject``: ``None`` the subject's
        best by validation score, ``NAME`` what its bare name serves now, ``NAME@3`` / ``NAME@alias`` that;
        ``now``: None when that needs the registry or a load (it is not in memory)."""
        enc = self._snapshot()["encoders"]
        if subject not in enc:
            raise ServingError(404, f"unknown subject {subject!r}; subjects with encoding models: {_listing(enc)}")
        if model is None:  # the best validation score, as best_model says, from the catalog (no registry read)
            score = {m: e["val_score"] for m, e in enc[subject].items()}
            model = max(sorted(score), key=lambda m: -math.inf if score[m] is None else score[m])
        base = model_base(model)
        if base not in enc[subject]:
            raise ServingError(404, f"no encoding model {base!r} for {subject}; its models: {_listing(enc[subject])}")
        rec = self._resolve(model_ref(model, subject), f"encoding model {base} of {subject}", now=now)
        if rec is None:
            return None
        if rec.meta.get("kind") in NON_ENCODER_KINDS:
            raise ServingError(404, f"{rec.ref} is a {rec.meta.get('kind')}, not an encoding model")
        em = self._held(rec) if now else self._model(rec)
        return None if em is None else (base, rec.meta, em)

    # ------------------------------------------------------------------------------------------ encode
    def _designs(self, em, tables: list[str], *, stimulus_id=None, embedding=None,
                 image: bytes | None = None) -> dict[tuple, np.ndarray]:
        """The request's design matrices, keyed as the model's predict cache (``em.designs``): a store id's rows
        at the model's pinned table versions, given embeddings, or an uploaded image's."""
        fs = em.store
        given = [x is not None for x in (stimulus_id, embedding, image)]
        if sum(given) != 1:
            raise ServingError(422, "give exactly one stimulus: stimulus_id (a store id), embedding, or an "
                                    f"uploaded image (got {sum(given)})")
        if stimulus_id is not None:
            ids = [stimulus_id] if isinstance(stimulus_id, str) else stimulus_id
            if not isinstance(ids, list) or not ids or len(ids) > 1024:
                raise ServingError(422, "stimulus_id must be an id or a list of 1 to 1024 ids")
            ids = [check_id(i, "stimulus_id") for i in ids]
            try:
                return em.designs(ids)  # the rows the model was fitted with, held in memory (its pinned versions)
            except MissingStimuliError as e:
                raise ServingError(404, f"stimulus id(s) {_listing(e.missing, 5)} not in the feature table "
                                        f"{e.feature} of {fs.uri}") from None
            except RegistryError as e:  # a stimulus added after the fit while the fitted rows changed
                raise ServingError(422, f"stimulus_id: {e}") from None
        if embedding is not None:  # (the dimensions the model was fitted with, from memory: no store read)
            dims = em.table_dims()
            return em.designs(rows=table_arrays(embedding, {t: dims[t] for t in tables}))
        return em.designs(rows=self._embed_image(fs, tables, image))

    def encode_now(self, subject: str, *, model: str | None = None, hemisphere: str | None = None,
                   roi: str | None = None, stimulus_id=None, embedding=None, image: bytes | None = None) -> dict | None:
        """:meth:`encode`'s answer, made at once when it needs only memory and little work: the model loaded, the
        stimulus ids held in memory by its tables (or embeddings sent), no image, no ROI, at most
        :data:`INLINE_WORK` multiply-adds, and no other thread holding the backend's lock (it may be loading). None
        otherwise: the caller runs :meth:`encode` in a worker thread.

        An app calls it on its event loop: handing a small answer to a thread and back costs several times the
        answer itself when the two threads take turns with the GIL (benchmarks/RESULTS.md, serve_load)."""
        if image is not None or roi is not None or not self.routes.resolved:
            return None
        return self._inline(self._encode_now, subject, model, hemisphere, stimulus_id, embedding)

    def _inline(self, fn, *args, **kwargs):
        """``fn(...)`` under the backend's lock, when no other thread holds it (None when one does: it may be
        loading a model, an extractor or a dataset, which a request on an event loop must not wait for)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return fn(*args, **kwargs)
        finally:
            self._lock.release()

    def _encode_now(self, subject: str, model, hemisphere, stimulus_id, embedding) -> dict | None:
        ids = [stimulus_id] if isinstance(stimulus_id, str) else stimulus_id
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            return None
        found = self._encoder(subject, model, now=True)
        if found is None:
            return None
        em = found[2]
        if ids is not None:
            n = len(ids)
        elif isinstance(embedding, dict):
            n = max((len(np.atleast_2d(v)) for v in embedding.values()), default=0)
        else:
            n = len(np.atleast_2d(embedding)) if embedding is not None else 0
        if not n or n * em.weight_count > INLINE_WORK or (ids is not None and not em.holds(ids)):
            return None
        return self._encode(subject, found, hemisphere=hemisphere, stimulus_id=stimulus_id, embedding=embedding)

    @served
    def encode(self, subject: str, *, model: str | None = None, hemisphere: str | None = None,
               roi: str | None = None, stimulus_id=None, embedding=None, image: bytes | None = None) -> dict:
        """Predicted responses: ``{"model", "subject", "responses": {hemi: (n, n_vertices)}, "vertices"}``."""
        return self._encode(subject, self._encoder(subject, model), hemisphere=hemisphere, roi=roi,
                            stimulus_id=stimulus_id, embedding=embedding, image=image)

    @served
    def _encode(self, subject: str, found: tuple, *, hemisphere: str | None = None, roi: str | None = None,
                stimulus_id=None, embedding=None, image: bytes | None = None) -> dict:
        """:meth:`encode` by the model ``found`` (``_encoder``'s)."""
        model, meta, em = found
        hemis = em.hemispheres
        if hemisphere is not None:
            if hemisphere not in hemis:
                raise ServingError(422, f"hemisphere must be one of {', '.join(hemis)}; got {hemisphere!r}")
            hemis = [hemisphere]
        tables = sorted(em.table_names())
        cache = self._designs(em, tables, stimulus_id=stimulus_id, embedding=embedding, image=image)
        n = len(next(iter(cache.values())))
        field = "stimulus_id" if stimulus_id is not None else "embedding" if embedding is not None else "image"
        fix = {"embedding": "send embeddings on the scale of the model's feature tables (their stored values)",
               "stimulus_id": "the stored embeddings of these stimuli overflow this model: serve another model",
               "image": "this image's embedding overflows the model: serve another model"}[field]
        try:
            pred = em.predict(["<request>"] * n, cache)
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is the error below, not a warning
                pred = {h: check_finite_output(np.asarray(pred[h], dtype=np.float32), model=model, field=field)
                        for h in hemis}
        except NonFiniteOutputError as e:
            raise _overflow(e, field, f"{model} for {subject}", fix) from None
        out, vertices = {}, {}
        for h in hemis:
            P = pred[h]
            if roi is not None:
                regions = self._dataset(meta.get("dataset")).regions(subject, h)
                if roi not in regions:
                    raise ServingError(404, f"unknown ROI {roi!r} for {subject} {h}; ROIs: {_listing(regions, 60)}")
                idx = np.flatnonzero(regions[roi])
                P, vertices[h] = P[:, idx], idx.tolist()
            out[h] = P
        return {"model": model, "model_version": em.record.ref, "subject": subject, "responses": out,
                "vertices": vertices or None}

    # ------------------------------------------------------------------------------------------ decode
    def _decoder(self, subject: str, model: str | None, *, now: bool = False):
        """``(model name, its catalog entry, the version)`` of the decoding ``model`` of ``subject`` (None: the
        subject's only one); ``now``: None when the routes do not hold the version yet (no registry read)."""
        dec = self._snapshot()["decoders"]
        mine = {m: d for m, d in dec.items() if subject in d["subjects"]}
        if not mine:
            subjects = sorted({s for d in dec.values() for s in d["subjects"]})
            raise ServingError(404, f"unknown subject {subject!r} for decoding; subjects with decoders: "
                                    f"{_listing(subjects)}")
        if model is None:
            if len(mine) > 1:
                raise ServingError(422, f"{subject} has several decoding models ({_listing(mine)}); name one in model")
            model = next(iter(mine))
        if model_base(model) not in mine:
            raise ServingError(404, f"no decoding model {model_base(model)!r} for {subject}; its decoding models: "
                                    f"{_listing(mine)}")
        info = mine[model_base(model)]
        rec = self._resolve(model_ref(model, "shared" if info["kind"] == "adaptor" else subject),
                            f"decoding model {model_base(model)}"
                            + ("" if info["kind"] == "adaptor" else f" of {subject}"), now=now)
        if rec is None:
            return None
        if rec.meta.get("kind") not in ("decoder", "adaptor") or subject not in rec.meta.get("subjects", [subject]):
            raise ServingError(404, f"{rec.ref} is not a decoding model of {subject}")
        return model_base(model), info, rec

    def decode_now(self, subject: str, responses, *, model: str | None = None, target: str | None = None,
                   top_k: int = 5, return_embedding: bool = False) -> dict | None:
        """:meth:`decode`'s answer, made at once when it needs only memory and little work (as :meth:`encode_now`):
        a ridge decoder loaded, its target table's candidates in memory and checked within their refresh time,
        the captions read, the responses one array, at most :data:`INLINE_WORK` multiply-adds. None otherwise."""
        if isinstance(responses, dict) or not self.routes.resolved:
            return None
        return self._inline(self._decode_now, subject, responses, model, target, top_k, return_embedding)

    def _decode_now(self, subject: str, responses, model, target, top_k, return_embedding) -> dict | None:
        found = self._decoder(subject, model, now=True)
        d = self._held(found[2]) if found is not None and found[2].meta.get("kind") == "decoder" else None
        if d is None:
            return None
        index = self._indexes.get((d.store.uri, target or _targets(found[2])[0]))  # (the lock is held: _inline)
        captions = not found[1].get("dataset") or found[1]["dataset"] in self._caption_maps
        if index is None or not index.ready_now() or not captions:
            return None
        n_voxels = sum(len(v) for v in d.voxels.values())
        if len(np.atleast_2d(responses)) * index.E.shape[1] * (n_voxels + len(index.E)) > INLINE_WORK:
            return None
        return self._decode(subject, found, responses, target=target, top_k=top_k, return_embedding=return_embedding)

    @served
    def decode(self, subject: str, responses, *, model: str | None = None, target: str | None = None,
               top_k: int = 5, return_embedding: bool = False) -> dict:
        """Top-k stimuli of the whole target table for each response vector (and the decoded embeddings).

        ``responses``: (n, n_voxels) of the decoder's voxel selection, lh then rh; or ``{"lh": (n, a), "rh":
        (n, b)}``, each part the hemisphere's selected voxels or all its vertices (the selection is taken)."""
        return self._decode(subject, self._decoder(subject, model), responses, target=target, top_k=top_k,
                            return_embedding=return_embedding)

    @served
    def _decode(self, subject: str, found: tuple, responses, *, target: str | None = None, top_k: int = 5,
                return_embedding: bool = False) -> dict:
        """:meth:`decode` by the decoding model ``found`` (``_decoder``'s)."""
        model, info, rec = found
        targets = _targets(rec)
        target = target or targets[0]
        if target not in targets:
            raise ServingError(404, f"{rec.ref!r} decodes into {', '.join(targets)}, not {target!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 100:
            raise ServingError(422, f"top_k must be an integer from 1 to 100; got {top_k!r}")
        try:
            if rec.meta["kind"] == "decoder":
                d = self._model(rec)
                voxels, fs = d.voxels, d.store
            else:
                am, fs = self._model(rec)
                voxels = am.voxels[subject]
            R = self._response_rows(responses, voxels, model, subject, info.get("dataset"))
            check_voxels(R, sum(len(v) for v in voxels.values()), voxels, model, subject)
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is the error below, not a warning
                E = d.decode(R) if rec.meta["kind"] == "decoder" else am.decode(subject, R)[target]
                E = check_finite_output(np.asarray(E, dtype=np.float32), model=model, field="responses")
        except RegistryError as e:
            raise self._unservable(e, f"decoding model {model} cannot be served: {e}") from None
        except NonFiniteOutputError as e:
            raise _overflow(e, "responses", f"{model} for {subject}",
                            "send responses on the scale the decoder was fitted on (z-scored or raw, as in its "
                            "dataset)") from None
        index = self.index(fs, target)
        ids, sims = index.search(E, top_k)
        captions = self._captions(info.get("dataset"), {i for row in ids for i in row})
        out = {"model": model, "model_version": rec.ref, "subject": subject, "target": target,
               "table_rows": index.rows,  # as of the version searched (the store is not asked again per request)
               "results": [[{"stimulus_id": i, "score": float(s), "caption": captions.get(i)}
                            for i, s in zip(row, srow)] for row, srow in zip(ids, sims)]}
        if return_embedding:
            out["embedding"] = E
        return out

    def _response_rows(self, responses, voxels: dict, model: str, subject: str, dataset: str | None) -> np.ndarray:
        """(n, n_voxels) float32 rows from one array or from ``{hemisphere: array}`` (see :meth:`decode`)."""
        return response_rows(responses, voxels, model, subject, lambda h: self._hemisphere_size(dataset, subject, h))

    def _hemisphere_size(self, dataset: str | None, subject: str, hemi: str) -> int | None:
        """Vertices of ``subject``'s ``hemi`` in the model's dataset; None when the dataset cannot be read."""
        try:
            return int(self._dataset(dataset).n_vertices(subject, hemi))
        except Exception:  # no dataset recorded, or unreadable here: only the selection's size is accepted
            return None

    def index(self, fs: FeatureStore, table: str):
        """The candidate index of a store table (in memory up to ``max_memory_rows``; refreshed on new versions)."""
        from ._index import CandidateIndex

        with self._lock:
            key = (fs.uri, table)
            if key not in self._indexes:
                self._indexes[key] = CandidateIndex(fs, table, max_memory_rows=self.max_memory_rows)
            return self._indexes[key]

    def _captions(self, dataset: str | None, ids: set[str]) -> dict[str, str]:
        """Captions of ``ids`` from the dataset's stimulus table (read once per dataset)."""
        if not dataset:
            return {}
        with self._lock:
            if dataset not in self._caption_maps:
                try:
                    t = self._dataset(dataset).stimuli()
                except ServingError:
                    return {}
                caps: dict[str, str] = {}
                for sid, cap in zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()):
                    if cap and sid not in caps:
                        caps[sid] = cap
                self._caption_maps[dataset] = caps
            caps = self._caption_maps[dataset]
        return {i: caps[i] for i in ids if i in caps}

    # ------------------------------------------------------------------------------------------ explain
    @served
    def explain(self, model: str, roi: str, *, subject: str | None = None, top: int = 20,
                hemisphere: str | None = None) -> dict:
        """The stored stimuli whose predicted mean response in ``roi`` is highest (selectivity)."""
        from ..fitting import explain_roi

        enc = self._snapshot()["encoders"]
        base = model_base(model)  # clip@2: a version of clip
        subjects = sorted(s for s, ms in enc.items() if base in ms)
        if not subjects:
            names = {m for ms in enc.values() for m in ms}
            raise ServingError(404, f"unknown encoding model {model!r}; models: {_listing(names)}")
        if subject is not None and subject not in subjects:
            raise ServingError(404, f"{model!r} has no fit for {subject!r}; its subjects: {_listing(subjects)}")
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 200:
            raise ServingError(422, f"top must be an integer from 1 to 200; got {top!r}")
        if hemisphere not in (None, *HEMISPHERES):
            raise ServingError(422, f"hemisphere must be lh or rh; got {hemisphere!r}")
        try:
            ex = explain_roi(self.reg, model, subject or subjects[0], store=self.store_uri, roi=roi, top=top,
                             hemisphere=hemisphere)
        except DatasetError as e:
            raise ServingError(404, str(e)) from None
        except NonFiniteOutputError as e:
            raise ServingError(422, f"model: {model} predicts non-finite values (overflow) for stored stimuli of its "
                                    "feature tables; refit it, or ask another model") from None
        except RegistryError as e:
            raise self._unservable(e, str(e)) from None
        return {"model": model, "subject": ex.subject, "roi": roi, "n_vertices": ex.n_vertices,
                "n_scored": ex.n_stimuli,
                "top": [{"stimulus_id": s.stimulus_id, "score": float(s.score), "z": float(s.z), "caption": s.caption}
                        for s in ex.top]}


"""Registered encoding models at load time: drift checks, prediction, the best model of a subject.

:meth:`EncodingModel.load` refuses a model whose inputs drifted since it was fitted, with an error
naming what changed and the fix:

* a base model's feature tables must be made the same way (store metadata) and hold the same
  embeddings for the stimuli it was fitted on at the version it pinned (or, that version gone, at the
  latest); the model then reads its embeddings at that version (``registry.PinnedTable``), so it keeps
  giving its fit-time predictions after the table changes, and reads stimuli added later from the
  latest version only while the rows it was fitted on are unchanged there;
* a per-ROI model or ensemble records the sha256 of every member's weights; a member refitted
  since then is refused (the composition would mix models that were never chosen together).

Prediction composes derived models through :func:`~._compose.compose`, the code path of fit time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ...datasets import HEMISPHERES
from ...features import FeatureStore
from .._errors import NonFiniteOutputError
from ..registry import (NON_ENCODER_KINDS, ModelRecord, ModelRegistry, RegistryError, check_fingerprint, decode_ids,
                        model_ref, register_loader)
from ._compose import compose

__all__ = ["EncodingModel", "predict_model", "best_model"]

#: Key of the load memo (``_loaded``) holding the tables already verified in this session, {(store, table,
#: recorded version, rows sha256, fitted ids): PinnedTable}, shared by the models that read them. Model
#: entries are keyed by (model, subject) tuples.
_VERIFIED = "verified fingerprints"

BASE_KINDS = ("ridge", "mlp", "banded")


@dataclass
class EncodingModel:
    """A registered encoding model of one subject, verified and ready to predict.

    Attributes
    ----------
    record : the registry record (``model.json``).
    tensors : the saved arrays.
    store : the feature store it reads embeddings from.
    members : for per-ROI models and ensembles, the loaded members in order.
    tables : for base models, {table: PinnedTable}: where the embeddings are read (at the pinned version).
    """

    record: ModelRecord
    tensors: dict[str, np.ndarray]
    store: FeatureStore
    members: list["EncodingModel"] = field(default_factory=list)
    tables: dict = field(default_factory=dict)
    _estimators: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.record.meta["kind"]

    @property
    def hemispheres(self) -> list[str]:
        return list(self.record.meta.get("hemispheres", HEMISPHERES))

    @classmethod
    def load(cls, reg: ModelRegistry, model: str, subject: str, store: str | FeatureStore | None = None,
             _loaded: dict | None = None) -> "EncodingModel":
        """Load ``model`` of ``subject`` and verify it (see the module docstring).

        Parameters
        ----------
        store : the feature store to read embeddings from (default: the store it was fitted with).
        """
        loaded = {} if _loaded is None else _loaded
        if (model, subject) in loaded:
            return loaded[(model, subject)]
        tensors, rec = reg.load_arrays(model_ref(model, subject))
        meta = rec.meta
        if meta.get("kind") in BASE_KINDS and "fingerprints" not in meta:
            raise RegistryError(f"model {rec.name!r} was registered by an older brainstore without feature "
                                "fingerprints, so its inputs cannot be verified; refit it with `brainstore fit`")
        if store is None:
            store = meta.get("store")
            if not store:
                raise RegistryError(f"model {rec.name!r} does not record its feature store; pass --store")
        fs = store if isinstance(store, FeatureStore) else FeatureStore(store, create=False)
        self = cls(rec, tensors, fs)
        if self.kind in BASE_KINDS:
            reg.check_features(rec, fs)
            ids = decode_ids(tensors["fit_ids"])
            # Models of one subject share their fitted rows: verify (and read) each table once per load session.
            verified = loaded.setdefault(_VERIFIED, {})
            for f in meta["features"]:
                fp = meta["fingerprints"][f]
                key = (fs.uri, fp["table"], fp.get("table_version"), fp["rows_sha256"], tensors["fit_ids"].tobytes())
                if key not in verified:
                    verified[key] = check_fingerprint(rec.name, fp, fs, ids)
                self.tables[f] = verified[key]
        else:
            members = [f"{x}@{_member_version(reg, rec, x, subject)}" for x in meta["members"]]  # model.json only
            self.members = [cls.load(reg, x, subject, fs, loaded) for x in members]
        loaded[(model, subject)] = self
        return self

    def _estimator(self, hemi: str):
        if hemi not in self._estimators:
            from ._encoding import load_estimator

            state = {k.split(".", 1)[1]: v for k, v in self.tensors.items() if k.startswith(hemi + ".")}
            self._estimators[hemi] = load_estimator(self.kind, state, self.record.meta["spec"].get("mlp"))
        return self._estimators[hemi]

    def predict(self, stimulus_ids: list[str], _features: dict | None = None) -> dict[str, np.ndarray]:
        """Predicted responses of ``stimulus_ids``: {hemi: array of shape (n_stimuli, n_vertices)}.

        Raises :class:`~._errors.NonFiniteOutputError` (field ``embedding``) when a prediction would hold
        NaN or inf values (features far outside the fitted range): no non-finite number leaves a model."""
        try:
            out = self._predict(stimulus_ids, {} if _features is None else _features)
        except NonFiniteOutputError as e:
            rows = e.rows
        else:
            bad = [np.flatnonzero(~np.isfinite(v).all(1)) for v in out.values()]
            rows = sorted(set().union(*map(set, bad))) if bad else []
            if not rows:
                return out
        raise _non_finite(self.record.name, stimulus_ids, rows)

    def _predict(self, stimulus_ids: list[str], cache: dict) -> dict[str, np.ndarray]:
        if self.kind in BASE_KINDS:
            key = self.design_key()
            if key not in cache:
                cache[key] = self._design(stimulus_ids)
            return {h: np.asarray(self._estimator(h).predict(cache[key]), dtype=np.float32) for h in self.hemispheres}
        preds = [m._predict(stimulus_ids, cache) for m in self.members]
        if self.kind == "per-roi":
            return {h: compose("per-roi", [p[h] for p in preds], choice=self.tensors[f"{h}.choice"])
                    for h in self.hemispheres}
        return {h: compose("ensemble", [p[h] for p in preds], weights=self.tensors["weights"])
                for h in self.hemispheres}

    # ------------------------------------------------------------------------------- the features it reads
    def bases(self) -> list["EncodingModel"]:
        """The base models whose predictions this model composes (itself for a base model), each once."""
        if not self.members:
            return [self]
        return list({id(b): b for m in self.members for b in m.bases()}.values())

    def design_key(self) -> tuple:
        """A base model's key of its design matrix in :meth:`predict`'s cache: ((table, PinnedTable serial), ...),
        so models reading a table at different versions never share a matrix."""
        return tuple((f, self.tables[f].serial) for f in self.record.meta["features"])

    def _design(self, stimulus_ids: list[str]) -> np.ndarray:
        return np.hstack([self.tables[f].load(stimulus_ids) for f in self.record.meta["features"]]).astype(
            np.float32, copy=False)

    def designs(self, stimulus_ids: list[str] | None = None, *, rows: dict[str, np.ndarray] | None = None) -> dict:
        """The design matrix of every base model, keyed as :meth:`predict`'s ``_features`` cache: the stored
        embeddings of ``stimulus_ids`` (read at each table's pinned version), or ``rows`` given per table
        ({table: (n, dim)}: embeddings sent to a server)."""
        out = {}
        for b in self.bases():
            k = b.design_key()
            if k not in out:
                out[k] = b._design(stimulus_ids) if rows is None else np.hstack(
                    [rows[t] for t, _ in k]).astype(np.float32, copy=False)
        return out

    def holds(self, stimulus_ids: list[str]) -> bool:
        """Whether every table it reads holds ``stimulus_ids`` in memory (:meth:`designs` reads no store)."""
        return all(b.tables[f].holds(stimulus_ids) for b in self.bases() for f in b.record.meta["features"])

    def table_dims(self) -> dict[str, int]:
        """``{table: embedding dimension}`` of every table it reads, in first-use order (from memory)."""
        return {f: b.tables[f].dim for b in self.bases() for f in b.record.meta["features"]}

    @functools.cached_property
    def weight_count(self) -> int:
        """Floating-point weights of its base models: about the multiply-adds of one predicted row."""
        return sum(int(v.size) for b in self.bases() for v in b.tensors.values() if v.dtype.kind == "f")

    def table_names(self) -> list[str]:
        """Every feature table the model reads, in first-use order."""
        return list(dict.fromkeys(f for b in self.bases() for f in b.record.meta["features"]))

    def predict_split(self, stimulus_ids: list[str]) -> dict[str, np.ndarray]:
        """Banded ridge: per-feature-space contributions, {hemi: (n_spaces, n_stimuli, n_vertices)}."""
        if self.kind != "banded":
            raise ValueError(f"model {self.record.name!r} is {self.kind}; only banded models split by feature space")
        X = self._design(stimulus_ids)
        return {h: np.asarray(self._estimator(h).predict_split(X)) for h in self.hemispheres}


@register_loader(*BASE_KINDS, "per-roi", "ensemble")
def _load_encoding_model(reg: ModelRegistry, name: str, store) -> EncodingModel:
    rec = reg.record(name)  # name@version: the model "MODEL@version" of its subject
    model, _, subject = rec.name.rpartition("/")
    model = f"{model}@{rec.version}" if model else model
    if not model:
        raise RegistryError(f"an encoding model is registered per subject: load {name!r} as 'MODEL/SUBJECT'")
    return EncodingModel.load(reg, model, subject, store)


def _member_version(reg: ModelRegistry, rec: ModelRecord, member: str, subject: str) -> int:
    """The version of ``member`` (of ``subject``) that the composite ``rec`` was made from: the one it records
    (models saved before versions: the one whose weights sha256 it records), its weights unchanged."""
    want = rec.meta["member_sha256"][member]
    pinned = (rec.meta.get("member_versions") or {}).get(member)
    found = [r for r in reg.versions(f"{member}/{subject}") if r.meta.get("safetensors_sha256") == want
             and (pinned is None or r.version == pinned)]
    if found:
        return found[-1].version
    what = f"version {pinned}" if pinned is not None else f"the version with weights sha256 {want[:12]}..."
    raise RegistryError(
        f"model {rec.ref!r} cannot be used: {what} of its member '{member}/{subject}', which its "
        f"{'choice per ROI' if rec.meta.get('kind') == 'per-roi' else 'weights'} were fitted with, is no longer in the "
        f"registry (removed, or its weights changed). Refit {rec.meta.get('model', rec.name)!r} together with its "
        "members (`brainstore fit`)")


def _non_finite(model: str, stimulus_ids: list[str], rows: list[int]) -> NonFiniteOutputError:
    rows = [int(i) for i in rows]
    ids = [stimulus_ids[i] for i in rows[:5] if i < len(stimulus_ids)]
    named = f" (stimuli {', '.join(map(repr, ids))}{' ...' if len(rows) > 5 else ''})" if ids and ids[0] != "<request>" else ""
    return NonFiniteOutputError(
        f"embedding: model {model} gives non-finite values for {len(rows)} input row(s) {rows[:5]}{named}: the "
        "features are far outside the range the model was fitted on (or overflow float32); send embeddings on the "
        "scale of the model's feature table", field="embedding", rows=rows)


def predict_model(reg: ModelRegistry, model: str, subject: str, fs: FeatureStore | str | None,
                  stimulus_ids: list[str]) -> dict[str, np.ndarray]:
    """Predict ``stimulus_ids`` with a registered model (verified first): {hemi: (n, n_vertices)}.

    ``fs`` None reads features from the store the model was fitted with.
    """
    return EncodingModel.load(reg, model, subject, fs).predict(stimulus_ids)


def best_model(reg: ModelRegistry, subject: str, dataset: str | None = None) -> str:
    """The registered model of ``subject`` with the best validation score (held-out fold, see ``_choice``)."""
    recs = [r for r in reg.list() if r.meta.get("subject") == subject and r.meta.get("kind") not in NON_ENCODER_KINDS
            and (dataset is None or r.meta.get("dataset") == dataset)]
    if not recs:
        where = f" fitted on {dataset}" if dataset else ""
        raise RegistryError(f"no registered model for {subject}{where} in {reg.root}; run `brainstore fit` first")
    return max(recs, key=lambda r: r.meta.get("val_score", -np.inf)).meta["model"]

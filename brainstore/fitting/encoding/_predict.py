"""Registered encoding models at load time: drift checks, prediction, the best model of a subject.

:meth:`EncodingModel.load` refuses a model whose inputs drifted since it was fitted, with an error
naming what changed and the fix:

* a base model's feature tables must be made the same way (store metadata) and hold the same
  embeddings for the stimuli it was fitted on (:mod:`._fingerprint`);
* a per-ROI model or ensemble records the sha256 of every member's weights; a member refitted
  since then is refused (the composition would mix models that were never chosen together).

Prediction composes derived models through :func:`~._compose.compose`, the code path of fit time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...datasets import HEMISPHERES
from ...features import FeatureStore
from .._errors import NonFiniteOutputError
from ..registry import (NON_ENCODER_KINDS, ModelRecord, ModelRegistry, RegistryError, check_fingerprint, decode_ids,
                        register_loader)
from ._compose import compose

__all__ = ["EncodingModel", "predict_model", "best_model"]

#: Key of the load memo (``_loaded``) holding the fingerprints already verified in this session:
#: (store, table, recorded rows sha256, fitted ids). Model entries are keyed by (model, subject) tuples.
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
    """

    record: ModelRecord
    tensors: dict[str, np.ndarray]
    store: FeatureStore
    members: list["EncodingModel"] = field(default_factory=list)
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
        tensors, rec = reg.load_arrays(f"{model}/{subject}")
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
            # Models of one subject share their fitted rows: verify each table's rows once per load session.
            verified = loaded.setdefault(_VERIFIED, set())
            for fp in meta["fingerprints"].values():
                key = (fs.uri, fp["table"], fp["rows_sha256"], tensors["fit_ids"].tobytes())
                if key not in verified:
                    check_fingerprint(rec.name, fp, fs, ids)
                    verified.add(key)
        else:
            for x in meta["members"]:  # every member's weights first (cheap: model.json only)
                want, got = meta["member_sha256"][x], reg.record(f"{x}/{subject}").meta["safetensors_sha256"]
                if want != got:
                    raise RegistryError(
                        f"model {rec.name!r} cannot be used: its member '{x}/{subject}' was refitted after "
                        f"{rec.name!r} was made (member weights sha256 {want[:12]}... then, {got[:12]}... now), so "
                        f"its {'choice per ROI' if self.kind == 'per-roi' else 'weights'} no longer match. Refit "
                        f"{model!r} together with its members (`brainstore fit`)")
            self.members = [cls.load(reg, x, subject, fs, loaded) for x in meta["members"]]
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
        from ._encoding import design_matrix

        if self.kind in BASE_KINDS:
            key = tuple(self.record.meta["features"])
            if key not in cache:
                cache[key] = design_matrix(self.store, list(key), stimulus_ids)
            return {h: np.asarray(self._estimator(h).predict(cache[key]), dtype=np.float32) for h in self.hemispheres}
        preds = [m._predict(stimulus_ids, cache) for m in self.members]
        if self.kind == "per-roi":
            return {h: compose("per-roi", [p[h] for p in preds], choice=self.tensors[f"{h}.choice"])
                    for h in self.hemispheres}
        return {h: compose("ensemble", [p[h] for p in preds], weights=self.tensors["weights"])
                for h in self.hemispheres}

    def predict_split(self, stimulus_ids: list[str]) -> dict[str, np.ndarray]:
        """Banded ridge: per-feature-space contributions, {hemi: (n_spaces, n_stimuli, n_vertices)}."""
        from ._encoding import design_matrix

        if self.kind != "banded":
            raise ValueError(f"model {self.record.name!r} is {self.kind}; only banded models split by feature space")
        X = design_matrix(self.store, list(self.record.meta["features"]), stimulus_ids)
        return {h: np.asarray(self._estimator(h).predict_split(X)) for h in self.hemispheres}


@register_loader(*BASE_KINDS, "per-roi", "ensemble")
def _load_encoding_model(reg: ModelRegistry, name: str, store) -> EncodingModel:
    model, _, subject = name.rpartition("/")
    if not model:
        raise RegistryError(f"an encoding model is registered per subject: load {name!r} as 'MODEL/SUBJECT'")
    return EncodingModel.load(reg, model, subject, store)


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

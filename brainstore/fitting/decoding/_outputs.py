"""Decoding outputs over both kinds of decoding model (ridge decoders, one per subject; adaptors, one
shared): the registry's decoding models of a dataset as one namespace, decoding a subject's
responses with either, the top-k of a whole store table (LanceDB), and retrieval scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...datasets import AlgonautsDataset
from ...features import FeatureStore
from ..encoding import subject_stimuli
from ..registry import ModelRegistry, RegistryError, model_base, model_ref
from ._adaptor_model import ADAPTOR_KIND, AdaptorModel
from ._inputs import response_matrix
from ._ridge_decoders import DECODER_KIND, ORACLE_KEYS, Decoder
from ._scores import retrieved_caption_metrics, row_cosine

__all__ = ["decoder_records", "decoding_models", "decode_subject", "store_top_k", "evaluate_decoders"]


def decoder_records(reg: ModelRegistry, dataset: str | Path) -> list:
    """Registered decoders fitted on ``dataset``."""
    return [r for r in reg.list() if r.meta.get("kind") == DECODER_KIND and r.meta.get("dataset") == str(dataset)]


def _adaptor_records(reg: ModelRegistry, dataset: str | Path) -> list:
    return [r for r in reg.list() if r.meta.get("kind") == ADAPTOR_KIND and r.meta.get("dataset") == str(dataset)]


def decoding_models(reg: ModelRegistry, dataset: str | Path) -> dict[str, dict]:
    """``{model: {"kind": "decoder"|"adaptor", "targets": [...], "subjects": [...]}}`` of the
    decoding models fitted on ``dataset``: ridge decoders and adaptors as one namespace (ridge
    decoders are one record per subject, an adaptor one shared record)."""
    out: dict[str, dict] = {}
    for r in decoder_records(reg, dataset):
        e = out.setdefault(r.meta["model"], {"kind": DECODER_KIND, "targets": [r.meta["target"]], "subjects": []})
        e["subjects"].append(r.meta["subject"])
    for r in _adaptor_records(reg, dataset):
        out[r.meta["model"]] = {"kind": "adaptor", "targets": list(r.meta["targets"]),
                                "subjects": list(r.meta["subjects"])}
    return out


def decode_subject(reg: ModelRegistry, model: str, subject: str, ds: AlgonautsDataset, target: str,
                   store: str | None = None, split: str = "test", cache: dict | None = None
                   ) -> tuple[np.ndarray, FeatureStore]:
    """Decode ``subject``'s ``split`` responses into ``target`` with the ridge decoder ``model/subject``
    or the adaptor ``model/shared`` (drift-checked).

    ``store``: the feature store holding ``target`` (default: the model's). ``cache`` (a dict kept
    across calls for several subjects) holds the registry's decoding models and a loaded adaptor, so
    an adaptor is loaded and drift-checked once, not once per subject.

    Returns
    -------
    decoded : np.ndarray
        (n_images, dim) embeddings decoded from the ``split`` responses.
    store : FeatureStore
        The store holding ``target``.

    Raises
    ------
    RegistryError
        No such decoding model on this dataset, or it has no decoder for ``subject`` or into ``target``.
    """
    cache = {} if cache is None else cache
    if "models" not in cache:
        cache["models"] = decoding_models(reg, ds.root)
    models = cache["models"]
    if model not in models:
        raise RegistryError(f"no decoder or adaptor named {model!r} was fitted on {ds.root}; decoding models: "
                            f"{', '.join(sorted(models)) or 'none (run `brainstore fit --decode TABLE` first)'}")
    info = models[model]
    if subject not in info["subjects"]:
        raise RegistryError(f"{model!r} has no decoder for {subject}; its subjects: {', '.join(sorted(info['subjects']))}")
    if target not in info["targets"]:
        raise RegistryError(f"{model!r} decodes into {', '.join(info['targets'])}, not {target!r}")
    if info["kind"] == DECODER_KIND:
        dec = Decoder.load(reg, f"{model}/{subject}", store)
        return dec.decode(response_matrix(ds, subject, split, dec.voxels), ds.cv_groups(subject, split)), dec.store
    if ("adaptor", model) not in cache:
        cache[("adaptor", model)] = (AdaptorModel.load(reg, f"{model}/shared", store),
                                     FeatureStore(store or reg.record(f"{model}/shared").meta["store"], create=False))
    am, fs = cache[("adaptor", model)]
    return am.decode(subject, response_matrix(ds, subject, split, am.voxels[subject]))[target], fs


def store_top_k(fs: FeatureStore, table: str, decoded: np.ndarray, k: int = 10) -> tuple[list[list[str]], np.ndarray]:
    """The ``k`` stimuli of the WHOLE store table nearest (cosine) to each decoded embedding, searched
    by LanceDB (exact search, or the table's vector index when one was built).

    ``decoded``: (n, dim). Returns per row the ``k`` stimulus ids and the (n, k) float64 cosine
    similarities, best first (NaN past the end of a table smaller than ``k``).
    """
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    hits = fs.search(table, np.asarray(decoded, np.float32), k=k, metric="cosine")
    ids = [[h[0] for h in row] for row in hits]
    sims = np.array([[1.0 - h[1] for h in row] + [np.nan] * (k - len(row)) for row in hits], dtype=np.float64)
    return ids, sims


def _store_retrieval(fs: FeatureStore, table: str, decoded: np.ndarray, true_ids: list[str], ks=(1, 5)) -> dict:
    """Top-k accuracy of the true stimulus among every stimulus of the store table (LanceDB search)."""
    ids, _ = store_top_k(fs, table, decoded, max(ks))
    out = {f"store_top{k}": float(np.mean([t in row[:k] for t, row in zip(true_ids, ids)])) for k in ks}
    out["store_candidates"] = int(len(fs.ids(table)))
    out["store_chance_top1"] = 1.0 / out["store_candidates"]
    return out


def evaluate_decoders(reg: ModelRegistry, ds: AlgonautsDataset, *, store: str | None = None,
                      models: list[str] | None = None, n_candidates: int = 300, n_draws: int = 30,
                      store_search: bool = True) -> dict:
    """Decode every subject's test responses with the registered decoders and adaptors (drift-checked)
    and score retrieval.

    Returns
    -------
    dict
        ``{model: {subject: metrics}}``: the :func:`~brainstore.scoring.retrieval_metrics` figures,
        ``cosine``, ``store_top1`` / ``store_top5`` (the true stimulus among every stimulus of the
        store table, searched with LanceDB; ``store_candidates`` of them), the caption figures for a
        caption (text) table, the ``oracle_*`` figures where the dataset has noiseless test
        responses (ridge decoders), and the fit's ``alpha`` and ``cv_r2`` (ridge). An adaptor with
        several targets is reported as ``model:target``. Subjects without test responses are left out.
    """
    from ...scoring import retrieval_metrics

    out: dict = {}
    kw = dict(n_candidates=n_candidates, n_draws=n_draws)

    def score(D, Et, fs, target, s, train_ids=None) -> dict:
        test_ids = subject_stimuli(ds, s, "test")
        m = {**retrieval_metrics(D, Et, **kw), "cosine": float(row_cosine(D, Et).mean()), "target": target}
        if store_search:
            m.update(_store_retrieval(fs, target, D, test_ids))
        if train_ids is not None and fs.metadata(target).get("extractor") == "text":
            Etr = fs.load(target, train_ids)
            m.update(retrieved_caption_metrics(ds, s, D, Etr, Et, train_ids, test_ids))
        return m

    for rec in decoder_records(reg, ds.root):
        model, s = rec.meta["model"], rec.meta["subject"]
        if not ds.has_test_responses(s):
            continue
        for label, ref in _selected(reg, rec, models, s):
            dec = Decoder.load(reg, ref, store)
            meta = dec.record.meta
            Et = dec.store.load(meta["target"], subject_stimuli(ds, s, "test"))
            D = dec.decode(response_matrix(ds, s, "test", dec.voxels))
            m = score(D, Et, dec.store, meta["target"], s, dec.train_ids)
            m.update({"alpha": meta["metrics"]["alpha"], "cv_r2": meta["metrics"]["cv_r2"]})
            # the oracle decoder (fitted on noiseless responses) is not registered: its figures come from the fit
            m.update({f"oracle_{k}": meta["metrics"][f"oracle_{k}"] for k in ORACLE_KEYS
                      if f"oracle_{k}" in meta["metrics"]})
            out.setdefault(label, {})[s] = m
    for rec in _adaptor_records(reg, ds.root):
        for label, ref in _selected(reg, rec, models, "shared"):
            am = AdaptorModel.load(reg, ref, store)
            fs = FeatureStore(store or rec.meta["store"], create=False)
            for s in rec.meta["subjects"]:
                if s not in ds.subjects or not ds.has_test_responses(s):
                    continue
                decoded = am.decode(s, response_matrix(ds, s, "test", am.voxels[s]))
                train_ids = subject_stimuli(ds, s, "train")
                for t in am.targets:
                    key = label if len(am.targets) == 1 else f"{label}:{t}"
                    Et = fs.load(t, subject_stimuli(ds, s, "test"))
                    out.setdefault(key, {})[s] = {**score(decoded[t], Et, fs, t, s, train_ids), "method": "adaptor"}
    return out


def _selected(reg: ModelRegistry, rec, models: list[str] | None, part: str) -> list[tuple[str, str]]:
    """(label, registry reference) of each requested form of ``rec``'s model: the listed version itself when no
    models are named or the bare name is; each ``MODEL@V`` / ``MODEL@alias`` asked for, resolved for ``part`` (the
    subject, or ``shared`` for an adaptor)."""
    model = rec.meta["model"]
    if not models:
        return [(model, rec.ref)]
    out = []
    for m in models:
        if model_base(m) == model:
            out.append((m, rec.ref if m == model else model_ref(m, part)))
    return out

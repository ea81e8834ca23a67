"""In-silico experiments: a registered encoding model's predicted responses to many stimuli (every row of its
feature tables: 100k images embedded once), streamed through a Ray Dataset and written to a table of the
feature store, with a progress bar.

The stimuli are split into blocks; a pool of Ray actors (each loading and verifying the model once) predicts
them, and the driver writes each answered block as one commit (``FeatureStore.write``: rows whose stimulus id
is already there are skipped). A killed run, started again with the same table, predicts only the stimuli the
table lacks: no duplicates, no losses. The table's ``embedding`` column holds the responses, the hemispheres'
vertices side by side (``metadata["hemispheres"]`` gives each one's count, in order); its metadata names the
model version (``NAME/SUBJECT@V``) that made them, and a table made by another version is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..._storage import uri_of
from ..registry import ModelRegistry, RegistryError, model_base, model_ref, safe_name
from ._predict import EncodingModel

__all__ = ["predict_to_table", "InSilicoRun", "PREDICTED_KIND"]

#: The ``kind`` of a feature-store table of predicted responses (its metadata).
PREDICTED_KIND = "predicted-responses"


@dataclass
class InSilicoRun:
    """What :func:`predict_to_table` did."""

    table: str  # the store table the responses are in
    store: str
    model: str  # NAME/SUBJECT@VERSION
    subject: str
    hemispheres: dict  # {hemi: vertices}, in the column order of the table's rows
    requested: int  # stimuli asked for
    already: int  # of them already in the table (a resumed run)
    written: int
    seconds: float

    @property
    def stimuli_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


class _Predictor:
    """A Ray Data actor: the model loaded and verified once, then a block of stimulus ids at a time."""

    def __init__(self, registry: str, model: str, subject: str, store: str | None):
        self.em = EncodingModel.load(ModelRegistry(registry, create=False), model, subject, store)

    def __call__(self, batch: dict) -> dict:
        ids = [str(i) for i in batch["stimulus_id"]]
        pred = self.em.predict(ids)
        return {"stimulus_id": np.asarray(ids, dtype=object),
                "responses": np.hstack([np.asarray(pred[h], np.float32) for h in self.em.hemispheres])}


def _stimuli(em: EncodingModel, stimuli) -> list[str]:
    """The ids asked for; None: every stimulus of all the model's feature tables (latest versions)."""
    if stimuli is not None:
        ids = [str(s) for s in stimuli]
        if not ids:
            raise ValueError("stimuli: an empty list; give stimulus ids of the model's feature tables, or None for all")
        return list(dict.fromkeys(ids))
    common = None
    for t in sorted(em.table_names()):
        ids = em.store.ids(t)
        if common is None:
            common = ids
        else:
            there = set(ids)  # (built once: 100k ids against 100k)
            common = [i for i in common if i in there]
    return list(dict.fromkeys(common or []))


def predict_to_table(model: str, subject: str, *, registry, store=None, stimuli=None, table: str | None = None,
                     batch_size: int = 1024, concurrency: int | None = None, progress: bool = True) -> InSilicoRun:
    """Predict ``subject``'s responses to many stimuli with a registered encoding model and write them to a
    table of the feature store (see the module docstring).

    Parameters
    ----------
    model : str
        ``NAME``, ``NAME@3`` or ``NAME@ALIAS`` (as ``predict``); resolved once: every row comes from one version.
    subject : str
    registry : URI or ModelRegistry
    store : URI, optional
        The store to read embeddings from and write the table to (default: the one the model was fitted with).
    stimuli : list of str, optional
        Stimulus ids of the model's feature tables (default: every row they all hold).
    table : str, optional
        The table (default ``pred-NAME-vV-SUBJECT``).
    batch_size : int
        Stimuli per block (one prediction call and one commit each).
    concurrency : int, optional
        Predicting actors (default: half the cluster's CPUs, at least 1).

    Returns
    -------
    InSilicoRun

    Raises
    ------
    RegistryError
        The model or a version is unknown, or the table holds predictions of another model version.
    """
    import ray

    from ..._ray import ensure_connected

    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(uri_of(registry), create=False)
    rec = reg.record(model_ref(model, subject))  # one version for every row
    em = EncodingModel.load(reg, f"{model_base(model)}@{rec.version}", subject, store)
    store_uri = em.store.uri
    name = table or f"pred-{safe_name(model_base(model))}-v{rec.version}-{subject}"
    ids = _stimuli(em, stimuli)
    if not ids:
        raise ValueError(f"no stimulus is in every feature table {model_base(model)} reads "
                         f"({', '.join(sorted(em.table_names()))} in {em.store.uri}); extract them first")
    probe = em.predict(ids[:1])
    hemis = {h: int(probe[h].shape[1]) for h in em.hemispheres}
    meta = {"kind": PREDICTED_KIND, "model": rec.ref, "subject": subject, "hemispheres": hemis,
            "extractor": "predicted-responses", "architecture": rec.ref, "modality": "responses"}
    fs = em.store
    if fs.exists(name) and fs.metadata(name).get("model") != rec.ref:
        raise RegistryError(f"table {name!r} in {store_uri} holds predictions of {fs.metadata(name).get('model')!r}, "
                            f"not {rec.ref!r}; give another table (--into) or drop it")
    fs.ensure_table(name, sum(hemis.values()), meta)
    done = set(fs.ids(name))
    todo = [i for i in ids if i not in done]
    t0, written = time.time(), 0
    if todo:
        res = ensure_connected()
        n = concurrency or max(1, int(res.get("CPU", 2)) // 2)
        ds = ray.data.from_items([{"stimulus_id": i} for i in todo],
                                 override_num_blocks=max(1, -(-len(todo) // batch_size)))
        args = {"registry": uri_of(reg), "model": f"{model_base(model)}@{rec.version}", "subject": subject,
                "store": store_uri}
        out = ds.map_batches(_Predictor, fn_constructor_kwargs=args, batch_size=batch_size, concurrency=n, num_cpus=1,
                             batch_format="numpy")
        written = _write(fs, name, out.iter_batches(batch_size=None, batch_format="numpy"), len(todo), progress)
    return InSilicoRun(table=name, store=store_uri, model=rec.ref, subject=subject, hemispheres=hemis,
                       requested=len(ids), already=len(ids) - len(todo), written=written, seconds=time.time() - t0)


def _write(fs, name: str, batches, total: int, progress: bool) -> int:
    """Each answered block as one commit, with a progress bar over the stimuli."""
    from tqdm.auto import tqdm

    written = 0
    with tqdm(total=total, desc=f"predict -> {name}", unit="stim", disable=not progress) as bar:
        for b in batches:
            ids = [str(i) for i in b["stimulus_id"]]
            written += fs.write(name, ids, np.asarray(b["responses"], np.float32))
            bar.update(len(ids))
    return written

"""Decoders: one subject's fMRI responses -> a target embedding table of the feature store.

A decoder reads the responses of a voxel selection (every vertex of both hemispheres, or the union
of named ROIs / ROI families), left hemisphere first, and predicts the stimulus's embedding in a
store table (CLIP image, CLIP text, captions, or any other). The ridge decoder z-scores each voxel
with the training statistics only (inside each CV fold, then on all training rows) and picks one
alpha for every embedding dimension by K-fold CV (the best mean R^2 over dimensions; decoded
embeddings are compared by cosine, so dimensions share one regularization). With more voxels than
training images the solver works in the n x n sample space (:mod:`..ridge._solvers`).

Decoders are Ray tasks, one per subject, each registering its model
(``<name>/<subject>``: safetensors + JSON, with the target table's fingerprint, so a re-extracted
target is refused at load) and writing its decoded test embeddings to the run folder. Evaluation
is retrieval by the MindEye protocol (:func:`brainstore.scoring.retrieval_metrics`).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...datasets import HEMISPHERES, open_dataset
from ...features import FeatureStore
from .._errors import NonFiniteOutputError
from ..encoding import group_folds, subject_stimuli
from ..registry import (ModelRegistry, RegistryError, dataset_digest, decode_ids, encode_ids, register_loader,
                        safe_name, stimuli_digest, table_fingerprint)
from ._inputs import _oracle_dir, check_decoding_inputs, delay_responses, response_matrix, select_voxels
from ._scores import retrieved_caption_metrics, row_cosine

__all__ = ["DECODER_KIND", "DECODER_ALPHAS", "ORACLE_KEYS", "fit_subject_decoder", "fit_decoders", "DecodeRun",
           "Decoder", "decoder_name"]

#: ``kind`` of registered decoders (encoders are ridge, banded, mlp, per-roi, ensemble).
DECODER_KIND = "decoder"
#: Default alpha grid of ridge decoders: wider than the encoders' (thousands of z-scored voxels as
#: features put the Gram spectrum, and the useful alphas, higher), ``np.logspace(0, 7, 15)``.
DECODER_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 7, 15).tolist())
#: Retrieval figures of the oracle decoder kept in the metrics (as ``oracle_<key>``).
ORACLE_KEYS = ("top1_brain_to_stimulus", "top1_stimulus_to_brain", "two_way")

def fit_subject_decoder(job: dict) -> dict:
    """Fit, register and evaluate one subject's ridge decoder (run as a Ray task).

    ``job``: dataset, store, registry, run_dir, name, subject, target, rois, alphas, folds, device,
    threads, n_candidates, n_draws.
    """
    import torch

    from ...scoring import retrieval_metrics
    from ..encoding import limit_threads
    from ..ridge import RidgeCVEncoder
    from ..registry import write_array

    t0 = time.time()
    ds = open_dataset(job["dataset"])
    fs = FeatureStore(job["store"], job.get("store_options"), create=False)
    reg = ModelRegistry(job["registry"], storage_options=job.get("registry_options"))
    s, target, name = job["subject"], job["target"], job["name"]
    device = job.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    voxels = select_voxels(ds, s, job.get("rois"))
    train_ids = subject_stimuli(ds, s, "train")
    test_ids = subject_stimuli(ds, s, "test")
    E = fs.load(target, train_ids)
    delays = job.get("response_delays")
    groups = ds.cv_groups(s, "train")  # a time series: folds hold whole runs

    def responses(split: str, oracle: bool = False) -> np.ndarray:
        R = response_matrix(ds, s, split, voxels, oracle=oracle)
        return delay_responses(R, delays, ds.cv_groups(s, split)) if delays else R

    R = responses("train")
    from sklearn.model_selection import KFold

    folds = group_folds(groups, int(job["folds"])) if groups is not None else list(KFold(int(job["folds"])).split(R))
    with limit_threads(job.get("threads")):
        est = RidgeCVEncoder(alphas=tuple(job["alphas"]), n_folds=int(job["folds"]), scoring="r2",
                             alpha_per_target=False, device=device).fit(R, E, folds=folds)
    metrics: dict[str, Any] = {"alpha": float(est.alpha_[0]), "cv_r2": float(est.best_scores_.mean()),
                               "n_voxels": int(sum(len(v) for v in voxels.values())), "n_train": len(train_ids)}
    if ds.has_test_responses(s):
        Et = fs.load(target, test_ids)
        D = est.predict(responses("test"))
        write_array(Path(job["run_dir"]) / "decoded" / name / f"{s}_test.npy", D.astype(np.float32))
        kw = dict(n_candidates=int(job.get("n_candidates", 300)), n_draws=int(job.get("n_draws", 30)))
        metrics.update(retrieval_metrics(D, Et, **kw))
        metrics["cosine"] = float(row_cosine(D, Et).mean())
        if fs.metadata(target).get("extractor") == "text":  # a caption table: decoded captions too
            metrics.update(retrieved_caption_metrics(ds, s, D, E, Et, train_ids, test_ids))
        if _oracle_dir(ds, s) is not None:  # the same method fitted and tested on noiseless responses: the ceiling
            with limit_threads(job.get("threads")):
                oracle = RidgeCVEncoder(alphas=tuple(job["alphas"]), n_folds=int(job["folds"]), scoring="r2",
                                        alpha_per_target=False, device=device).fit(
                    responses("train", oracle=True), E, folds=folds)
            o = retrieval_metrics(oracle.predict(responses("test", oracle=True)), Et, **kw)
            metrics.update({f"oracle_{k}": o[k] for k in ORACLE_KEYS})
    tensors = dict(est.state_dict())
    tensors.update({f"voxels_{h}": v for h, v in voxels.items()})
    tensors["train_ids"] = encode_ids(train_ids)
    meta = {"kind": DECODER_KIND, "method": "ridge", "model": name, "subject": s, "dataset": str(ds.root),
            "dataset_digest": dataset_digest(ds, [s]), "stimuli_sha256": stimuli_digest(ds, [s]),
            "run": str(job["run_dir"]), "store": fs.uri, "target": target, "rois": job.get("rois"),
            "features": [target],
            "feature_versions": {target: fs.metadata(target)},
            "fingerprints": {target: table_fingerprint(fs, target, train_ids)},
            "metrics": metrics, "val_score": metrics["cv_r2"]}
    if delays:
        meta["response_delays"] = [int(d) for d in delays]
    saved = reg.save(f"{name}/{s}", tensors, meta)
    return {"name": name, "subject": s, "ref": saved.ref, "metrics": metrics, "seconds": time.time() - t0,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}

@dataclass
class DecodeRun:
    """What :func:`fit_decoders` did: metrics per decoder and subject, failures, the run folder."""

    run_dir: Path
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # method auto, where ridge won: the adaptor it was compared with on the validation split (AdaptorRun's fields)
    comparison: dict[str, dict] = field(default_factory=dict)
    winner: str | None = None
    search: dict | None = None


def decoder_name(target: str) -> str:
    """Default registry name of a ridge decoder into ``target``."""
    return f"decoder-ridge-{safe_name(target)}"

def fit_decoders(dataset: str | Path, target: str, *, store: str, registry: str, name: str | None = None,
                 rois: list[str] | None = None, subjects: list[str] | None = None,
                 alphas: tuple[float, ...] | None = None, folds: int = 5, out: str | Path | None = None,
                 n_candidates: int = 300, n_draws: int = 30, progress: bool = True,
                 response_delays: list[int] | None = None) -> DecodeRun:
    """Fit a ridge decoder into ``target`` for every subject, in parallel Ray tasks.

    ``response_delays`` (time-series datasets): decode TR ``t`` from the responses of TRs ``t + d``
    (:func:`delay_responses`), e.g. ``[1, 2, 3, 4]``: the BOLD its stimulus drives.

    Checked on the driver before any task: the target table exists and holds every train and test
    stimulus of each subject (the missing ids are listed), the ROI names, and each subject's
    responses (NaN / inf, shapes; in Ray tasks as for encoders).
    """
    import ray
    from tqdm.auto import tqdm

    from ..._paths import check_folder
    from ..._ray import ensure_connected
    from ..encoding import check_responses, plan_fit_cpus, task_error_text
    from ..registry import run_dir as default_run_dir

    t0 = time.time()
    ds, fs, reg = open_dataset(dataset), FeatureStore(store, create=False), ModelRegistry(registry)
    store, registry = fs.uri, str(reg.root)  # absolute: the tasks reopen them in their own working directory
    if response_delays is not None:
        if not ds.is_timeseries:
            raise ValueError(f"response_delays are for time-series datasets; {ds.root} has one row per stimulus")
        if not response_delays or len(set(response_delays)) != len(response_delays) or min(response_delays) < 0:
            raise ValueError(f"response_delays must be distinct integers >= 0 (TRs), e.g. [1, 2, 3, 4]; got "
                             f"{response_delays}")
    subjects = check_decoding_inputs(ds, fs, [target], subjects)
    for s in subjects:
        select_voxels(ds, s, rois)  # unknown ROI names fail here, before any task
    name = name or decoder_name(target)
    rdir = check_folder(default_run_dir(out, reg.root, "decode"), "run folder", "--out", create=True, make=False)
    res = ensure_connected()
    check_responses(ds, subjects)
    rdir.mkdir(parents=True, exist_ok=True)
    cpus = plan_fit_cpus(res.get("CPU", 1), len(subjects), False)
    task = ray.remote(num_cpus=cpus, max_retries=3, retry_exceptions=False)(fit_subject_decoder)
    jobs = {task.remote({"dataset": str(ds.root), "store": fs.uri, "store_options": fs.options, "registry": str(reg.root),
                              "registry_options": reg.storage_options, "run_dir": str(rdir),
                         "name": name, "subject": s, "target": target, "rois": rois,
                         "alphas": list(alphas or DECODER_ALPHAS), "folds": folds, "threads": cpus,
                         "n_candidates": n_candidates, "n_draws": n_draws,
                         "response_delays": list(response_delays) if response_delays else None}): s for s in subjects}
    run = DecodeRun(run_dir=rdir)
    bar = tqdm(total=len(jobs), desc="fit decoders (subjects)", unit="task", disable=not progress)
    while jobs:
        [ref], _ = ray.wait(list(jobs), num_returns=1)
        s = jobs.pop(ref)
        try:
            out_s = ray.get(ref)
            run.metrics.setdefault(name, {})[s] = out_s["metrics"]
            run.registered.append(out_s["ref"])
        except Exception as e:  # one subject's failure is reported; the others finish
            run.failures.append({"subject": s, "model": name, "error": task_error_text(e)})
        bar.update()
    bar.close()
    run.seconds = time.time() - t0
    return run


class Decoder:
    """A registered decoder, checked against the store (drift) and ready to decode responses."""

    def __init__(self, state: dict[str, np.ndarray], meta: dict):
        from ..ridge import RidgeCVEncoder

        self.meta = meta
        self.voxels = {h: state[f"voxels_{h}"] for h in HEMISPHERES}
        self.train_ids = decode_ids(state["train_ids"])
        self._est = RidgeCVEncoder.from_state_dict({k: v for k, v in state.items()
                                                    if not k.startswith("voxels_") and k != "train_ids"},
                                                   device="cpu")

    @classmethod
    def load(cls, registry: ModelRegistry | str, name: str, store: str | None = None) -> "Decoder":
        """Load ``name`` (``model/subject``), refusing it when its target table changed since the fit."""
        from ..registry import check_fingerprint

        reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
        state, rec = reg.load_arrays(name)
        if rec.meta.get("kind") != DECODER_KIND:
            raise RegistryError(f"model {name!r} is a {rec.meta.get('kind')!r} model, not a decoder")
        fs = FeatureStore(store or rec.meta["store"], create=False)
        reg.check_features(rec, fs)
        dec = cls(state, rec.meta)
        dec.record = rec
        check_fingerprint(name, rec.meta["fingerprints"][rec.meta["target"]], fs, dec.train_ids)
        dec.store = fs
        return dec

    @property
    def n_voxels(self) -> int:
        return int(sum(len(v) for v in self.voxels.values()))

    @property
    def response_delays(self) -> list[int] | None:
        """A time-series decoder's delays (row ``t`` decoded from rows ``t + d``), or None."""
        return self.meta.get("response_delays")

    def predict(self, responses: np.ndarray, runs=None) -> np.ndarray:
        """The registry's convention for :meth:`decode`: ``(n, n_voxels)`` responses -> ``(n, dim)`` embeddings."""
        return self.decode(responses, runs)

    def decode(self, responses: np.ndarray, runs=None) -> np.ndarray:
        """(n, n_voxels) responses of the decoder's voxel selection (lh then rh) -> (n, dim) embeddings.

        A decoder with :attr:`response_delays` reads the rows as consecutive TRs (of one run, or of the
        runs ``runs`` labels) and decodes row ``t`` from rows ``t + d``."""
        R = np.asarray(responses, dtype=np.float32)
        if R.ndim != 2 or R.shape[1] != self.n_voxels:
            raise ValueError(f"decoder {self.meta.get('model')!r} ({self.meta.get('subject')}) takes "
                             f"{self.n_voxels} voxels per response ({', '.join(f'{h}: {len(v)}' for h, v in self.voxels.items())}); "
                             f"got shape {R.shape}")
        if not np.isfinite(R).all():
            raise ValueError("responses hold NaN or inf values; decoders need finite responses")
        if self.response_delays:
            R = delay_responses(R, self.response_delays, runs)
        try:
            return self._est.predict(R)
        except NonFiniteOutputError as e:
            raise NonFiniteOutputError(
                f"responses: decoder {self.meta.get('model')!r} ({self.meta.get('subject')}) gives non-finite values "
                f"for row(s) {e.rows[:5]}: the responses are far outside the range it was fitted on (or overflow "
                "float32); send responses on the scale of the dataset's", field="responses", rows=e.rows) from None


@register_loader(DECODER_KIND)
def _load_decoder(reg: ModelRegistry, name: str, store) -> "Decoder":
    return Decoder.load(reg, name, None if store is None else str(getattr(store, "uri", store)))

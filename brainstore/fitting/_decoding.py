"""Decoders: one subject's fMRI responses -> a target embedding table of the feature store.

A decoder reads the responses of a voxel selection (every vertex of both hemispheres, or the union
of named ROIs / ROI families), left hemisphere first, and predicts the stimulus's embedding in a
store table (CLIP image, CLIP text, captions, or any other). The ridge decoder z-scores each voxel
with the training statistics only (inside each CV fold, then on all training rows) and picks one
alpha for every embedding dimension by K-fold CV (the best mean R^2 over dimensions; decoded
embeddings are compared by cosine, so dimensions share one regularization). With more voxels than
training images the solver works in the n x n sample space (:mod:`._solvers`).

Decoders are Ray tasks, one per subject, each registering its model
(``<name>/<subject>``: safetensors + JSON, with the target table's fingerprint, so a re-extracted
target is refused at load) and writing its decoded test embeddings to the run folder. Evaluation
is retrieval by the MindEye protocol (:mod:`brainstore.scoring._retrieval`).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import HEMISPHERES, AlgonautsDataset, DatasetError, open_dataset
from ..features import FeatureStore, FeatureStoreError, MissingStimuliError
from ._encoding import group_folds, subject_stimuli
from ._errors import NonFiniteOutputError
from ._fingerprint import decode_ids, encode_ids, table_fingerprint
from ._registry import ModelRegistry, RegistryError, register_loader, safe_name

__all__ = ["delay_responses", "DECODER_KIND", "DECODER_ALPHAS", "select_voxels", "response_matrix", "fit_decoder", "fit_decoders",
           "DecodeRun", "Decoder", "decoder_name", "decoder_records", "evaluate_decoders", "store_top_k",
           "decode_subject", "decoding_models", "check_decoding_inputs", "retrieved_captions"]

#: ``kind`` of registered decoders (encoders are ridge, banded, mlp, per-roi, ensemble).
DECODER_KIND = "decoder"
#: Default alpha grid of ridge decoders: wider than the encoders' (thousands of z-scored voxels as
#: features put the Gram spectrum, and the useful alphas, higher), ``np.logspace(0, 7, 15)``.
DECODER_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 7, 15).tolist())


def select_voxels(ds: AlgonautsDataset, subject: str, rois: list[str] | None = None) -> dict[str, np.ndarray]:
    """Vertex indices per hemisphere: all of them, or the union of the named ROIs / ROI families.

    Raises
    ------
    DatasetError
        An ROI name the dataset lacks (the available ones are listed), or a selection without vertices.
    """
    out = {}
    for hemi in HEMISPHERES:
        n = ds.n_vertices(subject, hemi)
        if not rois:
            out[hemi] = np.arange(n, dtype=np.int64)
            continue
        regions = ds.regions(subject, hemi)
        unknown = [r for r in rois if r not in regions]
        if unknown:
            raise DatasetError(f"decoder ROI(s) {unknown} not in {ds.root} ({subject} {hemi}); available: "
                               f"{', '.join(regions)}")
        mask = np.zeros(n, dtype=bool)
        for r in rois:
            mask |= regions[r]
        out[hemi] = np.flatnonzero(mask).astype(np.int64)
    if sum(len(v) for v in out.values()) == 0:
        raise DatasetError(f"decoder ROI(s) {rois} select no vertex of {subject} in {ds.root}")
    return out


#: Retrieval figures of the oracle decoder kept in the metrics (as ``oracle_<key>``).
ORACLE_KEYS = ("top1_brain_to_stimulus", "top1_stimulus_to_brain", "two_way")
#: Noiseless responses of a synthetic dataset, under ``ground_truth/subjNN``: file name by split.
ORACLE_FILES = {"train": "{hemi}_train_noiseless.npy", "test": "{hemi}_pred_test.npy"}


def response_matrix(ds: AlgonautsDataset, subject: str, split: str, voxels: dict[str, np.ndarray],
                    *, oracle: bool = False) -> np.ndarray:
    """A subject's ``split`` responses at a voxel selection: (n_images, n_voxels) float32, lh then rh.

    Parameters
    ----------
    voxels : dict
        ``{hemi: vertex indices}`` (:func:`select_voxels`, or a decoder's ``voxels``).
    oracle : bool
        Read the noiseless responses of a synthetic dataset instead (:data:`ORACLE_FILES`).

    Raises
    ------
    DatasetError
        A hemisphere has fewer vertices than the selection needs, or the responses hold NaN or inf.
    """
    parts = []
    for hemi in HEMISPHERES:
        Y = (np.load(_oracle_dir(ds, subject) / ORACLE_FILES[split].format(hemi=hemi), mmap_mode="r") if oracle
             else ds.responses(subject, hemi, split))
        if Y.shape[1] <= (voxels[hemi].max(initial=-1)):
            raise DatasetError(f"{subject} {hemi} {split} responses have {Y.shape[1]} vertices; the decoder's "
                               f"voxel selection needs {voxels[hemi].max() + 1}")
        parts.append(np.asarray(Y[:, voxels[hemi]], dtype=np.float32))
    R = np.hstack(parts)
    if not np.isfinite(R).all():
        bad = np.argwhere(~np.isfinite(R))[0]
        raise DatasetError(f"{subject} {split} responses hold NaN or inf (first at row {bad[0]}, selected voxel "
                           f"{bad[1]}); fix the response files (`brainstore info` lists them)")
    return R


def _oracle_dir(ds: AlgonautsDataset, subject: str) -> Path | None:
    """``ground_truth/subjNN`` when it holds noiseless train and test responses of both hemispheres."""
    gt = ds.ground_truth_dir()
    if gt is None:
        return None
    d = gt / subject
    ok = all((d / f.format(hemi=h)).exists() for h in HEMISPHERES for f in ORACLE_FILES.values())
    return d if ok else None


def delay_responses(R: np.ndarray, delays, runs=None) -> np.ndarray:
    """Responses of the TRs after each row, side by side: row ``t`` holds ``R[t + d]`` for each delay
    ``d`` (in TRs), within its run (``runs``: a label per row, adjacent rows of a run; None: one run),
    zeros past a run's end. A time-series decoder reads TR ``t``'s stimulus from the BOLD of the TRs
    its hemodynamic response reaches."""
    from ..datasets import run_starts
    from ..features import delay_rows

    R = np.asarray(R, dtype=np.float32)
    if runs is None:
        return delay_rows(R, [-int(d) for d in delays])
    runs = np.asarray(runs, dtype=object)
    starts = run_starts(runs) + [len(runs)]
    return np.concatenate([delay_rows(R[a:b], [-int(d) for d in delays]) for a, b in zip(starts, starts[1:])])


def fit_decoder(job: dict) -> dict:
    """Fit, register and evaluate one subject's ridge decoder (run as a Ray task).

    ``job``: dataset, store, registry, run_dir, name, subject, target, rois, alphas, folds, device,
    threads, n_candidates, n_draws.
    """
    import torch

    from ..scoring import retrieval_metrics
    from ._encoding import _limit_threads
    from ._ridge import RidgeCVEncoder
    from ._runfiles import write_array

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
    with _limit_threads(job.get("threads")):
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
        metrics["cosine"] = float(_row_cosine(D, Et).mean())
        if fs.metadata(target).get("extractor") == "text":  # a caption table: decoded captions too
            metrics.update(retrieved_caption_metrics(ds, s, D, E, Et, train_ids, test_ids))
        if _oracle_dir(ds, s) is not None:  # the same method fitted and tested on noiseless responses: the ceiling
            with _limit_threads(job.get("threads")):
                oracle = RidgeCVEncoder(alphas=tuple(job["alphas"]), n_folds=int(job["folds"]), scoring="r2",
                                        alpha_per_target=False, device=device).fit(
                    responses("train", oracle=True), E, folds=folds)
            o = retrieval_metrics(oracle.predict(responses("test", oracle=True)), Et, **kw)
            metrics.update({f"oracle_{k}": o[k] for k in ORACLE_KEYS})
    tensors = dict(est.state_dict())
    tensors.update({f"voxels_{h}": v for h, v in voxels.items()})
    tensors["train_ids"] = encode_ids(train_ids)
    meta = {"kind": DECODER_KIND, "method": "ridge", "model": name, "subject": s, "dataset": str(ds.root),
            "store": fs.uri, "target": target, "rois": job.get("rois"), "features": [target],
            "feature_versions": {target: fs.metadata(target)},
            "fingerprints": {target: table_fingerprint(fs, target, train_ids)},
            "metrics": metrics, "val_score": metrics["cv_r2"]}
    if delays:
        meta["response_delays"] = [int(d) for d in delays]
    reg.save(f"{name}/{s}", tensors, meta)
    return {"name": name, "subject": s, "metrics": metrics, "seconds": time.time() - t0,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def retrieved_captions(ds: AlgonautsDataset, subject: str, decoded: np.ndarray, train_emb: np.ndarray,
                       train_ids: list[str]) -> tuple[list[int], list[str]]:
    """For each decoded embedding, the nearest (cosine) training stimulus and its caption.

    Only training stimuli are candidates: the test images' own captions are never retrieved, so
    the caption metrics measure what the decoder recovered, not a lookup of the answer.

    ``decoded``: (n, dim); ``train_emb``: (n_train, dim), the target table's rows of ``train_ids``.
    Returns, per decoded row, the nearest row of ``train_emb`` and its stimulus's caption (``""`` if none).
    """
    from ..scoring import cosine_similarity

    t = ds.stimuli([subject], splits=("train",))
    caption = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
    best = cosine_similarity(decoded, train_emb).argmax(1).tolist()
    return best, [caption.get(train_ids[b]) or "" for b in best]


def retrieved_caption_metrics(ds: AlgonautsDataset, subject: str, decoded: np.ndarray, train_emb: np.ndarray,
                              test_emb: np.ndarray, train_ids: list[str], test_ids: list[str]) -> dict:
    """``caption_bleu1..4``, ``caption_rougeL`` of the retrieved training captions against the true test
    captions, and ``caption_cosine`` between their embeddings; {} when the dataset has no captions."""
    from ..scoring import caption_metrics

    t = ds.stimuli([subject], splits=("test",))
    truth = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
    refs = [truth.get(i) for i in test_ids]
    if not all(refs):
        return {}
    best, pred = retrieved_captions(ds, subject, decoded, train_emb, train_ids)
    out = {f"caption_{k}": v for k, v in caption_metrics(pred, refs).items()}
    out["caption_cosine"] = float(_row_cosine(train_emb[best], test_emb).mean())
    return out


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(1) / den


@dataclass
class DecodeRun:
    """What :func:`fit_decoders` did: metrics per decoder and subject, failures, the run folder."""

    run_dir: Path
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    seconds: float = 0.0


def decoder_name(target: str) -> str:
    """Default registry name of a ridge decoder into ``target``."""
    return f"decoder-ridge-{safe_name(target)}"


def check_decoding_inputs(ds: AlgonautsDataset, fs: FeatureStore, targets: list[str],
                          subjects: list[str] | None) -> list[str]:
    """The subjects to decode (all by default), once every target table holds each one's train and test stimuli.

    Raises
    ------
    DatasetError
        A subject the dataset lacks (its subjects are listed).
    FeatureStoreError
        A target table the store lacks (its tables are listed).
    MissingStimuliError
        A target table lacking stimuli of a subject (the ids are listed).
    """
    subjects = list(subjects) if subjects else ds.subjects
    unknown = [s for s in subjects if s not in ds.subjects]
    if unknown:
        raise DatasetError(f"subject(s) {unknown} not in {ds.root}; subjects: {', '.join(ds.subjects)}")
    need = {s: subject_stimuli(ds, s, "train") + subject_stimuli(ds, s, "test") for s in subjects}
    for t in targets:
        if not fs.exists(t):
            raise FeatureStoreError(f"decoder target table {t!r} is not in store {fs.uri}; tables: "
                                    f"{', '.join(fs.names()) or 'none'}")
        have = set(fs.ids(t))
        for s in subjects:
            missing = [i for i in need[s] if i not in have]
            if missing:
                raise MissingStimuliError(t, missing)
    return subjects


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

    from .._paths import check_folder
    from .._ray import ensure_connected
    from ._run import _error_text, check_responses, plan_fit_cpus
    from ._runfiles import run_dir as default_run_dir

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
    task = ray.remote(num_cpus=cpus, max_retries=3, retry_exceptions=False)(fit_decoder)
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
            run.registered.append(f"{name}/{s}")
        except Exception as e:  # one subject's failure is reported; the others finish
            run.failures.append({"subject": s, "model": name, "error": _error_text(e)})
        bar.update()
    bar.close()
    run.seconds = time.time() - t0
    return run


class Decoder:
    """A registered decoder, checked against the store (drift) and ready to decode responses."""

    def __init__(self, state: dict[str, np.ndarray], meta: dict):
        from ._ridge import RidgeCVEncoder

        self.meta = meta
        self.voxels = {h: state[f"voxels_{h}"] for h in HEMISPHERES}
        self.train_ids = decode_ids(state["train_ids"])
        self._est = RidgeCVEncoder.from_state_dict({k: v for k, v in state.items()
                                                    if not k.startswith("voxels_") and k != "train_ids"},
                                                   device="cpu")

    @classmethod
    def load(cls, registry: ModelRegistry | str, name: str, store: str | None = None) -> "Decoder":
        """Load ``name`` (``model/subject``), refusing it when its target table changed since the fit."""
        from ._fingerprint import check_fingerprint

        reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
        state, rec = reg.load_arrays(name)
        if rec.meta.get("kind") != DECODER_KIND:
            raise RegistryError(f"model {name!r} is a {rec.meta.get('kind')!r} model, not a decoder")
        fs = FeatureStore(store or rec.meta["store"], create=False)
        reg.check_features(rec, fs)
        dec = cls(state, rec.meta)
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


def decoder_records(reg: ModelRegistry, dataset: str | Path) -> list:
    """Registered decoders fitted on ``dataset``."""
    return [r for r in reg.list() if r.meta.get("kind") == DECODER_KIND and r.meta.get("dataset") == str(dataset)]


def _adaptor_records(reg: ModelRegistry, dataset: str | Path) -> list:
    from ._adaptor import ADAPTOR_KIND  # (_adaptor imports this module)

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
    from ._adaptor import AdaptorModel

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
    from ..scoring import retrieval_metrics

    out: dict = {}
    kw = dict(n_candidates=n_candidates, n_draws=n_draws)

    def score(D, Et, fs, target, s, train_ids=None) -> dict:
        test_ids = subject_stimuli(ds, s, "test")
        m = {**retrieval_metrics(D, Et, **kw), "cosine": float(_row_cosine(D, Et).mean()), "target": target}
        if store_search:
            m.update(_store_retrieval(fs, target, D, test_ids))
        if train_ids is not None and fs.metadata(target).get("extractor") == "text":
            Etr = fs.load(target, train_ids)
            m.update(retrieved_caption_metrics(ds, s, D, Etr, Et, train_ids, test_ids))
        return m

    for rec in decoder_records(reg, ds.root):
        model, s = rec.meta["model"], rec.meta["subject"]
        if (models and model not in models) or not ds.has_test_responses(s):
            continue
        dec = Decoder.load(reg, rec.name, store)
        Et = dec.store.load(rec.meta["target"], subject_stimuli(ds, s, "test"))
        D = dec.decode(response_matrix(ds, s, "test", dec.voxels))
        m = score(D, Et, dec.store, rec.meta["target"], s, dec.train_ids)
        m.update({"alpha": rec.meta["metrics"]["alpha"], "cv_r2": rec.meta["metrics"]["cv_r2"]})
        # the oracle decoder (fitted on noiseless responses) is not registered: its figures come from the fit
        m.update({f"oracle_{k}": rec.meta["metrics"][f"oracle_{k}"] for k in ORACLE_KEYS
                  if f"oracle_{k}" in rec.meta["metrics"]})
        out.setdefault(model, {})[s] = m
    recs = _adaptor_records(reg, ds.root)
    if recs:
        from ._adaptor import AdaptorModel
    for rec in recs:
        model = rec.meta["model"]
        if models and model not in models:
            continue
        am = AdaptorModel.load(reg, rec.name, store)
        fs = FeatureStore(store or rec.meta["store"], create=False)
        for s in rec.meta["subjects"]:
            if s not in ds.subjects or not ds.has_test_responses(s):
                continue
            decoded = am.decode(s, response_matrix(ds, s, "test", am.voxels[s]))
            train_ids = subject_stimuli(ds, s, "train")
            for t in am.targets:
                key = model if len(am.targets) == 1 else f"{model}:{t}"
                Et = fs.load(t, subject_stimuli(ds, s, "test"))
                out.setdefault(key, {})[s] = {**score(decoded[t], Et, fs, t, s, train_ids), "method": "adaptor"}
    return out

"""Fitting encoding models for every subject x hemisphere x model in parallel on Ray, evaluating
them, and registering them.

Base models run as Ray tasks (a GPU each when the cluster has GPUs; retried when a worker dies);
a failing task is reported and the others finish. Derived models (per-ROI choice, ensembles) are
combined on the driver from their members' out-of-fold and test predictions, so every model has a
cross-validated score on the same folds and the "best model" comparison is fair.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datasets import HEMISPHERES, REPORT_FAMILIES, AlgonautsDataset
from ..features import FeatureStore, MissingStimuliError
from ..scoring import pearson_r, roi_summary
from ._encoding import BaseFit, design_matrix, fit_base, predict_base
from ._evaluate import pooled_roi_summary, score_test_split
from ._registry import ModelRegistry, RegistryError
from ._spec import EnsembleSpec, FitSpec, ModelSpec, PerRoiSpec

__all__ = ["fit_encoding_models", "default_spec", "FitRun", "predict_model", "best_model", "covering_features"]

log = logging.getLogger("brainstore.fitting")


@dataclass
class FitRun:
    """Outcome of :func:`fit_encoding_models`."""

    spec: FitSpec
    models: list[str]  # every model name (base + derived), in spec order
    kinds: dict[str, str]  # model -> ridge | mlp | per-roi | ensemble
    metrics: dict = field(default_factory=dict)  # model -> subject -> hemi/both -> {...}
    failures: list[dict] = field(default_factory=list)  # {subject, hemi, model, error}
    test_preds: dict = field(default_factory=dict)  # (model, subject) -> {hemi: array}
    registered: list[str] = field(default_factory=list)
    seconds: float = 0.0


def covering_features(ds: AlgonautsDataset, fs: FeatureStore) -> list[str]:
    """Feature tables holding every stimulus (train and test, all subjects) of a dataset."""
    need = set(ds.stimuli().column("stimulus_id").to_pylist())
    return [name for name in fs.names() if need <= set(fs.ids(name)) and not fs.metadata(name).get("derived_from")]


def default_spec(dataset: str | Path, store: str, registry: str, **kw) -> FitSpec:
    """Ridge on each covering feature table, on their concatenation, the average ensemble and
    the per-ROI best choice (by CV) among them."""
    ds = AlgonautsDataset(dataset)
    fs = FeatureStore(store)
    feats = covering_features(ds, fs)
    if not feats:
        raise ValueError(f"no feature table in {store} covers every stimulus of {ds.root}; run `brainstore extract` first")
    models = [ModelSpec(name=f, features=[f]) for f in feats]
    per_roi, ensembles = [], []
    if len(feats) > 1:
        models.append(ModelSpec(name="+".join(feats), features=feats))
        ensembles.append(EnsembleSpec(name="avg-ensemble", members=feats))
        per_roi.append(PerRoiSpec(name="per-roi-best", default=models[-1].name, choose_by_cv=True,
                                  members=[m.name for m in models]))
    return FitSpec(dataset=str(ds.root), store=store, registry=registry, models=models, per_roi=per_roi,
                   ensembles=ensembles, **kw)


def _check_inputs(spec: FitSpec, ds: AlgonautsDataset, fs: FeatureStore, subjects: list[str]) -> None:
    """Fail fast, before any task starts, on unknown subjects or feature tables."""
    bad = [s for s in subjects if s not in ds.subjects]
    if bad:
        raise ValueError(f"subjects {bad} are not in {ds.root} (subjects: {ds.subjects})")
    have = set(fs.names())
    missing = sorted({f for m in spec.models for f in m.features if f not in have})
    if missing:
        raise ValueError(f"feature tables {missing} are not in store {fs.uri} (tables: {sorted(have)}); "
                         "extract them first with `brainstore extract`")


def _roi_masks(ds: AlgonautsDataset, subject: str, hemi: str) -> dict[str, np.ndarray]:
    return ds.roi_masks(subject, hemi, families=REPORT_FAMILIES)


def _evaluate_preds(ds, subject, hemi, oof, test_pred, Y) -> dict:
    """CV (out-of-fold) Pearson r per ROI; test r and noise-normalized score per ROI when available."""
    masks = _roi_masks(ds, subject, hemi)
    r_cv = pearson_r(oof, Y)
    out = {"cv_r": roi_summary(r_cv, masks), "_cv_r_vertex": r_cv}
    if ds.has_test_responses(subject):  # fit-time metrics: test r even where no noise ceiling exists
        t = score_test_split(ds, subject, hemi, test_pred, require_noise_ceiling=False)
        out["test_r"] = roi_summary(t["r"], masks)
        if t["score"] is not None:
            out["test_nnmc"] = roi_summary(t["score"], masks)
            out["_score_vertex"] = t["score"]
    return out


def fit_encoding_models(spec: FitSpec, *, store: str, registry: str, progress: bool = True,
                        register: bool = True) -> FitRun:
    """Fit, evaluate and register every model of ``spec`` for every subject x hemisphere."""
    import ray
    from tqdm.auto import tqdm

    t0 = time.time()
    ds = AlgonautsDataset(spec.dataset)
    fs = FeatureStore(store)
    reg = ModelRegistry(registry)
    subjects = ds.subjects if spec.subjects == "all" else list(spec.subjects)
    _check_inputs(spec, ds, fs, subjects)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    res = ray.cluster_resources()
    use_gpu = res.get("GPU", 0) > 0 and spec.device != "cpu"
    # One CPU per task; BLAS threads: the CPUs a task may use without oversubscribing the node.
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=3, retry_exceptions=False)(fit_base)
    jobs = []
    for s in subjects:
        for h in spec.hemispheres:
            for m in spec.models:
                jobs.append({"dataset": str(ds.root), "store": fs.uri, "subject": s, "hemi": h, "model": m.name,
                             "method": m.method, "features": m.features, "alphas": spec.alphas, "folds": spec.folds,
                             "scoring": spec.scoring, "device": "cuda" if use_gpu else "cpu",
                             "mlp": m.mlp.model_dump() if m.mlp else None, "threads": 1})
    run = FitRun(spec=spec, models=[], kinds={})
    futures = {task.remote(j): j for j in jobs}
    fits: dict[tuple[str, str, str], BaseFit] = {}
    bar = tqdm(total=len(jobs), desc="fit subject x hemisphere x model", unit="fit", disable=not progress)
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        j = futures[done[0]]
        try:
            f = ray.get(done[0])
            fits[(f.model, f.subject, f.hemi)] = f
        except Exception as e:  # a failing subject is reported; the others still finish
            cause = e.cause if hasattr(e, "cause") and e.cause is not None else e
            msg = f"{type(cause).__name__}: {cause}"
            if isinstance(cause, MissingStimuliError):
                msg = str(cause)
            run.failures.append({"subject": j["subject"], "hemi": j["hemi"], "model": j["model"], "error": msg})
            log.error("fit failed for %s %s %s: %s", j["subject"], j["hemi"], j["model"], msg)
        bar.update()
    bar.close()

    # Assemble models per subject: base, then per-ROI, then ensembles (members must exist).
    for m in spec.models:
        run.models.append(m.name)
        run.kinds[m.name] = m.method
    for p in spec.per_roi:
        run.models.append(p.name)
        run.kinds[p.name] = "per-roi"
    for e in spec.ensembles:
        run.models.append(e.name)
        run.kinds[e.name] = "ensemble"
    for s in subjects:
        preds: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # model -> hemi -> (oof, test)
        Ys = {h: np.asarray(ds.responses(s, h, "train"), dtype=np.float32) for h in spec.hemispheres}
        for m in spec.models:
            if all((m.name, s, h) in fits for h in spec.hemispheres):
                preds[m.name] = {h: (fits[(m.name, s, h)].oof, fits[(m.name, s, h)].test_pred) for h in spec.hemispheres}
        choices: dict[str, dict[str, np.ndarray]] = {}
        for p in spec.per_roi:
            members = p.members or [m.name for m in spec.models]
            if not all(x in preds for x in [p.default, *members, *p.rules.values()]):
                run.failures.append({"subject": s, "hemi": "both", "model": p.name, "error": "a member model failed"})
                continue
            choices[p.name] = {}
            preds[p.name] = {}
            for h in spec.hemispheres:
                masks = _roi_masks(ds, s, h)
                names = [p.default] + [x for x in members if x != p.default] + [x for x in p.rules.values() if x not in members and x != p.default]
                choice = np.zeros(Ys[h].shape[1], np.int32)
                if p.choose_by_cv:
                    for fam, mask in masks.items():
                        if mask.any():
                            r = [pearson_r(preds[x][h][0][:, mask], Ys[h][:, mask]).mean() for x in names]
                            choice[mask] = int(np.argmax(r))
                else:
                    for fam, x in p.rules.items():
                        choice[masks.get(fam, np.zeros_like(choice, bool))] = names.index(x)
                choices[p.name][h] = choice
                oof = np.empty_like(Ys[h])
                test = np.empty_like(preds[p.default][h][1])
                for k, x in enumerate(names):
                    sel = choice == k
                    oof[:, sel] = preds[x][h][0][:, sel]
                    test[:, sel] = preds[x][h][1][:, sel]
                preds[p.name][h] = (oof, test)
            choices[p.name]["_names"] = names
        for e in spec.ensembles:
            if not all(x in preds for x in e.members):
                run.failures.append({"subject": s, "hemi": "both", "model": e.name, "error": "a member model failed"})
                continue
            w = np.asarray(e.weights or [1.0] * len(e.members), np.float32)
            w = w / w.sum()
            preds[e.name] = {h: (sum(wi * preds[x][h][0] for wi, x in zip(w, e.members)),
                                 sum(wi * preds[x][h][1] for wi, x in zip(w, e.members))) for h in spec.hemispheres}

        for name, by_hemi in preds.items():
            mets = {h: _evaluate_preds(ds, s, h, *by_hemi[h], Ys[h]) for h in spec.hemispheres}
            both = {"cv_r_mean": float(np.mean(np.concatenate([mets[h]["_cv_r_vertex"] for h in spec.hemispheres])))}
            if all("_score_vertex" in mets[h] for h in spec.hemispheres):
                both["test_nnmc"] = float(np.mean(np.concatenate([mets[h]["_score_vertex"] for h in spec.hemispheres])))
                both["test_nnmc_roi"] = pooled_roi_summary(ds, s, {h: mets[h]["_score_vertex"] for h in spec.hemispheres})
            both["cv_r_roi"] = pooled_roi_summary(ds, s, {h: mets[h]["_cv_r_vertex"] for h in spec.hemispheres})
            clean = {h: {k: v for k, v in mets[h].items() if not k.startswith("_")} for h in spec.hemispheres}
            run.metrics.setdefault(name, {})[s] = {**clean, "both": both}
            run.test_preds[(name, s)] = {h: by_hemi[h][1] for h in spec.hemispheres}
            if register:
                _register(reg, fs, spec, ds, name, s, run, fits, choices.get(name), run.metrics[name][s])
                run.registered.append(f"{name}/{s}")
    run.seconds = time.time() - t0
    return run


def _register(reg: ModelRegistry, fs: FeatureStore, spec: FitSpec, ds: AlgonautsDataset, name: str, subject: str,
              run: FitRun, fits: dict, choice: dict | None, metrics: dict) -> None:
    kind = run.kinds[name]
    meta: dict = {"kind": kind, "model": name, "subject": subject, "dataset": str(ds.root), "store": fs.uri,
                  "hemispheres": list(spec.hemispheres), "metrics": metrics,
                  "cv_score": metrics["both"]["cv_r_mean"],
                  "fit": {"alphas": spec.alphas, "folds": spec.folds, "scoring": spec.scoring}}
    tensors: dict[str, np.ndarray] = {}
    if kind in ("ridge", "mlp"):
        m = next(x for x in spec.models if x.name == name)
        meta.update({"method": kind, "features": m.features, "spec": m.model_dump(),
                     "feature_versions": {f: fs.metadata(f) for f in m.features}})
        for h in spec.hemispheres:
            f = fits[(name, subject, h)]
            meta.setdefault("n_vertices", {})[h] = int(f.oof.shape[1])
            meta.setdefault("info", {})[h] = f.info
            tensors.update({f"{h}.{k}": np.asarray(v) for k, v in f.state.items()})
    elif kind == "per-roi":
        p = next(x for x in spec.per_roi if x.name == name)
        meta.update({"members": choice["_names"], "spec": p.model_dump(),
                     "feature_versions": _member_features(spec, choice["_names"], fs)})
        tensors.update({f"{h}.choice": choice[h] for h in spec.hemispheres})
        meta["n_vertices"] = {h: int(len(choice[h])) for h in spec.hemispheres}
    else:
        e = next(x for x in spec.ensembles if x.name == name)
        w = np.asarray(e.weights or [1.0] * len(e.members), np.float64)
        meta.update({"members": e.members, "spec": e.model_dump(), "feature_versions": _member_features(spec, e.members, fs)})
        tensors["weights"] = w / w.sum()
    reg.save(f"{name}/{subject}", tensors, meta)


def _member_features(spec: FitSpec, members: list[str], fs: FeatureStore) -> dict:
    feats: dict = {}
    lookup = {m.name: m.features for m in spec.models}
    for x in members:
        for f in lookup.get(x, []):
            feats[f] = fs.metadata(f)
    return feats


# ----------------------------------------------------------------------------- prediction
def best_model(reg: ModelRegistry, subject: str, dataset: str | None = None) -> str:
    """The registered model with the best cross-validated score for ``subject``."""
    recs = [r for r in reg.list() if r.meta.get("subject") == subject and (dataset is None or r.meta.get("dataset") == dataset)]
    if not recs:
        raise RegistryError(f"no registered model for {subject} in {reg.root}; run `brainstore fit` first")
    return max(recs, key=lambda r: r.meta.get("cv_score", -np.inf)).meta["model"]


def predict_model(reg: ModelRegistry, model: str, subject: str, fs: FeatureStore, stimulus_ids: list[str],
                  _cache: dict | None = None) -> dict[str, np.ndarray]:
    """Predict responses of ``stimulus_ids`` with a registered model: {hemi: (n, n_vertices)}.

    Checks that the store's feature versions are the ones the model was fitted on.
    """
    cache = {} if _cache is None else _cache
    tensors, rec = reg.load(f"{model}/{subject}")
    meta = rec.meta
    kind = meta["kind"]
    hemis = meta.get("hemispheres", list(HEMISPHERES))
    if kind in ("ridge", "mlp"):
        reg.check_features(rec, fs)
        key = tuple(meta["features"])
        if key not in cache:
            cache[key] = design_matrix(fs, list(key), stimulus_ids)
        X = cache[key]
        out = {}
        for h in hemis:
            state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(h + ".")}
            mlp = {k: v for k, v in (meta["spec"].get("mlp") or {}).items()} if kind == "mlp" else None
            out[h] = predict_base(kind, state, X, mlp)
        return out
    members = {x: predict_model(reg, x, subject, fs, stimulus_ids, cache) for x in meta["members"]}
    if kind == "per-roi":
        out = {}
        for h in hemis:
            choice = tensors[f"{h}.choice"]
            pred = np.empty_like(members[meta["members"][0]][h])
            for k, x in enumerate(meta["members"]):
                pred[:, choice == k] = members[x][h][:, choice == k]
            out[h] = pred
        return out
    w = tensors["weights"]
    return {h: sum(float(wi) * members[x][h] for wi, x in zip(w, meta["members"])) for h in hemis}

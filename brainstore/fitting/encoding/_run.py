"""Fitting encoding models for every subject x hemisphere x model in parallel on Ray.

The driver only plans and collects summaries: base fits run as Ray tasks (a GPU each when the
cluster has GPUs, otherwise the node's CPUs shared among the concurrent fits, with BLAS and torch
using exactly the CPUs a task was given; retried when a worker dies) and write their predictions
to the run folder (:mod:`._runfiles`); once a subject's base fits are done, one assembly task
composes its per-ROI models and ensembles from those files, scores and registers everything
(:mod:`._assemble`). A failing subject is reported while the others finish. The driver's memory
does not grow with subjects, vertices or models.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...datasets import AlgonautsDataset, open_dataset
from ...features import FeatureStore, MissingStimuliError
from .._spec import EnsembleSpec, FitSpec, ModelSpec, PerRoiSpec
from ..registry import ModelRegistry, RunLayout, open_array, remove_partial
from ..registry import run_dir as default_run_dir

__all__ = ["fit_encoding_models", "default_spec", "FitRun", "covering_features", "plan_fit_cpus", "check_responses",
           "task_error_text"]

log = logging.getLogger("brainstore.fitting")


@dataclass
class FitRun:
    """Outcome of :func:`fit_encoding_models`: summaries; the predictions are files in ``run_dir``."""

    spec: FitSpec
    run_dir: Path
    models: list[str]  # every model name (base + derived), in spec order
    kinds: dict[str, str]  # model -> ridge | mlp | banded | per-roi | ensemble
    metrics: dict = field(default_factory=dict)  # model -> subject -> hemi/both -> {...}
    failures: list[dict] = field(default_factory=list)  # {subject, hemi, model, error}
    registered: list[str] = field(default_factory=list)
    seconds: float = 0.0
    worker_peak_rss_gb: float = 0.0  # largest resident memory of any fit or assembly worker

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @property
    def test_preds(self) -> dict:
        """(model, subject) -> {hemi: memory-mapped test predictions} for every scored model."""
        hemis = list(self.spec.hemispheres)
        return {(m, s): {h: open_array(self.layout.test_pred(m, s, h)) for h in hemis}
                for m, by_subject in self.metrics.items() for s in by_subject}


def covering_features(ds: AlgonautsDataset, fs: FeatureStore) -> list[str]:
    """Feature tables holding every stimulus (train and test, all subjects) of a dataset."""
    need = _dataset_ids(ds)
    return [name for name in fs.names() if not _missing_ids(need, fs, name) and not fs.metadata(name).get("derived_from")]


def _dataset_ids(ds: AlgonautsDataset) -> set[str]:
    """Every stimulus id of the dataset (train and test, all subjects)."""
    return set(ds.stimuli().column("stimulus_id").to_pylist())


def _missing_ids(need: set[str], fs: FeatureStore, table: str) -> int:
    """How many of the ids ``need`` are not in ``table``."""
    return len(need - set(fs.ids(table)))


def default_spec(dataset: str | Path, store: str, registry: str, *, include_random: bool = False,
                 notes: list[str] | None = None, **kw) -> FitSpec:
    """Ridge on each usable feature table; with several, banded ridge on their union, the per-ROI
    best (chosen on the validation fold) among them and the average ensemble of the single tables.

    A table is usable when it holds every stimulus of the dataset, is not derived (PCA) and, unless
    ``include_random``, was not made with random weights. Each table left out is described in
    ``notes`` (a list the caller prints), by name and with the reason.
    """
    ds = open_dataset(dataset)
    fs = FeatureStore(store, create=False)
    notes = [] if notes is None else notes
    feats = []
    need = _dataset_ids(ds)
    for name in fs.names():
        meta = fs.metadata(name)
        missing = _missing_ids(need, fs, name)
        if missing:
            notes.append(f"left out feature table {name!r}: {missing} stimuli of {ds.root} are not in it "
                         f"(run `brainstore extract --dataset {ds.root}` with its extractor to complete it)")
        elif ds.is_timeseries and not meta.get("delays"):
            notes.append(f"left out feature table {name!r}: a feature time series without delays (the ridge could "
                         "not learn the hemodynamic lag); fit its delayed table (`brainstore extract --delays`), "
                         "or name it in a --config spec to use it")
        elif meta.get("derived_from") and not (ds.is_timeseries and meta.get("delays")):
            notes.append(f"left out feature table {name!r}: derived from {meta['derived_from']!r} "
                         "(name it in a --config spec to use it)")
        elif meta.get("random_init") == "true" and not include_random:
            notes.append(f"left out feature table {name!r}: made with RANDOM weights (pretrained=none); "
                         "pass --include-random to fit it anyway")
        else:
            if meta.get("random_init") == "true":
                notes.append(f"including feature table {name!r}, made with RANDOM weights (--include-random)")
            feats.append(name)
    if not feats:
        raise ValueError(f"no usable feature table in {store} for {ds.root}"
                         + (": " + "; ".join(notes) if notes else "; run `brainstore extract` first"))
    models = [ModelSpec(name=f, features=[f]) for f in feats]
    per_roi, ensembles = [], []
    if len(feats) > 1:
        models.append(ModelSpec(name="+".join(feats), features=feats, method="banded"))
        ensembles.append(EnsembleSpec(name="avg-ensemble", members=feats))
        per_roi.append(PerRoiSpec(name="per-roi-best", default=models[-1].name, choose_by_cv=True,
                                  members=[m.name for m in models]))
    return FitSpec(dataset=str(ds.root), store=store, registry=registry, models=models, per_roi=per_roi,
                   ensembles=ensembles, **kw)


def check_inputs(spec: FitSpec, ds: AlgonautsDataset, fs: FeatureStore, subjects: list[str]) -> None:
    """Fail fast, before any task starts: unknown subjects, feature tables or ROIs; too few samples."""
    from ._choice import resolve_regions
    from ._encoding import validation_folds

    bad = [s for s in subjects if s not in ds.subjects]
    if bad:
        raise ValueError(f"subjects {bad} are not in {ds.root} (subjects: {ds.subjects})")
    have = set(fs.names())
    missing = sorted({f for m in spec.models for f in m.features if f not in have})
    if missing:
        raise ValueError(f"feature tables {missing} are not in store {fs.uri} (tables: {sorted(have)}); "
                         "extract them first with `brainstore extract`")
    for s in subjects:
        n = ds.n_images(s, "train")
        if n // spec.folds < 4:
            raise ValueError(f"{s} has {n} training images: too few for {spec.folds} folds (each fold needs >= 4)")
        validation_folds(n, spec.folds, ds.cv_groups(s, "train"))
        for p in spec.per_roi:
            for h in spec.hemispheres:
                resolve_regions(ds.regions(s, h), list(p.rules), f"per_roi {p.name!r} rules ({s} {h})")


def _subject_problems(root: str, subject: str) -> list[str]:
    """Response shapes, NaN / inf, noise ceilings and ROI lengths of one subject (run as a Ray task)."""
    return open_dataset(root).validate(check_images=False, subjects=[subject])


def check_responses(ds: AlgonautsDataset, subjects: list[str]) -> None:
    """Validate every subject's responses and ROI masks before any fit task starts.

    One Ray task per subject reads the response files (memory-mapped, in row blocks), so the
    scan uses the cluster's CPUs and the driver's memory stays small.

    Raises
    ------
    DatasetValidationError
        Listing every problem, each naming its file and the fix.
    """
    import ray

    from ...datasets import DatasetValidationError

    task = ray.remote(num_cpus=1, max_retries=1)(_subject_problems)
    problems = [p for ps in ray.get([task.remote(str(ds.root), s) for s in subjects]) for p in ps]
    if problems:
        raise DatasetValidationError(str(ds.root), problems)


def missing_stimuli(spec: FitSpec, ds: AlgonautsDataset, fs: FeatureStore, subjects: list[str]
                    ) -> dict[tuple[str, str], MissingStimuliError]:
    """``{(subject, model): error}`` for every base model whose feature tables lack some of the subject's stimuli.

    Checked on the driver before any task: such a subject x model fails alone, at once, with the
    table and the ids named, while the others are fitted.
    """
    table_ids = {f: set(fs.ids(f)) for f in sorted({f for m in spec.models for f in m.features})}
    out = {}
    for s in subjects:
        need = set(ds.stimuli(subjects=[s]).column("stimulus_id").to_pylist())
        for m in spec.models:
            for f in m.features:
                lacking = sorted(need - table_ids[f])
                if lacking:
                    out[(s, m.name)] = MissingStimuliError(f, lacking)
                    break
    return out


def plan_fit_cpus(n_cpus: float, n_jobs: int, use_gpu: bool) -> int:
    """CPUs (and BLAS/torch threads) per fit task: the node's CPUs shared by the fits that run at once."""
    if use_gpu or n_jobs <= 0:
        return 1
    return max(1, int(n_cpus // min(n_jobs, max(1, int(n_cpus)))))


def _fit_cost(model, dims: dict[str, int]) -> float:
    """Relative cost of fitting ``model`` (a ModelSpec): p^2 per ridge CV, times the band weightings."""
    from ..ridge import default_n_candidates  # (numpy only: the driver never imports torch)

    p = sum(dims[f] for f in model.features)
    if model.method != "banded":
        return float(p * p)
    gammas = model.banded.gammas if model.banded is not None else None
    n = default_n_candidates(len(model.features)) if gammas is None else (
        gammas if isinstance(gammas, int) else len(gammas))
    return float(n * p * p)


def _model_order(spec: FitSpec) -> tuple[list[str], dict[str, str]]:
    names, kinds = [], {}
    for m in spec.models:
        names.append(m.name)
        kinds[m.name] = m.method
    for p in spec.per_roi:
        names.append(p.name)
        kinds[p.name] = "per-roi"
    for e in spec.ensembles:
        names.append(e.name)
        kinds[e.name] = "ensemble"
    return names, kinds


def task_error_text(e: BaseException) -> str:
    """One line for a failed Ray task: a missing-stimuli error as its own message, else ``Type: message`` of the cause."""
    cause = getattr(e, "cause", None) or e
    return str(cause) if isinstance(cause, MissingStimuliError) else f"{type(cause).__name__}: {cause}"


def fit_encoding_models(spec: FitSpec, *, store: str, registry: str, out: str | Path | None = None,
                        progress: bool = True, register: bool = True) -> FitRun:
    """Fit, evaluate and register every model of ``spec`` for every subject x hemisphere.

    Parameters
    ----------
    spec : FitSpec
    store, registry : feature store and model registry URIs.
    out : the run folder for predictions and reports (default ``<registry>/_runs/fit-<time>``).
    progress : show a progress bar.
    register : save the models in the registry.
    """
    from ..._paths import check_folder
    from ..._ray import ensure_connected

    t0 = time.time()
    ds, fs, reg = open_dataset(spec.dataset), FeatureStore(store, create=False), ModelRegistry(registry)
    subjects = ds.subjects if spec.subjects == "all" else list(spec.subjects)
    check_inputs(spec, ds, fs, subjects)
    lacking = missing_stimuli(spec, ds, fs, subjects)
    if len(lacking) == len(subjects) * len(spec.models):  # nothing could be fitted: refuse before any work
        raise next(iter(lacking.values()))
    run_dir = default_run_dir(out, reg.root, "fit")
    # before any work: a file or read-only path is refused; made once the responses are checked
    run_dir = check_folder(run_dir, "run folder", "--out", create=True, make=False)
    res = ensure_connected()
    check_responses(ds, subjects)
    run_dir.mkdir(parents=True, exist_ok=True)
    use_gpu = res.get("GPU", 0) > 0 and spec.device != "cpu"
    jobs = _fit_jobs(spec, ds, fs, subjects, lacking, run_dir, use_gpu)
    names, kinds = _model_order(spec)
    run = FitRun(spec=spec, run_dir=run_dir, models=names, kinds=kinds)
    driver = _FitDriver(spec, ds, fs, reg, run, subjects, register)
    driver.drive(jobs, lacking, plan_fit_cpus(res.get("CPU", 1), len(jobs), use_gpu), use_gpu, progress)
    remove_partial(run_dir)  # every task is done: what tasks killed mid-write (a lost node) left behind goes
    run.metrics = {m: run.metrics[m] for m in names if m in run.metrics}  # spec order
    run.seconds = time.time() - t0
    return run


def _fit_jobs(spec: FitSpec, ds: AlgonautsDataset, fs: FeatureStore, subjects: list[str], lacking: dict,
              run_dir: Path, use_gpu: bool) -> list[dict]:
    """One base-fit job per subject x model x hemisphere (those lacking stimuli left out): subject by subject
    (its assembly overlaps the next subject's fits), costliest model first (no long fit left alone at the end
    while the other CPUs idle). Store and registry are absolute: the tasks reopen them in their own working
    directory."""
    dims = {f: fs.info(f).dim for f in {f for m in spec.models for f in m.features}}
    by_cost = sorted(spec.models, key=lambda m: -_fit_cost(m, dims))
    return [{"dataset": str(ds.root), "store": fs.uri, "store_options": fs.options, "run_dir": str(run_dir),
             "subject": s, "hemi": h, "model": m.name, "method": m.method, "features": m.features,
             "alphas": spec.alphas, "folds": spec.folds, "scoring": spec.scoring,
             "device": "cuda" if use_gpu else "cpu", "params": m.params()}
            for s in subjects for m in by_cost for h in spec.hemispheres if (s, m.name) not in lacking]


class _FitDriver:
    """The driver's loop over Ray tasks: base fits, then each subject's assembly once its fits are done. It keeps
    summaries only (fit infos, metrics, failures), never arrays."""

    def __init__(self, spec: FitSpec, ds: AlgonautsDataset, fs: FeatureStore, reg: ModelRegistry, run: FitRun,
                 subjects: list[str], register: bool):
        self.spec, self.ds, self.fs, self.reg, self.run, self.register = spec, ds, fs, reg, run, register
        self.subjects = subjects
        self.infos: dict[str, dict] = {s: {} for s in subjects}
        self.failed: dict[str, set] = {s: set() for s in subjects}

    def drive(self, jobs: list[dict], lacking: dict, cpus: int, use_gpu: bool, progress: bool) -> None:
        """Submit every base fit, collect each task as it ends, submit each subject's assembly."""
        import ray
        from tqdm.auto import tqdm

        from ._assemble import assemble_subject
        from ._encoding import fit_base

        fit_task = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0, max_retries=3,
                              retry_exceptions=False)(fit_base)
        self.assemble_task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(assemble_subject)
        self.pending = {fit_task.remote({**j, "threads": cpus}): j for j in jobs}
        self.left = {s: sum(j["subject"] == s for j in jobs) for s in self.subjects}
        for (s, model), err in lacking.items():  # failed on the driver, before any task
            self.failed[s].add(model)
            for h in self.spec.hemispheres:
                self.run.failures.append({"subject": s, "hemi": h, "model": model, "error": str(err)})
            log.error("fit skipped for %s %s: %s", s, model, err)
        self.bar = tqdm(total=len(jobs) + len(self.subjects), desc="fit subject x hemisphere x model", unit="task",
                        disable=not progress)
        for s in self.subjects:
            if self.left[s] == 0:  # every model of this subject lacks stimuli: no task, no assembly
                self.bar.update()
        while self.pending:
            [ref], _ = ray.wait(list(self.pending), num_returns=1)
            j = self.pending.pop(ref)
            if "hemi" in j:
                self._fit_done(ref, j)
            else:
                self._assembly_done(ref, j["subject"])
            self.bar.update()
        self.bar.close()

    def _fit_done(self, ref, j: dict) -> None:
        """A base fit ended: its summary (or failure); once the subject's fits are all done, its assembly."""
        import ray

        s, run = j["subject"], self.run
        try:
            summary = ray.get(ref)
            self.infos[s].setdefault(j["model"], {})[j["hemi"]] = summary["info"]
            run.worker_peak_rss_gb = max(run.worker_peak_rss_gb, summary["info"]["peak_rss_gb"])
        except Exception as e:  # a failing subject is reported; the others still finish
            msg = task_error_text(e)
            self.failed[s].add(j["model"])
            run.failures.append({"subject": s, "hemi": j["hemi"], "model": j["model"], "error": msg})
            log.error("fit failed for %s %s %s: %s", s, j["hemi"], j["model"], msg)
        self.left[s] -= 1
        if self.left[s] == 0:
            fitted = [m.name for m in self.spec.models if m.name not in self.failed[s]]
            if fitted:
                aj = {"dataset": str(self.ds.root), "store": self.fs.uri, "store_options": self.fs.options,
                      "registry": str(self.reg.root), "registry_options": self.reg.storage_options,
                      "run_dir": str(run.run_dir), "subject": s, "spec": self.spec.model_dump(), "fitted": fitted,
                      "infos": self.infos[s], "register": self.register}
                self.pending[self.assemble_task.remote(aj)] = {"subject": s}
            else:
                self.bar.update()

    def _assembly_done(self, ref, s: str) -> None:
        """A subject's assembly ended: its metrics, failures and registered models (or its failure)."""
        import ray

        run = self.run
        try:
            out_s = ray.get(ref)
            for name, m in out_s["metrics"].items():
                run.metrics.setdefault(name, {})[s] = m
            run.failures += out_s["failures"]
            run.registered += out_s["registered"]
            run.worker_peak_rss_gb = max(run.worker_peak_rss_gb, out_s["peak_rss_gb"])
        except Exception as e:
            run.failures.append({"subject": s, "hemi": "both", "model": "(assembly)", "error": task_error_text(e)})
            log.error("assembly failed for %s: %s", s, task_error_text(e))

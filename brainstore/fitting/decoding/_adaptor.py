"""Adaptor decoders trained with Ray Train: every subject's responses -> shared latent -> target embeddings.

One model for all subjects (:class:`~._adaptor_net.AdaptorNet`, registered as
:class:`~._adaptor_model.AdaptorModel`): a per-subject adapter, a shared residual-MLP backbone, one
head per target table. A Ray Train ``TorchTrainer`` runs the training loop on ``num_workers``
workers (DDP; GPUs when the cluster has them). Each worker reads the responses (z-scored per voxel
with the subject's training statistics, computed on the driver) and the target embeddings from the
store, and takes its share of every subject's training images each epoch; each step passes one batch
per subject through that subject's adapter, so every adapter takes part in every step (what DDP
needs) and contrastive negatives never mix subjects.

Loss: ``beta * contrastive + (1 - beta) * (MSE + l1 * L1)`` per subject and target, contrastive
being CLIP's symmetric InfoNCE with a learned temperature, MindEye's SoftCLIP, or BiMixCo (mixup
of the inputs with soft contrastive labels) for the first epochs then SoftCLIP.

Adapters may differ per subject ("linear", "lowrank", "factored"; recorded in the registered meta as
``adapters``): transfer to a new subject (``init_from``) keeps the pretrained subjects' adapters and
gives the new one ``new_adapter`` / ``new_rank`` (a "factored" adapter trains a few % of the model).

Domain adaptation (``params.domain_adaptation`` with ``adapt_subjects``; seed 002 after DANCE, Saito et
al. 2020): the unlabeled training responses of the adapt subjects join training (their target
embeddings are never read). A cosine classifier g on the shared features (the backbone's output)
decides over pseudo-classes: the k-means clusters (seeded, on the driver) of the labeled subjects'
training embeddings of the first target table. g's prototypes start as the mean feature of each
class's labeled images (imprinting) and learn at 10x the rate (DANCE); labeled samples train g by
cross-entropy to their cluster, inside the supervised loss, on detached features: unlike DANCE,
where classification is the task, here it would pull the features away from decoding (the labeled
subjects' validation top-1 fell by a third). Each unlabeled batch gets neighborhood clustering (its
similarities, at temperature ``tau``, to a memory bank of the adapt subject's unlabeled features and to
g's prototypes; the bank holds one L2-normalized feature per unlabeled sample, built from the model at
the start of training and replaced by each step's batch features, gathered over the workers) and
entropy separation (``|H(p) - rho|`` pushed up beyond the margin). Total:
``lam * supervised + (1 - lam) * sum over adapt subjects of (NC + ES)``.

A checkpoint is written every epoch (model, optimizer, epoch, and the fingerprint of the spec);
a worker (or node) that dies mid-run makes Ray Train restart the worker group (up to
:data:`MAX_FAILURES` times), which picks up the last checkpoint (``ray.train.get_checkpoint()``;
``AdaptorRun.resumes`` lists the epochs training resumed at);
a run started again on the same run folder resumes from its last checkpoint, and refuses a
checkpoint made with another spec (domain adaptation, adapt subjects and adapters included). The
trained model is registered as ``<name>/shared``.

Judged on data it was not trained on: the last ``val_fraction`` of each trained subject's training images (for a
time series, whole runs: :func:`~._inputs.validation_cut`)
is held out, every epoch is scored on it (validation top-1, both directions averaged), and the epoch kept
is the best (by more than ``min_delta``), training stopping after ``patience`` epochs without one. From
scratch the network starts from ridge (``ridge_base``, :mod:`._adaptor_compare`: the ridge decoder fitted on
the same rows is a fixed base its heads add to, starting at zero), so the start, judged as epoch -1, decodes
as ridge does. The settings are searched with Ray Tune (``spec.search``, :mod:`._adaptor_search`) and the
ridge decoder is scored on the same validation rows beside it (``AdaptorRun.comparison``, ``winner``).

The driver (this module) checks the inputs and prepares them (voxel statistics, transfer from a registered
adaptor in :mod:`._adaptor_init`, k-means pseudo-classes), runs the trainer (:mod:`._adaptor_train`: the
worker loop), scores the test split and registers the model. Its options travel as one
:class:`~brainstore.fitting.DecoderSpec` (:func:`train_adaptor`); :func:`fit_adaptor` is its keyword form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...datasets import HEMISPHERES, AlgonautsDataset, DatasetError, open_dataset
from ...features import FeatureStore
from .._spec import AdaptorParams, DecoderSpec, SearchParams
from ..encoding import subject_stimuli
from ..registry import ModelRegistry, dataset_digest, encode_ids, safe_name, stimuli_digest, table_fingerprint
from ..ridge import input_eps, robust_scale
from ._adaptor_compare import fit_ridges, ridge_base_state, ridge_floor, ridge_on_validation, winner
from ._adaptor_init import Pretrained, _mean_adapter_init, adapter_specs, load_pretrained
from ._adaptor_search import search_adaptor
from ._adaptor_model import ADAPTOR_KIND, AdaptorModel, _build_net
from ._adaptor_train import CKPT_FILE, _param_counts
from ._adaptor_trainer import latest_checkpoint, run_trainer, spec_hash
from ._inputs import check_decoding_inputs, response_matrix, select_voxels, validation_cut
from ._scores import row_cosine

__all__ = ["ADAPTOR_KIND", "AdaptorRun", "fit_adaptor", "train_adaptor", "AdaptorModel"]

@dataclass
class AdaptorRun:
    """What :func:`fit_adaptor` did: per-subject test metrics, the registered name, the training history."""

    name: str
    run_dir: Path
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)  # {target: {subject: retrieval metrics}}
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_epoch: int | None = None
    # epochs at which training resumed from a checkpoint: a worker group restarted after a failure within the
    # run (FailureConfig(max_failures=MAX_FAILURES)), or a new run on the same folder
    resumes: list[int] = field(default_factory=list)
    n_params: int = 0  # parameters of the network (every ``net.`` tensor)
    n_trainable: int = 0  # the parameters this run trained
    adapt_subjects: list[str] = field(default_factory=list)  # domain adaptation: subjects adapted to, unlabeled
    # the epoch whose weights were kept (best validation top-1); -1: the start (with ridge_base, the ridge's decoder);
    # None: the last (no validation split)
    best_epoch: int | None = None
    val_top1: dict[str, float] = field(default_factory=dict)  # {subject: validation top-1 at the best epoch}
    # the ridge decoder on the same validation split: {subject: {"adaptor_val_top1", "ridge_val_top1", "ridge_alpha",
    # "ridge_test": retrieval figures of that ridge on the test split}}
    comparison: dict[str, dict] = field(default_factory=dict)
    winner: str | None = None  # "adaptor" or "ridge": the better mean validation top-1
    # ridge_floor: whether the kept epoch is nowhere below ridge on validation, each way and subject (None: not judged)
    floor_held: bool | None = None
    search: dict | None = None  # the search's record: trials table, best trial, seconds (None: settings as given)
    params: dict = field(default_factory=dict)  # the settings trained (the search's winner)
    registered: bool = False


def fit_adaptor(dataset: str | Path, targets: list[str], *, store: str, registry: str,
                params: AdaptorParams | dict | None = None, subjects: list[str] | None = None,
                rois: list[str] | None = None, name: str | None = None, num_workers: int = 2,
                use_gpu: bool | None = None, out: str | Path | None = None, fraction: float = 1.0,
                init_from: str | None = None, trainable: str = "all", adapt_subjects: list[str] | None = None,
                register: bool = True, n_candidates: int = 300, n_draws: int = 30,
                search: SearchParams | dict | None = None) -> AdaptorRun:
    """Train one adaptor decoder over ``subjects`` with Ray Train, evaluate retrieval, register it.

    The keyword form of :func:`train_adaptor` (whose options are one :class:`DecoderSpec`, as
    :func:`fit_decoder` takes them); several ``targets`` give the network one head each.

    Parameters
    ----------
    targets : store tables to decode into (one head each).
    params : :class:`AdaptorParams` (or its fields).
    fraction : share of each subject's training images used (the first ones; few-shot studies).
    init_from : a registered adaptor (``name/shared``) whose weights start the training. Its subjects
        keep their adapters (kind and rank as registered); subjects it lacks get freshly initialized
        adapters of kind ``params.new_adapter`` / ``params.new_rank`` (default ``adapter`` / ``rank``).
    trainable : "all", or "adapter" (only the adapters of ``subjects`` and ``adapt_subjects``, plus the
        domain-adaptation classifier: transfer to a new subject, every other tensor stays bit-identical).
        ``init_from`` with ``trainable="all"`` and a new subject is MindBridge's *reset-tuning*: the new
        subject's layers (its adapter) start fresh, the pretrained shared layers are fine-tuned with it.
    adapt_subjects : domain adaptation (needs ``params.domain_adaptation``): subjects whose unlabeled
        training responses join training (never their target embeddings). A subject also in
        ``subjects`` contributes the images after its labeled share (``1 - fraction``); any other gets
        an adapter (a new one unless ``init_from`` has it) and all its training images, both capped at
        ``domain_adaptation.memory``.
    num_workers : Ray Train workers (DDP); ``use_gpu`` None uses GPUs when the cluster has them.
    search : :class:`SearchParams` (or its fields): search the settings with Ray Tune, ``params`` being the
        first trial; None (the keyword form's default) trains ``params`` as given. (A
        :class:`DecoderSpec`'s default is a search.)
    out : run folder (default ``<registry>/_runs/adaptor-TIME``); starting again on the same folder
        resumes from its last checkpoint.

    Returns
    -------
    AdaptorRun
        With the registered meta, ``n_params`` (the whole network) and ``n_trainable`` (what this run
        trained); the meta records each subject's adapter (``adapters: {subject: {"kind", "rank"}}``),
        ``adapt_subjects`` and ``domain_adaptation``.
    """
    p = params if isinstance(params, AdaptorParams) else AdaptorParams(**(params or {}))
    if trainable not in ("all", "adapter"):
        raise ValueError(f"trainable must be 'all' or 'adapter', got {trainable!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    targets = list(targets)
    spec = DecoderSpec(target=targets[0], method="adaptor", name=name, rois=rois, adaptor=p, workers=num_workers,
                       init_from=init_from, trainable=trainable, fraction=fraction, adapt_subjects=adapt_subjects,
                       search=search)
    return train_adaptor(spec, dataset=dataset, store=store, registry=registry, out=out, subjects=subjects,
                         targets=targets, use_gpu=use_gpu, register=register, n_candidates=n_candidates,
                         n_draws=n_draws)


def train_adaptor(spec: DecoderSpec, *, dataset: str | Path, store: str, registry: str, out: str | Path | None = None,
                  subjects: list[str] | None = None, targets: list[str] | None = None, use_gpu: bool | None = None,
                  register: bool = True, n_candidates: int = 300, n_draws: int = 30) -> AdaptorRun:
    """Train the adaptor ``spec`` describes (``method: adaptor``) with Ray Train, evaluate retrieval, register it.

    Parameters
    ----------
    spec : DecoderSpec
        ``target``, ``name``, ``rois``, ``adaptor`` (the :class:`AdaptorParams`), ``workers``, and the
        transfer and domain-adaptation fields ``init_from``, ``trainable``, ``fraction``, ``adapt_subjects``
        (see :func:`fit_adaptor`).
    dataset, store, registry : the dataset, the feature store holding the targets, the registry.
    out : the run folder (default ``<registry>/_runs/adaptor-TIME``); a run started again on it resumes.
    subjects : the subjects trained (default: all of the dataset's).
    targets : the store tables decoded into, one head each (default ``[spec.target]``).
    use_gpu : None uses GPUs when the cluster has one per worker.
    register : save the model as ``<name>/shared``.
    n_candidates, n_draws : the test split's retrieval (300-way, 30 draws).

    Returns
    -------
    AdaptorRun
    """
    from ..._ray import ensure_connected

    t0 = time.time()
    prep = _prepare(spec, dataset, store, registry, out, subjects, list(targets or [spec.target]))
    name = spec.name or f"adaptor-{safe_name('+'.join(prep.targets))}"
    prep.rdir.mkdir(parents=True, exist_ok=True)
    storage = prep.rdir / "train"
    res = ensure_connected()
    if use_gpu is None:
        use_gpu = res.get("GPU", 0) >= spec.workers
    run = AdaptorRun(name=name, run_dir=prep.rdir, adapt_subjects=prep.adapt)
    compare = not prep.adapt and not spec.init_from and prep.p.val_fraction > 0
    searched = spec.search.resolved_space().get("ridge_base", []) if spec.search is not None else []
    # the ridge's map, for the spec's settings or any trial's with the ridge start (a transfer's come with its weights)
    fresh_base = prep.base is None and (prep.p.ridge_base or True in searched)
    ridges = fit_ridges(prep) if (compare or fresh_base) else {}
    if fresh_base:  # the adaptor's fixed base: the ridge's map of its z-scored input
        import torch

        prep.base_state = str(prep.rdir / "ridge_base.pt")
        torch.save({k: torch.from_numpy(v) for k, v in ridge_base_state(prep, ridges).items()}, prep.base_state)
    ridge_val = ridge_floor(ridges, prep.targets[0]) if compare else {}  # ridge's validation top-1 each way
    if prep.p.ridge_floor and ridge_val:  # the adaptor's kept epoch must hold them
        prep.floor = ridge_val
    saved = _train(prep, spec, storage, bool(use_gpu), run)
    model = _trained_model(prep, saved)
    run.params = prep.p.model_dump()
    run.n_params, run.n_trainable = _param_counts(model.net, prep.adapted, spec.trainable)
    run.history, run.resumes = saved["history"], list(saved.get("resumes", []))
    best = saved.get("best")
    if best is not None:
        run.best_epoch, run.val_top1 = int(best["epoch"]), dict(best["subjects"])
        run.floor_held = bool(best.get("floor_held", True)) if prep.floor else None
    _score_test(run, model, prep, n_candidates, n_draws)
    if best is not None and compare:
        run.comparison = ridge_on_validation(prep, ridges, ridge_val, run.val_top1, best.get("directions", {}),
                                             n_candidates=n_candidates, n_draws=n_draws)
        run.winner = winner(run.comparison)
    if register and not (spec.method == "auto" and run.winner == "ridge"):
        tensors = {**model.tensors(), "fit_ids": encode_ids(_fit_ids(prep))}  # the rows its fingerprints hash
        prep.reg.save(f"{name}/shared", tensors, _registered_meta(prep, spec, run, name, saved))
        run.registered = True
    run.seconds = time.time() - t0
    return run


def _train(prep: _Prepared, spec: DecoderSpec, storage, use_gpu: bool, run: AdaptorRun) -> dict:
    """Train the spec's settings, or search them (then ``prep.p`` and its adapters become the winner's); the
    checkpoint of the model kept. A killed run on the same folder resumes from its last epoch."""
    cfg = _train_config(prep, spec, storage)
    if spec.search is not None:
        saved, prep.p, run.search = search_adaptor(cfg, spec.search, prep.p, use_gpu, storage)
        prep.adapters = adapter_specs(sorted(prep.all_subjects), prep.p, prep.base)
        return saved
    latest = latest_checkpoint(storage)  # a killed run on this folder resumes from its last epoch
    if latest and latest[2] != cfg["spec_hash"]:
        raise ValueError(f"the run folder {prep.rdir} holds the checkpoint of a training made by another adaptor spec "
                         f"(epoch {latest[0]}); use a new run folder (--out) or the spec it was made with")
    cfg["resume_from"] = str(latest[1] / CKPT_FILE) if latest else None  # (Ray Train v2: the loop loads it)
    saved = run_trainer(cfg, spec.workers, use_gpu, storage)
    run.resumed_from_epoch = latest[0] if latest else None
    return saved


@dataclass
class _Prepared:
    """What the driver read and checked before any training: the inputs of the workers' config."""

    ds: AlgonautsDataset
    fs: FeatureStore
    reg: ModelRegistry
    rdir: Path  # the run folder (checked, not yet made)
    p: AdaptorParams
    targets: list[str]
    subjects: list[str]  # trained (labeled) subjects
    adapt: list[str]  # domain adaptation: subjects whose unlabeled responses join training
    voxels: dict  # {subject: {hemi: vertex indices}}
    norm: dict  # {subject: {"mean", "std"}}
    n_lab: dict  # {subject: labeled training rows}
    unlabeled: dict  # {adapt subject: [first row, end row]}
    base: Pretrained | None  # the registered adaptor the run starts from
    all_subjects: dict  # {subject: n_voxels}, the pretrained model's then this run's
    adapters: dict  # {subject: {"kind", "rank"}}
    mean_init: dict  # starting adapter tensors of new subjects (new_adapter_init: mean)
    dims: dict  # {target: embedding dimension}
    centroids: list | None  # domain adaptation: k-means centroids of g's pseudo-classes
    n_class_samples: int  # labeled embeddings the k-means saw
    base_state: str | None = None  # ridge_base: the file of the base's buffers (written before training)
    floor: dict | None = None  # ridge_floor: {subject: ridge's validation top-1 each way}
    n_fit: dict = field(default_factory=dict)  # {subject: labeled rows before its validation split}

    @property
    def adapted(self) -> list[str]:
        """The subjects whose adapters train: the trained ones, then the adapt-only ones."""
        return list(self.subjects) + [s for s in self.adapt if s not in self.subjects]


def _check_options(spec: DecoderSpec, p: AdaptorParams) -> list[str]:
    """The adapt subjects (without repeats), once domain adaptation and transfer options agree."""
    adapt = list(dict.fromkeys(spec.adapt_subjects or []))
    if adapt and p.domain_adaptation is None:
        raise ValueError(f"adapt_subjects {adapt} need domain-adaptation settings: add params.domain_adaptation "
                         "(e.g. {'lam': 0.95, 'n_classes': 32}; {} for the defaults)")
    if p.domain_adaptation is not None and not adapt:
        raise ValueError("params.domain_adaptation is set but no subject to adapt to: pass adapt_subjects=[...] "
                         "(subjects whose unlabeled responses join training)")
    if p.ridge_base and (spec.init_from or adapt):
        raise ValueError("params.ridge_base starts an adaptor trained from scratch from the ridge decoder; transfer "
                         "(init_from) and domain adaptation cannot: leave ridge_base unset or false")
    if (p.new_adapter is not None or p.new_rank is not None or p.new_adapter_init != "random") and not spec.init_from:
        raise ValueError("params.new_adapter / new_rank / new_adapter_init set the adapters of subjects added to a "
                         "pretrained model: give init_from, or set adapter / rank for a model trained from scratch")
    return adapt


def _prepare(spec: DecoderSpec, dataset, store, registry, out, subjects, targets: list[str]) -> _Prepared:
    """Check every input before any work (the run folder is made only once they are read) and prepare them."""
    from ..._paths import check_folder
    from ..registry import run_dir as default_run_dir

    p = spec.adaptor or AdaptorParams()
    adapt = _check_options(spec, p)
    ds = open_dataset(dataset)
    unknown = [s for s in adapt if s not in ds.subjects]
    if unknown:
        raise DatasetError(f"adapt subject(s) {', '.join(unknown)} not in {ds.root}; known subjects: "
                           f"{', '.join(ds.subjects)}")
    # store and registry made absolute (fs.uri, reg.root): the workers reopen them in their own working directory
    fs, reg = FeatureStore(store, create=False), ModelRegistry(registry)
    subjects = check_decoding_inputs(ds, fs, targets, subjects)
    # checked before any work, made once the inputs are read (a bad response file leaves nothing behind)
    rdir = check_folder(default_run_dir(out, reg.root, "adaptor"), "run folder", "--out", create=True, make=False)
    base = load_pretrained(reg, spec.init_from, targets, p) if spec.init_from else None
    if p.ridge_base is None:  # the ridge start for adaptors trained from scratch; a transfer keeps its model's bases
        p = p.model_copy(update={"ridge_base": bool(base.meta["params"].get("ridge_base")) if base else not adapt})
    new = [x for x in [*subjects, *adapt] if base and x not in base.meta["n_voxels"]]
    if p.ridge_base and new:
        raise ValueError(f"adaptor {spec.init_from!r} was trained on a ridge start (ridge_base): its shared network "
                         f"holds corrections to each pretrained subject's ridge map and does not carry to a new subject "
                         f"({', '.join(new)}); pretrain the adaptor with ridge_base: false for transfer")
    voxels, norm, n_lab, unlabeled = _subject_inputs(ds, subjects, adapt, spec, p, base)
    all_subjects = _all_subjects(voxels, base, spec.init_from)
    adapters = adapter_specs(sorted(all_subjects), p, base)
    mean_init = {}
    if base and p.new_adapter_init == "mean":
        new_subjects = [s for s in sorted(all_subjects) if s not in base.adapters]
        mean_init = _mean_adapter_init(base.state, base.meta, voxels, adapters, new_subjects, spec.init_from)
    dims = {t: fs.info(t).dim for t in targets}
    centroids, n_class_samples = None, 0
    n_fit = _fit_rows(ds, subjects, n_lab, p)
    if p.domain_adaptation:
        centroids, n_class_samples = _kmeans_classes(ds, fs, targets[0], subjects, n_fit, unlabeled, p)
    return _Prepared(ds, fs, reg, rdir, p, targets, subjects, adapt, voxels, norm, n_lab, unlabeled, base,
                     all_subjects, adapters, mean_init, dims, centroids, n_class_samples, n_fit=n_fit)


def _fit_rows(ds, subjects: list[str], n_lab: dict, p: AdaptorParams) -> dict[str, int]:
    """Each subject's training rows before its validation split (:func:`~._inputs.validation_cut`: whole runs
    held out for a time series)."""
    return {s: validation_cut(n_lab[s], p.val_fraction, ds.cv_groups(s)) for s in subjects}


def _subject_inputs(ds: AlgonautsDataset, subjects: list[str], adapt: list[str], spec: DecoderSpec, p: AdaptorParams,
                    base: Pretrained | None) -> tuple[dict, dict, dict, dict]:
    """Each subject's voxel selection and normalization (statistics of its labeled training images only), its
    labeled rows, and each adapt subject's unlabeled rows: ``(voxels, norm, n_lab, unlabeled)``."""
    da, fraction, rois = p.domain_adaptation, spec.fraction, spec.rois
    voxels = {s: select_voxels(ds, s, rois) for s in subjects}
    n_lab, norm = {}, {}
    for s in subjects:  # voxel statistics of the (labeled) training images only
        R = response_matrix(ds, s, "train", voxels[s])
        n_lab[s] = max(2, int(round(len(R) * fraction)))
        norm[s] = _voxel_stats(R[:n_lab[s]])
        del R
    unlabeled = {}
    for s in adapt:  # rows of each adapt subject's unlabeled training images
        n = len(subject_stimuli(ds, s, "train"))
        lo = n_lab[s] if s in n_lab else 0
        hi = min(n, lo + da.memory) if da.memory else n
        if s in n_lab and lo >= n:
            raise ValueError(f"adapt subject {s} is trained on all of its training images (fraction {fraction}): no "
                             "unlabeled responses are left; use fraction < 1 or leave it out of subjects")
        if hi - lo < 2 * spec.workers:
            raise ValueError(f"adapt subject {s} has {hi - lo} unlabeled training images; domain adaptation needs "
                             f"at least 2 per worker ({2 * spec.workers})")
        unlabeled[s] = [lo, hi]
        if s in voxels:
            continue
        if base and s in base.meta["n_voxels"]:  # its pretrained adapter's voxels and statistics
            voxels[s] = {h: np.asarray(base.state[f"voxels.{s}.{h}"], np.int64) for h in HEMISPHERES}
            norm[s] = {k: np.asarray(base.state[f"norm.{s}.{k}"], np.float32).tolist() for k in ("mean", "std")}
            continue
        voxels[s] = select_voxels(ds, s, rois)
        R = response_matrix(ds, s, "train", voxels[s])[lo:hi]  # responses only
        norm[s] = _voxel_stats(R)
        del R
    return voxels, norm, n_lab, unlabeled


def _all_subjects(voxels: dict, base: Pretrained | None, init_from: str | None) -> dict[str, int]:
    """``{subject: n_voxels}`` of the network: the pretrained model's subjects, then this run's (refused when a
    pretrained subject's selection changed size)."""
    n_vox = {s: int(sum(len(v) for v in voxels[s].values())) for s in voxels}
    all_subjects = dict(base.meta["n_voxels"]) if base else {}
    for s in n_vox:
        if s in all_subjects and all_subjects[s] != n_vox[s]:
            raise ValueError(f"adaptor {init_from!r} has {all_subjects[s]} voxels for {s}, this selection "
                             f"{n_vox[s]}: use the ROIs it was trained with")
    all_subjects.update(n_vox)
    return all_subjects


def _train_config(prep: _Prepared, spec: DecoderSpec, storage: Path) -> dict:
    """The workers' config (``train_loop_config``) with its spec hash; a transfer's starting weights are written
    to the run folder (``init_state.pt``)."""
    import torch

    init_state = None
    if spec.init_from:
        tmp_init = prep.rdir / "init_state.pt"
        state = {k[4:]: torch.from_numpy(v) for k, v in prep.base.state.items() if k.startswith("net.")}
        state.update({k: torch.from_numpy(v) for k, v in prep.mean_init.items()})
        torch.save(state, tmp_init)
        init_state = str(tmp_init)
    cfg = {"dataset": str(prep.ds.root), "store": prep.fs.uri, "store_options": prep.fs.options,
           "targets": prep.targets, "params": prep.p.model_dump(),
           "subjects": sorted(prep.all_subjects), "train_subjects": prep.subjects, "n_voxels": prep.all_subjects,
           "target_dims": prep.dims,
           "voxels": {s: {h: v.tolist() for h, v in prep.voxels[s].items()} for s in prep.voxels},
           "norm": prep.norm, "fraction": spec.fraction, "trainable": spec.trainable, "init_state": init_state,
           "init_from": spec.init_from, "adapters": prep.adapters, "adapt_subjects": prep.adapt,
           "n_labeled": prep.n_lab, "n_fit": prep.n_fit, "unlabeled": prep.unlabeled, "centroids": prep.centroids,
           "base_state": prep.base_state, "floor": prep.floor,
           "storage": str(storage)}
    cfg["spec_hash"] = spec_hash(cfg)
    return cfg


def _trained_model(prep: _Prepared, saved: dict) -> AdaptorModel:
    """The trained network with every subject's voxels and normalization (a pretrained model's subjects kept)."""
    net = _build_net(prep.all_subjects, prep.dims, prep.p, prep.adapters)
    # the best epoch's weights (validation top-1), the last epoch's without a validation split
    net.load_state_dict(saved["best"]["model"] if saved.get("best") else saved["model"])
    st, base = (prep.base.state, prep.base.meta) if prep.base else ({}, None)
    prev = {s: {h: st[f"voxels.{s}.{h}"] for h in HEMISPHERES} for s in base["subjects"]} if base else {}
    prev_norm = {s: {k: st[f"norm.{s}.{k}"] for k in ("mean", "std")} for s in base["subjects"]} if base else {}
    return AdaptorModel(net, {**prev, **prep.voxels}, {**prev_norm, **prep.norm}, prep.targets)


def _score_test(run: AdaptorRun, model: AdaptorModel, prep: _Prepared, n_candidates: int, n_draws: int) -> None:
    """Retrieval figures (and the cosine) of each adapted subject's decoded test split, into ``run.metrics``."""
    from ...scoring import retrieval_metrics

    ds, fs = prep.ds, prep.fs
    for s in prep.adapted:
        if not ds.has_test_responses(s):
            continue
        test_ids = subject_stimuli(ds, s, "test")
        if s not in prep.subjects and any(not set(test_ids) <= set(fs.ids(t)) for t in prep.targets):
            continue  # an adapt-only subject whose test images are not all in the target tables: not scored
        decoded = model.decode(s, response_matrix(ds, s, "test", prep.voxels[s]))
        for t in prep.targets:
            Et = fs.load(t, test_ids)
            m = retrieval_metrics(decoded[t], Et, n_candidates=n_candidates, n_draws=n_draws)
            m["cosine"] = float(row_cosine(decoded[t], Et).mean())
            run.metrics.setdefault(t, {})[s] = m


def _registered_meta(prep: _Prepared, spec: DecoderSpec, run: AdaptorRun, name: str, saved: dict) -> dict:
    """``model.json`` of the trained adaptor: how it was made (settings, adapters, transfer, domain adaptation, the
    run folder), the digests of the responses it read (trained and adapt subjects), its targets' feature versions
    and fingerprints, and its test metrics."""
    p, da, fs, targets = prep.p, prep.p.domain_adaptation, prep.fs, prep.targets
    ids = _fit_ids(prep)
    da_meta = None
    if da:
        da_meta = {**da.model_dump(), "rho": da.resolved_rho(),
                   "pseudo_classes": f"k-means ({da.n_classes}, seed {p.seed}) of {prep.n_class_samples} labeled "
                                     f"training embeddings of {targets[0]}",
                   "unlabeled": {s: {"rows": prep.unlabeled[s], "n": prep.unlabeled[s][1] - prep.unlabeled[s][0]}
                                 for s in prep.adapt}}
    return {"kind": ADAPTOR_KIND, "method": "adaptor", "model": name, "subject": "shared",
            "subjects": sorted(prep.all_subjects), "trained_subjects": prep.subjects, "dataset": str(prep.ds.root),
            "dataset_digest": dataset_digest(prep.ds, prep.adapted),
            "stimuli_sha256": stimuli_digest(prep.ds, prep.adapted), "run": str(prep.rdir), "store": fs.uri, "targets": targets, "features": targets, "params": p.model_dump(),
            "n_voxels": prep.all_subjects, "target_dims": prep.dims, "fraction": spec.fraction,
            "trainable": spec.trainable, "init_from": spec.init_from, "rois": spec.rois, "adapters": prep.adapters,
            "n_params": run.n_params, "n_trainable": run.n_trainable,
            "adapt_subjects": prep.adapt, "domain_adaptation": da_meta,
            "feature_versions": {t: fs.metadata(t) for t in targets},
            "fingerprints": {t: table_fingerprint(fs, t, ids) for t in targets},
            "metrics": run.metrics, "epochs_trained": int(saved["epoch"]) + 1, "best_epoch": run.best_epoch,
            "val_top1": run.val_top1, "comparison": run.comparison, "winner": run.winner, "search": run.search}


def _fit_ids(prep: _Prepared) -> list[str]:
    """The stimuli whose target rows the adaptor's fingerprints hash: every trained subject's training images."""
    return sorted({i for s in prep.subjects for i in subject_stimuli(prep.ds, s, "train")})


def _voxel_stats(R: np.ndarray) -> dict[str, list[float]]:
    """Per-voxel mean and scale of the responses the adapter is normalized with: the std, by the rule of every
    model's feature scales (:func:`~brainstore.fitting.ridge.robust_scale`: 1 for constant and near-constant voxels)."""
    mean = R.mean(0, dtype=np.float64)
    scale, _ = robust_scale(R.std(0, dtype=np.float64), mean, input_eps(R))
    return {"mean": mean.astype(np.float32).tolist(), "std": scale.astype(np.float32).tolist()}


def _kmeans_classes(ds: AlgonautsDataset, fs: FeatureStore, table: str, subjects: list[str], n_fit: dict,
                    unlabeled: dict, p: AdaptorParams) -> tuple[list[list[float]], int]:
    """Centroids of g's pseudo-classes: k-means (seeded) of the L2-normalized embeddings (``table``) of the
    labeled subjects' training images (their labeled share less the monitoring one), and how many there were."""
    from sklearn.cluster import KMeans

    C = p.domain_adaptation.n_classes
    ids = []
    for s in subjects:
        sids = subject_stimuli(ds, s, "train")
        n = n_fit[s]
        if s in unlabeled:  # never an adapt subject's unlabeled image
            lo, hi = unlabeled[s]
            assert n <= lo and set(sids[:n]).isdisjoint(sids[lo:hi]), f"{s}: labeled rows overlap its unlabeled ones"
        ids.extend(sids[:n])
    ids = list(dict.fromkeys(ids))
    if len(ids) < C:
        raise ValueError(f"domain_adaptation.n_classes ({C}) exceeds the labeled training images ({len(ids)}): "
                         "lower n_classes")
    E = fs.load(table, ids).astype(np.float64)
    E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    km = KMeans(n_clusters=C, n_init=4, random_state=p.seed).fit(E)
    return km.cluster_centers_.tolist(), len(ids)

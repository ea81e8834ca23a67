"""Adaptor decoders trained with Ray Train: every subject's responses -> shared latent -> target embeddings.

One model for all subjects (:class:`~._adaptor_net.AdaptorNet`): a per-subject adapter, a shared
residual-MLP backbone, one head per target table. A Ray Train ``TorchTrainer`` runs the training
loop on ``num_workers`` workers (DDP; GPUs when the cluster has them). Each worker reads the
responses (z-scored per voxel with the subject's training statistics, computed on the driver) and
the target embeddings from the store, and takes its share of every subject's training images each
epoch; each step passes one batch per subject through that subject's adapter, so every adapter
takes part in every step (what DDP needs) and contrastive negatives never mix subjects.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datasets import HEMISPHERES, AlgonautsDataset, DatasetError, open_dataset
from ..features import FeatureStore
from ._decoding import _row_cosine, check_decoding_inputs, response_matrix, select_voxels
from ._encoding import subject_stimuli
from ._errors import NonFiniteOutputError
from ._fingerprint import table_fingerprint
from ._registry import ModelRegistry, RegistryError, register_loader, safe_name
from ._scaling import input_eps, robust_scale
from ._spec import AdaptorParams

__all__ = ["ADAPTOR_KIND", "AdaptorRun", "fit_adaptor", "AdaptorModel"]

#: ``kind`` of registered adaptor decoders.
ADAPTOR_KIND = "adaptor"
#: Checkpoint file inside a Ray Train checkpoint folder.
CKPT_FILE = "adaptor.pt"
#: Learning-rate multiplier of the domain-adaptation classifier g (DANCE: 10x the feature extractor's).
CLASSIFIER_LR_MULT = 10.0
#: Restarts of the Ray Train worker group after a worker (or its node) dies, each from the last checkpoint.
MAX_FAILURES = 3
#: What the checkpoint's spec hash covers.
_SPEC_KEYS = ("params", "subjects", "targets", "n_voxels", "target_dims", "trainable", "fraction", "adapters",
              "adapt_subjects", "unlabeled", "init_from")


def _build_net(n_voxels: dict[str, int], target_dims: dict[str, int], p: AdaptorParams,
               adapters: dict[str, dict] | None = None):
    """The :class:`~._adaptor_net.AdaptorNet` of these subjects, targets and settings; ``adapters``:
    {subject: {"kind", "rank"}} (None, as registrations made before per-subject adapters: all
    ``p.adapter`` / ``p.rank``)."""
    from ._adaptor_net import AdaptorNet

    da = p.domain_adaptation
    return AdaptorNet(n_voxels, target_dims, latent=p.latent, n_blocks=p.n_blocks, adapter=p.adapter, rank=p.rank,
                      adapters=adapters, dropout=p.dropout, temperature=p.temperature,
                      n_classes=da.n_classes if da else 0, class_temperature=da.classifier_temperature if da else 0.05)


def _is_trainable(name: str, adapted: list[str], trainable: str) -> bool:
    """Whether parameter ``name`` trains: the adapters of ``adapted`` (trained and adapt subjects; other
    subjects' adapters take no part, as DDP needs), the domain-adaptation classifier g (new
    pseudo-classes every run), and with ``trainable == "all"`` everything else."""
    if name.startswith("adapters."):
        return any(name.startswith(f"adapters.{s}.") for s in adapted)
    return name.startswith("classifier.") or trainable == "all"


def _param_counts(net, adapted: list[str], trainable: str) -> tuple[int, int]:
    """(all parameters, the parameters this run trains)."""
    n_all = sum(q.numel() for q in net.parameters())
    return n_all, sum(q.numel() for n, q in net.named_parameters() if _is_trainable(n, adapted, trainable))


def _spec_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps({k: cfg.get(k) for k in _SPEC_KEYS}, sort_keys=True).encode()).hexdigest()[:16]


def _train_responses(cfg: dict, subject: str) -> tuple[np.ndarray, list[str]]:
    """z-scored training responses of one subject (rows in image order) and their stimulus ids."""
    ds = open_dataset(cfg["dataset"])
    vox = {h: np.asarray(cfg["voxels"][subject][h], dtype=np.int64) for h in HEMISPHERES}
    R = response_matrix(ds, subject, "train", vox)
    mean, std = (np.asarray(cfg["norm"][subject][k], dtype=np.float32) for k in ("mean", "std"))
    return (R - mean) / std, subject_stimuli(ds, subject, "train")


def _labeled_arrays(cfg: dict, subject: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Responses and target embeddings of a subject's labeled training images (its first ``n_labeled``)."""
    R, ids = _train_responses(cfg, subject)
    n = cfg["n_labeled"][subject]
    lo, hi = cfg["unlabeled"].get(subject, (n, n))
    # domain adaptation: the embeddings of a subject's unlabeled images are never read
    assert n <= lo and set(ids[:n]).isdisjoint(ids[lo:hi]), f"{subject}: labeled rows overlap its unlabeled ones"
    fs = FeatureStore(cfg["store"], cfg.get("store_options"), create=False)
    return R[:n], {t: fs.load(t, ids[:n]) for t in cfg["targets"]}


def _unlabeled_responses(cfg: dict, subject: str) -> np.ndarray:
    """Responses of an adapt subject's unlabeled training images (rows ``unlabeled[subject]``); no target is read."""
    R, _ = _train_responses(cfg, subject)
    lo, hi = cfg["unlabeled"][subject]
    return R[lo:hi]


def _pseudo_classes(E: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest k-means centroid to each L2-normalized embedding."""
    X = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    return ((X ** 2).sum(1)[:, None] - 2 * X @ centroids.T + (centroids ** 2).sum(1)[None]).argmin(1)


def _train_loop(cfg: dict) -> None:
    """Ray Train worker loop (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from ._adaptor_net import (clip_loss, entropy_separation_loss, mixco_loss, neighborhood_clustering_loss,
                               regression_loss, soft_clip_loss)

    # Ray Train's per-report and per-checkpoint notices (INFO, one logger per file): the history says it
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    p = AdaptorParams(**cfg["params"])
    da = p.domain_adaptation
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(p.seed)
    device = ray.train.torch.get_device()
    centroids = np.asarray(cfg["centroids"], dtype=np.float64) if da else None
    data = {}
    for s in cfg["train_subjects"]:
        R, E = _labeled_arrays(cfg, s)
        n_use = len(R)
        n_val = int(round(n_use * p.val_fraction))
        tr, va = np.arange(n_use - n_val), np.arange(n_use - n_val, n_use)
        data[s] = {"R": torch.from_numpy(R), "E": {t: torch.from_numpy(e) for t, e in E.items()}, "train": tr, "val": va}
        if da:  # g's classes: the pseudo-class of each labeled image (first target table)
            data[s]["cls"] = torch.from_numpy(_pseudo_classes(E[cfg["targets"][0]], centroids))
    unl = {s: torch.from_numpy(_unlabeled_responses(cfg, s)) for s in cfg["adapt_subjects"]}
    model = _build_net(cfg["n_voxels"], cfg["target_dims"], p, cfg["adapters"])
    start = 0
    init = cfg.get("init_state")
    if init:  # transfer: a pretrained model's weights (a new subject's adapter stays as initialized)
        state = torch.load(init, map_location="cpu", weights_only=True)
        # g's pseudo-classes are this run's: a pretrained classifier is not reused
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing = model.load_state_dict(state, strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"pretrained adaptor has parameters this model lacks: {missing.unexpected_keys[:5]}")
    adapted = list(cfg["train_subjects"]) + [s for s in cfg["adapt_subjects"] if s not in cfg["train_subjects"]]
    for name, prm in model.named_parameters():
        prm.requires_grad = _is_trainable(name, adapted, cfg["trainable"])
    opt_state, saved = None, None
    ckpt = ray.train.get_checkpoint()  # a restart within this run, else the last epoch of a killed one
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)
    elif cfg.get("resume_from"):
        saved = torch.load(cfg["resume_from"], map_location="cpu", weights_only=False)
    if saved is not None:
        if saved["spec_hash"] != cfg["spec_hash"]:
            raise ValueError(f"the checkpoint in {cfg['storage']} was made by another adaptor spec "
                             f"({saved['spec_hash']} != {cfg['spec_hash']}); use a new run folder (--out) or the "
                             "spec it was made with")
        model.load_state_dict(saved["model"])
        opt_state, start, history = saved["optimizer"], saved["epoch"] + 1, saved["history"]
        resumes = list(saved.get("resumes", [])) + [start]  # epochs where training picked up from a checkpoint
    else:
        history, resumes = [], []
        if da:
            _imprint_prototypes(model, data)
    model = ray.train.torch.prepare_model(model)
    net = model.module if hasattr(model, "module") else model
    train = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    groups = [{"params": [q for n, q in train if "classifier." not in n]}]
    if da:  # g learns at DANCE's 10x rate; no decay (its logits are cosines)
        groups.append({"params": [q for n, q in train if "classifier." in n], "lr": p.lr * CLASSIFIER_LR_MULT,
                       "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    per_rank = {s: len(d["train"]) // world for s, d in data.items()}
    per_rank_u = {s: len(x) // world for s, x in unl.items()}
    steps = max(1, max(per_rank.values()) // p.batch_size)
    mixco_until = int(round(p.epochs * p.mixco_fraction)) if p.contrastive == "bimixco" else 0
    # memory banks (DANCE): one L2-normalized feature per unlabeled sample, from the current model (rebuilt on resume)
    banks = {s: _features(net, x, s, device) for s, x in unl.items()}
    rho = da.resolved_rho() if da else None
    for epoch in range(start, p.epochs):
        t0 = time.time()
        model.train()
        rng = np.random.default_rng(p.seed * 1000 + epoch)
        order = {s: rng.permutation(d["train"])[rank * per_rank[s]:(rank + 1) * per_rank[s]] for s, d in data.items()}
        order_u = {s: rng.permutation(len(x))[rank * per_rank_u[s]:(rank + 1) * per_rank_u[s]] for s, x in unl.items()}
        total, seen, sums = 0.0, 0, {"class_ce": 0.0, "nc": 0.0, "es": 0.0}
        mix = epoch < mixco_until
        for step in range(steps):
            loss = 0.0
            for s, d in data.items():
                idx = _batch(order[s], step, p.batch_size)
                x = d["R"][idx].to(device)
                if mix:
                    perm = torch.randperm(len(idx), device=device)
                    lam = torch.distributions.Beta(0.15, 0.15).sample((len(idx),)).to(device)
                    x = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
                if da:
                    out, h, _ = model(x, s, features=True)
                    # g learns the pseudo-classes without steering the shared features: its gradient in the
                    # backbone cost a third of the labeled subjects' validation top-1 (decoding is their task)
                    logits = net.class_logits(h.detach())
                    y = d["cls"][idx].to(device)
                    ce = (F.cross_entropy(logits, y, reduction="none") if not mix else
                          lam * F.cross_entropy(logits, y, reduction="none")
                          + (1 - lam) * F.cross_entropy(logits, y[perm], reduction="none")).mean()
                    loss = loss + ce
                    sums["class_ce"] += ce.item()
                else:
                    out = model(x, s)
                for t in cfg["targets"]:
                    y = d["E"][t][idx].to(device)
                    if mix:
                        con = mixco_loss(out[t], y, net.logit_scale, lam, perm)
                    elif p.contrastive == "clip":
                        con = clip_loss(out[t], y, net.logit_scale)
                    else:
                        con = soft_clip_loss(out[t], y, net.logit_scale)
                    loss = loss + p.beta * con + (1 - p.beta) * regression_loss(out[t], y, p.l1_weight)
                seen += len(idx)
            written = []
            if da:
                adapt = 0.0
                for s, x in unl.items():
                    slots = torch.as_tensor(_batch(order_u[s], step, p.batch_size), dtype=torch.long, device=device)
                    _, h, logits = model(x[slots.cpu()].to(device), s, features=True)
                    f = F.normalize(h, dim=1)
                    memory = banks[s].index_put((slots,), f)  # this batch's current features in their own slots
                    nc = neighborhood_clustering_loss(f, memory, net.prototypes(), da.tau, slots)
                    es = entropy_separation_loss(logits, rho, da.margin)
                    adapt = adapt + nc + es
                    sums["nc"] += nc.item()
                    sums["es"] += es.item()
                    written.append((s, slots, f.detach()))
                loss = da.lam * loss + (1 - da.lam) * adapt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            for s, slots, f in written:  # every worker's batch goes into every worker's bank
                banks[s][_gather(slots, world)] = _gather(f, world)
        metrics = {"epoch": epoch, "train_loss": total / steps, "samples_per_s": seen * world / (time.time() - t0)}
        if da:
            metrics.update({"class_ce": sums["class_ce"] / steps, "nc_loss": sums["nc"] / steps,
                            "es_loss": sums["es"] / steps})
        metrics.update(_val_metrics(net, data, cfg["targets"], device))
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "spec_hash": cfg["spec_hash"], "history": history, "resumes": resumes},
                           Path(tmp) / CKPT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)


def _imprint_prototypes(net, data: dict, chunk: int = 1024) -> None:
    """g's starting prototypes: the mean normalized shared feature of each pseudo-class's labeled training
    images under the starting model (weight imprinting; a class without images keeps its random weights)."""
    import torch

    feats, labels = [], []
    for s, d in data.items():
        feats.append(_features(net, d["R"][d["train"]], s, "cpu", chunk))
        labels.append(d["cls"][d["train"]])
    f, y = torch.cat(feats), torch.cat(labels)
    with torch.no_grad():
        for c in range(net.classifier.weight.shape[0]):
            if (y == c).any():
                net.classifier.weight[c] = torch.nn.functional.normalize(f[y == c].mean(0), dim=0)


def _batch(order: np.ndarray, step: int, size: int) -> np.ndarray:
    """The ``step``-th batch of a worker's share, cycling (at least 2 rows, for the contrastive losses)."""
    idx = order[(step * size) % max(1, len(order)):][:size]
    return idx if len(idx) >= 2 else order[:size]


def _features(net, R, subject: str, device, chunk: int = 1024):
    """L2-normalized shared features (the backbone's output) of ``R``, without dropout or gradients."""
    import torch
    import torch.nn.functional as F

    was = net.training
    net.eval()
    with torch.no_grad():
        out = torch.cat([F.normalize(net(R[i:i + chunk].to(device), subject, features=True)[1], dim=1)
                         for i in range(0, len(R), chunk)])
    net.train(was)
    return out


def _gather(t, world: int):
    """``t`` of every worker, concatenated in rank order (``t`` itself with one worker)."""
    import torch
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _val_metrics(net, data: dict, targets: list[str], device) -> dict:
    """Mean top-1 (brain -> stimulus) on each subject's held-out training images, first target."""
    import torch

    from ..scoring import retrieval_metrics

    net.eval()
    out = []
    with torch.no_grad():
        for s, d in data.items():
            if len(d["val"]) < 2:
                continue
            pred = net(d["R"][d["val"]].to(device), s)[targets[0]].cpu().numpy()
            out.append(retrieval_metrics(pred, d["E"][targets[0]][d["val"]].numpy(), n_draws=1)["top1_brain_to_stimulus"])
    return {"val_top1": float(np.mean(out))} if out else {}


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


def _latest_checkpoint(storage: Path) -> tuple[int, Path, str] | None:
    """(epoch, folder, spec hash) of the newest complete checkpoint under ``storage``, or None."""
    import torch

    best = None
    for f in storage.rglob(CKPT_FILE) if storage.exists() else []:
        try:
            saved = torch.load(f, map_location="cpu", weights_only=False)
        except Exception:  # a checkpoint being written when the run was killed
            continue
        if best is None or saved["epoch"] > best[0]:
            best = (int(saved["epoch"]), f.parent, saved["spec_hash"])
    return best


def fit_adaptor(dataset: str | Path, targets: list[str], *, store: str, registry: str,
                params: AdaptorParams | dict | None = None, subjects: list[str] | None = None,
                rois: list[str] | None = None, name: str | None = None, num_workers: int = 2,
                use_gpu: bool | None = None, out: str | Path | None = None, fraction: float = 1.0,
                init_from: str | None = None, trainable: str = "all", adapt_subjects: list[str] | None = None,
                register: bool = True, n_candidates: int = 300, n_draws: int = 30) -> AdaptorRun:
    """Train one adaptor decoder over ``subjects`` with Ray Train, evaluate retrieval, register it.

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
    out : run folder (default ``<registry>/_runs/adaptor-TIME``); starting again on the same folder
        resumes from its last checkpoint.

    Returns
    -------
    AdaptorRun
        With the registered meta, ``n_params`` (the whole network) and ``n_trainable`` (what this run
        trained); the meta records each subject's adapter (``adapters: {subject: {"kind", "rank"}}``),
        ``adapt_subjects`` and ``domain_adaptation``.
    """
    import torch
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .._paths import check_folder
    from .._ray import ensure_connected
    from ..scoring import retrieval_metrics
    from ._runfiles import run_dir as default_run_dir

    t0 = time.time()
    p = params if isinstance(params, AdaptorParams) else AdaptorParams(**(params or {}))
    da = p.domain_adaptation
    if trainable not in ("all", "adapter"):
        raise ValueError(f"trainable must be 'all' or 'adapter', got {trainable!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    adapt = list(dict.fromkeys(adapt_subjects or []))
    if adapt and da is None:
        raise ValueError(f"adapt_subjects {adapt} need domain-adaptation settings: add params.domain_adaptation "
                         "(e.g. {'lam': 0.95, 'n_classes': 32}; {} for the defaults)")
    if da is not None and not adapt:
        raise ValueError("params.domain_adaptation is set but no subject to adapt to: pass adapt_subjects=[...] "
                         "(subjects whose unlabeled responses join training)")
    if (p.new_adapter is not None or p.new_rank is not None or p.new_adapter_init != "random") and not init_from:
        raise ValueError("params.new_adapter / new_rank / new_adapter_init set the adapters of subjects added to a "
                         "pretrained model: give init_from, or set adapter / rank for a model trained from scratch")
    ds = open_dataset(dataset)
    unknown = [s for s in adapt if s not in ds.subjects]
    if unknown:
        raise DatasetError(f"adapt subject(s) {', '.join(unknown)} not in {ds.root}; known subjects: "
                           f"{', '.join(ds.subjects)}")
    fs, reg = FeatureStore(store, create=False), ModelRegistry(registry)
    store, registry = fs.uri, str(reg.root)  # absolute: the workers reopen them in their own working directory
    targets = list(targets)
    subjects = check_decoding_inputs(ds, fs, targets, subjects)
    # checked before any work, made once the inputs are read (a bad response file leaves nothing behind)
    rdir = check_folder(default_run_dir(out, reg.root, "adaptor"), "run folder", "--out", create=True, make=False)
    init_state, base, base_specs = None, None, {}
    if init_from:
        st, rec = reg.load_arrays(init_from)
        if rec.meta.get("kind") != ADAPTOR_KIND:
            raise RegistryError(f"--init-from {init_from!r} is a {rec.meta.get('kind')!r} model, not an adaptor")
        base = rec.meta
        if list(base["targets"]) != targets:
            raise RegistryError(f"adaptor {init_from!r} decodes into {base['targets']}, not {targets}")
        bp = AdaptorParams(**base["params"])
        for k in ("latent", "n_blocks"):
            if getattr(bp, k) != getattr(p, k):
                raise ValueError(f"adaptor {init_from!r} was trained with {k}={getattr(bp, k)}; the new run needs "
                                 f"the same {k} (given {getattr(p, k)})")
        base_specs = _registered_adapters(base)
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
        if hi - lo < 2 * num_workers:
            raise ValueError(f"adapt subject {s} has {hi - lo} unlabeled training images; domain adaptation needs "
                             f"at least 2 per worker ({2 * num_workers})")
        unlabeled[s] = [lo, hi]
        if s in voxels:
            continue
        if base and s in base["n_voxels"]:  # its pretrained adapter's voxels and statistics
            voxels[s] = {h: np.asarray(st[f"voxels.{s}.{h}"], np.int64) for h in HEMISPHERES}
            norm[s] = {k: np.asarray(st[f"norm.{s}.{k}"], np.float32).tolist() for k in ("mean", "std")}
            continue
        voxels[s] = select_voxels(ds, s, rois)
        R = response_matrix(ds, s, "train", voxels[s])[lo:hi]  # responses only
        norm[s] = _voxel_stats(R)
        del R
    n_vox = {s: int(sum(len(v) for v in voxels[s].values())) for s in voxels}
    all_subjects = dict(base["n_voxels"]) if base else {}
    for s in n_vox:
        if s in all_subjects and all_subjects[s] != n_vox[s]:
            raise ValueError(f"adaptor {init_from!r} has {all_subjects[s]} voxels for {s}, this selection "
                             f"{n_vox[s]}: use the ROIs it was trained with")
    all_subjects.update(n_vox)
    new_spec = {"kind": p.new_adapter or p.adapter, "rank": p.new_rank or p.rank} if base else \
        {"kind": p.adapter, "rank": p.rank}
    adapters = {s: base_specs.get(s) or _norm_spec(new_spec) for s in sorted(all_subjects)}
    mean_init = {}
    if base and p.new_adapter_init == "mean":
        new_subjects = [s for s in sorted(all_subjects) if s not in base_specs]
        mean_init = _mean_adapter_init(st, base, voxels, adapters, new_subjects, init_from)
    dims = {t: fs.info(t).dim for t in targets}
    centroids, n_class_samples = None, 0
    if da:
        centroids, n_class_samples = _kmeans_classes(ds, fs, targets[0], subjects, n_lab, unlabeled, p)
    name = name or f"adaptor-{safe_name('+'.join(targets))}"
    rdir.mkdir(parents=True, exist_ok=True)
    storage = rdir / "train"
    res = ensure_connected()
    if use_gpu is None:
        use_gpu = res.get("GPU", 0) >= num_workers
    if init_from:
        tmp_init = rdir / "init_state.pt"
        state = {k[4:]: torch.from_numpy(v) for k, v in st.items() if k.startswith("net.")}
        state.update({k: torch.from_numpy(v) for k, v in mean_init.items()})
        torch.save(state, tmp_init)
        init_state = str(tmp_init)
    cfg = {"dataset": str(ds.root), "store": fs.uri, "store_options": fs.options, "targets": targets,
           "params": p.model_dump(),
           "subjects": sorted(all_subjects), "train_subjects": subjects, "n_voxels": all_subjects,
           "target_dims": dims, "voxels": {s: {h: v.tolist() for h, v in voxels[s].items()} for s in voxels},
           "norm": norm, "fraction": fraction, "trainable": trainable, "init_state": init_state,
           "init_from": init_from, "adapters": adapters, "adapt_subjects": adapt, "n_labeled": n_lab,
           "unlabeled": unlabeled, "centroids": centroids, "storage": str(storage)}
    cfg["spec_hash"] = _spec_hash(cfg)
    latest = _latest_checkpoint(storage)  # a killed run on this folder resumes from its last epoch
    if latest and latest[2] != cfg["spec_hash"]:
        raise ValueError(f"the run folder {rdir} holds the checkpoint of a training made by another adaptor spec "
                         f"(epoch {latest[0]}); use a new run folder (--out) or the spec it was made with")
    cfg["resume_from"] = str(latest[1] / CKPT_FILE) if latest else None  # (Ray Train v2: the loop loads it)
    trainer = TorchTrainer(
        _train_loop, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=bool(use_gpu)),
        run_config=RunConfig(name="adaptor", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),  # restarts resume
                             logging_config=LoggingConfig(log_level="WARNING")))  # our history is the report
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)
    net = _build_net(all_subjects, dims, p, adapters)
    net.load_state_dict(saved["model"])
    adapted = list(subjects) + [s for s in adapt if s not in subjects]
    prev = {s: {h: st[f"voxels.{s}.{h}"] for h in HEMISPHERES} for s in base["subjects"]} if base else {}
    prev_norm = {s: {k: st[f"norm.{s}.{k}"] for k in ("mean", "std")} for s in base["subjects"]} if base else {}
    model = AdaptorModel(net, {**prev, **voxels}, {**prev_norm, **norm}, targets)
    run = AdaptorRun(name=name, run_dir=rdir, resumed_from_epoch=latest[0] if latest else None, adapt_subjects=adapt)
    run.n_params, run.n_trainable = _param_counts(net, adapted, trainable)
    run.history, run.resumes = saved["history"], list(saved.get("resumes", []))
    for s in adapted:
        if not ds.has_test_responses(s):
            continue
        test_ids = subject_stimuli(ds, s, "test")
        if s not in subjects and any(not set(test_ids) <= set(fs.ids(t)) for t in targets):
            continue  # an adapt-only subject whose test images are not all in the target tables: not scored
        decoded = model.decode(s, response_matrix(ds, s, "test", voxels[s]))
        for t in targets:
            Et = fs.load(t, test_ids)
            m = retrieval_metrics(decoded[t], Et, n_candidates=n_candidates, n_draws=n_draws)
            m["cosine"] = float(_row_cosine(decoded[t], Et).mean())
            run.metrics.setdefault(t, {})[s] = m
    if register:
        ids = sorted({i for s in subjects for i in subject_stimuli(ds, s, "train")})
        da_meta = None
        if da:
            da_meta = {**da.model_dump(), "rho": da.resolved_rho(),
                       "pseudo_classes": f"k-means ({da.n_classes}, seed {p.seed}) of {n_class_samples} labeled "
                                         f"training embeddings of {targets[0]}",
                       "unlabeled": {s: {"rows": unlabeled[s], "n": unlabeled[s][1] - unlabeled[s][0]} for s in adapt}}
        meta = {"kind": ADAPTOR_KIND, "method": "adaptor", "model": name, "subject": "shared", "subjects": sorted(all_subjects),
                "trained_subjects": subjects, "dataset": str(ds.root), "store": fs.uri, "targets": targets,
                "features": targets, "params": p.model_dump(), "n_voxels": all_subjects, "target_dims": dims,
                "fraction": fraction, "trainable": trainable,
                "init_from": init_from, "rois": rois, "adapters": adapters,
                "n_params": run.n_params, "n_trainable": run.n_trainable,
                "adapt_subjects": adapt, "domain_adaptation": da_meta,
                "feature_versions": {t: fs.metadata(t) for t in targets},
                "fingerprints": {t: table_fingerprint(fs, t, ids) for t in targets},
                "metrics": run.metrics, "epochs_trained": int(saved["epoch"]) + 1}
        reg.save(f"{name}/shared", model.tensors(), meta)
    run.seconds = time.time() - t0
    return run


def _mean_adapter_init(st: dict, base: dict, voxels: dict, adapters: dict, new_subjects: list[str],
                       init_from: str) -> dict[str, np.ndarray]:
    """Starting weights of each new subject's adapter (``new_adapter_init: mean``): the pretrained subjects'
    adapter maps ``z = W x + b`` averaged vertex by vertex. Linear: ``W``, ``b`` as they are; factored:
    ``down = sqrt(S_r) V_r^T``, ``up = U_r sqrt(S_r)`` from the SVD of the mean ``W`` (its best rank-r
    approximation); lowrank: the mean as its linear part (the residual starts at zero, as always).
    Needs every subject in one vertex space: the same vertices selected in each."""
    pre = list(base["subjects"])
    maps = []
    for s in pre:
        kind, key = adapters[s]["kind"], f"net.adapters.{s}."
        if kind == "linear":
            maps.append((st[key + "weight"], st[key + "bias"]))
        elif kind == "factored":
            maps.append((st[key + "up.weight"] @ st[key + "down.weight"], st[key + "up.bias"]))
        else:
            raise ValueError(f"new_adapter_init 'mean' averages linear maps; {init_from!r} gives {s} a {kind!r} adapter "
                             "(a nonlinear residual has no vertex-wise mean): use new_adapter_init 'random'")
    W = np.mean([m[0] for m in maps], axis=0).astype(np.float32)
    b = np.mean([m[1] for m in maps], axis=0).astype(np.float32)
    out = {}
    for s in new_subjects:
        for q in pre:
            theirs = {h: np.asarray(st[f"voxels.{q}.{h}"], np.int64) for h in HEMISPHERES}
            if any(not np.array_equal(theirs[h], np.asarray(voxels[s][h], np.int64)) for h in HEMISPHERES):
                n_q, n_s = (sum(len(v[h]) for h in HEMISPHERES) for v in (theirs, voxels[s]))
                raise ValueError(f"new_adapter_init 'mean' averages adapters vertex by vertex, so every subject must "
                                 f"be in one vertex space: {s} has {n_s} selected vertices, {q} of {init_from!r} "
                                 f"{n_q}{' (other vertices)' if n_s == n_q else ''}; use data in a shared space "
                                 "(e.g. Algonauts challenge space, make-dataset --alignment) or new_adapter_init 'random'")
        kind, rank, key = adapters[s]["kind"], adapters[s]["rank"], f"adapters.{s}."
        if kind == "linear":
            out[key + "weight"], out[key + "bias"] = W, b
        elif kind == "lowrank":
            out[key + "linear.weight"], out[key + "linear.bias"] = W, b
        else:
            U, S, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
            r = min(rank, len(S))
            down, up = np.zeros((rank, W.shape[1])), np.zeros((W.shape[0], rank))
            down[:r], up[:, :r] = np.sqrt(S[:r])[:, None] * Vt[:r], U[:, :r] * np.sqrt(S[:r])
            out[key + "down.weight"], out[key + "up.weight"] = down.astype(np.float32), up.astype(np.float32)
            out[key + "up.bias"] = b
    return out


def _voxel_stats(R: np.ndarray) -> dict[str, list[float]]:
    """Per-voxel mean and scale of the responses the adapter is normalized with: the std, by the rule of every
    model's feature scales (:func:`~._scaling.robust_scale`: 1 for constant and near-constant voxels)."""
    mean = R.mean(0, dtype=np.float64)
    scale, _ = robust_scale(R.std(0, dtype=np.float64), mean, input_eps(R))
    return {"mean": mean.astype(np.float32).tolist(), "std": scale.astype(np.float32).tolist()}


def _norm_spec(spec: dict) -> dict:
    from ._adaptor_net import adapter_spec

    return adapter_spec(spec["kind"], spec["rank"])


def _registered_adapters(meta: dict) -> dict[str, dict]:
    """Each registered subject's adapter; registrations made before per-subject adapters: all the params' kind."""
    if meta.get("adapters"):
        return {s: _norm_spec(a) for s, a in meta["adapters"].items()}
    p = AdaptorParams(**meta["params"])
    return {s: _norm_spec({"kind": p.adapter, "rank": p.rank}) for s in meta["subjects"]}


def _kmeans_classes(ds: AlgonautsDataset, fs: FeatureStore, table: str, subjects: list[str], n_lab: dict,
                    unlabeled: dict, p: AdaptorParams) -> tuple[list[list[float]], int]:
    """Centroids of g's pseudo-classes: k-means (seeded) of the L2-normalized embeddings (``table``) of the
    labeled subjects' training images (their labeled share less the monitoring one), and how many there were."""
    from sklearn.cluster import KMeans

    C = p.domain_adaptation.n_classes
    ids = []
    for s in subjects:
        sids = subject_stimuli(ds, s, "train")
        n = n_lab[s] - int(round(n_lab[s] * p.val_fraction))
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


class AdaptorModel:
    """A trained adaptor with its voxel selections and normalization, decoding any of its subjects."""

    def __init__(self, net, voxels: dict, norm: dict, targets: list[str]):
        self.net = net.eval()
        self.voxels = voxels
        self.norm = norm
        self.targets = targets

    @classmethod
    def load(cls, registry: ModelRegistry | str, name: str, store: str | None = None) -> "AdaptorModel":
        """Load ``name/shared``, refusing it when a target table changed since training."""
        import torch

        reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
        state, rec = reg.load_arrays(name)
        m = rec.meta
        if m.get("kind") != ADAPTOR_KIND:
            raise RegistryError(f"model {name!r} is a {m.get('kind')!r} model, not an adaptor")
        reg.check_features(rec, FeatureStore(store or m["store"], create=False))
        # per-subject adapters as registered (older registrations: all of the params' kind)
        net = _build_net(m["n_voxels"], m["target_dims"], AdaptorParams(**m["params"]), _registered_adapters(m))
        net.load_state_dict({k[4:]: torch.from_numpy(np.asarray(v)) for k, v in state.items() if k.startswith("net.")})
        voxels = {s: {h: state[f"voxels.{s}.{h}"] for h in HEMISPHERES} for s in m["subjects"]}
        norm = {s: {k: state[f"norm.{s}.{k}"] for k in ("mean", "std")} for s in m["subjects"]}
        return cls(net, voxels, norm, list(m["targets"]))

    def tensors(self) -> dict[str, np.ndarray]:
        """Registry tensors: the network's (``net.``), each subject's voxel indices and normalization."""
        out = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        for s, vox in self.voxels.items():
            out.update({f"voxels.{s}.{h}": np.asarray(v, np.int64) for h, v in vox.items()})
            out.update({f"norm.{s}.{k}": np.asarray(self.norm[s][k], np.float32) for k in ("mean", "std")})
        return out

    def predict(self, responses: np.ndarray, *, subject: str) -> dict[str, np.ndarray]:
        """The registry's convention for :meth:`decode`: ``subject``'s ``(n, n_voxels)`` responses -> ``{target: (n, dim)}``."""
        return self.decode(subject, responses)

    def decode(self, subject: str, responses: np.ndarray) -> dict[str, np.ndarray]:
        """(n, n_voxels of ``subject``) raw responses (lh then rh) -> {target: (n, dim)}."""
        import torch

        if subject not in self.voxels:
            raise ValueError(f"adaptor has no adapter for {subject!r}; subjects: {', '.join(self.voxels)}")
        n_vox = sum(len(v) for v in self.voxels[subject].values())
        R = np.asarray(responses, dtype=np.float32)
        if R.ndim != 2 or R.shape[1] != n_vox:
            raise ValueError(f"adaptor takes {n_vox} voxels for {subject}; got responses of shape {R.shape}")
        if not np.isfinite(R).all():
            raise ValueError("responses hold NaN or inf values; decoders need finite responses")
        mean = np.asarray(self.norm[subject]["mean"], np.float32)
        std = np.asarray(self.norm[subject]["std"], np.float32)
        with torch.no_grad():
            out = {t: v.numpy() for t, v in self.net(torch.from_numpy((R - mean) / std), subject).items()}
        bad = sorted(set().union(*(np.flatnonzero(~np.isfinite(v).all(1)).tolist() for v in out.values())))
        if bad:
            raise NonFiniteOutputError(
                f"responses: the adaptor gives non-finite values for {subject}'s row(s) {bad[:5]}: the responses are "
                "far outside the range it was trained on (or overflow float32); send responses on the scale of the "
                "dataset's", field="responses", rows=bad)
        return out


@register_loader(ADAPTOR_KIND)
def _load_adaptor(reg: ModelRegistry, name: str, store) -> AdaptorModel:
    return AdaptorModel.load(reg, name, None if store is None else str(getattr(store, "uri", store)))

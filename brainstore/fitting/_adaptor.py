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

A checkpoint is written every epoch (model, optimizer, epoch, and the fingerprint of the spec);
a run started again on the same run folder resumes from its last checkpoint, and refuses a
checkpoint made with another spec. The trained model is registered as ``<name>/shared``.
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

from ..datasets import AlgonautsDataset
from ..datasets._algonauts import HEMISPHERES
from ..features import FeatureStore
from ._decoding import _row_cosine, check_decoding_inputs, response_matrix, select_voxels
from ._encoding import subject_stimuli
from ._fingerprint import table_fingerprint
from ._registry import ModelRegistry, RegistryError, safe_name
from ._spec import AdaptorParams

__all__ = ["ADAPTOR_KIND", "AdaptorRun", "fit_adaptor", "AdaptorModel"]

#: ``kind`` of registered adaptor decoders.
ADAPTOR_KIND = "adaptor"
#: Checkpoint file inside a Ray Train checkpoint folder.
CKPT_FILE = "adaptor.pt"


def _build_net(n_voxels: dict[str, int], target_dims: dict[str, int], p: AdaptorParams):
    """The :class:`~._adaptor_net.AdaptorNet` of these subjects, targets and settings."""
    from ._adaptor_net import AdaptorNet

    return AdaptorNet(n_voxels, target_dims, latent=p.latent, n_blocks=p.n_blocks, adapter=p.adapter, rank=p.rank,
                      dropout=p.dropout, temperature=p.temperature)


def _spec_hash(cfg: dict) -> str:
    keys = ("params", "subjects", "targets", "n_voxels", "target_dims", "trainable", "fraction")
    return hashlib.sha256(json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def _subject_arrays(cfg: dict, subject: str, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """z-scored responses and target embeddings of one subject's split (rows in image order)."""
    ds = AlgonautsDataset(cfg["dataset"])
    fs = FeatureStore(cfg["store"], create=False)
    vox = {h: np.asarray(cfg["voxels"][subject][h], dtype=np.int64) for h in HEMISPHERES}
    R = response_matrix(ds, subject, split, vox)
    mean, std = (np.asarray(cfg["norm"][subject][k], dtype=np.float32) for k in ("mean", "std"))
    R = (R - mean) / std
    ids = subject_stimuli(ds, subject, split)
    return R, {t: fs.load(t, ids) for t in cfg["targets"]}


def _train_loop(cfg: dict) -> None:
    """Ray Train worker loop (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch

    from ._adaptor_net import clip_loss, mixco_loss, regression_loss, soft_clip_loss

    # Ray Train's per-report and per-checkpoint notices (INFO, one logger per file): the history says it
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    p = AdaptorParams(**cfg["params"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(p.seed)
    device = ray.train.torch.get_device()
    data = {}
    for s in cfg["train_subjects"]:
        R, E = _subject_arrays(cfg, s, "train")
        n = len(R)
        n_use = max(2, int(round(n * cfg["fraction"])))  # the first share of the training images (few-shot)
        n_val = int(round(n_use * p.val_fraction))
        tr, va = np.arange(n_use - n_val), np.arange(n_use - n_val, n_use)
        data[s] = {"R": torch.from_numpy(R), "E": {t: torch.from_numpy(e) for t, e in E.items()}, "train": tr, "val": va}
    model = _build_net(cfg["n_voxels"], cfg["target_dims"], p)
    start = 0
    init = cfg.get("init_state")
    if init:  # transfer: a pretrained model's weights (a new subject's adapter stays as initialized)
        state = torch.load(init, map_location="cpu", weights_only=True)
        missing = model.load_state_dict(state, strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"pretrained adaptor has parameters this model lacks: {missing.unexpected_keys[:5]}")
    for name, prm in model.named_parameters():  # adapters of subjects not trained here take no part (DDP)
        own = any(name.startswith(f"adapters.{s}.") for s in cfg["train_subjects"])
        prm.requires_grad = own if (cfg["trainable"] == "adapter" or name.startswith("adapters.")) else True
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
    else:
        history = []
    model = ray.train.torch.prepare_model(model)
    net = model.module if hasattr(model, "module") else model
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=p.lr, weight_decay=p.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    per_rank = {s: len(d["train"]) // world for s, d in data.items()}
    steps = max(1, max(per_rank.values()) // p.batch_size)
    mixco_until = int(round(p.epochs * p.mixco_fraction)) if p.contrastive == "bimixco" else 0
    for epoch in range(start, p.epochs):
        t0 = time.time()
        model.train()
        rng = np.random.default_rng(p.seed * 1000 + epoch)
        order = {s: rng.permutation(d["train"])[rank * per_rank[s]:(rank + 1) * per_rank[s]] for s, d in data.items()}
        total, seen = 0.0, 0
        mix = epoch < mixco_until
        for step in range(steps):
            loss = 0.0
            for s, d in data.items():
                idx = order[s][(step * p.batch_size) % max(1, len(order[s])):][:p.batch_size]
                if len(idx) < 2:
                    idx = order[s][:p.batch_size]
                x = d["R"][idx].to(device)
                if mix:
                    perm = torch.randperm(len(idx), device=device)
                    lam = torch.distributions.Beta(0.15, 0.15).sample((len(idx),)).to(device)
                    x = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        metrics = {"epoch": epoch, "train_loss": total / steps, "samples_per_s": seen * world / (time.time() - t0)}
        metrics.update(_val_metrics(net, data, cfg["targets"], device))
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "spec_hash": cfg["spec_hash"], "history": history}, Path(tmp) / CKPT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)


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
                init_from: str | None = None, trainable: str = "all", register: bool = True,
                n_candidates: int = 300, n_draws: int = 30) -> AdaptorRun:
    """Train one adaptor decoder over ``subjects`` with Ray Train, evaluate retrieval, register it.

    Parameters
    ----------
    targets : store tables to decode into (one head each).
    params : :class:`AdaptorParams` (or its fields).
    fraction : share of each subject's training images used (the first ones; few-shot studies).
    init_from : a registered adaptor (``name/shared``) whose weights start the training; subjects it
        lacks get new adapters.
    trainable : "all", or "adapter" (only the adapters of ``subjects``: transfer to a new subject).
    num_workers : Ray Train workers (DDP); ``use_gpu`` None uses GPUs when the cluster has them.
    out : run folder (default ``<registry>/_runs/adaptor-TIME``); starting again on the same folder
        resumes from its last checkpoint.
    """
    import torch
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .._paths import check_folder
    from .._ray import ensure_connected
    from ..scoring import retrieval_metrics
    from ._runfiles import run_dir as default_run_dir

    t0 = time.time()
    p = params if isinstance(params, AdaptorParams) else AdaptorParams(**(params or {}))
    if trainable not in ("all", "adapter"):
        raise ValueError(f"trainable must be 'all' or 'adapter', got {trainable!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ds, fs, reg = AlgonautsDataset(dataset), FeatureStore(store, create=False), ModelRegistry(registry)
    targets = list(targets)
    subjects = check_decoding_inputs(ds, fs, targets, subjects)
    # checked before any work, made once the inputs are read (a bad response file leaves nothing behind)
    rdir = check_folder(default_run_dir(out, reg.root, "adaptor"), "run folder", "--out", create=True, make=False)
    init_state, base = None, None
    if init_from:
        st, rec = reg.load(init_from)
        if rec.meta.get("kind") != ADAPTOR_KIND:
            raise RegistryError(f"--init-from {init_from!r} is a {rec.meta.get('kind')!r} model, not an adaptor")
        base = rec.meta
        if list(base["targets"]) != targets:
            raise RegistryError(f"adaptor {init_from!r} decodes into {base['targets']}, not {targets}")
    voxels = {s: select_voxels(ds, s, rois) for s in subjects}
    norm = {}
    for s in subjects:  # voxel statistics of the training images only
        R = response_matrix(ds, s, "train", voxels[s])
        n_use = max(2, int(round(len(R) * fraction)))
        norm[s] = {"mean": R[:n_use].mean(0).tolist(), "std": np.maximum(R[:n_use].std(0), 1e-6).tolist()}
        del R
    n_vox = {s: int(sum(len(v) for v in voxels[s].values())) for s in subjects}
    all_subjects = dict(base["n_voxels"]) if base else {}
    all_subjects.update(n_vox)
    dims = {t: fs.info(t).dim for t in targets}
    name = name or f"adaptor-{safe_name('+'.join(targets))}"
    rdir.mkdir(parents=True, exist_ok=True)
    storage = rdir / "train"
    res = ensure_connected()
    if use_gpu is None:
        use_gpu = res.get("GPU", 0) >= num_workers
    if init_from:
        tmp_init = rdir / "init_state.pt"
        torch.save({k[4:]: torch.from_numpy(v) for k, v in st.items() if k.startswith("net.")}, tmp_init)
        init_state = str(tmp_init)
    cfg = {"dataset": str(ds.root), "store": fs.uri, "targets": targets, "params": p.model_dump(),
           "subjects": sorted(all_subjects), "train_subjects": subjects, "n_voxels": all_subjects,
           "target_dims": dims, "voxels": {s: {h: v.tolist() for h, v in voxels[s].items()} for s in subjects},
           "norm": norm, "fraction": fraction, "trainable": trainable, "init_state": init_state,
           "storage": str(storage)}
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
                             logging_config=LoggingConfig(log_level="WARNING")))  # our history is the report
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)
    net = _build_net(all_subjects, dims, p)
    net.load_state_dict(saved["model"])
    prev = {s: {h: st[f"voxels.{s}.{h}"] for h in HEMISPHERES} for s in base["subjects"]} if base else {}
    prev_norm = {s: {k: st[f"norm.{s}.{k}"] for k in ("mean", "std")} for s in base["subjects"]} if base else {}
    model = AdaptorModel(net, {**prev, **voxels}, {**prev_norm, **norm}, targets)
    run = AdaptorRun(name=name, run_dir=rdir, resumed_from_epoch=latest[0] if latest else None)
    run.history = saved["history"]
    for s in subjects:
        if not ds.has_test_responses(s):
            continue
        decoded = model.decode(s, response_matrix(ds, s, "test", voxels[s]))
        for t in targets:
            Et = fs.load(t, subject_stimuli(ds, s, "test"))
            m = retrieval_metrics(decoded[t], Et, n_candidates=n_candidates, n_draws=n_draws)
            m["cosine"] = float(_row_cosine(decoded[t], Et).mean())
            run.metrics.setdefault(t, {})[s] = m
    if register:
        ids = sorted({i for s in subjects for i in subject_stimuli(ds, s, "train")})
        meta = {"kind": ADAPTOR_KIND, "method": "adaptor", "model": name, "subject": "shared", "subjects": sorted(all_subjects),
                "trained_subjects": subjects, "dataset": str(ds.root), "store": fs.uri, "targets": targets,
                "features": targets, "params": p.model_dump(), "n_voxels": all_subjects, "target_dims": dims,
                "fraction": fraction, "trainable": trainable,
                "init_from": init_from, "rois": rois,
                "feature_versions": {t: fs.metadata(t) for t in targets},
                "fingerprints": {t: table_fingerprint(fs, t, ids) for t in targets},
                "metrics": run.metrics, "epochs_trained": int(saved["epoch"]) + 1}
        reg.save(f"{name}/shared", model.tensors(), meta)
    run.seconds = time.time() - t0
    return run


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
        state, rec = reg.load(name)
        m = rec.meta
        if m.get("kind") != ADAPTOR_KIND:
            raise RegistryError(f"model {name!r} is a {m.get('kind')!r} model, not an adaptor")
        reg.check_features(rec, FeatureStore(store or m["store"], create=False))
        net = _build_net(m["n_voxels"], m["target_dims"], AdaptorParams(**m["params"]))
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
            out = self.net(torch.from_numpy((R - mean) / std), subject)
        return {t: v.numpy() for t, v in out.items()}

"""The Ray Train worker loop of adaptor training (the model, the losses and domain adaptation are described
in :mod:`._adaptor`): each worker reads its subjects' z-scored responses and target embeddings itself,
builds the network (with a pretrained model's weights for transfer), resumes from the newest checkpoint,
and trains; every step passes one batch per subject through its own adapter; rank 0 checkpoints every
epoch (model, optimizer, epoch, history and the spec hash)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ...datasets import HEMISPHERES, open_dataset
from ...features import FeatureStore
from .._spec import AdaptorParams
from ..encoding import subject_stimuli
from ._adaptor_model import _build_net
from ._inputs import response_matrix

__all__ = ["train_loop", "CKPT_FILE"]

#: Checkpoint file inside a Ray Train checkpoint folder.
CKPT_FILE = "adaptor.pt"
#: Learning-rate multiplier of the domain-adaptation classifier g (DANCE: 10x the feature extractor's).
CLASSIFIER_LR_MULT = 10.0


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


class _Session:
    """Where the loop runs: a Ray Train worker (rank, world size, device, DDP, reports to Ray Train), or, for a
    search's trial trained in one process (``cfg["session"] == "tune"``), the Tune trial itself (rank 0 of 1)."""

    def __init__(self, cfg: dict):
        import torch

        self.tune = cfg.get("session") == "tune"
        if self.tune:
            self.rank, self.world = 0, 1
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            import ray.train
            import ray.train.torch

            ctx = ray.train.get_context()
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
            self.device = ray.train.torch.get_device()

    def prepare(self, model):
        if self.tune:
            return model.to(self.device)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def checkpoint(self):
        """The checkpoint of a restart (Ray Train's within a run, or Tune's of a restored trial), or None."""
        if self.tune:
            from ray import tune

            return tune.get_checkpoint()
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, folder: str | None) -> None:
        if self.tune:
            from ray import tune

            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)
            return
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


def train_loop(cfg: dict) -> None:
    """Ray Train worker loop: the data, the starting model (or the newest checkpoint's), then the epochs."""
    import torch

    # Ray Train's per-report and per-checkpoint notices (INFO, one logger per file): the history says it
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    p = AdaptorParams(**cfg["params"])
    session = _Session(cfg)
    rank, world, device = session.rank, session.world, session.device
    torch.manual_seed(p.seed)
    data, unl = _worker_data(cfg, p)
    model = _starting_model(cfg, p)
    saved = _saved_checkpoint(cfg, session)  # a restart within this run, else the last epoch of a killed one
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt_state, start, history = saved["optimizer"], saved["epoch"] + 1, saved["history"]
        resumes = list(saved.get("resumes", [])) + [start]  # epochs where training picked up from a checkpoint
        best = saved.get("best")
    else:
        opt_state, start, history, resumes, best = None, 0, [], [], None
        if p.domain_adaptation:
            _imprint_prototypes(model, data)
    loop = _Loop(cfg, p, session.prepare(model), data, unl, opt_state, device, rank, world)
    if saved is None and p.ridge_base:  # the start (the ridge's decoder) is a candidate too: epoch -1
        best = _keep_best(None, _val_metrics(loop.net, data, cfg["targets"], device), loop.net, -1, p, cfg.get("floor"))
    for epoch in range(start, p.epochs):
        if best is not None and p.patience and epoch - best["epoch"] > p.patience:
            break  # resumed from the checkpoint of the epoch that stopped it
        metrics = loop.epoch(epoch)
        metrics["epochs_done"] = epoch + 1  # a search's time axis (ASHA's rungs), the same after a resume
        best = _keep_best(best, metrics, loop.net, epoch, p, cfg.get("floor"))
        if best is not None:  # every worker computes the same figures from the same (synchronized) weights
            metrics.update(best_val_top1=best["val_top1"], best_epoch=best["epoch"],
                           best_floor_held=best["floor_held"],
                           **{f"best_val_top1_{k}": v for k, v in best["subjects"].items()})
        history.append(metrics)
        loop.report(session, epoch, metrics, history, resumes, best)
        if best is not None and p.patience and epoch - best["epoch"] >= p.patience:
            break  # early stopping: no better validation top-1 for `patience` epochs


def _worker_data(cfg: dict, p: AdaptorParams) -> tuple[dict, dict]:
    """Each trained subject's labeled responses, embeddings and train / validation rows (with g's pseudo-class of
    each image under domain adaptation), and each adapt subject's unlabeled responses, as tensors."""
    import torch

    da = p.domain_adaptation
    centroids = np.asarray(cfg["centroids"], dtype=np.float64) if da else None
    data = {}
    for s in cfg["train_subjects"]:
        R, E = _labeled_arrays(cfg, s)
        n_use = len(R)
        cut = cfg["n_fit"][s]  # the driver's cut (whole runs held out for a time series)
        tr, va = np.arange(cut), np.arange(cut, n_use)
        data[s] = {"R": torch.from_numpy(R), "E": {t: torch.from_numpy(e) for t, e in E.items()}, "train": tr, "val": va}
        if da:  # g's classes: the pseudo-class of each labeled image (first target table)
            data[s]["cls"] = torch.from_numpy(_pseudo_classes(E[cfg["targets"][0]], centroids))
    unl = {s: torch.from_numpy(_unlabeled_responses(cfg, s)) for s in cfg["adapt_subjects"]}
    return data, unl


def _starting_model(cfg: dict, p: AdaptorParams):
    """The network at its random start, or with a pretrained model's weights (transfer: a new subject's adapter
    stays as initialized), its parameters marked trainable or frozen."""
    import torch

    model = _build_net(cfg["n_voxels"], cfg["target_dims"], p, cfg["adapters"])
    if cfg.get("base_state") and p.ridge_base:  # the ridge's map of each subject's z-scored voxels
        base = torch.load(cfg["base_state"], map_location="cpu", weights_only=True)
        names = {n for n, _ in model.named_buffers()}
        if set(base) - names:
            raise ValueError(f"the ridge base has buffers this network lacks: {sorted(set(base) - names)[:3]}")
        model.load_state_dict(base, strict=False)
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
    return model


def _saved_checkpoint(cfg: dict, session: _Session) -> dict | None:
    """The checkpoint to resume from: Ray Train's (a restart within this run), else the newest of a killed run on
    the same folder (``cfg["resume_from"]``); refused when another spec made it."""
    import torch

    saved = None
    ckpt = session.checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)
    elif cfg.get("resume_from"):
        saved = torch.load(cfg["resume_from"], map_location="cpu", weights_only=False)
    if saved is not None and saved["spec_hash"] != cfg["spec_hash"]:
        raise ValueError(f"the checkpoint in {cfg['storage']} was made by another adaptor spec "
                         f"({saved['spec_hash']} != {cfg['spec_hash']}); use a new run folder (--out) or the "
                         "spec it was made with")
    return saved


class _Loop:
    """One worker's training: the (DDP-wrapped) model and its network, the optimizer, the data and the memory banks."""

    def __init__(self, cfg: dict, p: AdaptorParams, model, data: dict, unl: dict, opt_state, device, rank: int,
                 world: int):
        import torch

        self.cfg, self.p, self.da = cfg, p, p.domain_adaptation
        self.model, self.net = model, (model.module if hasattr(model, "module") else model)
        self.data, self.unl, self.device, self.rank, self.world = data, unl, device, rank, world
        train = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
        groups = [{"params": [q for n, q in train if "classifier." not in n]}]
        if self.da:  # g learns at DANCE's 10x rate; no decay (its logits are cosines)
            groups.append({"params": [q for n, q in train if "classifier." in n], "lr": p.lr * CLASSIFIER_LR_MULT,
                           "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
        if opt_state is not None:
            self.opt.load_state_dict(opt_state)
        self.per_rank = {s: len(d["train"]) // world for s, d in data.items()}
        self.per_rank_u = {s: len(x) // world for s, x in unl.items()}
        self.steps = max(1, max(self.per_rank.values()) // p.batch_size)
        self.mixco_until = int(round(p.epochs * p.mixco_fraction)) if p.contrastive == "bimixco" else 0
        # memory banks (DANCE): one L2-normalized feature per unlabeled sample, from the current model (rebuilt on resume)
        self.banks = {s: _features(self.net, x, s, device) for s, x in unl.items()}
        self.rho = self.da.resolved_rho() if self.da else None

    def epoch(self, epoch: int) -> dict:
        """Train one epoch over this worker's share of every subject; its metrics."""
        p, rank, world = self.p, self.rank, self.world
        t0 = time.time()
        self.model.train()
        rng = np.random.default_rng(p.seed * 1000 + epoch)
        order = {s: rng.permutation(d["train"])[rank * self.per_rank[s]:(rank + 1) * self.per_rank[s]]
                 for s, d in self.data.items()}
        order_u = {s: rng.permutation(len(x))[rank * self.per_rank_u[s]:(rank + 1) * self.per_rank_u[s]]
                   for s, x in self.unl.items()}
        total, seen, sums = 0.0, 0, {"class_ce": 0.0, "nc": 0.0, "es": 0.0}
        mix = epoch < self.mixco_until
        for step in range(self.steps):
            loss, n = self._supervised(order, step, mix, sums)
            seen += n
            written = []
            if self.da:
                loss = self.da.lam * loss + (1 - self.da.lam) * self._adaptation(order_u, step, sums, written)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.item()
            for s, slots, f in written:  # every worker's batch goes into every worker's bank
                self.banks[s][_gather(slots, world)] = _gather(f, world)
        metrics = {"epoch": epoch, "train_loss": total / self.steps, "samples_per_s": seen * world / (time.time() - t0)}
        if self.da:
            metrics.update({"class_ce": sums["class_ce"] / self.steps, "nc_loss": sums["nc"] / self.steps,
                            "es_loss": sums["es"] / self.steps})
        metrics.update(_val_metrics(self.net, self.data, self.cfg["targets"], self.device))
        return metrics

    def _supervised(self, order: dict, step: int, mix: bool, sums: dict):
        """The supervised loss of one step (a batch per trained subject; under domain adaptation g's
        cross-entropy too) and the number of samples it saw."""
        import torch
        import torch.nn.functional as F

        from ._adaptor_net import clip_loss, mixco_loss, regression_loss, soft_clip_loss

        p, da, device, net = self.p, self.da, self.device, self.net
        loss, seen = 0.0, 0
        for s, d in self.data.items():
            idx = _batch(order[s], step, p.batch_size)
            x = d["R"][idx].to(device)
            if mix:
                perm = torch.randperm(len(idx), device=device)
                lam = torch.distributions.Beta(0.15, 0.15).sample((len(idx),)).to(device)
                x = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
            if da:
                out, h, _ = self.model(x, s, features=True)
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
                out = self.model(x, s)
            for t in self.cfg["targets"]:
                y = d["E"][t][idx].to(device)
                if mix:
                    con = mixco_loss(out[t], y, net.logit_scale, lam, perm)
                elif p.contrastive == "clip":
                    con = clip_loss(out[t], y, net.logit_scale)
                else:
                    con = soft_clip_loss(out[t], y, net.logit_scale)
                loss = loss + p.beta * con + (1 - p.beta) * regression_loss(out[t], y, p.l1_weight)
            seen += len(idx)
        return loss, seen

    def _adaptation(self, order_u: dict, step: int, sums: dict, written: list):
        """Domain adaptation's loss of one step: neighborhood clustering and entropy separation of a batch of each
        adapt subject's unlabeled responses (their features go to ``written``, for every worker's memory bank)."""
        import torch
        import torch.nn.functional as F

        from ._adaptor_net import entropy_separation_loss, neighborhood_clustering_loss

        adapt = 0.0
        for s, x in self.unl.items():
            slots = torch.as_tensor(_batch(order_u[s], step, self.p.batch_size), dtype=torch.long, device=self.device)
            _, h, logits = self.model(x[slots.cpu()].to(self.device), s, features=True)
            f = F.normalize(h, dim=1)
            memory = self.banks[s].index_put((slots,), f)  # this batch's current features in their own slots
            nc = neighborhood_clustering_loss(f, memory, self.net.prototypes(), self.da.tau, slots)
            es = entropy_separation_loss(logits, self.rho, self.da.margin)
            adapt = adapt + nc + es
            sums["nc"] += nc.item()
            sums["es"] += es.item()
            written.append((s, slots, f.detach()))
        return adapt

    def report(self, session: _Session, epoch: int, metrics: dict, history: list, resumes: list,
               best: dict | None) -> None:
        """Report the epoch to Ray Train (or Tune); rank 0 with its checkpoint (the best epoch's weights in it)."""
        import torch

        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"model": self.net.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch,
                            "spec_hash": self.cfg["spec_hash"], "history": history, "resumes": resumes,
                            "best": best},
                           Path(tmp) / CKPT_FILE)
                session.report(metrics, tmp)
        else:
            session.report(metrics, None)


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
    """Top-1 on each subject's held-out training images, first target: each way (``val_b2s_<subject>``,
    ``val_s2b_<subject>``, :func:`~._scores.validation_directions`), their mean (``val_top1_<subject>``) and the
    mean over subjects (``val_top1``)."""
    import torch

    from ._scores import both_ways, validation_directions

    net.eval()
    out, dirs, n = {}, {}, 0
    with torch.no_grad():
        for s, d in data.items():
            if len(d["val"]) < 2:
                continue
            pred = net(d["R"][d["val"]].to(device), s)[targets[0]].cpu().numpy()
            v = validation_directions(pred, d["E"][targets[0]][d["val"]].numpy())
            out[f"val_top1_{s}"] = both_ways(v)
            dirs.update({f"val_b2s_{s}": v["b2s"], f"val_s2b_{s}": v["s2b"]})
            n += 2 * len(d["val"])  # rankings: each image both ways
    return {"val_top1": float(np.mean(list(out.values()))), "val_items": n, **out, **dirs} if out else {}


def _keep_best(best: dict | None, metrics: dict, net, epoch: int, p: AdaptorParams, floor: dict | None) -> dict | None:
    """The epoch kept so far: its epoch, figures and a copy of its weights; None without a validation split (the
    last epoch is kept). An epoch that holds the ``floor`` (:func:`~._scores.holds_floor`: nowhere below the
    ridge on validation) replaces a kept one that does not; otherwise a later epoch replaces the kept one when its
    validation top-1 is higher by more than ``min_delta`` (None: one standard error of the kept figure, ``sqrt(v
    (1 - v) / n)`` over the ``n`` validation rankings: a gain that small is within what the choice among many
    epochs and trials finds by chance on a few images)."""
    if "val_top1" not in metrics:
        return best
    from ._scores import holds_floor, replaces_kept

    held = holds_floor(metrics, floor if p.ridge_floor else None, p.min_delta)
    if best is not None and not replaces_kept(metrics["val_top1"], held, best["val_top1"], best.get("floor_held", True),
                                              metrics.get("val_items", 0), p.min_delta):
        return best
    return {"epoch": epoch, "val_top1": metrics["val_top1"], "floor_held": held,
            "subjects": {k[len("val_top1_"):]: v for k, v in metrics.items() if k.startswith("val_top1_")},
            "directions": {k[len("val_"):]: v for k, v in metrics.items() if k[:8] in ("val_b2s_", "val_s2b_")},
            "model": {k: v.detach().clone() for k, v in net.state_dict().items()}}

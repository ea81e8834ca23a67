"""The adaptor network and its losses (torch): per-subject adapters into a shared latent, a residual-MLP
backbone, one head per target table (MindEye / MindBridge / seed 002's low-rank adaptors), and the
domain-adaptation losses of seed 002 / DANCE (neighborhood clustering, entropy separation).

Pure torch, no Ray: :mod:`._adaptor` trains it with Ray Train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptorNet", "ADAPTER_KINDS", "base_name", "adapter_spec", "make_adapter", "clip_loss", "soft_clip_loss",
           "mixco_loss", "regression_loss", "neighborhood_clustering_loss", "entropy_separation_loss"]

#: Adapter kinds: a subject's map from its voxels into the shared latent.
ADAPTER_KINDS = ("linear", "lowrank", "factored")


class LowRankAdapter(nn.Module):
    """``z = W x + U gelu(D x)``: a linear map plus a low-rank nonlinear residual (seed 002)."""

    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.down = nn.Linear(n_in, rank)
        self.up = nn.Linear(rank, n_out)
        nn.init.zeros_(self.up.weight)  # starts as the linear adapter
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.up(F.gelu(self.down(x)))


class FactoredAdapter(nn.Module):
    """``z = U (D x) + b``: a rank-``rank`` linear map (``n_in * rank + rank * n_out + n_out`` parameters),
    for transfer to a new subject with few trained parameters."""

    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(n_in, rank, bias=False)
        self.up = nn.Linear(rank, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def adapter_spec(kind: str, rank: int | None) -> dict:
    """``{"kind", "rank"}`` of one subject's adapter (rank None for "linear", which has none)."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapter must be one of {', '.join(repr(k) for k in ADAPTER_KINDS)}, got {kind!r}")
    if kind == "linear":
        return {"kind": kind, "rank": None}
    if rank is None or int(rank) < 1:
        raise ValueError(f"a {kind!r} adapter needs a rank >= 1, got {rank!r}")
    return {"kind": kind, "rank": int(rank)}


def make_adapter(n_in: int, n_out: int, kind: str, rank: int | None = None) -> nn.Module:
    """A new (freshly initialized) adapter of this kind."""
    spec = adapter_spec(kind, rank)
    if spec["kind"] == "linear":
        return nn.Linear(n_in, n_out)
    return (LowRankAdapter if spec["kind"] == "lowrank" else FactoredAdapter)(n_in, n_out, spec["rank"])


class ResidualBlock(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear, added to the input."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class AdaptorNet(nn.Module):
    """Subject adapters -> shared backbone -> one head per target (and, for domain adaptation, a cosine
    classifier g over pseudo-classes on the backbone's output).

    Parameters
    ----------
    n_voxels : {subject: number of input voxels}
    target_dims : {target table: embedding dimension}
    latent : width of the shared latent and backbone.
    n_blocks : residual blocks of the backbone.
    adapter : "linear", "lowrank" or "factored": the kind of the subjects ``adapters`` does not name.
    rank : their rank (lowrank: of the nonlinear residual; factored: of the linear map).
    adapters : {subject: {"kind": ..., "rank": ...}}, per-subject adapters (transfer: the pretrained
        subjects keep theirs, a new subject gets another kind).
    dropout : dropout inside the blocks and on the adapter output.
    temperature : initial temperature of the contrastive logits (learned, as CLIP's logit scale).
    n_classes : classes of the classifier g (0: none); ``class_temperature`` divides its cosine logits.
    ridge_base : each output is a fixed linear map of the subject's (z-scored) voxels, the ridge decoder's
        (buffers :func:`base_name`, set by the trainer), plus the network's output, whose heads start at zero:
        the untrained network decodes exactly as ridge does, and training learns what ridge misses.
    """

    def __init__(self, n_voxels: dict[str, int], target_dims: dict[str, int], *, latent: int = 512,
                 n_blocks: int = 2, adapter: str = "linear", rank: int = 64, adapters: dict[str, dict] | None = None,
                 dropout: float = 0.1, temperature: float = 0.05, n_classes: int = 0, class_temperature: float = 0.05,
                 ridge_base: bool = False):
        super().__init__()
        adapters = adapters or {}
        default = adapter_spec(adapter, rank)
        self.adapter_specs = {s: adapter_spec(**adapters[s]) if s in adapters else dict(default) for s in n_voxels}
        self.adapters = nn.ModuleDict({s: make_adapter(n, latent, **self.adapter_specs[s]) for s, n in n_voxels.items()})
        self.drop = nn.Dropout(dropout)
        self.backbone = nn.Sequential(*[ResidualBlock(latent, dropout) for _ in range(n_blocks)], nn.LayerNorm(latent))
        self.heads = nn.ModuleDict({_key(t): nn.Linear(latent, d) for t, d in target_dims.items()})
        self.targets = list(target_dims)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.classifier = nn.Linear(latent, n_classes, bias=False) if n_classes else None
        self.class_temperature = class_temperature
        self.ridge_base = bool(ridge_base)
        if self.ridge_base:  # a fixed linear map per subject and target (set from ridge), the network adds to it
            for s, n in n_voxels.items():
                for t, d in target_dims.items():
                    self.register_buffer(base_name(s, t, "w"), torch.zeros(n, d))
                    self.register_buffer(base_name(s, t, "b"), torch.zeros(d))
            for head in self.heads.values():  # the correction starts at zero: the start is the base's decoder
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def add_subject(self, subject: str, n_voxels: int, adapter: str = "linear", rank: int | None = 64) -> None:
        """A new subject's (freshly initialized) adapter: transfer trains it alone on a pretrained backbone,
        or with the rest (MindBridge's reset-tuning)."""
        latent = self.backbone[-1].normalized_shape[0]
        self.adapter_specs[subject] = adapter_spec(adapter, rank)
        self.adapters[subject] = make_adapter(n_voxels, latent, **self.adapter_specs[subject])

    def forward(self, x: torch.Tensor, subject: str, features: bool = False):
        """(batch, n_voxels of ``subject``) -> {target: (batch, dim)}; with ``features``, also the shared
        features (the backbone's output) and g's logits (None without a classifier)."""
        h = self.backbone(self.drop(self.adapters[subject](x)))
        out = {t: self.heads[_key(t)](h) for t in self.targets}
        if self.ridge_base:
            out = {t: y + x @ getattr(self, base_name(subject, t, "w")) + getattr(self, base_name(subject, t, "b"))
                   for t, y in out.items()}
        if not features:
            return out
        return out, h, (self.class_logits(h) if self.classifier is not None else None)

    def class_logits(self, h: torch.Tensor) -> torch.Tensor:
        """g: cosine similarities of the features to the prototypes (g's L2-normalized weights) / temperature (DANCE)."""
        return F.normalize(h, dim=1) @ self.prototypes().T / self.class_temperature

    def prototypes(self) -> torch.Tensor:
        """g's weights w_1..w_C, L2-normalized: the class prototypes of neighborhood clustering."""
        return F.normalize(self.classifier.weight, dim=1)


def base_name(subject: str, table: str, part: str) -> str:
    """Name of the ridge base's buffer: ``part`` "w" (voxels x dim) or "b" (dim) of ``subject`` into ``table``."""
    return f"base_{part}__{subject}__{_key(table)}"


def _key(table: str) -> str:
    """ModuleDict keys may not contain dots."""
    return table.replace(".", "_")


def _logits(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * F.normalize(pred, dim=1) @ F.normalize(target, dim=1).T


def clip_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): each decoded embedding against the batch's targets and back."""
    logits = _logits(pred, target, logit_scale.exp().clamp(max=100.0))
    labels = torch.arange(len(pred), device=pred.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """MindEye's SoftCLIP: soft labels from the target-target similarities at the same temperature."""
    scale = logit_scale.exp().clamp(max=100.0)
    logits = _logits(pred, target, scale)
    with torch.no_grad():
        soft = F.softmax(_logits(target, target, scale), dim=1)
    return 0.5 * (-(soft * F.log_softmax(logits, dim=1)).sum(1).mean()
                  - (soft * F.log_softmax(logits.T, dim=1)).sum(1).mean())


def mixco_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor, lam: torch.Tensor,
               perm: torch.Tensor) -> torch.Tensor:
    """BiMixCo (MindEye): ``pred`` decoded from mixed inputs ``lam x + (1 - lam) x[perm]``; each row's
    label puts ``lam`` on its own target and ``1 - lam`` on ``perm``'s, both directions."""
    logits = _logits(pred, target, logit_scale.exp().clamp(max=100.0))
    n = len(pred)
    eye = torch.eye(n, device=pred.device)
    labels = lam[:, None] * eye + (1 - lam)[:, None] * eye[perm]
    fwd = -(labels * F.log_softmax(logits, dim=1)).sum(1).mean()
    bwd = -(labels.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (fwd + bwd)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 0.1) -> torch.Tensor:
    """MSE plus ``l1_weight`` times L1 to the target embeddings."""
    return F.mse_loss(pred, target) + l1_weight * F.l1_loss(pred, target)


def neighborhood_clustering_loss(features: torch.Tensor, memory: torch.Tensor, prototypes: torch.Tensor,
                                 tau: float, self_index: torch.Tensor) -> torch.Tensor:
    """DANCE's neighborhood clustering: entropy of each target feature's similarity distribution over the
    memory bank and the class prototypes, ``-(1/B) sum_i sum_{j != i} p_ij log p_ij`` with
    ``p_ij = exp(F_j . f_i / tau) / Z_i`` over ``F = [memory; prototypes]`` (all rows L2-normalized here).

    Parameters
    ----------
    features : (B, d) target-domain features f_i.
    memory : (N, d) memory bank; the caller puts this batch's features in their own slots first (DANCE).
    prototypes : (C, d) classifier weights w_1..w_C.
    tau : temperature (seed 002: 0.5).
    self_index : (B,) slot of each f_i in ``memory``, left out of its distribution (j != i); -1: none.
    """
    f = F.normalize(features, dim=1)
    bank = torch.cat([F.normalize(memory, dim=1), F.normalize(prototypes, dim=1)])
    sims = f @ bank.T / tau
    rows = torch.arange(len(f), device=f.device)
    mask = torch.zeros_like(sims, dtype=torch.bool)
    own = self_index >= 0
    mask[rows[own], self_index[own]] = True
    logp = F.log_softmax(sims.masked_fill(mask, float("-inf")), dim=1)
    logp = logp.masked_fill(mask, 0.0)  # p_ii = 0 and 0 log 0 = 0
    return -(logp.exp().masked_fill(mask, 0.0) * logp).sum(1).mean()


def entropy_separation_loss(logits: torch.Tensor, rho: float, margin: float) -> torch.Tensor:
    """DANCE's entropy separation: ``(1/B) sum_i -|H(p_i) - rho|`` where ``|H(p_i) - rho| > margin``, else 0
    (``p_i = softmax(logits_i)``): target samples are pushed to be either confidently one class or none."""
    logp = F.log_softmax(logits, dim=1)
    dist = (-(logp.exp() * logp).sum(1) - rho).abs()
    return torch.where(dist > margin, -dist, torch.zeros_like(dist)).mean()

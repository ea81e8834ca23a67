"""The adaptor network and its losses (torch): per-subject adapters into a shared latent, a residual-MLP
backbone, one head per target table (MindEye / MindBridge / seed 002's low-rank adaptors).

Pure torch, no Ray: :mod:`._adaptor` trains it with Ray Train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptorNet", "clip_loss", "soft_clip_loss", "mixco_loss", "regression_loss"]


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


class ResidualBlock(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear, added to the input."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class AdaptorNet(nn.Module):
    """Subject adapters -> shared backbone -> one head per target.

    Parameters
    ----------
    n_voxels : {subject: number of input voxels}
    target_dims : {target table: embedding dimension}
    latent : width of the shared latent and backbone.
    n_blocks : residual blocks of the backbone.
    adapter : "linear" or "lowrank".
    rank : rank of the low-rank adapters.
    dropout : dropout inside the blocks and on the adapter output.
    temperature : initial temperature of the contrastive logits (learned, as CLIP's logit scale).
    """

    def __init__(self, n_voxels: dict[str, int], target_dims: dict[str, int], *, latent: int = 512,
                 n_blocks: int = 2, adapter: str = "linear", rank: int = 64, dropout: float = 0.1,
                 temperature: float = 0.05):
        super().__init__()
        if adapter not in ("linear", "lowrank"):
            raise ValueError(f"adapter must be 'linear' or 'lowrank', got {adapter!r}")
        make = (lambda n: nn.Linear(n, latent)) if adapter == "linear" else (lambda n: LowRankAdapter(n, latent, rank))
        self.adapters = nn.ModuleDict({s: make(n) for s, n in n_voxels.items()})
        self.drop = nn.Dropout(dropout)
        self.backbone = nn.Sequential(*[ResidualBlock(latent, dropout) for _ in range(n_blocks)], nn.LayerNorm(latent))
        self.heads = nn.ModuleDict({_key(t): nn.Linear(latent, d) for t, d in target_dims.items()})
        self.targets = list(target_dims)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def add_subject(self, subject: str, n_voxels: int, adapter: str = "linear", rank: int = 64) -> None:
        """A new subject's adapter (transfer: train it alone on a pretrained backbone)."""
        latent = self.backbone[-1].normalized_shape[0]
        self.adapters[subject] = nn.Linear(n_voxels, latent) if adapter == "linear" else LowRankAdapter(
            n_voxels, latent, rank)

    def forward(self, x: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """(batch, n_voxels of ``subject``) -> {target: (batch, dim)}."""
        h = self.backbone(self.drop(self.adapters[subject](x)))
        return {t: self.heads[_key(t)](h) for t in self.targets}


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

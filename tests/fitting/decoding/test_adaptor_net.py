"""The adaptor network and its losses (``brainstore.fitting.decoding._adaptor_net``): contrastive losses
against hand-computed references, shapes, factored adapters' parameter counts by hand, and the
domain-adaptation losses (neighborhood clustering, entropy separation) against straightforward numpy
implementations of their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainstore.fitting.decoding._adaptor_net import (AdaptorNet, FactoredAdapter, clip_loss, entropy_separation_loss,
                                                      mixco_loss, neighborhood_clustering_loss, soft_clip_loss)


def _ce(logits: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy with soft labels, rows: -sum(labels * log softmax)."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-(labels * logp).sum(1).mean())


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_contrastive_losses_match_numpy_references():
    rng = np.random.default_rng(0)
    pred, tgt = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    scale = np.log(1 / 0.05)
    P, T, S = torch.tensor(pred), torch.tensor(tgt), torch.tensor(scale)
    logits = 20.0 * _cos(pred, tgt)
    eye = np.eye(6)
    assert float(clip_loss(P, T, S)) == pytest.approx(0.5 * (_ce(logits, eye) + _ce(logits.T, eye)), rel=1e-6)
    soft = np.exp(20.0 * _cos(tgt, tgt))
    soft /= soft.sum(1, keepdims=True)
    assert float(soft_clip_loss(P, T, S)) == pytest.approx(0.5 * (_ce(logits, soft) + _ce(logits.T, soft)), rel=1e-6)
    lam = np.array([1.0, 0.5, 0.2, 0.9, 0.7, 0.3])
    perm = np.array([1, 0, 3, 2, 5, 4])
    labels = lam[:, None] * eye + (1 - lam)[:, None] * eye[perm]
    ref = 0.5 * (_ce(logits, labels) + _ce(logits.T, labels.T))
    assert float(mixco_loss(P, T, S, torch.tensor(lam), torch.tensor(perm))) == pytest.approx(ref, rel=1e-6)
    # lam = 1 everywhere: mixco is the CLIP loss
    ones = torch.ones(6, dtype=torch.float64)
    assert float(mixco_loss(P, T, S, ones, torch.tensor(perm))) == pytest.approx(float(clip_loss(P, T, S)), rel=1e-9)


def test_adaptor_net_shapes_and_lowrank_starts_linear():
    net = AdaptorNet({"subj01": 30, "subj02": 40}, {"txt": 8, "img.v1": 4}, latent=16, n_blocks=1, adapter="lowrank",
                     rank=3)
    out = net(torch.randn(5, 40), "subj02")
    assert out["txt"].shape == (5, 8) and out["img.v1"].shape == (5, 4)
    a = net.adapters["subj01"]
    x = torch.randn(4, 30)
    torch.testing.assert_close(a(x), a.linear(x))  # the nonlinear residual starts at zero
    assert float(net.logit_scale.detach().exp()) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="adapter"):
        AdaptorNet({"s": 3}, {"t": 2}, adapter="mlp")
    assert F.normalize(out["txt"], dim=1).shape == (5, 8)


def test_factored_adapter_parameter_counts_by_hand():
    from brainstore.fitting.decoding._adaptor_model import _build_net
    from brainstore.fitting.decoding._adaptor_train import _param_counts
    from brainstore.fitting._spec import AdaptorParams

    latent, rank = 32, 4
    p = AdaptorParams(latent=latent, n_blocks=1, adapter="lowrank", rank=7)
    specs = {"subj01": {"kind": "linear", "rank": None}, "subj02": {"kind": "factored", "rank": rank}}
    net = _build_net({"subj01": 50, "subj02": 60, "subj03": 20}, {"t.v1": 12}, p, specs)
    assert net.adapter_specs["subj03"] == {"kind": "lowrank", "rank": 7}  # not named: the params' kind
    state = net.state_dict()
    total = sum(v.numel() for v in state.values())
    own = sum(v.numel() for k, v in state.items() if k.startswith("adapters.subj02."))
    assert own == 60 * rank + rank * latent + latent
    by_hand = ((50 * latent + latent)  # subj01: linear
               + (20 * latent + latent) + (20 * 7 + 7) + (7 * latent + latent)  # subj03: lowrank
               + own
               + 2 * latent + 2 * (latent * latent + latent)  # one residual block: LayerNorm, two Linear
               + 2 * latent  # the backbone's last LayerNorm
               + latent * 12 + 12 + 1)  # head, logit scale
    assert total == by_hand
    assert _param_counts(net, ["subj02"], "adapter") == (total, own)
    # "all": everything but the adapters of subjects not trained here
    lowrank_03 = 20 * latent + latent + 20 * 7 + 7 + 7 * latent + latent
    assert _param_counts(net, ["subj02"], "all")[1] == total - (50 * latent + latent) - lowrank_03
    a = net.adapters["subj02"]
    assert isinstance(a, FactoredAdapter) and a.down.bias is None
    x = torch.randn(3, 60)
    torch.testing.assert_close(a(x), x @ a.down.weight.T @ a.up.weight.T + a.up.bias)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _nc_numpy(f, memory, prototypes, tau, self_index) -> float:
    """-(1/B) sum_i sum_{j != i} p_ij log p_ij, p_ij = exp(F_j . f_i / tau) / Z_i, F = [memory; prototypes]."""
    Fm = np.vstack([_unit(memory), _unit(prototypes)])
    total = 0.0
    for i, fi in enumerate(_unit(f)):
        js = [j for j in range(len(Fm)) if j != self_index[i]]
        e = np.exp(Fm[js] @ fi / tau)
        pij = e / e.sum()
        total += -(pij * np.log(pij)).sum()
    return total / len(f)


def _es_numpy(logits, rho, margin) -> float:
    """(1/B) sum_i -|H(p_i) - rho| where |H(p_i) - rho| > margin, else 0."""
    out = []
    for z in logits:
        pz = np.exp(z - z.max())
        pz /= pz.sum()
        d = abs(-(pz * np.log(pz)).sum() - rho)
        out.append(-d if d > margin else 0.0)
    return float(np.mean(out))


def test_neighborhood_clustering_matches_numpy_and_leaves_itself_out():
    rng = np.random.default_rng(0)
    f, mem, protos = rng.normal(size=(5, 6)), rng.normal(size=(9, 6)), rng.normal(size=(4, 6))
    self_index = np.array([0, 3, 8, -1, 5])  # the fourth feature has no slot in the bank
    mem[self_index[self_index >= 0]] = f[self_index >= 0]  # the batch's features in their own slots (DANCE)
    T = {k: torch.tensor(v) for k, v in (("f", f), ("m", mem), ("w", protos))}
    got = neighborhood_clustering_loss(T["f"], T["m"], T["w"], 0.5, torch.tensor(self_index))
    assert float(got) == pytest.approx(_nc_numpy(f, mem, protos, 0.5, self_index), rel=1e-9)
    # j != i matters: counting itself gives another value
    none = np.full(5, -1)
    assert float(neighborhood_clustering_loss(T["f"], T["m"], T["w"], 0.5, torch.tensor(none))) == pytest.approx(
        _nc_numpy(f, mem, protos, 0.5, none), rel=1e-9)
    assert abs(_nc_numpy(f, mem, protos, 0.5, none) - float(got)) > 1e-3
    # other temperature; finite gradients through the masked entries
    fg = T["f"].clone().requires_grad_(True)
    loss = neighborhood_clustering_loss(fg, T["m"], T["w"], 0.1, torch.tensor(self_index))
    assert float(loss.detach()) == pytest.approx(_nc_numpy(f, mem, protos, 0.1, self_index), rel=1e-9)
    loss.backward()
    assert torch.isfinite(fg.grad).all()


def test_entropy_separation_matches_numpy_and_is_zero_within_the_margin():
    rng = np.random.default_rng(1)
    C = 8
    rho = np.log(C) / 2
    logits = rng.normal(size=(7, C)) * np.array([0.1, 0.5, 1, 2, 4, 8, 16])[:, None]  # entropies from log C to ~0
    got = float(entropy_separation_loss(torch.tensor(logits), rho, 0.5))
    assert got == pytest.approx(_es_numpy(logits, rho, 0.5), rel=1e-9)
    assert got < 0
    # uniform predictions: H = log C; with rho = log C every row is within the margin -> 0
    flat = torch.zeros(4, C)
    assert float(entropy_separation_loss(flat, np.log(C), 0.5)) == 0.0
    # rows on both sides of the margin: only those beyond it count
    z = np.exp(logits - logits.max(1, keepdims=True))
    pz = z / z.sum(1, keepdims=True)
    H = -(pz * np.log(pz)).sum(1)
    rho2 = float(np.median(H))
    d = np.abs(H - rho2)
    assert (d <= 0.5).any() and (d > 0.5).any()
    assert float(entropy_separation_loss(torch.tensor(logits), rho2, 0.5)) == pytest.approx(
        float(np.mean(np.where(d > 0.5, -d, 0.0))), rel=1e-9)

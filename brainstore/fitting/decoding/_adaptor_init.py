"""Transfer of a registered adaptor to a new run (``init_from``): the pretrained model read and checked against
the new settings, every subject's adapter (pretrained subjects keep theirs; new ones get ``new_adapter``),
and a new subject's starting adapter from the pretrained adapters' vertex-wise mean
(``new_adapter_init: mean``)."""

from __future__ import annotations

import numpy as np

from ...datasets import HEMISPHERES
from .._spec import AdaptorParams
from ..registry import ModelRegistry, RegistryError
from ._adaptor_model import ADAPTOR_KIND, _norm_spec, _registered_adapters

__all__ = ["Pretrained", "load_pretrained", "adapter_specs"]


class Pretrained:
    """A registered adaptor a run starts from: its tensors, its meta and each of its subjects' adapter."""

    def __init__(self, state: dict, meta: dict):
        self.state, self.meta = state, meta
        self.adapters = _registered_adapters(meta)


def load_pretrained(reg: ModelRegistry, init_from: str, targets: list[str], p: AdaptorParams) -> Pretrained:
    """The adaptor ``init_from``, refused unless it decodes into ``targets`` with the same latent and blocks."""
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
    return Pretrained(st, base)


def adapter_specs(subjects: list[str], p: AdaptorParams, base: Pretrained | None) -> dict[str, dict]:
    """Each subject's adapter ``{"kind", "rank"}``: a pretrained subject's as registered; any other's
    ``new_adapter`` / ``new_rank`` after a pretrained model (default ``adapter`` / ``rank``), else the params'."""
    new_spec = {"kind": p.new_adapter or p.adapter, "rank": p.new_rank or p.rank} if base else \
        {"kind": p.adapter, "rank": p.rank}
    known = base.adapters if base else {}
    return {s: known.get(s) or _norm_spec(new_spec) for s in subjects}


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

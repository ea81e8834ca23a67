"""A registered adaptor (``kind: adaptor``, ``<name>/shared``): the network of :mod:`._adaptor_net` built from
its settings and per-subject adapters, each subject's voxel selection and normalization, decoding any
of its subjects; the registry's loader of the kind."""

from __future__ import annotations

import numpy as np

from ...datasets import HEMISPHERES
from ...features import FeatureStore
from .._errors import NonFiniteOutputError
from .._spec import AdaptorParams
from ..registry import ModelRegistry, RegistryError, check_fingerprint, decode_ids, register_loader

__all__ = ["ADAPTOR_KIND", "AdaptorModel"]

#: ``kind`` of registered adaptor decoders.
ADAPTOR_KIND = "adaptor"


def _build_net(n_voxels: dict[str, int], target_dims: dict[str, int], p: AdaptorParams,
               adapters: dict[str, dict] | None = None):
    """The :class:`~._adaptor_net.AdaptorNet` of these subjects, targets and settings; ``adapters``:
    {subject: {"kind", "rank"}} (None, as registrations made before per-subject adapters: all
    ``p.adapter`` / ``p.rank``)."""
    from ._adaptor_net import AdaptorNet

    da = p.domain_adaptation
    return AdaptorNet(n_voxels, target_dims, latent=p.latent, n_blocks=p.n_blocks, adapter=p.adapter, rank=p.rank,
                      adapters=adapters, dropout=p.dropout, temperature=p.temperature,
                      n_classes=da.n_classes if da else 0, class_temperature=da.classifier_temperature if da else 0.05,
                      ridge_base=bool(p.ridge_base))


def _norm_spec(spec: dict) -> dict:
    from ._adaptor_net import adapter_spec

    return adapter_spec(spec["kind"], spec["rank"])


def _registered_adapters(meta: dict) -> dict[str, dict]:
    """Each registered subject's adapter; registrations made before per-subject adapters: all the params' kind."""
    if meta.get("adapters"):
        return {s: _norm_spec(a) for s, a in meta["adapters"].items()}
    p = AdaptorParams(**meta["params"])
    return {s: _norm_spec({"kind": p.adapter, "rank": p.rank}) for s in meta["subjects"]}


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
        fs = FeatureStore(store or m["store"], create=False)
        reg.check_features(rec, fs)
        if "fit_ids" in state:  # each target's fitted rows, at its pinned version (registrations before: no ids)
            ids = decode_ids(state["fit_ids"])
            for fp in (m.get("fingerprints") or {}).values():
                check_fingerprint(name, fp, fs, ids)
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

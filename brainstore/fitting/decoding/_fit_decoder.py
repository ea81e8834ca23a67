"""One entry point for decoding models: :func:`fit_decoder` fits what a
:class:`~brainstore.fitting.DecoderSpec` says (a ridge decoder per subject, or one adaptor over all
subjects) and adds the whole-store retrieval that fitting leaves to evaluation, so the CLI, pipelines
and notebooks get the same figures."""

from __future__ import annotations

import json
from pathlib import Path

from ..._storage import dataset_root, uri_of
from .._spec import DecoderSpec
from ..registry import ModelRegistry
from ._adaptor import AdaptorRun, train_adaptor
from ._outputs import evaluate_decoders
from ._ridge_decoders import DecodeRun, fit_decoders

__all__ = ["fit_decoder", "add_store_retrieval", "check_decoder_specs"]


def fit_decoder(spec: DecoderSpec | dict, *, dataset, store, registry, out: str | Path | None = None,
                subjects: list[str] | None = None, progress: bool = True) -> DecodeRun | AdaptorRun:
    """Fit, evaluate and register the decoding model of ``spec``.

    Parameters
    ----------
    spec : DecoderSpec or dict
        What to fit: ``target`` (the store table decoded into), ``method`` (``"ridge"``: a decoder per
        subject; ``"adaptor"``: one model over all subjects, Ray Train, its settings searched with Ray Tune
        unless ``search`` is None, compared with ridge on its validation split; ``"auto"``: the same, keeping
        ridge decoders instead when ridge is the better on validation), ROIs, alphas, adaptor settings.
    dataset : str, Path or BrainDataset
        The dataset whose responses are decoded.
    store, registry : URI or FeatureStore / ModelRegistry
        The feature store holding ``target`` and the registry the model goes to.
    out : path, optional
        The run folder (default ``<registry>/_runs/...``); ``metrics.json`` is written there.
    subjects : list of str, optional
        The subjects (default: every subject of the dataset).
    progress : bool
        Show a progress bar (ridge decoders).

    Returns
    -------
    DecodeRun or AdaptorRun
        ``metrics``: ``{model: {subject: figures}}`` (ridge) or ``{target: {subject: figures}}`` (adaptor),
        the retrieval figures of the test split with ``store_top1`` / ``store_top5`` among every stimulus
        of the target table; ``run_dir``; ridge: ``failures`` and ``registered``; adaptor: ``name``, the
        training ``history``, ``best_epoch``; adaptor and auto: ``comparison`` ({subject: adaptor and ridge
        validation top-1, ridge's test figures}), ``winner``, ``search`` (the trials' table).
    """
    spec = spec if isinstance(spec, DecoderSpec) else DecoderSpec(**spec)
    root = dataset_root(dataset)
    store, registry = uri_of(store), uri_of(registry)
    if spec.method in ("adaptor", "auto"):
        run = _adaptor_or_ridge(spec, root, store, registry, out, subjects, progress)
        doc = {"decoders": run.metrics if isinstance(run, DecodeRun) else {run.name: run.metrics[spec.target]},
               "history": getattr(run, "history", []), "comparison": run.comparison, "winner": run.winner,
               "search": run.search}
    else:
        run = _ridge(spec, root, store, registry, out, subjects, progress)
        doc = {"decoders": run.metrics}
    (Path(run.run_dir) / "metrics.json").write_text(json.dumps(doc, indent=2))
    return run


def _ridge(spec: DecoderSpec, root, store, registry, out, subjects, progress: bool) -> DecodeRun:
    run = fit_decoders(root, spec.target, store=store, registry=registry, out=out, rois=spec.rois,
                       name=spec.name, alphas=tuple(spec.alphas) if spec.alphas else None, subjects=subjects,
                       response_delays=spec.response_delays, progress=progress)
    if run.metrics:
        add_store_retrieval(run.metrics, root, registry, store)
    return run


def _adaptor_or_ridge(spec: DecoderSpec, root, store, registry, out, subjects, progress: bool):
    """The adaptor (searched unless ``search`` is null), compared with ridge on its validation split; with
    ``method: auto`` and ridge the better on validation, the ridge decoders are fitted and registered instead."""
    run = train_adaptor(spec, dataset=root, store=store, registry=registry, out=out, subjects=subjects)
    if run.registered:
        add_store_retrieval({run.name: run.metrics[spec.target]}, root, registry, store)
        return run
    ridge = _ridge(spec, root, store, registry,
                   Path(run.run_dir) / "ridge", subjects, progress)
    ridge.comparison, ridge.winner, ridge.search = run.comparison, run.winner, run.search
    return ridge


def add_store_retrieval(metrics: dict, dataset, registry, store) -> None:
    """Add to a fit's decoder figures (``{model: {subject: figures}}``, in place) the whole-store retrieval
    (``store_top1`` / ``store_top5`` of ``store_candidates``: LanceDB search over the whole target table)
    that fitting leaves to evaluation."""
    from ...datasets import open_dataset

    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(uri_of(registry), create=False)
    ev = evaluate_decoders(reg, open_dataset(dataset_root(dataset)), store=uri_of(store),
                           models=list(metrics))
    for model, by_subject in metrics.items():
        for s, m in by_subject.items():
            m.update({k: v for k, v in ev.get(model, {}).get(s, {}).items() if k.startswith("store_")})


def check_decoder_specs(spec, store) -> None:
    """Every decoder of a fit spec: its target table holds each subject's stimuli and its ROIs exist (checked
    before any fit); a ValueError names the decoder (``decoders[i]``) and the problem."""
    from ...datasets import open_dataset
    from ...features import FeatureStore
    from ._inputs import check_decoding_inputs, select_voxels

    ds, fs = open_dataset(spec.dataset), FeatureStore(uri_of(store), create=False)
    subjects = None if spec.subjects == "all" else list(spec.subjects)
    for i, d in enumerate(spec.decoders):
        try:
            for s in check_decoding_inputs(ds, fs, [d.target], subjects):
                select_voxels(ds, s, d.rois)
        except (ValueError, KeyError) as e:
            raise ValueError(f"decoders[{i}] ({d.method} into {d.target}): {e}") from None

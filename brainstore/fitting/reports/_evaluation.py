"""One entry point for scoring what a registry holds: :func:`evaluate` predicts the test split with every
registered encoder of a dataset (test NNMC per ROI) and decodes it with every decoder and adaptor
(retrieval), and writes the report folder: metrics.json, tables, plots, predictions, the maps on the
cortex (``maps/``, see :mod:`._maps`) and the self-contained report.html. ``brainstore evaluate`` is a
thin layer over it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..._storage import dataset_root, uri_of
from ..decoding import decoding_models, evaluate_decoders
from ..registry import ModelRegistry, model_base, run_dir
from ._maps import CortexMaps, write_cortex_maps
from ._report import evaluate_registered, write_decoding_plot, write_report

__all__ = ["evaluate", "Evaluation"]

#: What the report says when the maps were skipped.
NO_MAPS_NOTE = "no maps: skipped on request (evaluate(maps=False), `brainstore evaluate --no-maps`)"


@dataclass
class Evaluation:
    """What :func:`evaluate` measured and wrote.

    Attributes
    ----------
    report_dir : the folder holding every file below.
    metrics : encoders' figures, ``{model: {subject: {hemi or "both": {...}}}}``.
    kinds : encoder kind per model (ridge, banded, mlp, per-roi, ensemble).
    decoders : decoders' and adaptors' figures, ``{model: {subject: {...}}}``.
    report : :func:`~._report.write_report`'s summary of the encoders (``rows``: one per model, the
        test NNMC per ROI family; ``named``: per named ROI), or None without encoders.
    files : the files written, relative to ``report_dir``.
    html : the report.html file.
    maps : the map files written (GIfTI / NIfTI and PNG under ``maps/``), relative to ``report_dir``;
        empty when the dataset places no response column (``maps_info.notes`` says why).
    maps_info : :class:`~._maps.CortexMaps`, what the maps are (pictures, spaces, notes), or None
        without encoders; with ``maps=False``, no files and a note saying they were skipped.
    """

    report_dir: Path
    metrics: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)
    decoders: dict = field(default_factory=dict)
    report: dict | None = None
    files: list[str] = field(default_factory=list)
    html: Path | None = None
    maps: list[str] = field(default_factory=list)
    maps_info: CortexMaps | None = None

    def summary(self) -> str:
        """The encoders' comparison table (Markdown: test NNMC per ROI family, mean over subjects) and the
        decoders' top-1 retrieval both ways, as text."""
        parts = [self.report["markdown"]] if self.report else []
        if self.decoders:
            lines = ["| decoder | subject | top-1 brain -> stimulus | top-1 stimulus -> brain |", "|---|---|---|---|"]
            for model, by_subject in self.decoders.items():
                for s, m in sorted(by_subject.items()):
                    lines.append(f"| {model} | {s} | {m.get('top1_brain_to_stimulus', float('nan')):.3f} | "
                                 f"{m.get('top1_stimulus_to_brain', float('nan')):.3f} |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) or "nothing evaluated"


def evaluate(dataset, *, registry, store=None, out: str | Path | None = None, models: list[str] | None = None,
             title: str | None = None, provenance: dict | None = None, meshes: str | Path | None = None,
             maps: bool = True, progress: bool = True) -> Evaluation:
    """Score the registered encoders and decoders fitted on ``dataset`` on its test split and write the report.

    Parameters
    ----------
    dataset : str, Path or BrainDataset
        The dataset the models were fitted on (its test responses are predicted and decoded).
    registry : URI or ModelRegistry
        Where the models are.
    store : URI or FeatureStore, optional
        The feature store to read embeddings from (default: each model's own).
    out : path, optional
        The report folder (default ``<registry>/_runs/evaluate-TIME``; refused before any work when it
        cannot be created).
    models : list of str, optional
        Model names (encoders or decoders) to evaluate (default: every model fitted on ``dataset``); an encoder
        may name a version or alias, ``["clip@1", "clip@2"]``, to compare versions side by side (each a row).
    title : str, optional
        The HTML report's title.
    provenance : dict, optional
        Extra rows for the report's provenance table (the command that ran, say).
    meshes : path, optional
        A FreeSurfer fsaverage folder to draw the maps on, checked before any work (default: one found by
        ``$BRAINSTORE_FSAVERAGE``, ``$SUBJECTS_DIR``, ``$FREESURFER_HOME``, else the fsaverage5 nilearn bundles).
    maps : bool
        Write the maps on the cortex (default). They take about a second per picture (two per encoder and
        subject, and the averages); False skips them (``brainstore evaluate --no-maps``): the report says so.
    progress : bool
        Show a progress bar while the maps are written.

    Returns
    -------
    Evaluation
        The figures, the files written and the report folder.

    Raises
    ------
    RegistryError
        When no model was fitted on ``dataset`` (or a named model is not there).
    """
    from ..._paths import check_folder
    from ...datasets import open_dataset
    from ...maps import find_fsaverage
    from ._html import write_html_report
    from ..registry import RegistryError

    ds = dataset if not isinstance(dataset, (str, Path)) else open_dataset(dataset_root(dataset))
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(uri_of(registry), create=False)
    store = None if store is None else uri_of(store)
    report_dir = check_folder(run_dir(out, reg.root, "evaluate"), "report folder", "--out", create=True, make=False)
    if maps and meshes is not None:
        find_fsaverage(meshes)  # a folder that holds no fsaverage: refused now, not after the predictions
    dec_names = set(decoding_models(reg, ds.root))
    enc_names = [m for m in models if model_base(m) not in dec_names] if models else None
    ev = Evaluation(Path(report_dir))
    if not (models and not enc_names):
        ev.metrics, ev.kinds, preds = evaluate_registered(reg, ds, store=store, models=enc_names)
    ev.decoders = evaluate_decoders(reg, ds, store=store,
                                    models=[m for m in models if model_base(m) in dec_names] if models else None)
    if not ev.metrics and not ev.decoders:
        raise RegistryError(f"no registered model was fitted on {ds.root} in {reg.root}; run `brainstore fit "
                            f"--dataset {ds.root}` first")
    if ev.metrics:
        _encoder_outputs(ev, ds, preds, meshes, progress, maps=maps)
    if ev.decoders:
        _decoder_outputs(ev)
    extra = {"models": ", ".join(models) if models else "all", "store": store or "each model's own",
             "report folder": str(ev.report_dir), **(provenance or {})}
    ev.html = Path(write_html_report(ev.report_dir / "report.html", dataset=ds, registry=reg, store=store,
                                     metrics=ev.metrics, kinds=ev.kinds, decoders=ev.decoders,
                                     title=title or f"brainstore evaluate: {ds.name}", provenance_extra=extra,
                                     maps=ev.maps_info))
    ev.files.append("report.html")
    return ev


def _decoder_outputs(ev: Evaluation) -> None:
    """The decoders' figures in metrics.json (beside the encoders', if any) and their plot."""
    ev.report_dir.mkdir(parents=True, exist_ok=True)
    path = ev.report_dir / "metrics.json"
    doc = json.loads(path.read_text()) if ev.metrics else {}
    doc["decoders"] = ev.decoders
    path.write_text(json.dumps(doc, indent=2))
    write_decoding_plot(ev.decoders, ev.report_dir / "decoding_top1.png")
    ev.files += (["metrics.json"] if not ev.metrics else []) + ["decoding_top1.png"]


def _encoder_outputs(ev: Evaluation, ds, preds: dict, meshes, progress: bool, *, maps: bool) -> None:
    """The encoders' report files (tables, plots, predictions) and their maps on the cortex (``maps`` False:
    none, and a note why)."""
    ev.report = write_report(ev.metrics, ev.kinds, preds, ds, ev.report_dir)
    ev.files += ["metrics.json", "comparison.md", "named_rois.md", "roi_scores.png", "pred_vs_measured.png"]
    ev.files += ["split_scores.png"] if ev.report["split"] else []
    ev.files += ["predictions/"]
    if not maps:
        ev.maps_info = CortexMaps(ev.report_dir / "maps", notes=[NO_MAPS_NOTE])
        return
    ev.maps_info = write_cortex_maps(ds, preds, ev.report_dir / "maps", meshes=meshes, progress=progress)
    ev.maps = sorted(str(p.relative_to(ev.report_dir)) for p in ev.maps_info.files)
    ev.files += ["maps/"] if ev.maps else []

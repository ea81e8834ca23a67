"""Models: ``fit`` (encoders, or decoders with ``--decode``), ``evaluate``, ``predict``, ``models`` and
``explain``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ._common import VERBOSE, AddressOpt, RegistryOpt, StoreOpt, fail, need, need_dataset, open_registry


def fit_cmd(
    config: Optional[Path] = typer.Option(None, "--config", help="Fit spec (YAML). Without it: a default spec from the store."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset folder (overrides the spec's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder for predictions and the report (default <registry>/_runs/fit-TIME)."),
    include_random: bool = typer.Option(False, "--include-random", help="Default spec: also fit feature tables made with random weights."),
    decode: Optional[str] = typer.Option(None, "--decode", help="Fit decoders (responses -> this store table) instead of encoders."),
    method: str = typer.Option("ridge", "--method", help="With --decode: 'ridge' (one per subject), 'adaptor' (one model over all subjects, Ray Train; its settings searched with Ray Tune, compared with ridge on validation) or 'auto' (the adaptor or ridge, whichever wins on validation)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="With --method adaptor/auto: training epochs at most (default 30; early stopping keeps the best)."),
    trials: Optional[int] = typer.Option(None, "--trials", min=0, help="With --method adaptor/auto: settings tried by the search (default 8; 0: train the defaults as they are)."),
    workers: int = typer.Option(2, "--workers", min=1, help="With --method adaptor: Ray Train workers."),
    rois: Optional[str] = typer.Option(None, "--rois", help="With --decode: comma-separated ROIs or ROI families whose vertices the decoders read (default: all)."),
    store: str = StoreOpt,
    registry: str = RegistryOpt,
    address: Optional[str] = AddressOpt,
) -> None:
    """Fit encoding models for every subject x hemisphere x model in parallel, evaluate, register.

    With --decode TABLE: fit a ridge decoder per subject from its responses to TABLE's embeddings.
    """
    if decode is not None:
        if config is not None:
            fail("--decode fits decoders from --dataset; it does not take --config")
        if method not in ("ridge", "adaptor", "auto"):
            fail(f"--method must be 'ridge', 'adaptor' or 'auto', not {method!r}")
        if method == "ridge" and (epochs or trials is not None):
            fail("--epochs and --trials go with --method adaptor or auto")
        fields = {"target": decode, "method": method, "workers": workers,  # a DecoderSpec's, checked in it
                  "rois": [r.strip() for r in rois.split(",") if r.strip()] if rois else None,
                  "adaptor": {"epochs": epochs} if epochs else None}
        if trials is not None:
            fields["search"] = {"trials": trials} if trials else None
        return _fit_decoders_cmd(fields, dataset, out, store, registry, address)
    if rois is not None:
        fail("--rois goes with --decode (encoders take ROI rules in a fit spec)")
    from ..._paths import check_folder
    from ...datasets import DatasetError
    from ...features import FeatureStoreError, MissingStimuliError
    from ...fitting import RegistryError, SpecError, as_fit_spec, fit, load_spec
    from .._quiet import drop_stderr_lines
    from .._ray import connect
    from .._console import console, print_comparison

    notes: list[str] = []
    if config is None and dataset is None:
        fail("give --config FILE or --dataset DIR")
    if config is not None:
        need(config, False, "fit spec", "--config takes a YAML file")
    if dataset is not None:
        need_dataset(dataset, "--dataset takes a dataset folder in the Algonauts layout or a description file (.yaml)")
    try:
        spec = load_spec(config, dataset=str(dataset) if dataset else None) if config is not None else None
        reg = (spec.registry if spec is not None else None) or registry
        # the places results go are checked before Ray starts and before any work
        check_folder(reg, "model registry", "--registry", create=True, error=RegistryError)
        if out is not None:
            check_folder(out, "run folder", "--out", create=True)
        connect(address)  # before any store is opened: Ray's processes start from a Lance-free driver
        if spec is None:
            spec = as_fit_spec(dataset, store=store, registry=registry, include_random=include_random, notes=notes)
        for n in notes:
            console.print(f"[yellow]note:[/] {n}")
        adaptors = any(d.method != "ridge" for d in spec.decoders)
        with drop_stderr_lines(enabled=adaptors and not VERBOSE["on"]):
            result = fit(spec, store=spec.store or store, registry=reg, out=out)
    except (SpecError, DatasetError, FeatureStoreError, MissingStimuliError, RegistryError, ValueError) as e:
        fail(str(e))
    run = result.encoders
    if run is not None:
        for f in run.failures:
            console.print(f"[red]failed[/] {escape(f['subject'])} {f['hemi']} {escape(f['model'])}: "
                          f"{escape(f['error'])}")
        if not run.metrics:
            fail("no model could be fitted")
        print_comparison(result.report["rows"], "fitted models")
        console.print(f"registered {len(run.registered)} model(s) in {reg}; predictions and report in "
                      f"{result.report['dir']} ({run.seconds:.1f} s)")
    ok = all(_print_decoder_run(d, r, reg) for d, r in zip(spec.decoders, result.decoders))
    if result.failures or not ok:
        raise typer.Exit(code=1)


def _fit_decoders_cmd(fields: dict, dataset: Optional[Path], out: Optional[Path], store: str, registry: str,
                      address: Optional[str]) -> None:
    """``fit --decode TABLE``: ridge decoders for every subject, or one adaptor over all subjects (``fields``:
    the :class:`~brainstore.fitting.DecoderSpec`'s)."""
    from ..._paths import check_folder
    from ...datasets import DatasetError
    from ...features import FeatureStoreError, MissingStimuliError
    from ...fitting import DecoderSpec, RegistryError
    from .._ray import connect

    if dataset is None:
        fail("--decode needs --dataset DIR (the responses to decode)")
    need_dataset(dataset, "--dataset takes a dataset folder in the Algonauts layout or a description file (.yaml)")
    try:
        spec = DecoderSpec(**fields)
        check_folder(registry, "model registry", "--registry", create=True, error=RegistryError)
        if out is not None:
            check_folder(out, "run folder", "--out", create=True, make=False)
        connect(address)
        ok = _run_decoder(spec, dataset, store, registry, out)
    except (DatasetError, FeatureStoreError, MissingStimuliError, RegistryError, ValueError) as e:
        fail(str(e))
    if not ok:
        raise typer.Exit(code=1)


def _run_decoder(spec, dataset: Path, store: str, registry: str, out: Optional[Path]) -> bool:
    """Fit one decoding model of a :class:`~brainstore.fitting.DecoderSpec` (:func:`~brainstore.fitting.fit_decoder`)
    and print its figures; False when a subject failed."""
    from ...fitting import fit_decoder
    from .._quiet import drop_stderr_lines

    with drop_stderr_lines(enabled=spec.method != "ridge" and not VERBOSE["on"]):
        run = fit_decoder(spec, dataset=dataset, store=store, registry=registry, out=out)
    return _print_decoder_run(spec, run, registry)


def _print_decoder_run(spec, run, registry: str) -> bool:
    """A decoding model's figures and where it went; False when a subject failed (or none could be fitted)."""
    from .._console import console, print_adaptor_outcome, print_decoders

    if hasattr(run, "history"):  # an adaptor (method adaptor, or auto where it won)
        print_decoders({f"{run.name} (adaptor)": run.metrics[spec.target]}, "fitted adaptor")
        print_adaptor_outcome(run, spec.target, spec.method)
        last = run.history[-1]
        resumed = f", resumed after epoch {run.resumed_from_epoch}" if run.resumed_from_epoch is not None else ""
        best = ("" if run.best_epoch is None else f", kept epoch {run.best_epoch} (best validation top-1)"
                if run.best_epoch >= 0 else ", kept its start: the ridge base alone had the best validation top-1")
        console.print(f"registered {run.name}/shared in {registry}: {len(run.history)} epochs{resumed}{best}, last "
                      f"train loss {last['train_loss']:.3f}, {last['samples_per_s']:.0f} samples/s; checkpoints and "
                      f"metrics.json in {run.run_dir} ({run.seconds:.1f} s)")
        return True
    print_adaptor_outcome(run, spec.target, spec.method)  # auto, where ridge won
    for f in run.failures:
        console.print(f"[red]failed[/] {escape(f['subject'])} {escape(f['model'])}: {escape(f['error'])}")
    if not run.metrics:
        fail("no decoder could be fitted")
    print_decoders(run.metrics, "fitted decoders")
    console.print(f"registered {len(run.registered)} decoder(s) in {registry}; decoded test embeddings and "
                  f"metrics.json in {run.run_dir} ({run.seconds:.1f} s)")
    return not run.failures


def evaluate_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="Dataset folder."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated model names, or versions to compare side by side (clip@1,clip@2); default: all fitted on this dataset."),
    rois: str = typer.Option("families", "--rois", help="'families' (the five ROI families) or 'named' (also every named ROI: V1v ... VWFA-2)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <registry>/_runs/evaluate-TIME)."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: the store each model was fitted with)."),
    meshes: Optional[Path] = typer.Option(None, "--meshes", help="FreeSurfer fsaverage folder to draw the maps on (default: $BRAINSTORE_FSAVERAGE, $SUBJECTS_DIR, $FREESURFER_HOME, else nilearn's fsaverage5)."),
    maps: bool = typer.Option(True, "--maps/--no-maps", help="Write the maps on the cortex (OUT/maps/: GIfTI and pictures of every encoder and subject, about a second per picture; the report shows the best model's). --no-maps skips them, to score many models fast."),
    registry: str = RegistryOpt,
) -> None:
    """Score registered models on the test split (NNMC per ROI), write tables, plots, predictions and maps on the cortex."""
    from ...datasets import DatasetError
    from ...features import FeatureStoreError
    from ...fitting import RegistryError, evaluate
    from .._console import console, print_comparison, print_named, print_decoders

    if rois not in ("families", "named"):
        fail(f"--rois must be 'families' or 'named', not {rois!r}")
    try:
        reg = open_registry(registry)
        ev = evaluate(dataset, registry=reg, store=store, out=out, models=models.split(",") if models else None,
                      provenance={"command": "brainstore evaluate", "rois": rois}, meshes=meshes, maps=maps)
    except (RegistryError, DatasetError, FeatureStoreError, ValueError) as e:
        fail(str(e))
    if ev.report:
        print_comparison(ev.report["rows"], "evaluation")
        if rois == "named":
            print_named(ev.report["named"], "evaluation")
    if ev.decoders:
        print_decoders(ev.decoders, "evaluation")
    console.print(f"report: {ev.report_dir} ({', '.join(ev.files)})")
    if ev.maps:
        console.print(f"maps on the cortex: {ev.maps_info.root} ({len(ev.maps)} files, {ev.maps_info.seconds:.1f} s)")
    for note in ev.maps_info.notes if ev.maps_info else ():
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"HTML report: {ev.html}")


def predict_cmd(
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset folder (its test images are predicted)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: OUT/subjNN/{lh,rh}_pred_test.npy."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name, or NAME@VERSION / NAME@ALIAS for a version (default: each subject's best by validation score; with --decode the ridge decoder into TABLE, else its adaptor)."),
    decode: Optional[str] = typer.Option(None, "--decode", help="Decode the test responses into this store table instead: OUT/subjNN/decoded_TABLE.npy and the top-k stimuli of the whole table (LanceDB search)."),
    top_k: int = typer.Option(10, "--top-k", min=1, help="With --decode: stimuli listed per test response."),
    into: Optional[str] = typer.Option(None, "--into", help="In-silico experiment: predict --subject's responses to every stimulus of the model's feature tables (or --stimuli) through a Ray Dataset into this store table ('auto': pred-MODEL-vV-SUBJECT); a killed run resumes."),
    subject: Optional[str] = typer.Option(None, "--subject", help="With --into: the subject."),
    stimuli: Optional[Path] = typer.Option(None, "--stimuli", help="With --into: a file of stimulus ids, one per line (default: every stored stimulus)."),
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="With --into: stimuli per block (one prediction and one commit)."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: the store the model was fitted with)."),
    registry: str = RegistryOpt,
) -> None:
    """Write Algonauts submission files for the test images of every subject (or, with --decode, decoded embeddings;
    with --into, a model's predicted responses to many stimuli into a store table)."""
    from ...datasets import DatasetError
    from ...features import FeatureStoreError
    from ...fitting import RegistryError, decode_test, predict
    from .._console import console

    try:
        reg = open_registry(registry)
        if into is not None:
            return _predict_into(reg, model, subject, into, stimuli, store, batch_size)
        if dataset is None or out is None:
            fail("predict needs --dataset and --out (or --into TABLE with --model and --subject)")
        if decode is not None:
            for d in decode_test(dataset, decode, registry=reg, out=out, model=model, store=store, top_k=top_k):
                console.print(f"{d.subject}: {d.model} -> {d.decoded} ({d.n_test} x {d.dim}), top-{d.k} of "
                              f"{d.candidates} stored stimuli in {d.top.name}; true stimulus first {d.top1:.1%}, "
                              f"in top-{d.k} {d.topk:.1%}")
            return
        for s, done in predict(dataset, registry=reg, out=out, model=model, store=store).items():
            console.print(f"{s}: {done['version']} -> {', '.join(str(p) for p in done['files'])}")
    except (RegistryError, DatasetError, FeatureStoreError, ValueError, KeyError) as e:
        fail(str(e))


def _predict_into(reg, model: str | None, subject: str | None, into: str, stimuli: Path | None, store: str | None,
                  batch_size: int) -> None:
    """``predict --into``: the in-silico experiment (:func:`brainstore.fitting.predict_to_table`)."""
    from ...fitting import predict_to_table
    from .._console import console

    if not model or not subject:
        fail("predict --into needs --model (NAME, NAME@V or NAME@ALIAS) and --subject")
    ids = None
    if stimuli is not None:
        if not stimuli.is_file():
            fail(f"--stimuli {stimuli}: no such file (one stimulus id per line)")
        ids = [line.strip() for line in stimuli.read_text().splitlines() if line.strip()]
    run = predict_to_table(model, subject, registry=reg, store=store, stimuli=ids,
                           table=None if into == "auto" else into, batch_size=batch_size)
    console.print(f"{run.model}: {run.written:,} stimuli predicted into {run.table} of {run.store} "
                  f"({run.already:,} of {run.requested:,} already there; {run.stimuli_per_s:,.0f} stimuli/s; "
                  f"columns {', '.join(f'{h} {n}' for h, n in run.hemispheres.items())})")


def explain_cmd(
    model: str = typer.Option(..., "--model", help="Encoding model name (`brainstore models`); 'MODEL/subjNN' also works."),
    roi: Optional[str] = typer.Option(None, "--roi", help="Named ROI (FFA-1) or ROI family (floc-faces); comma-separated: their union."),
    subject: Optional[str] = typer.Option(None, "--subject", help="Subject (default: the first the model is fitted for)."),
    top: int = typer.Option(20, "--top", help="How many stimuli to show."),
    vertices: Optional[str] = typer.Option(None, "--vertices", help="Instead of --roi: comma-separated vertex indices (lh then rh, or into --hemisphere)."),
    hemisphere: Optional[str] = typer.Option(None, "--hemisphere", help="lh or rh only (default: both)."),
    columns: int = typer.Option(5, "--columns", help="Columns of the contact sheet."),
    out: Optional[Path] = typer.Option(None, "--out", help="Contact sheet PNG (default <registry>/_runs/explain-TIME/MODEL_SUBJECT_ROI.png)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset for ROI masks, captions and images (default: the one the model was fitted on)."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: the store the model was fitted with)."),
    registry: str = RegistryOpt,
) -> None:
    """Selectivity: the stored stimuli (and captions) with the highest predicted response in an ROI, and a contact sheet."""
    from rich.markup import escape
    from rich.table import Table

    from ..._paths import check_folder
    from ...datasets import DatasetError
    from ...features import FeatureStoreError, MissingStimuliError
    from ...fitting import RegistryError, explain_roi, run_dir, safe_name, write_contact_sheet
    from .._console import console

    verts = None
    if vertices is not None:
        try:
            verts = [int(v) for v in vertices.split(",") if v.strip()]
        except ValueError:
            fail(f"--vertices {vertices!r} must be comma-separated whole numbers (vertex indices), e.g. 0,5,17")
    if columns < 1:
        fail(f"--columns must be >= 1, got {columns}")
    if dataset is not None:
        need(dataset, True, "dataset", "--dataset takes a dataset folder in the Algonauts layout")
    if out is not None and out.is_dir():
        fail(f"--out {out} is a folder; give the contact sheet's file name, e.g. {out / 'sheet.png'}")
    try:
        reg = open_registry(registry)
        if out is not None:
            check_folder(out.expanduser().absolute().parent, "output folder", "--out", create=True, make=False)
        ex = explain_roi(reg, model, subject, store=store, dataset=dataset, roi=roi, vertices=verts,
                         hemisphere=hemisphere, top=top)
        png = out if out is not None else (run_dir(None, registry, "explain")
                                           / f"{safe_name(ex.model)}_{ex.subject}_{safe_name(ex.roi)}.png")
        png = write_contact_sheet(ex, png, columns=columns)
    except (RegistryError, DatasetError, FeatureStoreError, MissingStimuliError, ValueError, KeyError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write the contact sheet: {e}; pass another file with --out")
    t = Table(title=f"{ex.model} / {ex.subject}: top {len(ex.top)} of {ex.n_stimuli} stored stimuli by mean predicted "
                    f"response in {ex.roi} ({ex.n_vertices} vertices, {'+'.join(ex.hemispheres)})")
    for c, j in (("rank", "right"), ("id", "left"), ("score", "right"), ("z", "right"), ("caption", "left")):
        t.add_column(c, justify=j)
    for it in ex.top:
        t.add_row(str(it.rank), escape(it.stimulus_id), f"{it.score:+.3f}", f"{it.z:+.2f}", escape(it.caption or "-"))
    console.print(t)
    console.print(f"contact sheet: {png}")

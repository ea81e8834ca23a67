"""The stages of ``brainstore run`` (:mod:`._run`): each runner does its stage's work with the library
functions the CLI verbs use and returns the stage's outputs, recorded in the state file.

``RUNNERS[stage](ctx, fingerprint) -> outputs``; a runner raises (``PipelineError`` for a failure it
can explain) and the stage is not recorded, so the next run starts there again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from rich.markup import escape

from ...fitting import FitSpec
from ._identity import _file_sha, _record_identity
from ._spec import STAGES, PipelineError, PipelineSpec, _title
from ._state import _Ctx

__all__ = ["RUNNERS"]

_MARKER = ".pipeline-fingerprint"  # in a stage's folder: the fingerprint its files were made for


@contextlib.contextmanager
def _stage_folder(ctx: _Ctx, stage: str, fp: str):
    """``<out>/<stage>/``: kept when it was made for this fingerprint (resumable work: adaptor checkpoints),
    else emptied first; a folder with files not written by a pipeline run is refused."""
    d = ctx.pipe.stage_dir(stage)
    marker = d / _MARKER
    if d.is_dir() and any(d.iterdir()):
        if not marker.is_file():
            raise PipelineError(f"{d} holds files not written by `brainstore run`; move them away or give the "
                                f"pipeline another `out:` in {ctx.pipe.path}")
        if marker.read_text().strip() != fp:
            shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    marker.write_text(fp + "\n")
    yield d


def _run_extract(ctx: _Ctx, fp: str) -> dict:
    from ...features import extract
    from .._quiet import drop_stderr_lines
    from .._console import console

    spec = ctx.spec
    fs = ctx.store(create=True)
    tables = {}
    from ...datasets import open_dataset

    is_ts = open_dataset(spec.dataset).is_timeseries
    for e, ext, table, delayed in zip(spec.extract, ctx.pipe.extractors, ctx.pipe.tables, ctx.pipe.delayed):
        if ext.metadata().get("random_init") == "true":
            console.print(f"[yellow]note:[/] {table} uses RANDOM weights ({ext.spec}): a baseline, not a pretrained "
                          "model; recorded as random_init in the table's metadata")
        with drop_stderr_lines(enabled=ctx.quiet):  # Ray's per-run actor-restart notice (ray#53727)
            if is_ts:
                from ...features import extract_timeseries

                rep = extract_timeseries(spec.dataset, ext, fs, version=table, resample=e.resample,
                                         concurrency=e.concurrency, dtype=e.dtype)
            else:
                rep = extract(spec.dataset, ext, fs, version=table, batch_size=e.batch_size, concurrency=e.concurrency,
                              dtype=e.dtype, storage_dtype=e.storage_dtype, commit_every=e.commit_every, limit=e.limit)
        console.print(f"  [green]{rep.feature}[/]: {rep.written} written, {rep.already_stored} already stored, "
                      f"{len(rep.failed)} failed, dim {rep.dim}, {rep.seconds:.1f} s ({rep.rate:.1f} stimuli/s)")
        for f in rep.failed:
            console.print(f"    [red]bad stimulus[/] {escape(f['stimulus_id'])} {escape(str(f['path']))}: "
                          f"{escape(str(f['error']))}")
        if rep.failed and not e.allow_failures:
            raise PipelineError(f"extract: {len(rep.failed)} stimulus(i) of {table} failed and were not stored "
                                "(listed above, and in the store's bad-stimuli list); fix or remove them and run "
                                "again (extraction resumes), or set `allow_failures: true` on that extractor")
        tables[table] = fs.version(table)
        if delayed is not None:
            from ...features import derive_delays

            derive_delays(fs, table, spec.dataset, e.delays, name=delayed)
            console.print(f"  [green]{delayed}[/]: delayed by {','.join(map(str, e.delays))} TRs within each clip")
            tables[delayed] = fs.version(delayed)
    return {"tables": tables}


def _run_fit(ctx: _Ctx, fp: str) -> dict:
    from ...datasets import open_dataset
    from ...fitting import fit_encoding_models, write_report
    from ...fitting import check_decoder_specs
    from .._console import console, print_comparison

    spec, fit_spec = ctx.spec, ctx.pipe.fit_spec
    ds = open_dataset(spec.dataset)
    records: dict[str, str | None] = {}  # registered name -> weights sha256 (read back once all are saved)
    decoders: list[str] = []
    with _stage_folder(ctx, "fit", fp) as d:
        ctx.registry(create=True)
        if fit_spec.decoders:  # targets and ROIs checked before any model is fitted
            check_decoder_specs(fit_spec, spec.store)
        if fit_spec.models:
            run = fit_encoding_models(fit_spec, store=spec.store, registry=spec.registry, out=d / "encoders")
            for f in run.failures:
                console.print(f"[red]failed[/] {f['subject']} {f['hemi']} {f['model']}: {escape(f['error'])}")
            if run.failures or not run.metrics:
                raise PipelineError(f"fit: {len(run.failures)} encoding fit(s) failed (listed above); fix the cause "
                                    "and run again (extract stays current)")
            rep = write_report(run.metrics, run.kinds, run.test_preds, ds, run.run_dir)
            print_comparison(rep["rows"], "fitted models")
            records.update({n: None for n in run.registered})
        subjects = None if fit_spec.subjects == "all" else list(fit_spec.subjects)
        for i, dspec in enumerate(fit_spec.decoders):
            name, names = _fit_decoder(dspec, ds, spec, d / f"decoder-{i + 1}-{dspec.method}", subjects, i, ctx.quiet)
            decoders.append(name)
            records.update({n: None for n in names})
    reg = ctx.registry()
    records = _record_identity(reg, records)
    return {"run_dir": str(d), "records": records, "encoders": _model_names(fit_spec),
            "decoders": decoders}


def _model_names(fit_spec: FitSpec) -> list[str]:
    return [m.name for m in fit_spec.models] + [p.name for p in fit_spec.per_roi] + [e.name for e in fit_spec.ensembles]


def _fit_decoder(dspec, ds, spec: PipelineSpec, out: Path, subjects, i: int, quiet: bool) -> tuple[str, list[str]]:
    """One decoding model of the fit spec (:func:`~brainstore.fitting.fit_decoder`); its model name and
    registered names."""
    from ...fitting import fit_decoder
    from .._console import console, print_adaptor_outcome, print_decoders
    from .._quiet import drop_stderr_lines

    what = f"fit.decoders[{i}] ({dspec.method} into {dspec.target})"
    with drop_stderr_lines(enabled=quiet and dspec.method != "ridge"):
        run = fit_decoder(dspec, dataset=ds.root, store=spec.store, registry=spec.registry, out=out,
                          subjects=subjects)
    print_adaptor_outcome(run, dspec.target, dspec.method)
    if hasattr(run, "history"):  # an adaptor (method adaptor, or auto where it won)
        print_decoders({f"{run.name} (adaptor)": run.metrics[dspec.target]}, f"fitted adaptor ({what})")
        resumed = f", resumed after epoch {run.resumed_from_epoch}" if run.resumed_from_epoch is not None else ""
        console.print(f"  registered {run.name}/shared: {len(run.history)} epochs{resumed} ({run.seconds:.1f} s)")
        return run.name, [f"{run.name}/shared"]
    for f in run.failures:
        console.print(f"[red]failed[/] {f['subject']} {f['model']}: {escape(f['error'])}")
    if run.failures or not run.metrics:
        raise PipelineError(f"fit: {what}: {len(run.failures)} subject(s) failed (listed above); fix the cause and "
                            "run again")
    print_decoders(run.metrics, f"fitted decoders ({what})")
    return next(iter(run.metrics)), list(run.registered)


def _run_evaluate(ctx: _Ctx, fp: str) -> dict:
    from ...datasets import open_dataset
    from ...fitting import evaluate_decoders, evaluate_registered, write_decoding_plot, write_report
    from .._console import console, print_comparison, print_decoders, print_named

    fit_out = ctx.outputs("fit")
    ds = open_dataset(ctx.spec.dataset)
    reg = ctx.registry()
    enc, dec = fit_out.get("encoders") or [], fit_out.get("decoders") or []
    with _stage_folder(ctx, "evaluate", fp) as d:
        metrics, kinds, preds = evaluate_registered(reg, ds, models=enc) if enc else ({}, {}, {})
        decoders = evaluate_decoders(reg, ds, models=dec) if dec else {}
        doc: dict = {}
        maps = None
        if metrics:
            rep = write_report(metrics, kinds, preds, ds, d, title="pipeline encoding models")
            print_comparison(rep["rows"], "evaluation")
            if ctx.spec.evaluate.rois == "named":
                print_named(rep["named"], "evaluation")
            doc = json.loads((d / "metrics.json").read_text())
            maps = _evaluate_maps(ctx, ds, preds, d)
        if decoders:
            doc["decoders"] = decoders
            write_decoding_plot(decoders, d / "decoding_top1.png")
            print_decoders(decoders, "evaluation")
        if not metrics and not decoders:
            raise PipelineError(f"evaluate: no model of the fit stage is registered in {ctx.spec.registry} for "
                                f"{ds.root}; run the fit stage again (`--from fit`)")
        path = d / "metrics.json"
        tmp = path.with_name(".metrics.json.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)
    console.print(f"  report: {d} (metrics.json, comparison.md, roi_scores.png, predictions/ ...)")
    return {"dir": str(d), "metrics": str(path), "metrics_sha256": _file_sha(path),
            **({"maps": str(maps), "maps_sha256": _file_sha(maps)} if maps else {})}


def _evaluate_maps(ctx: _Ctx, ds, preds: dict, d: Path) -> Path:
    """The maps on the cortex under ``d/maps/`` (none with ``evaluate: {maps: false}``, a note says so), and
    ``d/maps.json``, what they are, for the report stage (:func:`~brainstore.fitting.read_cortex_maps`)."""
    from ...fitting import CortexMaps, write_cortex_maps
    from .._console import console

    if ctx.spec.evaluate.maps:
        maps = write_cortex_maps(ds, preds, d / "maps")
        if maps.files:
            console.print(f"  maps on the cortex: {maps.root} ({len(maps.files)} files, {maps.seconds:.1f} s)")
    else:
        maps = CortexMaps(d / "maps", notes=[f"no maps: `evaluate: {{maps: false}}` in {ctx.pipe.path}"])
    for note in maps.notes:
        console.print(f"  [yellow]note:[/] {escape(note)}")
    return maps.save(d / "maps.json")


def _run_report(ctx: _Ctx, fp: str) -> dict:
    from ...datasets import open_dataset
    from ...fitting import read_cortex_maps, write_html_report
    from .._console import console

    ev = ctx.outputs("evaluate")
    doc = json.loads(Path(ev["metrics"]).read_text())
    provenance = {"pipeline": str(ctx.pipe.path), "out": str(ctx.pipe.out),
                  "stages": {s: ctx.state["stages"].get(s, {}).get("fingerprint") for s in STAGES
                             if s in ctx.state["stages"]},
                  "fit_run": ctx.outputs("fit").get("run_dir"), "evaluate_dir": ev.get("dir")}
    maps = read_cortex_maps(ev["maps"]) if ev.get("maps") else None  # (None: no encoder, no maps)
    with _stage_folder(ctx, "report", fp) as d:
        path = d / "report.html"
        write_html_report(path, dataset=open_dataset(ctx.spec.dataset), registry=ctx.spec.registry,
                          store=ctx.spec.store, metrics=doc.get("metrics", {}), kinds=doc.get("kinds", {}),
                          decoders=doc.get("decoders", {}), title=_title(ctx.pipe), provenance_extra=provenance,
                          maps=maps)
    if not path.is_file():
        raise PipelineError(f"report: write_html_report did not write {path}")
    console.print(f"  report: {path}")
    return {"html": str(path)}


def _run_serve(ctx: _Ctx, fp: str) -> dict:
    """Start the service on the registry (as the demo does), check /healthz, then stop (unless keep_serving)."""
    import logging
    import signal

    import requests
    from ray import serve

    from ...serving import APP_NAME, build_app, free_port
    from .._quiet import quiet_serve
    from .._console import console

    cfg = ctx.spec.serve
    port = cfg.port
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        port = free_port()
        console.print(f"  something answers on port {cfg.port}: serving on {port} instead")
    except requests.RequestException:
        pass
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    with quiet_serve(enabled=ctx.quiet):
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
            serve.run(build_app(ctx.spec.registry), name=APP_NAME, route_prefix="/")
            health = requests.get(f"{url}/healthz", timeout=30)
            if health.status_code != 200:
                raise PipelineError(f"serve: {url}/healthz answered {health.status_code}: {health.text[:200]}")
            cat = requests.get(f"{url}/v1/models", timeout=60)
            if cat.ok:
                doc = cat.json()
                n = f"{len({m for ms in doc.get('encoders', {}).values() for m in ms})} encoding and " \
                    f"{len(doc.get('decoders', {}))} decoding model(s)"
            else:
                n = f"/v1/models answered {cat.status_code}"
            console.print(f"  up at {url} in {time.time() - t0:.1f} s: /healthz ok; {n} (API: {url}/docs)")
            if cfg.keep_serving:
                console.print(f"  serving until Ctrl-C: curl -s {url}/v1/models")
                stop = {"now": False}
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *a: stop.update(now=True))
                while not stop["now"]:
                    time.sleep(0.5)
        finally:
            serve.shutdown()
            time.sleep(1.0)  # Ray's log monitor relays the controller's exit notice late: still filtered
    console.print("  service stopped")
    return {"url": url}


#: The function each stage runs: ``runner(ctx, fingerprint) -> outputs`` (looked up at run time).
RUNNERS = {"extract": _run_extract, "fit": _run_fit, "evaluate": _run_evaluate, "report": _run_report,
           "serve": _run_serve}

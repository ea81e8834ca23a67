"""``brainstore demo``: the end-to-end run on the embedded default (local Ray, LanceDB on disk,
synthetic dataset): dataset -> features -> encoding models -> evaluation -> decoders (ridge, adaptor)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ._console import console, dataset_table, decoder_table, score_table

# CLIP ViT-B/32 with OpenAI weights when they are in the local cache; otherwise the same
# architecture with random weights (recorded as such in the feature table's metadata).
IMAGE_SPEC = "clip:arch=ViT-B-32,pretrained=openai"
IMAGE_FALLBACK = "clip:arch=ViT-B-32,pretrained=none"
TEXT_SPEC = "text"
# Gabor energy (static pyramid, pymoten): weight-free, so real offline; drives early visual cortex.
MOTION_SPEC = "motion-energy"


def _image_spec(requested: str | None) -> str:
    from ..features import WeightsNotFoundError, get_extractor

    if requested:
        return requested
    try:
        get_extractor(IMAGE_SPEC).resolve_weights()
        return IMAGE_SPEC
    except WeightsNotFoundError as e:
        console.print(f"[yellow]warning:[/] {str(e).splitlines()[0]}")
        console.print(f"[yellow]using {IMAGE_FALLBACK}: CLIP ViT-B/32 with RANDOM weights (recorded as pretrained=none "
                      "in the feature table's metadata). Put the weights in the HF cache for the real model.[/]")
        return IMAGE_FALLBACK


@dataclass
class _Demo:
    """One demo run: where it writes, the synthetic dataset's parameters, and whether Ray's notices are dropped."""

    out: Path  # the run folder
    params: dict  # make_dataset's arguments
    quiet: bool = True

    @property
    def data(self) -> Path:
        return self.out / "dataset"

    @property
    def store(self) -> str:
        return str(self.out / "store")

    @property
    def registry(self) -> str:
        return str(self.out / "registry")


def run_demo(out: Path, *, n_subjects: int, n_train: int, n_test: int, n_vertices: int, seed: int,
             address: str | None = None, image_extractor: str | None = None, quiet: bool = True,
             keep_serving: bool = False, port: int = 8000) -> dict:
    """Make (or reuse) the synthetic dataset under ``out``, extract features, fit, evaluate.

    ``quiet`` drops Ray's per-extraction actor-restart notice from stderr (see :mod:`._quiet`).
    """
    t0 = time.time()
    demo = _Demo(Path(out).resolve(), dict(n_subjects=n_subjects, n_train=n_train, n_test=n_test,
                                           n_vertices=n_vertices, seed=seed), quiet)
    console.rule("[bold]brainstore demo")
    ds = _dataset_step(demo)
    tables = _extract_step(demo, address, image_extractor)
    run = _fit_step(demo, ds)
    rep, oracle, maps = _evaluate_step(demo, ds, run)
    captions = tables[TEXT_SPEC]
    _decode_step(demo, ds, captions)
    html_path = _html_step(demo, ds, run, tables, maps)
    console.print("[7/7] serving: the fitted models behind Ray Serve on 127.0.0.1 (ingress, extractor, encoder "
                  "multiplexed per subject, decoder)")
    served = _serve_step(ds, demo.registry, demo.store, captions, keep_serving=keep_serving, quiet=quiet, port=port)
    console.print(f"[green]demo finished in {time.time() - t0:.1f} s[/]; run folder: {demo.out}")
    console.print(f"[bold]report: {html_path}[/] (tables and plots also in {demo.out / 'report'})")
    if maps.files:
        console.print(f"[bold]maps on the cortex: {maps.root}[/] (GIfTI and pictures per model and subject)")
    return {"served": served, "rows": rep["rows"], "oracle": {s: r["both"]["roi"] for s, r in oracle.items()},
            "report": str(html_path), "maps": str(maps.root) if maps.files else None, "seconds": time.time() - t0}


def _dataset_step(demo: _Demo):
    """[1/7] The synthetic dataset, reused when it was made with these parameters (else remade, and what was
    built from it cleared)."""
    from ..datasets import make_dataset, open_dataset

    data, params = demo.data, demo.params
    made_with = _dataset_params(data)
    if made_with == params:
        console.print(f"[1/7] reusing synthetic dataset {data}")
    else:
        if made_with is not None:
            console.print(f"[yellow]{data} was made with {made_with}, not {params}: remaking it, and clearing the "
                          f"demo's store, registry and report built from it[/]")
            for d in (demo.out / "store", demo.out / "registry", demo.out / "report"):
                shutil.rmtree(d, ignore_errors=True)
        console.print(f"[1/7] making synthetic dataset in {data}")
        make_dataset(data, overwrite=True, **params)
    ds = open_dataset(data).check(check_images=False)
    console.print(dataset_table(ds.summary()))
    return ds


def _extract_step(demo: _Demo, address: str | None, image_extractor: str | None) -> dict:
    """[2/7] CLIP (or ``image_extractor``), caption and motion-energy features: ``{spec: table}``."""
    from ..features import extract
    from ._quiet import drop_stderr_lines
    from ._ray import connect

    console.print(f"[2/7] extracting features into {demo.store} (Ray Data -> LanceDB; resumable)")
    res = connect(address)
    console.print(f"      Ray: {int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU")
    tables = {}
    for spec in (_image_spec(image_extractor), TEXT_SPEC, MOTION_SPEC):
        with drop_stderr_lines(enabled=demo.quiet):
            rep = extract(demo.data, spec, demo.store, batch_size=32, commit_every=128)
        tables[spec] = rep.feature
        console.print(f"      {rep.feature}: {rep.written} new, {rep.already_stored} already stored, "
                      f"{len(rep.failed)} failed ({rep.seconds:.1f} s)")
    return tables


def _fit_step(demo: _Demo, ds):
    """[3/7] The default spec's encoding models (random-weight tables included)."""
    from ..fitting import default_spec, fit_encoding_models

    console.print(f"[3/7] fitting encoding models (ridge per feature table, banded ridge on their union, per-ROI "
                  f"choice, ensemble) for {len(ds.subjects)} subjects x 2 hemispheres")
    notes: list[str] = []
    fspec = default_spec(demo.data, demo.store, demo.registry, include_random=True, notes=notes)
    console.print("      the demo fits with --include-random: tables made with random weights take part, and say so")
    for n in notes:
        console.print(f"      [yellow]note:[/] {n}")
    run = fit_encoding_models(fspec, store=demo.store, registry=demo.registry, out=demo.out / "report")
    for f in run.failures:
        console.print(f"[red]failed[/] {f['subject']} {f['hemi']} {f['model']}: {f['error']}")
    return run


def _evaluate_step(demo: _Demo, ds, run) -> tuple:
    """[4/7] Test NNMC per ROI beside the oracle and the noise ceiling, and the maps on the cortex: the report,
    the oracle's scores and the maps (:class:`~brainstore.fitting.CortexMaps`)."""
    from ..datasets import REPORT_FAMILIES
    from ..fitting import mean_noise_ceiling, score_submission, write_report

    console.print("[4/7] evaluating on the test split")
    rep = write_report(run.metrics, run.kinds, run.test_preds, ds, run.run_dir, title="demo encoding models")
    oracle = score_submission(ds, demo.data / "ground_truth")
    cols = ["all", *REPORT_FAMILIES]
    for s in ds.subjects:
        rows = [(f"{m[:58]} ({run.kinds[m]})", {"all": run.metrics[m][s]["both"]["test_nnmc"],
                                                  **run.metrics[m][s]["both"]["test_nnmc_roi"]})
                for m in run.models if s in run.metrics.get(m, {})]
        rows.append(("oracle: noiseless responses", oracle[s]["both"]["roi"]))
        nc = mean_noise_ceiling(ds, s)
        rows.append(("noise ceiling (mean NC, %)", nc))
        console.print(score_table(f"{s}: test NNMC per ROI (100 = at the noise ceiling)", rows, cols))
    console.print(f"report: {rep['dir']}/comparison.md, roi_scores.png, pred_vs_measured.png; "
                  f"models: `brainstore models --registry {demo.registry}`")
    return rep, oracle, _maps_step(demo, ds, run)


def _maps_step(demo: _Demo, ds, run):
    """Per vertex on the synthetic cortex, every model's test r and NNMC and the noise ceiling:
    ``report/maps/`` (GIfTI and pictures)."""
    from rich.markup import escape

    from ..fitting import write_cortex_maps

    console.print("      maps on the cortex: per vertex, each model's test r and NNMC and the noise ceiling (GIfTI "
                  "and pictures with the ROI outlines)")
    maps = write_cortex_maps(ds, run.test_preds, demo.out / "report" / "maps")
    for note in maps.notes:
        console.print(f"      [yellow]note:[/] {escape(note)}")
    if maps.files:
        console.print(f"maps: {maps.root}/MODEL/SUBJECT/{{lh,rh}}.{{test_r,nnmc}}.func.gii and .png, the noise ceiling "
                      f"under _data/, the subject average under average/ ({len(maps.files)} files, {maps.seconds:.1f} s)")
    return maps


def _decode_step(demo: _Demo, ds, captions: str) -> None:
    """[5/7] A ridge decoder per subject and one adaptor over all subjects into the caption table."""
    from ..fitting import fit_adaptor, fit_decoders
    from ._quiet import drop_stderr_lines

    data, store, registry, out = demo.data, demo.store, demo.registry, demo.out
    console.print(f"[5/7] decoding: a ridge decoder per subject from all vertices to the caption embeddings ({captions})")
    drun = fit_decoders(data, captions, store=store, registry=registry, out=out / "decode")
    for f in drun.failures:
        console.print(f"[red]failed[/] decoder {f['subject']}: {f['error']}")
    console.print("      and one adaptor over all subjects (an adapter per subject into a shared latent, a residual-MLP "
                  "backbone, CLIP loss; Ray Train, 2 workers, 10 epochs)")
    with drop_stderr_lines(enabled=demo.quiet):
        arun = fit_adaptor(data, [captions], store=store, registry=registry, out=out / "adaptor",
                           params={"epochs": 10, "latent": 256}, num_workers=2)
    dmetrics = {**drun.metrics, f"{arun.name} (adaptor)": arun.metrics[captions]}
    console.print(decoder_table(dmetrics, "decoders: ridge and adaptor"))
    for s in ds.subjects[:1]:
        name = next(iter(drun.metrics))
        for line in _decoded_captions(ds, s, store, captions, drun.run_dir / "decoded" / name / f"{s}_test.npy"):
            console.print(line)
    console.print(f"decoders: {drun.run_dir}/decoded/ (test embeddings), adaptor checkpoints in {arun.run_dir}; "
                  "`brainstore evaluate` writes metrics.json and decoding_top1.png, `brainstore predict --decode "
                  f"{captions}` the top-k stimuli of the whole store table")


def _html_step(demo: _Demo, ds, run, tables: dict, maps) -> Path:
    """[6/7] The HTML report (with the maps on the cortex); its path."""
    from ..fitting import write_html_report

    console.print("[6/7] the HTML report: per-ROI scores against the noise ceiling and the oracle, the Algonauts "
                  "Table 1 comparison, the maps on the cortex, retrieval both ways, decoded captions, feature-space "
                  "split, provenance")
    t_html = time.time()
    html_path = write_html_report(
        demo.out / "report" / "report.html", dataset=ds, registry=demo.registry, store=demo.store,
        metrics=run.metrics, kinds=run.kinds, title="brainstore demo",
        provenance_extra={"command": "brainstore demo", "dataset parameters": demo.params,
                          "feature tables": {spec: t for spec, t in tables.items()},
                          "image extractor": tables_image(tables)}, maps=maps)
    console.print(f"      {html_path} ({html_path.stat().st_size / 1e6:.1f} MB, {time.time() - t_html:.1f} s; one file, "
                  "opens offline in any browser)")
    return html_path


def tables_image(tables: dict) -> str:
    """The image extractor spec the demo used (its first table)."""
    return next(iter(tables), "")


def _serve_step(ds, registry: str, store: str, captions: str, *, keep_serving: bool, quiet: bool,
                port: int = 8000) -> dict:
    """Start the service, send an encode request (an uploaded test image) and a decode request (a measured
    test response), print the answers, and stop it (or, ``keep_serving``, leave it up until Ctrl-C)."""
    import base64
    import logging
    import signal

    import numpy as np
    import requests
    from ray import serve
    from rich.markup import escape

    from ..features import FeatureStore
    from ..fitting import Decoder, response_matrix
    from ..serving import APP_NAME, LocalBackend, build_app, encode_array, free_port
    from ._quiet import quiet_serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        port = free_port()  # something answers on the default port: take a free one
    except requests.RequestException:
        pass
    url = f"http://127.0.0.1:{port}"
    quiet_ctx = quiet_serve(enabled=quiet)
    quiet_ctx.__enter__()
    t0 = time.time()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(build_app(registry), name=APP_NAME, route_prefix="/")
        console.print(f"      up at {url} in {time.time() - t0:.1f} s (API: {url}/docs)")
        subject = ds.subjects[0]
        # an encoding model an uploaded image can drive: every table it reads made from images
        fs = FeatureStore(store, create=False)
        enc = LocalBackend(registry).catalog()["encoders"][subject]
        image_models = [m for m, info in enc.items()  # (composed models list no tables of their own)
                        if info["features"] and all(fs.metadata(t).get("modality") == "image" for t in info["features"])]
        model = max(image_models, key=lambda m: enc[m].get("val_score") or -1.0)
        t = ds.stimuli([subject], splits=("test",))
        sid, path, caption = (t.column(c)[0].as_py() for c in ("stimulus_id", "path", "caption"))
        with open(path, "rb") as f:
            r = requests.post(f"{url}/v1/encode", data={"subject": subject, "model": model},
                              files={"image": (Path(path).name, f, "image/png")}, timeout=120)
        r.raise_for_status()
        got = r.json()
        lh = np.frombuffer(base64.b64decode(got["lh"]["data_b64"]), "<f4")
        console.print(f"      POST /v1/encode ({subject}, model {model}, uploaded {Path(path).name}): "
                      f"{got['shape']['lh'][1]} + {got['shape']['rh'][1]} vertices, lh[:4] = {[round(float(x), 3) for x in lh[:4]]}")
        dname = f"decoder-ridge-{captions}"
        R = response_matrix(ds, subject, "test", Decoder.load(registry, f"{dname}/{subject}").voxels)[:1]
        r = requests.post(f"{url}/v1/decode", json={"subject": subject, "model": dname, "responses": encode_array(R),
                                                    "top_k": 3}, timeout=120)
        r.raise_for_status()
        top = r.json()["results"][0]
        console.print(f"      POST /v1/decode ({subject}, measured response to {sid}; true caption "
                      f"[italic]{escape(str(caption))}[/]), top 3 of {r.json()['table_rows']:,} stored stimuli:")
        for x in top:
            console.print(f"        {x['stimulus_id']} ({x['score']:.3f}): [italic]{escape(str(x['caption']))}[/]")
        answered = {"url": url, "encode_model": model, "decode_top": [x["stimulus_id"] for x in top], "truth": sid}
        if keep_serving:
            console.print(f"      serving until Ctrl-C: curl -s {url}/v1/models ; curl -s {url}/v1/encode "
                          f"-F subject={subject} -F model={model} -F image=@{path}")
            stop = {"now": False}
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *a: stop.update(now=True))
            while not stop["now"]:
                time.sleep(0.5)
        return answered
    finally:
        serve.shutdown()
        time.sleep(1.0)  # Ray's log monitor relays the controller's exit notice late: still filtered
        quiet_ctx.__exit__(None, None, None)
        console.print("      service stopped")


def _decoded_captions(ds, subject: str, store: str, table: str, decoded_file: Path, n: int = 3) -> list[str]:
    """For the first ``n`` test images: the true caption and the decoded one, the caption of the nearest
    training stimulus to the decoded embedding (as the ``caption_*`` metrics score it)."""
    import numpy as np
    from rich.markup import escape

    from ..features import FeatureStore
    from ..fitting import retrieved_captions, subject_stimuli

    train_ids, test_ids = subject_stimuli(ds, subject, "train"), subject_stimuli(ds, subject, "test")[:n]
    best, decoded = retrieved_captions(ds, subject, np.load(decoded_file)[:n],
                                       FeatureStore(store, create=False).load(table, train_ids), train_ids)
    t = ds.stimuli([subject], splits=("test",))
    truth = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
    lines = [f"      {subject}, decoded captions (nearest of {len(train_ids)} training captions to the decoded "
             "embedding; test captions are never candidates):"]
    for sid, b, cap in zip(test_ids, best, decoded):
        lines.append(f"        {sid}: true [italic]{escape(str(truth.get(sid)))}[/] | decoded -> {train_ids[b]}: "
                     f"[italic]{escape(cap)}[/]")
    return lines


def _dataset_params(data: Path) -> dict | None:
    """The make_dataset arguments recorded in ``data/synthetic.json`` (None when absent)."""
    try:
        made = json.loads((data / "synthetic.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: made.get(k) for k in ("n_subjects", "n_train", "n_test", "n_vertices", "seed")}

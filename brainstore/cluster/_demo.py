"""``brainstore demo``: the end-to-end run on the embedded default (local Ray, LanceDB on disk,
synthetic dataset): dataset -> features -> encoding models -> evaluation -> decoders (ridge, adaptor)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ._report import console, dataset_table, decoder_table, score_table

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


def run_demo(out: Path, *, n_subjects: int, n_train: int, n_test: int, n_vertices: int, seed: int,
             address: str | None = None, image_extractor: str | None = None, quiet: bool = True) -> dict:
    """Make (or reuse) the synthetic dataset under ``out``, extract features, fit, evaluate.

    ``quiet`` drops Ray's per-extraction actor-restart notice from stderr (see :mod:`._quiet`).
    """
    from ..datasets import REPORT_FAMILIES, AlgonautsDataset, make_dataset
    from ..features import extract
    from ..fitting import default_spec, fit_decoders, fit_encoding_models, write_report
    from ..fitting._evaluate import score_submission
    from ._quiet import drop_stderr_lines
    from ._ray import connect

    t0 = time.time()
    out = Path(out).resolve()
    data, store, registry = out / "dataset", str(out / "store"), str(out / "registry")
    console.rule("[bold]brainstore demo")
    params = dict(n_subjects=n_subjects, n_train=n_train, n_test=n_test, n_vertices=n_vertices, seed=seed)
    made_with = _dataset_params(data)
    if made_with == params:
        console.print(f"[1/5] reusing synthetic dataset {data}")
    else:
        if made_with is not None:
            console.print(f"[yellow]{data} was made with {made_with}, not {params}: remaking it, and clearing the "
                          f"demo's store, registry and report built from it[/]")
            for d in (out / "store", out / "registry", out / "report"):
                shutil.rmtree(d, ignore_errors=True)
        console.print(f"[1/5] making synthetic dataset in {data}")
        make_dataset(data, overwrite=True, **params)
    ds = AlgonautsDataset(data).check(check_images=False)
    console.print(dataset_table(ds.summary()))

    console.print(f"[2/5] extracting features into {store} (Ray Data -> LanceDB; resumable)")
    res = connect(address)
    console.print(f"      Ray: {int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU")
    tables = {}
    for spec in (_image_spec(image_extractor), TEXT_SPEC, MOTION_SPEC):
        with drop_stderr_lines(enabled=quiet):
            rep = extract(data, spec, store, batch_size=32, commit_every=128)
        tables[spec] = rep.feature
        console.print(f"      {rep.feature}: {rep.written} new, {rep.already_stored} already stored, "
                      f"{len(rep.failed)} failed ({rep.seconds:.1f} s)")

    console.print(f"[3/5] fitting encoding models (ridge per feature table, banded ridge on their union, per-ROI "
                  f"choice, ensemble) for {len(ds.subjects)} subjects x 2 hemispheres")
    notes: list[str] = []
    fspec = default_spec(data, store, registry, include_random=True, notes=notes)
    console.print("      the demo fits with --include-random: tables made with random weights take part, and say so")
    for n in notes:
        console.print(f"      [yellow]note:[/] {n}")
    run = fit_encoding_models(fspec, store=store, registry=registry, out=out / "report")
    for f in run.failures:
        console.print(f"[red]failed[/] {f['subject']} {f['hemi']} {f['model']}: {f['error']}")

    console.print("[4/5] evaluating on the test split")
    rep = write_report(run.metrics, run.kinds, run.test_preds, ds, run.run_dir, title="demo encoding models")
    oracle = score_submission(ds, data / "ground_truth")
    cols = ["all", *REPORT_FAMILIES]
    for s in ds.subjects:
        rows = [(f"{m[:58]} ({run.kinds[m]})", {"all": run.metrics[m][s]["both"]["test_nnmc"],
                                                  **run.metrics[m][s]["both"]["test_nnmc_roi"]})
                for m in run.models if s in run.metrics.get(m, {})]
        rows.append(("oracle: noiseless responses", oracle[s]["both"]["roi"]))
        nc = _mean_nc(ds, s)
        rows.append(("noise ceiling (mean NC, %)", nc))
        console.print(score_table(f"{s}: test NNMC per ROI (100 = at the noise ceiling)", rows, cols))
    console.print(f"report: {rep['dir']}/comparison.md, roi_scores.png, pred_vs_measured.png; "
                  f"models: `brainstore models --registry {registry}`")

    captions = tables[TEXT_SPEC]
    console.print(f"[5/5] decoding: a ridge decoder per subject from all vertices to the caption embeddings ({captions})")
    drun = fit_decoders(data, captions, store=store, registry=registry, out=out / "decode")
    for f in drun.failures:
        console.print(f"[red]failed[/] decoder {f['subject']}: {f['error']}")
    console.print("      and one adaptor over all subjects (an adapter per subject into a shared latent, a residual-MLP "
                  "backbone, CLIP loss; Ray Train, 2 workers, 10 epochs)")
    from ..fitting._adaptor import fit_adaptor

    with drop_stderr_lines(enabled=quiet):
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
    console.print(f"[green]demo finished in {time.time() - t0:.1f} s[/]; run folder: {out}")
    return {"rows": rep["rows"], "oracle": {s: r["both"]["roi"] for s, r in oracle.items()}}


def _decoded_captions(ds, subject: str, store: str, table: str, decoded_file: Path, n: int = 3) -> list[str]:
    """For the first ``n`` test images: the true caption and the decoded one, the caption of the nearest
    training stimulus to the decoded embedding (as the ``caption_*`` metrics score it)."""
    import numpy as np
    from rich.markup import escape

    from ..features import FeatureStore
    from ..fitting import subject_stimuli
    from ..fitting._decoding import retrieved_captions

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


def _mean_nc(ds, subject: str) -> dict[str, float]:
    from ..datasets import HEMISPHERES
    from ..fitting._evaluate import pooled_roi_summary

    return pooled_roi_summary(ds, subject, {h: ds.noise_ceiling(subject, h) * 100 for h in HEMISPHERES})

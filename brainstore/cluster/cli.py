"""The ``brainstore`` command line.

Heavy libraries (torch, ray, lancedb, open_clip, transformers) are imported inside the commands
that need them, so ``brainstore --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

app = typer.Typer(
    name="brainstore",
    help="Feature store, fitting and serving for brain encoding / decoding models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

HOME = Path(os.environ.get("BRAINSTORE_HOME", ".brainstore"))
DEFAULT_STORE = str(HOME / "features")
DEFAULT_REGISTRY = str(HOME / "models")

StoreOpt = typer.Option(DEFAULT_STORE, "--store", help="Feature store URI (a local folder by default).")
RegistryOpt = typer.Option(DEFAULT_REGISTRY, "--registry", help="Model registry URI (a local folder by default).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: an embedded local Ray).")


#: Set by ``brainstore --verbose``: tracebacks are printed beside the one-line errors.
VERBOSE = {"on": False}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Print tracebacks with errors."),
          storage_option: Optional[list[str]] = typer.Option(
              None, "--storage-option", "-S", metavar="KEY=VALUE",
              help="Object-store option for s3:// / gs:// / az:// stores and registries (repeatable), e.g. "
                   "-S aws_endpoint=http://127.0.0.1:9000 -S allow_http=true; over $BRAINSTORE_STORAGE_OPTIONS."),
          storage_config: Optional[Path] = typer.Option(
              None, "--storage-config", metavar="FILE",
              help="A YAML/JSON file of object-store options (as $BRAINSTORE_STORAGE_OPTIONS=FILE); -S flags win.")) -> None:
    """Feature store, fitting and serving for brain encoding / decoding models."""
    VERBOSE["on"] = verbose
    from .._storage import ENV, StorageOptionsError, env_options, merge_cli_options

    try:
        if storage_config is not None:
            _need(storage_config, False, "--storage-config", "give a YAML or JSON file of storage options")
            os.environ[ENV] = str(storage_config.resolve())
            env_options()  # unreadable or not a mapping: refused now
        merge_cli_options(storage_option)
    except StorageOptionsError as e:
        _fail(str(e))


def _need(path: Path, folder: bool, what: str, usage: str) -> None:
    """Fail unless ``path`` is an existing folder (``folder``) or file, naming it and what the option takes."""
    if not (path.is_dir() if folder else path.is_file()):
        state = f"is not a {'folder' if folder else 'file'}" if path.exists() else "does not exist"
        _fail(f"{what} {path} {state}; {usage}")


def _need_dataset(path: Path, usage: str) -> None:
    """Fail unless ``path`` is a dataset folder or a dataset description file (.yaml / .yml)."""
    from ..datasets import is_description

    if not (path.is_dir() or is_description(path)):
        state = "is not a folder or a description (.yaml)" if path.exists() else "does not exist"
        _fail(f"dataset {path} {state}; {usage}")


def _fail(msg: str) -> None:
    import sys

    from rich.markup import escape

    from ._console import console

    if VERBOSE["on"] and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    console.print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(code=2)


@app.command("make-dataset")
def make_dataset_cmd(
    out: Path = typer.Argument(..., help="Folder to create (Algonauts 2023 layout)."),
    subjects: int = typer.Option(2, "--subjects", help="Number of subjects."),
    train: int = typer.Option(600, "--train", help="Training images per subject."),
    test: int = typer.Option(100, "--test", help="Test images (shared by all subjects, shown 3 times)."),
    vertices: Optional[int] = typer.Option(None, "--vertices", help="Typical vertices per hemisphere (+-10 % per subject; default 2000, video 600)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the dataset is a deterministic function of it."),
    image_size: int = typer.Option(256, "--image-size", help="Image side in pixels (NSD: 425)."),
    alignment: float = typer.Option(0.0, "--alignment", help="0: each subject in its own vertex space. In (0, 1]: "
                                    "all subjects in one template space (same vertices and ROIs), a vertex's tuning "
                                    "correlated this much across subjects."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
    kind: str = typer.Option("image", "--kind", help="image: the Algonauts-layout image dataset; video: continuous "
                             "runs (video fMRI: clips, HRF-convolved BOLD per TR, a test clip repeated)."),
    runs: int = typer.Option(6, "--runs", help="Video: training runs (one clip each)."),
    trs: int = typer.Option(50, "--trs", help="Video: TRs per run."),
    repeats: int = typer.Option(3, "--repeats", help="Video: runs showing the test clip."),
    tr: float = typer.Option(2.0, "--tr", help="Video: seconds per TR."),
    fps: int = typer.Option(8, "--fps", help="Video: frames per second."),
) -> None:
    """Write a synthetic benchmark dataset (stimuli, fMRI, ROIs, noise ceilings, oracle): images in the
    Algonauts layout, or --kind video: a described time-series dataset."""
    from ..datasets import make_dataset, make_video_dataset, open_dataset
    from ._console import console, dataset_table

    if kind not in ("image", "video"):
        _fail(f"--kind {kind!r} is not one of image, video")
    try:
        if kind == "video":
            root = make_video_dataset(out, n_subjects=subjects, n_train_runs=runs, trs_per_run=trs,
                                      n_test_repeats=repeats, tr=tr, fps=fps,
                                      n_vertices=vertices or 600, seed=seed, overwrite=overwrite)
        else:
            root = make_dataset(out, n_subjects=subjects, n_train=train, n_test=test, n_vertices=vertices or 2000,
                                seed=seed, image_size=image_size, alignment=alignment, overwrite=overwrite)
    except (FileExistsError, ValueError) as e:
        _fail(str(e))
    console.print(dataset_table(open_dataset(root).summary()))


@app.command("info")
def info_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder (Algonauts layout), dataset description file (.yaml) or manifest file."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check the whole dataset and list problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarize a dataset: subjects, image counts, vertices, ROIs, noise ceilings; list every problem (exit 1)."""
    from ..datasets import DatasetError, DatasetValidationError, is_description, open_dataset, read_manifest
    from ._console import console, dataset_table, named_roi_table

    try:
        if dataset.is_file() and not is_description(dataset):
            table = read_manifest(dataset)
            counts = table.group_by(["modality", "split"]).aggregate([("stimulus_id", "count")]).to_pylist()
            if as_json:
                print(json.dumps({"manifest": str(dataset), "rows": table.num_rows, "counts": counts}, indent=2))
                return
            from rich.table import Table

            t = Table(title=f"manifest {dataset}: {table.num_rows} stimuli")
            for c in ("modality", "split", "stimuli"):
                t.add_column(c)
            for c in sorted(counts, key=lambda c: (c["modality"], str(c["split"]))):
                t.add_row(c["modality"], str(c["split"] or "-"), str(c["stimulus_id_count"]))
            console.print(t)
            return
        if not dataset.exists():
            _fail(f"dataset {dataset} does not exist; `brainstore info` takes a dataset folder (Algonauts layout), "
                  "a dataset description file (.yaml) or a manifest file (.parquet/.csv)")
        try:
            ds = open_dataset(dataset)
        except DatasetValidationError as e:  # a description that does not parse: its problems, listed
            summary, problems = {"root": str(dataset.absolute()), "subjects": {}}, e.problems
        else:
            summary = ds.summary()
            problems = ds.validate() if validate else []
    except DatasetError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps({**summary, "problems": problems}, indent=2))
    else:
        if summary["subjects"]:
            console.print(dataset_table(summary))
            console.print(named_roi_table(summary))
        if validate or problems:
            console.print("[green]valid[/]" if not problems else f"[red]{len(problems)} problem(s):[/]")
            for p in problems:
                console.print(f"  - {escape(p)}")
    if problems:
        raise typer.Exit(code=1)


@app.command("extract")
def extract_cmd(
    extractor: str = typer.Option(..., "--extractor", "-e", help="Extractor spec, e.g. 'clip:arch=ViT-B-32,pretrained=openai', 'text', 'sam:variant=vit_l,checkpoint=PATH'."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset folder (Algonauts layout) or description file (.yaml)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest file (.parquet/.csv) instead of --dataset."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer to extract (sets layer=L in the spec, in the nested image spec for video): block index, 0 = first block, -1 = last, or final."),
    version: Optional[str] = typer.Option(None, "--version", help="Feature version (table) name; default from the extractor settings."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Rows per model batch."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, help="Extractor actors (default: one per GPU; else one per 8 CPUs, for captions one per CPU up to 8)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Model compute dtype: float32, bfloat16 or float16 (default bfloat16 on GPU, float32 on CPU). Part of the feature version: to resume a table made on another device, pass its dtype."),
    storage_dtype: str = typer.Option("float32", "--storage-dtype", help="float32 or float16 on disk."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N unique stimuli."),
    commit_every: Optional[int] = typer.Option(None, "--commit-every", min=1, help="Rows per store commit (default 512): a killed or interrupted run keeps every committed chunk and a rerun resumes after them."),
    allow_failures: bool = typer.Option(False, "--allow-failures", help="Exit 0 even when some stimuli failed (they are listed and recorded either way)."),
    resample: str = typer.Option("average", "--resample", help="Time-series datasets: frame features to the TR by 'average' (mean of the TR's frames) or 'lanczos' (Lanczos-windowed sinc, 3 lobes)."),
    delays: str = typer.Option("1,2,3,4", "--delays", help="Time-series datasets: FIR delays in TRs of the derived delayed table (e.g. 1,2,3,4), or 'none'."),
    store: str = StoreOpt,
    address: Optional[str] = AddressOpt,
) -> None:
    """Extract features for every stimulus into the store (resumable: stored stimuli are skipped).

    On a time-series dataset (video fMRI): one row per TR (frame features resampled to the TR and
    z-scored per clip), then a table of those rows delayed by --delays TRs within each clip.

    Exits 1 when some stimuli failed (after writing every good one), unless --allow-failures.
    """
    from .._paths import check_folder
    from ..datasets import DatasetError, open_dataset, open_stimuli
    from ._quiet import drop_stderr_lines
    from ..features import (DTYPES, STORAGE_DTYPES, ExtractionError, FeatureStoreError, WeightsNotFoundError,
                            extract, get_extractor, with_layer)
    from ._ray import connect
    from ._console import console

    if (dataset is None) == (manifest is None):
        _fail("give exactly one of --dataset DIR or --manifest FILE")
    if dtype is not None and dtype not in DTYPES:
        _fail(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if storage_dtype not in STORAGE_DTYPES:
        _fail(f"--storage-dtype {storage_dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
    if dataset is not None:
        _need_dataset(dataset, "--dataset takes a dataset folder in the Algonauts layout or a dataset description "
                      "file (.yaml); a manifest file goes with --manifest")
    if manifest is not None:
        _need(manifest, False, "manifest", "--manifest takes a .parquet or .csv file")
    try:
        # everything checkable on the driver is checked before Ray starts: the spec, the weights, the store folder
        ext = with_layer(extractor, layer) if layer is not None else get_extractor(extractor)
        ext.resolve_weights()
        stimuli = open_stimuli(dataset or manifest)  # names, duplicate ids, manifest columns and files
        if "://" not in store:
            check_folder(store, "feature store", "--store", create=True, error=FeatureStoreError)
        if ext.metadata().get("random_init") == "true":
            console.print(f"[yellow]note:[/] {ext.version} uses RANDOM weights ({ext.spec}): a baseline, not a "
                          "pretrained model; recorded as random_init in the table's metadata")
        ds = open_dataset(dataset) if dataset is not None else None
        delay_list = None
        if ds is not None and ds.is_timeseries:
            if resample not in ("average", "lanczos"):
                _fail(f"--resample {resample!r} is not one of average, lanczos")
            if delays.strip().lower() != "none":
                try:
                    delay_list = [int(v) for v in delays.replace(" ", "").split(",") if v]
                except ValueError:
                    _fail(f"--delays {delays!r} must be integers (TRs) like 1,2,3,4, or none")
                if not delay_list or len(set(delay_list)) != len(delay_list):
                    _fail(f"--delays {delays!r} must be distinct integers (TRs) like 1,2,3,4, or none")
            if limit is not None or storage_dtype != "float32" or commit_every is not None:
                _fail("--limit, --storage-dtype and --commit-every do not apply to a time-series dataset (whole clips "
                      "are extracted, one commit per clip)")
        connect(address)
        with drop_stderr_lines(enabled=not VERBOSE["on"]):  # Ray's per-run actor-restart notice (ray#53727)
            if ds is not None and ds.is_timeseries:
                from ..features import derive_delays, extract_timeseries

                rep = extract_timeseries(ds, ext, store, version=version, resample=resample,
                                         concurrency=concurrency, dtype=dtype)
            else:
                rep = extract(stimuli, ext, store, version=version, batch_size=batch_size,
                              concurrency=concurrency, dtype=dtype, storage_dtype=storage_dtype, limit=limit,
                              **({"commit_every": commit_every} if commit_every is not None else {}))
        if delay_list:
            delayed = derive_delays(store, rep.feature, ds, delay_list)
    except (WeightsNotFoundError, FeatureStoreError, DatasetError, ExtractionError, ValueError) as e:
        _fail(str(e))
    other = f", {rep.stored_by_other} stored meanwhile by another run" if rep.stored_by_other else ""
    console.print(f"[green]{rep.feature}[/]: {rep.written} written, {rep.already_stored} already stored{other}, "
                  f"{len(rep.failed)} failed, dim {rep.dim}, {rep.seconds:.1f} s ({rep.rate:.1f} stimuli/s) -> {rep.store}")
    if delay_list:
        console.print(f"[green]{delayed}[/]: {rep.feature} delayed by {','.join(map(str, delay_list))} TRs within "
                      "each clip (fit this one: it learns the hemodynamic lag)")
    for f in rep.failed:
        console.print(f"  [red]bad stimulus[/] {f['stimulus_id']} {f['path']}: {f['error']}")
    if rep.failed and not allow_failures:
        console.print(f"{len(rep.failed)} stimulus(i) failed and were not stored (recorded in the store's bad-stimuli "
                      "list; fix or remove them and rerun, which resumes); --allow-failures exits 0 in this case")
        raise typer.Exit(code=1)


@app.command("features")
def features_cmd(
    list_extractors_: bool = typer.Option(False, "--list", help="List the registered extractors instead of tables."),
    pca: Optional[str] = typer.Option(None, "--pca", help="Derive a PCA version of this table (fitted on the train split)."),
    components: int = typer.Option(256, "--components", help="PCA components (with --pca)."),
    index: Optional[str] = typer.Option(None, "--index", help="Build a vector index on this table."),
    index_kind: str = typer.Option("ivf_pq", "--index-kind", help="ivf_pq or hnsw."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    store: str = StoreOpt,
) -> None:
    """List feature tables with their metadata (or extractors with --list); derive PCA; build indices."""
    from rich.table import Table

    from ._console import console

    if list_extractors_:
        from ..features import list_extractors

        import dataclasses

        from rich.markup import escape

        infos = [dataclasses.asdict(i) for i in list_extractors()]
        if as_json:
            print(json.dumps(infos, indent=2, default=str))
            return
        t = Table(title="extractors (spec: name:key=value,...)")
        for c in ("name", "modalities", "default dim", "layers", "pooling", "weights", "offline now"):
            t.add_column(c)
        for d in infos:
            t.add_row(d["name"], "/".join(d["modalities"]), str(d["default_dim"] or "?"), escape(str(d["layers"])),
                      "/".join(d["poolings"]), escape(str(d["weights"])),
                      ("[green]yes[/] " if d["offline"] else "[red]no[/] ") + escape(str(d["offline_detail"])))
        console.print(t)
        return
    from ..features import FeatureStore, FeatureStoreError, derive_pca

    try:
        fs = FeatureStore(store, create=False)  # a reading verb: a mistyped path is an error, not a new store
    except FeatureStoreError as e:
        _fail(str(e))
    try:
        if pca:
            name = derive_pca(fs, pca, components)
            console.print(f"derived [green]{name}[/] from {pca}")
        if index:
            console.print(fs.build_index(index, kind=index_kind))
    except FeatureStoreError as e:
        _fail(str(e))
    infos = fs.tables()
    if as_json:
        print(json.dumps([{"name": i.name, "rows": i.rows, "dim": i.dim, "metadata": i.metadata} for i in infos], indent=2))
        return
    t = Table(title=f"feature tables in {fs.uri}")
    for c in ("table", "rows", "dim", "extractor", "architecture", "pretrained", "layer", "pooling", "dtype", "created"):
        t.add_column(c)
    for i in infos:
        m = i.metadata
        pre = str(m.get("pretrained", ""))
        if m.get("random_init") == "true":
            pre = "[red]none (random init)[/]"
        t.add_row(i.name, str(i.rows), str(i.dim), str(m.get("extractor", "")), str(m.get("architecture", ""))[:40],
                  pre[:48], str(m.get("layer", "")), str(m.get("pooling", ""))[:24], str(m.get("storage_dtype", "")),
                  str(m.get("created", "")))
    console.print(t)
    bad = fs.bad_stimuli()
    if bad:
        console.print(f"[yellow]{len(bad)} bad stimuli recorded[/] (first: {bad[0]['stimulus_id']} {bad[0]['path']}: {bad[0]['error']})")


weights_app = typer.Typer(
    help="Model weights: where each extractor spec's weights are looked for (offline), and fetching them once "
         "into the cache every node reads (the only command that uses the network).",
    no_args_is_help=True)
app.add_typer(weights_app, name="weights")
CacheOpt = typer.Option(None, "--cache", metavar="DIR",
                        help="Cache root: HF_HOME=DIR/huggingface and BRAINSTORE_WEIGHTS_DIR=DIR/weights for this "
                             "command (extraction reads the same variables; the cluster image sets them to "
                             "/mnt/brainstore/cache). Default: the environment's.")


def _use_cache(cache: Optional[Path], create: bool) -> None:
    from .._paths import check_folder
    from ..features import use_cache

    if cache is not None:
        try:
            check_folder(cache, "weights cache", "--cache", create=create, make=False,
                         missing_hint="pull weights into it first (`brainstore weights pull --cache DIR SPEC`)")
        except ValueError as e:
            _fail(str(e))
        use_cache(cache)


@weights_app.command("list")
def weights_list_cmd(
    specs: Optional[list[str]] = typer.Argument(None, metavar="[SPEC]...", help="Extractor specs (default: each extractor's default: text, clip ViT-B/32 openai, sam vit_b, motion-energy)."),
    cache: Optional[Path] = CacheOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """For each spec: whether its weights are here (offline), where they are or were looked for, and what
    `weights pull` would fetch."""
    from rich.table import Table

    from ..features import DEFAULT_SPECS, cache_locations, weights_status
    from ._console import console

    _use_cache(cache, create=False)
    try:
        status = [weights_status(s) for s in (specs or DEFAULT_SPECS)]
    except (ValueError, KeyError) as e:
        _fail(f"extractor spec: {e}")
    if as_json:
        print(json.dumps({"caches": cache_locations(), "specs": [st.as_dict() for st in status]}, indent=2))
        return
    t = Table(title="weights (" + "; ".join(f"{k}: {v}" for k, v in cache_locations().items()) + ")")
    for c in ("spec", "offline", "found at / looked in", "`weights pull` fetches"):
        t.add_column(c, overflow="fold")  # whole paths, wrapped
    for st in status:
        where = st.found if st.present else "; ".join(st.searched) or st.found
        t.add_row(escape(st.spec), "[green]present[/]" if st.present else "[red]missing[/]", escape(where),
                  escape("; ".join(src.describe() for src in st.sources) or "nothing (bundled, local or none)"))
    console.print(t)


@weights_app.command("pull")
def weights_pull_cmd(
    specs: list[str] = typer.Argument(..., metavar="SPEC...", help="Extractor specs whose weights to fetch, e.g. 'clip:arch=ViT-B-32,pretrained=openai'."),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Download the weights the specs need into the cache (HF hub cache, brainstore's weights folder), once,
    on a machine with network access; every other command stays offline and reads them from there."""
    from ..features import WeightsPullError, check_caches, pull_weights, weights_status
    from ._console import console

    _use_cache(cache, create=True)
    try:
        check_caches("--cache (or $HF_HOME / $BRAINSTORE_WEIGHTS_DIR)")
        for spec in specs:
            got = pull_weights(spec)
            found = weights_status(spec).found
            console.print(f"[green]{escape(spec)}[/]: " + (f"fetched {escape(', '.join(got))}; " if got else
                                                           "nothing to fetch; ") + f"offline now: {escape(found)}")
    except (WeightsPullError, ValueError, KeyError) as e:
        _fail(str(e))


def _fit_decoders_cmd(dataset: Optional[Path], target: str, rois: Optional[str], out: Optional[Path], store: str,
                      registry: str, address: Optional[str], method: str = "ridge", epochs: Optional[int] = None,
                      workers: int = 2) -> None:
    """``fit --decode TABLE``: ridge decoders for every subject, or one adaptor over all subjects."""
    from .._paths import check_folder
    from ..datasets import DatasetError
    from ..features import FeatureStoreError, MissingStimuliError
    from ..fitting import DecoderSpec, RegistryError
    from ._ray import connect

    if dataset is None:
        _fail("--decode needs --dataset DIR (the responses to decode)")
    _need_dataset(dataset, "--dataset takes a dataset folder in the Algonauts layout or a description file (.yaml)")
    roi_list = [r.strip() for r in rois.split(",") if r.strip()] if rois else None
    try:
        spec = DecoderSpec(target=target, method=method, rois=roi_list, workers=workers,
                           adaptor={"epochs": epochs} if (epochs and method == "adaptor") else None)
        check_folder(registry, "model registry", "--registry", create=True, error=RegistryError)
        if out is not None:
            check_folder(out, "run folder", "--out", create=True, make=False)
        connect(address)
        ok = _run_decoder(spec, dataset, store, registry, out)
    except (DatasetError, FeatureStoreError, MissingStimuliError, RegistryError, ValueError) as e:
        _fail(str(e))
    if not ok:
        raise typer.Exit(code=1)


def _run_decoder(spec, dataset: Path, store: str, registry: str, out: Optional[Path]) -> bool:
    """Fit one decoding model of a :class:`~brainstore.fitting.DecoderSpec` (:func:`~brainstore.fitting.fit_decoder`)
    and print its figures; False when a subject failed."""
    from ..fitting import fit_decoder
    from ._quiet import drop_stderr_lines

    with drop_stderr_lines(enabled=spec.method == "adaptor" and not VERBOSE["on"]):
        run = fit_decoder(spec, dataset=dataset, store=store, registry=registry, out=out)
    return _print_decoder_run(spec, run, registry)


def _print_decoder_run(spec, run, registry: str) -> bool:
    """A decoding model's figures and where it went; False when a subject failed (or none could be fitted)."""
    from ._console import console, print_decoders

    if spec.method == "adaptor":
        print_decoders({f"{run.name} (adaptor)": run.metrics[spec.target]}, "fitted adaptor")
        last = run.history[-1]
        resumed = f", resumed after epoch {run.resumed_from_epoch}" if run.resumed_from_epoch is not None else ""
        console.print(f"registered {run.name}/shared in {registry}: {len(run.history)} epochs{resumed}, last train "
                      f"loss {last['train_loss']:.3f}, {last['samples_per_s']:.0f} samples/s; checkpoints and "
                      f"metrics.json in {run.run_dir} ({run.seconds:.1f} s)")
        return True
    for f in run.failures:
        console.print(f"[red]failed[/] {escape(f['subject'])} {escape(f['model'])}: {escape(f['error'])}")
    if not run.metrics:
        _fail("no decoder could be fitted")
    print_decoders(run.metrics, "fitted decoders")
    console.print(f"registered {len(run.registered)} decoder(s) in {registry}; decoded test embeddings and "
                  f"metrics.json in {run.run_dir} ({run.seconds:.1f} s)")
    return not run.failures


@app.command("fit")
def fit_cmd(
    config: Optional[Path] = typer.Option(None, "--config", help="Fit spec (YAML). Without it: a default spec from the store."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset folder (overrides the spec's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder for predictions and the report (default <registry>/_runs/fit-TIME)."),
    include_random: bool = typer.Option(False, "--include-random", help="Default spec: also fit feature tables made with random weights."),
    decode: Optional[str] = typer.Option(None, "--decode", help="Fit decoders (responses -> this store table) instead of encoders."),
    method: str = typer.Option("ridge", "--method", help="With --decode: 'ridge' (one per subject) or 'adaptor' (one model over all subjects, Ray Train)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="With --method adaptor: training epochs (default 30)."),
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
            _fail("--decode fits decoders from --dataset; it does not take --config")
        if method not in ("ridge", "adaptor"):
            _fail(f"--method must be 'ridge' or 'adaptor', not {method!r}")
        return _fit_decoders_cmd(dataset, decode, rois, out, store, registry, address, method, epochs, workers)
    if rois is not None:
        _fail("--rois goes with --decode (encoders take ROI rules in a fit spec)")
    from .._paths import check_folder
    from ..datasets import DatasetError
    from ..features import FeatureStoreError, MissingStimuliError
    from ..fitting import RegistryError, SpecError, as_fit_spec, fit, load_spec
    from ._quiet import drop_stderr_lines
    from ._ray import connect
    from ._console import console, print_comparison

    notes: list[str] = []
    if config is None and dataset is None:
        _fail("give --config FILE or --dataset DIR")
    if config is not None:
        _need(config, False, "fit spec", "--config takes a YAML file")
    if dataset is not None:
        _need_dataset(dataset, "--dataset takes a dataset folder in the Algonauts layout or a description file (.yaml)")
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
        adaptors = any(d.method == "adaptor" for d in spec.decoders)
        with drop_stderr_lines(enabled=adaptors and not VERBOSE["on"]):
            result = fit(spec, store=spec.store or store, registry=reg, out=out)
    except (SpecError, DatasetError, FeatureStoreError, MissingStimuliError, RegistryError, ValueError) as e:
        _fail(str(e))
    run = result.encoders
    if run is not None:
        for f in run.failures:
            console.print(f"[red]failed[/] {escape(f['subject'])} {f['hemi']} {escape(f['model'])}: "
                          f"{escape(f['error'])}")
        if not run.metrics:
            _fail("no model could be fitted")
        print_comparison(result.report["rows"], "fitted models")
        console.print(f"registered {len(run.registered)} model(s) in {reg}; predictions and report in "
                      f"{result.report['dir']} ({run.seconds:.1f} s)")
    ok = all(_print_decoder_run(d, r, reg) for d, r in zip(spec.decoders, result.decoders))
    if result.failures or not ok:
        raise typer.Exit(code=1)


@app.command("evaluate")
def evaluate_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="Dataset folder."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated model names (default: all fitted on this dataset)."),
    rois: str = typer.Option("families", "--rois", help="'families' (the five ROI families) or 'named' (also every named ROI: V1v ... VWFA-2)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <registry>/_runs/evaluate-TIME)."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: the store each model was fitted with)."),
    registry: str = RegistryOpt,
) -> None:
    """Score registered models on the test split (NNMC per ROI), write tables, plots and predictions."""
    from ..datasets import DatasetError
    from ..features import FeatureStoreError
    from ..fitting import RegistryError, evaluate
    from ._console import console, print_comparison, print_named, print_decoders

    if rois not in ("families", "named"):
        _fail(f"--rois must be 'families' or 'named', not {rois!r}")
    try:
        reg = _open_registry(registry)
        ev = evaluate(dataset, registry=reg, store=store, out=out, models=models.split(",") if models else None,
                      provenance={"command": "brainstore evaluate", "rois": rois})
    except (RegistryError, DatasetError, FeatureStoreError, ValueError) as e:
        _fail(str(e))
    if ev.report:
        print_comparison(ev.report["rows"], "evaluation")
        if rois == "named":
            print_named(ev.report["named"], "evaluation")
    if ev.decoders:
        print_decoders(ev.decoders, "evaluation")
    console.print(f"report: {ev.report_dir} ({', '.join(ev.files)})")
    console.print(f"HTML report: {ev.html}")


@app.command("predict")
def predict_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="Dataset folder (its test images are predicted)."),
    out: Path = typer.Option(..., "--out", help="Output folder: OUT/subjNN/{lh,rh}_pred_test.npy."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name (default: each subject's best by validation score; with --decode the ridge decoder into TABLE, else its adaptor)."),
    decode: Optional[str] = typer.Option(None, "--decode", help="Decode the test responses into this store table instead: OUT/subjNN/decoded_TABLE.npy and the top-k stimuli of the whole table (LanceDB search)."),
    top_k: int = typer.Option(10, "--top-k", min=1, help="With --decode: stimuli listed per test response."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: the store the model was fitted with)."),
    registry: str = RegistryOpt,
) -> None:
    """Write Algonauts submission files for the test images of every subject (or, with --decode, decoded embeddings)."""
    from ..datasets import DatasetError
    from ..features import FeatureStoreError
    from ..fitting import RegistryError, decode_test, predict
    from ._console import console

    try:
        reg = _open_registry(registry)
        if decode is not None:
            for d in decode_test(dataset, decode, registry=reg, out=out, model=model, store=store, top_k=top_k):
                console.print(f"{d.subject}: {d.model} -> {d.decoded} ({d.n_test} x {d.dim}), top-{d.k} of "
                              f"{d.candidates} stored stimuli in {d.top.name}; true stimulus first {d.top1:.1%}, "
                              f"in top-{d.k} {d.topk:.1%}")
            return
        for s, done in predict(dataset, registry=reg, out=out, model=model, store=store).items():
            console.print(f"{s}: {done['model']} -> {', '.join(str(p) for p in done['files'])}")
    except (RegistryError, DatasetError, FeatureStoreError, ValueError, KeyError) as e:
        _fail(str(e))


def _open_registry(registry: str):
    """A registry that must exist (reading verbs never create one)."""
    from ..fitting import ModelRegistry

    return ModelRegistry(registry, create=False)


@app.command("models")
def models_cmd(
    registry: str = RegistryOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List registered models with their kind, subject, validation score and test NNMC."""
    from rich.table import Table

    from ..fitting import RegistryError
    from ._console import console

    try:
        recs = _open_registry(registry).list()
    except RegistryError as e:
        _fail(str(e))
    keys = ("kind", "model", "subject", "val_score", "features", "members", "store", "created")
    if as_json:
        print(json.dumps([{"name": r.name, **{k: r.meta.get(k) for k in keys}} for r in recs], indent=2))
        return
    t = Table(title=f"models in {registry}")
    for c in ("name", "kind", "subject", "val r", "test NNMC", "features / members", "created"):
        t.add_column(c)
    for r in recs:
        m = r.meta
        nn = m.get("metrics", {}).get("both", {}).get("test_nnmc")
        t.add_row(r.name, m.get("kind", ""), m.get("subject", ""), f"{m.get('val_score', float('nan')):.3f}",
                  "-" if nn is None else f"{nn:.2f}", ", ".join(m.get("features") or m.get("members") or [])[:60],
                  str(m.get("created", "")))
    console.print(t)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("brainstore-demo"), "--out", help="Run folder for the demo's dataset, store and models."),
    subjects: int = typer.Option(2, "--subjects"),
    train: int = typer.Option(600, "--train"),
    test: int = typer.Option(100, "--test"),
    vertices: int = typer.Option(2000, "--vertices"),
    seed: int = typer.Option(0, "--seed"),
    image_extractor: Optional[str] = typer.Option(None, "--image-extractor", help="Image extractor spec (default: CLIP ViT-B/32, OpenAI weights if cached, else random init)."),
    address: Optional[str] = AddressOpt,
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the service up at the end (Ctrl-C stops it)."),
) -> None:
    """End-to-end demo on the synthetic dataset: features -> encoding models -> evaluation -> decoders -> serving (all local)."""
    from .._paths import check_folder
    from ._demo import run_demo

    try:  # before the dataset is made and Ray starts
        check_folder(out, "demo folder", "--out", create=True, make=False)
    except ValueError as e:
        _fail(str(e))
    run_demo(out, n_subjects=subjects, n_train=train, n_test=test, n_vertices=vertices, seed=seed, address=address,
             image_extractor=image_extractor, quiet=not VERBOSE["on"], keep_serving=keep_serving)


@app.command("serve")
def serve_cmd(
    registry: str = RegistryOpt,
    store: Optional[str] = typer.Option(None, "--store", help="Feature store URI (default: each model's own)."),
    address: Optional[str] = AddressOpt,
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1; anything else needs a token)."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default 8000)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Serve config file (from --write-config): deployments, autoscaling, resources, http options."),
    write_config: Optional[Path] = typer.Option(None, "--write-config", help="Write a Serve config file (`serve run` / `serve deploy` take it unchanged) and exit."),
    token_env: str = typer.Option("BRAINSTORE_TOKEN", "--token-env", help="Environment variable holding the bearer token."),
    local: bool = typer.Option(False, "--local", help="Plain uvicorn with the models in this process (no Ray Serve)."),
) -> None:
    """Serve the registry's encoding and decoding models over HTTP (Ray Serve; /docs for the API)."""
    import contextlib
    import logging
    import os
    import signal
    import time

    from ._quiet import quiet_serve

    from ..serving import (LOOPBACK_HOSTS, MAKE_TOKEN, Limits, ServeConfigError, app_args, check_token,
                           deployment_options, read_serve_config, serve_config)
    from ._console import console

    def serve_token(host: str) -> str | None:  # $token_env checked; a public host never served without one
        try:
            token = check_token(os.environ.get(token_env) or None, f"${token_env}")
        except ValueError as e:
            _fail(str(e))
        if host not in LOOPBACK_HOSTS and not token:
            _fail(f"--host {host} exposes the service beyond this machine: set a bearer token in ${token_env} "
                  f"(export {token_env}=$({MAKE_TOKEN})), or bind 127.0.0.1")
        return token

    if write_config is not None:
        serve_token(host or "127.0.0.1")
        cfg = serve_config(registry, store, host=host or "127.0.0.1", port=port or 8000,
                           token_env=token_env if os.environ.get(token_env) else None)
        import yaml

        from ..serving import check_serve_config

        check_serve_config(cfg)
        write_config.parent.mkdir(parents=True, exist_ok=True)
        write_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        console.print(f"wrote {write_config}: `serve run {write_config}` or `brainstore serve --config {write_config}`")
        return
    cfg = None
    if config is not None:
        try:
            cfg = read_serve_config(config)
        except ServeConfigError as e:
            _fail(str(e))
    http = (cfg or {}).get("http_options", {})
    limits = Limits(**((app_args(cfg).get("limits") if cfg else None) or {}))  # checked by read_serve_config
    host = host or http.get("host", "127.0.0.1")
    port = port or http.get("port", 8000)
    token = serve_token(host)
    if not Path(registry).is_dir() and "://" not in registry:
        _fail(f"--registry {registry} does not exist; fit models first (`brainstore fit`) or pass --registry")
    url = f"http://{host}:{port}"
    stop = {"now": False}
    quiet = contextlib.nullcontext()

    def on_signal() -> None:  # installed after Ray's start, which installs its own handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *a: stop.update(now=True))

    from ..serving import serve

    service = serve(registry, store, local=local, host=host, port=port, token=token, limits=limits,
                    options=deployment_options(cfg) if cfg else None, http_options=http)
    if local:
        on_signal()
        service.start()
        console.print(f"serving {registry} at {url} (plain uvicorn, models in this process); docs: {url}/docs")
    else:
        from ._ray import connect

        res = connect(address)
        on_signal()  # a stop asked for while the app deploys takes effect once it is up
        console.print(f"Ray: {int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU")
        import ray.serve  # noqa: F401  (its import sets up the "ray.serve" logger: quieten it after)

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not "Started Serve", "... is ready" per run
        quiet = quiet_serve()  # Ray Serve's notices on every start and shutdown
        quiet.__enter__()
        service.start()
        console.print(f"serving {registry} at {url} (Ray Serve: Ingress, Extractor, Encoder, Decoder); docs: {url}/docs")
    auth = f' -H "Authorization: Bearer ${token_env}"' if token else ""  # double quotes: the shell expands it
    console.print(f"try: curl -s{auth} {url}/v1/models   (Ctrl-C stops)")
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()  # (Ray Serve: its exit notices, relayed late, are still filtered)
        quiet.__exit__(None, None, None)
        console.print("stopped")


@app.command("explain")
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

    from .._paths import check_folder
    from ..datasets import DatasetError
    from ..features import FeatureStoreError, MissingStimuliError
    from ..fitting import RegistryError, explain_roi, run_dir, safe_name, write_contact_sheet
    from ._console import console

    verts = None
    if vertices is not None:
        try:
            verts = [int(v) for v in vertices.split(",") if v.strip()]
        except ValueError:
            _fail(f"--vertices {vertices!r} must be comma-separated whole numbers (vertex indices), e.g. 0,5,17")
    if columns < 1:
        _fail(f"--columns must be >= 1, got {columns}")
    if dataset is not None:
        _need(dataset, True, "dataset", "--dataset takes a dataset folder in the Algonauts layout")
    if out is not None and out.is_dir():
        _fail(f"--out {out} is a folder; give the contact sheet's file name, e.g. {out / 'sheet.png'}")
    try:
        reg = _open_registry(registry)
        if out is not None:
            check_folder(out.expanduser().absolute().parent, "output folder", "--out", create=True, make=False)
        ex = explain_roi(reg, model, subject, store=store, dataset=dataset, roi=roi, vertices=verts,
                         hemisphere=hemisphere, top=top)
        png = out if out is not None else (run_dir(None, registry, "explain")
                                           / f"{safe_name(ex.model)}_{ex.subject}_{safe_name(ex.roi)}.png")
        png = write_contact_sheet(ex, png, columns=columns)
    except (RegistryError, DatasetError, FeatureStoreError, MissingStimuliError, ValueError, KeyError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write the contact sheet: {e}; pass another file with --out")
    t = Table(title=f"{ex.model} / {ex.subject}: top {len(ex.top)} of {ex.n_stimuli} stored stimuli by mean predicted "
                    f"response in {ex.roi} ({ex.n_vertices} vertices, {'+'.join(ex.hemispheres)})")
    for c, j in (("rank", "right"), ("id", "left"), ("score", "right"), ("z", "right"), ("caption", "left")):
        t.add_column(c, justify=j)
    for it in ex.top:
        t.add_row(str(it.rank), escape(it.stimulus_id), f"{it.score:+.3f}", f"{it.z:+.2f}", escape(it.caption or "-"))
    console.print(t)
    console.print(f"contact sheet: {png}")


@app.command("run")
def run_cmd(
    pipeline: Path = typer.Argument(..., help="Pipeline file (YAML): dataset, store, registry, extract, fit, evaluate, report, serve."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Force this stage and every later one (extract, fit, evaluate, report, serve)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (the stages it reads must be current)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (which stages run, which are current, and why); run nothing."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (over the file's `address:`; default: an embedded local Ray)."),
) -> None:
    """Run extract -> fit -> evaluate -> report -> serve from one YAML; stages whose inputs are unchanged are skipped."""
    from ..datasets import DatasetError
    from ..features import ExtractionError, FeatureStoreError, MissingStimuliError, WeightsNotFoundError
    from ..fitting import RegistryError, SpecError
    from ._pipeline import PipelineError, run_pipeline

    _need(pipeline, False, "pipeline file", "`brainstore run` takes a pipeline YAML file")
    try:
        run_pipeline(pipeline, from_stage=from_stage, only=only, dry_run=dry_run, address=address,
                     quiet=not VERBOSE["on"])
    except (PipelineError, SpecError, DatasetError, FeatureStoreError, MissingStimuliError, RegistryError,
            WeightsNotFoundError, ExtractionError, ValueError) as e:
        _fail(str(e))


def main() -> None:  # pragma: no cover - console script entry
    """Run the CLI; any error not handled by a command still ends as one line (exit 2)."""
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted")
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - the last resort: one line, the traceback only with --verbose
        from ._errors import describe

        try:
            _fail(describe(e) + ("" if VERBOSE["on"] else "  (brainstore --verbose ... prints the traceback)"))
        except typer.Exit as ex:
            raise SystemExit(ex.exit_code) from None


if __name__ == "__main__":  # pragma: no cover
    main()

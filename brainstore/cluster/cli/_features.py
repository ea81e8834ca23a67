"""Features: ``extract`` (stimuli into the store), ``features`` (tables, extractors, PCA, indices) and
``weights list|pull`` (where each extractor's weights are; fetching them once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ._common import VERBOSE, AddressOpt, RegistryOpt, StoreOpt, fail, need, need_dataset


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
    from ..._paths import check_folder
    from ...datasets import DatasetError, open_dataset, open_stimuli
    from ...features import ExtractionError, FeatureStoreError, WeightsNotFoundError, extract, get_extractor, with_layer
    from .._console import console
    from .._quiet import drop_stderr_lines
    from .._ray import connect

    _check_sources(dataset, manifest, dtype, storage_dtype)
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
        timeseries = ds is not None and ds.is_timeseries
        delay_list = _timeseries_delays(resample, delays, limit, storage_dtype, commit_every) if timeseries else None
        connect(address)
        with drop_stderr_lines(enabled=not VERBOSE["on"]):  # Ray's per-run actor-restart notice (ray#53727)
            if timeseries:
                from ...features import extract_timeseries

                rep = extract_timeseries(ds, ext, store, version=version, resample=resample,
                                         concurrency=concurrency, dtype=dtype)
            else:
                rep = extract(stimuli, ext, store, version=version, batch_size=batch_size,
                              concurrency=concurrency, dtype=dtype, storage_dtype=storage_dtype, limit=limit,
                              **({"commit_every": commit_every} if commit_every is not None else {}))
        delayed = None
        if delay_list:
            from ...features import derive_delays

            delayed = derive_delays(store, rep.feature, ds, delay_list)
    except (WeightsNotFoundError, FeatureStoreError, DatasetError, ExtractionError, ValueError) as e:
        fail(str(e))
    _print_extraction(rep, delayed, delay_list)
    if rep.failed and not allow_failures:
        console.print(f"{len(rep.failed)} stimulus(i) failed and were not stored (recorded in the store's bad-stimuli "
                      "list; fix or remove them and rerun, which resumes); --allow-failures exits 0 in this case")
        raise typer.Exit(code=1)


def _check_sources(dataset: Optional[Path], manifest: Optional[Path], dtype: Optional[str], storage_dtype: str) -> None:
    """One of --dataset and --manifest, there; the dtypes known."""
    from ...features import DTYPES, STORAGE_DTYPES

    if (dataset is None) == (manifest is None):
        fail("give exactly one of --dataset DIR or --manifest FILE")
    if dtype is not None and dtype not in DTYPES:
        fail(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if storage_dtype not in STORAGE_DTYPES:
        fail(f"--storage-dtype {storage_dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
    if dataset is not None:
        need_dataset(dataset, "--dataset takes a dataset folder in the Algonauts layout or a dataset description "
                     "file (.yaml); a manifest file goes with --manifest")
    if manifest is not None:
        need(manifest, False, "manifest", "--manifest takes a .parquet or .csv file")


def _timeseries_delays(resample: str, delays: str, limit: Optional[int], storage_dtype: str,
                       commit_every: Optional[int]) -> list[int] | None:
    """A time-series dataset's options checked: the resampling, and the FIR delays (None: no delayed table)."""
    delay_list = None
    if resample not in ("average", "lanczos"):
        fail(f"--resample {resample!r} is not one of average, lanczos")
    if delays.strip().lower() != "none":
        try:
            delay_list = [int(v) for v in delays.replace(" ", "").split(",") if v]
        except ValueError:
            fail(f"--delays {delays!r} must be integers (TRs) like 1,2,3,4, or none")
        if not delay_list or len(set(delay_list)) != len(delay_list):
            fail(f"--delays {delays!r} must be distinct integers (TRs) like 1,2,3,4, or none")
    if limit is not None or storage_dtype != "float32" or commit_every is not None:
        fail("--limit, --storage-dtype and --commit-every do not apply to a time-series dataset (whole clips "
             "are extracted, one commit per clip)")
    return delay_list


def _print_extraction(rep, delayed: str | None, delay_list: list[int] | None) -> None:
    """What an extraction wrote (and the delayed table made from it), and every stimulus that failed."""
    from .._console import console

    other = f", {rep.stored_by_other} stored meanwhile by another run" if rep.stored_by_other else ""
    console.print(f"[green]{rep.feature}[/]: {rep.written} written, {rep.already_stored} already stored{other}, "
                  f"{len(rep.failed)} failed, dim {rep.dim}, {rep.seconds:.1f} s ({rep.rate:.1f} stimuli/s) -> {rep.store}")
    if delay_list:
        console.print(f"[green]{delayed}[/]: {rep.feature} delayed by {','.join(map(str, delay_list))} TRs within "
                      "each clip (fit this one: it learns the hemodynamic lag)")
    for f in rep.failed:
        console.print(f"  [red]bad stimulus[/] {f['stimulus_id']} {f['path']}: {f['error']}")


def features_cmd(
    table: Optional[str] = typer.Argument(None, metavar="[TABLE]", help="A feature table (with --versions)."),
    versions: bool = typer.Option(False, "--versions", help="List TABLE's versions (time, rows, tags) and the registered models pinning each."),
    registry: str = RegistryOpt,
    list_extractors_: bool = typer.Option(False, "--list", help="List the registered extractors instead of tables."),
    pca: Optional[str] = typer.Option(None, "--pca", help="Derive a PCA version of this table (fitted on the train split)."),
    components: int = typer.Option(256, "--components", help="PCA components (with --pca)."),
    index: Optional[str] = typer.Option(None, "--index", help="Build a vector index on this table."),
    index_kind: str = typer.Option("ivf_pq", "--index-kind", help="ivf_pq or hnsw."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    store: str = StoreOpt,
) -> None:
    """List feature tables with their metadata (or extractors with --list); derive PCA; build indices; with
    TABLE --versions, the table's versions and which registered models pin each (models read the version
    they were fitted on; pinned versions survive compaction and cleanup)."""
    from rich.table import Table

    from .._console import console

    if versions or table is not None:
        if table is None or not versions:
            fail("give a table and --versions: `brainstore features TABLE --versions` lists the table's versions")
        _print_versions(store, table, registry, as_json)
        return
    if list_extractors_:
        from ...features import list_extractors

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
    from ...features import FeatureStore, FeatureStoreError, derive_pca

    try:
        fs = FeatureStore(store, create=False)  # a reading verb: a mistyped path is an error, not a new store
    except FeatureStoreError as e:
        fail(str(e))
    try:
        if pca:
            name = derive_pca(fs, pca, components)
            console.print(f"derived [green]{name}[/] from {pca}")
        if index:
            console.print(fs.build_index(index, kind=index_kind))
    except FeatureStoreError as e:
        fail(str(e))
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


def _print_versions(store: str, table: str, registry: str, as_json: bool) -> None:
    """``features TABLE --versions``: every kept version of ``table`` with its tags and the models pinning it."""
    from rich.table import Table

    from ...features import FeatureStore, FeatureStoreError
    from .._console import console

    try:
        fs = FeatureStore(store, create=False)
        if not fs.exists(table):
            fail(f"no feature table {table!r} in store {fs.uri} (tables: {', '.join(fs.names()) or 'none yet'})")
        rows = fs.versions(table)
        created = fs.metadata(table).get("created")
    except FeatureStoreError as e:
        fail(str(e))
    pins, note = _pinning_models(fs.uri, table, created, registry)
    kept = {r["version"] for r in rows}
    for r in rows:
        r["models"] = pins.pop(r["version"], [])
    gone = {v: m for v, m in pins.items() if v not in kept and v != "earlier"}
    if as_json:
        print(json.dumps({"store": fs.uri, "table": table, "registry": registry, "versions": rows,
                          "models_on_versions_gone": {str(v): m for v, m in sorted(gone.items())},
                          "models_on_an_earlier_table": pins.get("earlier", []), "note": note}, indent=2))
        return
    t = Table(title=f"versions of {table} in {fs.uri}")
    for c in ("version", "time (UTC)", "rows", "tags", "pinned by models"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(str(r["version"]), r["timestamp"][:19].replace("T", " "), str(r["rows"]), escape(", ".join(r["tags"])),
                  escape(", ".join(r["models"])))
    console.print(t)
    for v, models in sorted(gone.items()):
        console.print(f"[yellow]version {v} is gone[/] (cleaned up): {escape(', '.join(models))} read the latest "
                      "version while it holds their fitted rows unchanged, else they are refused; refit them")
    if pins.get("earlier"):
        console.print(f"[yellow]fitted on an earlier table of this name[/] (dropped and re-created since): "
                      f"{escape(', '.join(pins['earlier']))}")
    if note:
        console.print(note)


def _pinning_models(uri: str, table: str, created, registry: str) -> tuple[dict, str | None]:
    """{version: [model refs]} of the registered models (every version) fitted on ``table`` of the store ``uri``;
    models fitted on an earlier table of the same name (another creation time) under "earlier"."""
    from ..._storage import uri_of
    from ...fitting import ModelRegistry

    try:
        reg = ModelRegistry(registry, create=False)
        records = (getattr(reg, "all_versions", None) or reg.list)()
    except Exception as e:  # noqa: BLE001  (the versions are shown either way; the models column says why it is empty)
        return {}, f"models: registry {registry} not read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    pins: dict = {}
    for rec in records:
        fp = (rec.meta.get("fingerprints") or {}).get(table)
        if not fp or not rec.meta.get("store") or uri_of(rec.meta["store"]) != uri:
            continue
        key = "earlier" if created and fp.get("created") and fp["created"] != created else fp.get("table_version")
        pins.setdefault(key, []).append(getattr(rec, "ref", rec.name))
    return pins, None


CacheOpt = typer.Option(None, "--cache", metavar="DIR",
                        help="Cache root: HF_HOME=DIR/huggingface and BRAINSTORE_WEIGHTS_DIR=DIR/weights for this "
                             "command (extraction reads the same variables; the cluster image sets them to "
                             "/mnt/brainstore/cache). Default: the environment's.")


def _use_cache(cache: Optional[Path], create: bool) -> None:
    from ..._paths import check_folder
    from ...features import use_cache

    if cache is not None:
        try:
            check_folder(cache, "weights cache", "--cache", create=create, make=False,
                         missing_hint="pull weights into it first (`brainstore weights pull --cache DIR SPEC`)")
        except ValueError as e:
            fail(str(e))
        use_cache(cache)


def weights_list_cmd(
    specs: Optional[list[str]] = typer.Argument(None, metavar="[SPEC]...", help="Extractor specs (default: each extractor's default: text, clip ViT-B/32 openai, sam vit_b, motion-energy)."),
    cache: Optional[Path] = CacheOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """For each spec: whether its weights are here (offline), where they are or were looked for, and what
    `weights pull` would fetch."""
    from rich.table import Table

    from ...features import DEFAULT_SPECS, cache_locations, weights_status
    from .._console import console

    _use_cache(cache, create=False)
    try:
        status = [weights_status(s) for s in (specs or DEFAULT_SPECS)]
    except (ValueError, KeyError) as e:
        fail(f"extractor spec: {e}")
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


def weights_pull_cmd(
    specs: list[str] = typer.Argument(..., metavar="SPEC...", help="Extractor specs whose weights to fetch, e.g. 'clip:arch=ViT-B-32,pretrained=openai'."),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Download the weights the specs need into the cache (HF hub cache, brainstore's weights folder), once,
    on a machine with network access; every other command stays offline and reads them from there."""
    from ...features import WeightsPullError, check_caches, pull_weights, weights_status
    from .._console import console

    _use_cache(cache, create=True)
    try:
        check_caches("--cache (or $HF_HOME / $BRAINSTORE_WEIGHTS_DIR)")
        for spec in specs:
            got = pull_weights(spec)
            found = weights_status(spec).found
            console.print(f"[green]{escape(spec)}[/]: " + (f"fetched {escape(', '.join(got))}; " if got else
                                                           "nothing to fetch; ") + f"offline now: {escape(found)}")
    except (WeightsPullError, ValueError, KeyError) as e:
        fail(str(e))

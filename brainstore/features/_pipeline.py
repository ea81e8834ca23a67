"""Feature extraction with Ray Data: read -> decode/preprocess (CPU tasks) -> extractor actor pool
(GPUs when present) -> chunked, idempotent commits into the LanceDB feature store.

Captions need no decoding: they are validated on the driver and go straight to the model
actors, which then hold every CPU.

Resumable: stimuli already stored under the feature version are skipped; each chunk of
``commit_every`` rows is one ``merge_insert`` commit keyed on ``stimulus_id``, so a killed job
keeps what it committed and a rerun (or a concurrent run) never duplicates a row.
Bad stimuli (zero-byte, corrupt, not an image, decompression bombs, unreadable videos, empty
captions, array references with a missing key or an index out of range, and rows the model maps to
non-finite values) are reported with their paths, recorded in the store's ``_bad_stimuli`` table,
and never written.

Images may come from a pixel array instead of files: a row whose ``path`` is an array reference
(``/data/nsd_stimuli.hdf5#imgBrick[2950]``, ``/data/imgs.npy#[17]``; :mod:`brainstore.datasets._arrays`)
is read by index from its brick in the CPU tasks (no decoding), then preprocessed like a file's
pixels; such rows are sorted by brick and index so a batch reads runs of indices in one slice. A
brick that is unusable as a whole (file missing or unreadable, not uint8 images) is one error before
any Ray work. Tables may mix files and references. A failure of the model's forward pass
(out of memory, a CUDA fault, a bug) is a system error, not a bad stimulus: it is retried, and if
it persists the job stops with :class:`ExtractionError` (committed rows are kept).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..datasets import (ArrayRef, BrickError, BrickFileError, BrickFormatError, brick_info, decode_image, open_stimuli,
                        parse_array_ref, range_error, read_array_refs)
from ._extractors._base import DTYPES
from ._store import FeatureStore, StoreAccessError

__all__ = ["extract", "ExtractReport", "ExtractionError", "plan_resources", "select_stimuli"]

log = logging.getLogger("brainstore.features")
# Tries of one batch's forward pass before the job stops (a transient fault, e.g. memory freed
# by another process, passes on a retry; a persistent one stops the job).
FORWARD_ATTEMPTS = 3
# Caption extraction on CPUs: at most this many model actors (one per CPU below it), each a copy
# of the model in memory.
MAX_CAPTION_ACTORS = 8


class ExtractionError(RuntimeError):
    """An extraction job stopped on a system error (the model's forward pass failed).

    The message names the feature version, the original exception and the fix; rows committed
    before the failure are kept and a rerun resumes after them.
    """


@dataclass
class ExtractReport:
    """What an extraction run did."""

    feature: str
    store: str
    requested: int  # unique stimuli the extractor applies to
    already_stored: int  # skipped because present (resume)
    written: int  # rows inserted by this run
    failed: list[dict] = field(default_factory=list)  # {stimulus_id, path, error}
    stored_by_other: int = 0  # computed here but found already written by a concurrent run on the table
    seconds: float = 0.0
    dim: int = 0

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def select_stimuli(stimuli: pa.Table, modality: str) -> pa.Table:
    """One row per unique stimulus the extractor applies to, with its ``item`` (path or caption).

    Image/video extractors take rows of that modality (the file path); a text extractor takes
    every row with a caption, so a caption is stored under the same ``stimulus_id`` as its image.
    An image shared by several subjects (same ``stimulus_id``) appears once; its ``split`` lists
    every split it belongs to (e.g. ``test,train``).
    """
    rows = stimuli.to_pylist()
    out: dict[str, dict] = {}
    for r in rows:
        if modality == "text":
            if not r.get("caption"):
                continue
            item = r["caption"]
        else:
            if r.get("modality") != modality:
                continue
            item = r["path"]
        sid = r["stimulus_id"]
        if sid in out:
            if r.get("split"):
                out[sid]["splits"].add(r["split"])
            continue
        out[sid] = {"stimulus_id": sid, "item": item, "path": r.get("path") or "",
                    "dataset": r.get("dataset") or "", "splits": {r["split"]} if r.get("split") else set()}
    return pa.table({
        "stimulus_id": [v["stimulus_id"] for v in out.values()],
        "item": [v["item"] for v in out.values()],
        "path": [v["path"] for v in out.values()],
        "dataset": [v["dataset"] for v in out.values()],
        "split": [",".join(sorted(v["splits"])) for v in out.values()],
    })


# ----------------------------------------------------------------------------- Ray stages
def _prepare_batch(batch: dict[str, np.ndarray], ext, modality: str) -> dict[str, Any]:
    """CPU task: read + decode + preprocess each image or video; failures become rows with ``error`` set.

    Image rows whose path is an array reference (``FILE.hdf5#KEY[INDEX]``, ``FILE.npy#[INDEX]``) are
    read by index from their brick, all of the batch's at once (sorted index runs, one slice each;
    the brick file stays open in this worker): the same uint8 RGB pixels the PNG route decodes, with
    no decoding step, then the extractor's own preprocessing, as for files.
    Preprocessed arrays travel as raw bytes (+ shape) so a batch mixing good and bad rows keeps
    one column type whatever the extractor's input shape.
    """
    from PIL import Image

    items = [str(item) for item in batch["item"]]
    pixels: dict[int, Any] = {}
    if modality == "image":
        refs = {i: r for i, r in enumerate(map(parse_array_ref, items)) if r is not None}
        if refs:
            pixels = dict(zip(refs, read_array_refs(list(refs.values()))))
    data, shapes, errors = [], [], []
    dtype_name = ""
    for i, item in enumerate(items):
        try:
            # images are decoded here (safely); video extractors decode their own frames from the path
            if i in pixels:
                if isinstance(pixels[i], Exception):
                    raise pixels[i]
                inp = Image.fromarray(pixels[i])  # H x W x 3 uint8 -> RGB image: a view of the pixels, no decoding
            else:
                inp = decode_image(item) if modality == "image" else item
            x = np.ascontiguousarray(ext.preprocess(inp))
            data.append(x.tobytes())
            shapes.append(",".join(map(str, x.shape)))
            dtype_name = x.dtype.str
            errors.append("")
        except Exception as e:  # one bad stimulus must not stop the job
            data.append(b"")
            shapes.append("")
            errors.append(_describe(e))
    return {
        "stimulus_id": batch["stimulus_id"],
        "path": batch["path"],
        "dataset": batch["dataset"],
        "split": batch["split"],
        "data": np.array(data, dtype=object),
        "shape": np.array(shapes, dtype=object),
        "dtype": np.array([dtype_name] * len(data), dtype=object),
        "error": np.array(errors, dtype=object),
    }


def _describe(e: BaseException) -> str:
    """``Type: message`` (just the type when the message is empty)."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _model_input(batch: dict[str, np.ndarray], idx: np.ndarray) -> list[str] | np.ndarray:
    """The extractor's input for rows ``idx``: captions as ``list[str]``, arrays stacked from their bytes."""
    if "data" not in batch:  # captions come straight from the driver
        return [str(batch["item"][i]) for i in idx]
    return np.stack([np.frombuffer(batch["data"][i], dtype=np.dtype(batch["dtype"][i])).reshape(
        tuple(int(v) for v in str(batch["shape"][i]).split(","))) for i in idx])


class _Embedder:
    """Actor: holds the loaded model; embeds the good rows of each batch.

    Output rows carry ``error`` (a bad stimulus: non-finite embedding, or the decode error
    passed through) and ``fatal`` (the forward pass failed :data:`FORWARD_ATTEMPTS` times on
    this batch: the driver stops the job).
    """

    def __init__(self, ext, device: str, dtype: str, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.ext = ext
        self.device = device
        self.ext.load(device=device, dtype=dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["stimulus_id"])
        errors = list(batch["error"]) if "error" in batch else [""] * n
        idx = np.flatnonzero([e == "" for e in errors])
        emb = np.zeros((n, self.ext.dim), np.float32)
        fatal = ""
        if len(idx):
            out, fatal = self._forward(_model_input(batch, idx))
            if out is not None:
                emb[idx] = out
                for j in np.flatnonzero(~np.isfinite(out).all(1)):
                    errors[idx[j]] = "extractor returned non-finite values"
        return {"stimulus_id": batch["stimulus_id"], "path": batch["path"], "dataset": batch["dataset"],
                "split": batch["split"], "embedding": emb, "error": np.array(errors, dtype=object),
                "fatal": np.array([fatal] * n, dtype=object)}

    def _forward(self, items) -> tuple[np.ndarray | None, str]:
        """``(embeddings, "")``, or ``(None, cause)`` when every attempt raised."""
        for attempt in range(1, FORWARD_ATTEMPTS + 1):
            try:
                return np.asarray(self.ext.embed(items), dtype=np.float32), ""
            except Exception as e:  # out of memory, a CUDA fault, a bug: the model's, not a stimulus's
                cause = _describe(e)
                log.warning("forward pass failed (attempt %d/%d): %s", attempt, FORWARD_ATTEMPTS, cause)
                _free_memory(self.device)
        return None, f"{cause} (on a batch of {len(items)}, {FORWARD_ATTEMPTS} attempts)"


def _free_memory(device: str) -> None:
    """Drop what a failed forward pass left allocated before trying again."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _gpus_per_actor(num_gpus: float | None, n_gpus: float) -> float:
    """GPUs each model actor asks for: ``num_gpus`` when given, else 1 on a cluster with GPUs, else 0."""
    return float(num_gpus) if num_gpus is not None else (1.0 if n_gpus > 0 else 0.0)


def plan_resources(n_rows: int, batch_size: int, n_cpus: int, n_gpus: float, *, decode: bool = True,
                   concurrency: int | None = None, num_gpus: float | None = None, actor_cpus: float | None = None,
                   prep_cpus: float | None = None) -> dict[str, Any]:
    """How an extraction uses the cluster (see :func:`extract` for the parameters).

    Decoding runs in CPU tasks separate from the model actors, so that it starts at once and
    overlaps the actors' start-up (a new process importing torch and the model library, then
    loading the weights: 5-12 s on 2 cores), and so that a decode-bound job uses every core.
    With GPUs: one actor per GPU (1 CPU each), one CPU per decoding task. CPU only: one actor
    per 8 CPUs, each with that many torch threads (a model-bound CPU job wants big matrix
    products, not many processes) and half as many CPUs reserved; on machines of at most 4 CPUs
    half a CPU per decoding task, so that decoding takes every core while a decode-bound model
    actor holds its reservation. Ray Data fuses the decode stage into the actors when both ask
    for the same resources: the defaults differ (except on a 1-CPU cluster, where fusing is best).
    Without a decode stage (``decode=False``: captions), CPU only: one actor per CPU (at most
    :data:`MAX_CAPTION_ACTORS`, sharing the CPUs as torch threads), each reserving the CPUs its
    threads use. A caption batch is small matrix products, which torch's threads split badly: two
    single-threaded processes on 2 cores embed more than one process with 2 threads, and do not
    stall when another process (the driver's commits) takes a core for a moment.

    Parameters
    ----------
    n_rows, batch_size : stimuli to extract, rows per model batch.
    n_cpus, n_gpus : the cluster's CPUs and GPUs.
    decode : whether CPU tasks decode/preprocess the stimuli before the model (images, videos).
    concurrency, num_gpus, actor_cpus, prep_cpus : as in :func:`extract` (None: the defaults).

    Returns
    -------
    dict
        ``n_blocks`` (input blocks cut on the driver), ``block_rows`` (rows per block, a multiple
        of ``batch_size``), ``n_actors``, ``use_gpu``, ``actor_cpus``, ``actor_gpus``, ``threads``
        (torch threads per actor, None on GPU), ``prep_cpus`` (None without a decode stage).
    """
    actor_gpus = _gpus_per_actor(num_gpus, n_gpus)
    use_gpu = actor_gpus > 0
    # Blocks of a few batches each, cut on the driver (no all-to-all repartition stage).
    n_batches = -(-n_rows // batch_size)
    n_blocks = max(1, min(n_batches, 16 * n_cpus))
    block_rows = batch_size * -(-n_batches // n_blocks)  # whole batches: no ragged batch per block
    n_blocks = -(-n_rows // block_rows)
    n_actors = min(concurrency or _default_actors(use_gpu, decode, n_cpus, n_gpus // actor_gpus if use_gpu else 0),
                   n_blocks)  # no idle actors for small jobs
    threads = None if use_gpu else max(1, n_cpus // n_actors)
    if actor_cpus is None:
        actor_cpus = _actor_cpus(use_gpu, decode, threads, n_cpus)
    if prep_cpus is None and decode:
        prep_cpus = 1.0 if use_gpu or n_cpus > 4 else 0.5
    return {
        "n_blocks": n_blocks,
        "block_rows": block_rows,
        "n_actors": n_actors,
        "use_gpu": use_gpu,
        "actor_gpus": actor_gpus,
        "actor_cpus": actor_cpus,
        "threads": threads,
        "prep_cpus": prep_cpus if decode else None,
    }


def _default_actors(use_gpu: bool, decode: bool, n_cpus: int, gpu_slots: float) -> int:
    """Model actors by default (see :func:`plan_resources`)."""
    if use_gpu:
        return max(1, int(gpu_slots))
    return max(1, n_cpus // 8) if decode else max(1, min(n_cpus, MAX_CAPTION_ACTORS))


def _actor_cpus(use_gpu: bool, decode: bool, threads: int | None, n_cpus: int) -> float:
    """CPUs a model actor reserves by default (see :func:`plan_resources`)."""
    if use_gpu:
        return 1.0
    if not decode:  # nothing else runs: the actor holds the cores of its torch threads
        return float(threads)
    return min(max(1.0, float(threads // 2)), n_cpus / 2)  # half its threads' cores, at most half the cluster


# ----------------------------------------------------------------------------- driver
def extract(
    source,
    extractor,
    store: str | FeatureStore,
    *,
    version: str | None = None,
    batch_size: int = 64,
    concurrency: int | None = None,
    num_gpus: float | None = None,
    actor_cpus: float | None = None,
    prep_cpus: float | None = None,
    dtype: str | None = None,
    storage_dtype: str = "float32",
    commit_every: int = 512,
    limit: int | None = None,
    progress: bool = True,
    compact: bool = True,
) -> ExtractReport:
    """Extract features for every stimulus of ``source`` into ``store`` (resumable, idempotent).

    Parameters
    ----------
    source : stimulus table (:data:`~brainstore.datasets.STIMULUS_SCHEMA`), dataset folder, description or
        manifest path. A time-series dataset goes to :func:`~._timeseries.extract_timeseries` (one row per TR).
    extractor : spec string (``"clip:arch=ViT-B-32"``) or an extractor object.
    store : FeatureStore or URI.
    version : table name; default the extractor's version name.
    batch_size : rows per model batch (and per preprocessing task).
    concurrency : extractor actors (default: one per GPU; without GPUs, one per 8 CPUs, each with
        that many torch threads, or for captions one per CPU up to :data:`MAX_CAPTION_ACTORS`).
    num_gpus : GPUs per actor (default 1 when the cluster has GPUs, else 0; fractional values
        put several actors on one GPU).
    actor_cpus : CPUs reserved per actor (default 1 with GPUs; without, half the actor's torch
        threads, at least 1 and at most half the cluster, or all its threads for captions).
    prep_cpus : CPUs reserved per decode/preprocess task (default 1; 0.5 on CPU-only clusters of
        at most 4 CPUs, so that decoding uses every core beside a decode-bound model). Equal
        ``actor_cpus`` and ``prep_cpus`` on a CPU-only cluster let Ray Data fuse decoding into
        the actors (no start-up overlap, no inter-process copies). Captions have no decode stage.
    dtype : model compute dtype, ``float32``, ``bfloat16`` or ``float16`` (default bfloat16 on GPU,
        float32 on CPU). Part of the feature version: to append to a table made on another
        device, pass the table's dtype (the ``device`` it was made on may differ).
    storage_dtype : ``float32`` or ``float16`` embeddings on disk.
    commit_every : rows per store commit (a killed job keeps every committed chunk).
    limit : only the first ``limit`` unique stimuli (for smoke runs).

    Returns
    -------
    ExtractReport

    Raises
    ------
    ExtractionError
        When the model's forward pass keeps failing (after :data:`FORWARD_ATTEMPTS` tries of a
        batch); rows committed before are kept and a rerun resumes.
    FeatureStoreError
        When the table exists and was made differently (another model, layer, dtype ...).
    StoreAccessError
        When the store cannot be reached or refuses access (a :class:`FeatureStoreError` naming the
        store, the cause and the fix); committed rows are kept and a rerun resumes.
    """
    from ._extractors import get_extractor

    t0 = time.time()
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    ext = get_extractor(extractor) if isinstance(extractor, str) else extractor
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if not isinstance(source, pa.Table):
        from ..datasets import BrainDataset, is_description, open_dataset

        if isinstance(source, BrainDataset) or is_description(source):
            ds = open_dataset(source)
            if ds.is_timeseries:  # one row per TR: frames embedded, resampled and z-scored per clip
                from ._timeseries import extract_timeseries

                return extract_timeseries(ds, ext, fs, version=version, concurrency=concurrency, dtype=dtype,
                                          num_gpus=num_gpus, progress=progress)
            source = ds.root
    stimuli = source if isinstance(source, pa.Table) else open_stimuli(Path(source))
    rows = select_stimuli(stimuli, ext.modality)
    if limit is not None:
        rows = rows.slice(0, limit)
    feature = version or ext.version
    if rows.num_rows == 0:
        raise ValueError(f"no {ext.modality} stimuli in the source for extractor {ext.name!r} "
                         f"({'no captions' if ext.modality == 'text' else 'no rows with modality=' + ext.modality})")

    # Array references (images of an HDF5 / npy brick) of the stimuli still to extract: an unusable
    # brick is one error now, before any Ray work; a reference that cannot be read (missing key, index
    # out of range) is a bad stimulus.
    ref_failed: dict[str, dict] = {}
    if ext.modality == "image" and any(p and parse_array_ref(p) for p in rows.column("item").to_pylist()):
        done = set(fs.ids(feature)) if fs.exists(feature) else set()
        pending = pa.array([s not in done for s in rows.column("stimulus_id").to_pylist()])
        ref_failed = _check_array_refs(rows.filter(pending))

    n_cpus, n_gpus = _connect()
    use_gpu = _gpus_per_actor(num_gpus, n_gpus) > 0
    if use_gpu and n_gpus == 0:
        raise ValueError(f"num_gpus={num_gpus} per actor was asked for, but the Ray cluster has no GPUs; "
                         "pass num_gpus=0 (or leave it unset) to extract on CPUs")
    device = "cuda" if use_gpu else "cpu"
    dtype = dtype or ("bfloat16" if use_gpu else "float32")

    # Metadata (and so the identity check) is known before any weights are loaded when possible.
    meta = dict(ext.metadata())
    meta.update({"dtype": dtype, "device": device})  # device is provenance only: it may differ on resume
    dim = int(ext.dim)
    created = not fs.exists(feature)
    fs.ensure_table(feature, dim, meta, storage_dtype=storage_dtype)
    report = None
    try:
        stored = set(fs.ids(feature))
        todo = rows.filter(pa.array([s not in stored for s in rows.column("stimulus_id").to_pylist()]))
        report = ExtractReport(feature=feature, store=fs.uri, requested=rows.num_rows,
                               already_stored=rows.num_rows - todo.num_rows, written=0, dim=dim)
        decode = ext.modality != "text"
        if ref_failed:  # recorded as bad stimuli, never sent to the workers
            todo_ids = todo.column("stimulus_id").to_pylist()
            _record_failed(fs, feature, [ref_failed[s] for s in todo_ids if s in ref_failed], report)
            todo = todo.filter(pa.array([s not in ref_failed for s in todo_ids]))
        if decode:
            todo = _by_brick_index(todo)
        if not decode:  # captions are checked here, on the driver: no decode stage at all
            todo, failed = _check_captions(todo, ext)
            _record_failed(fs, feature, failed, report)
            todo = _by_length(todo)
        if todo.num_rows:
            plan = plan_resources(todo.num_rows, batch_size, n_cpus, n_gpus, decode=decode, concurrency=concurrency,
                                  num_gpus=num_gpus, actor_cpus=actor_cpus, prep_cpus=prep_cpus)
            ds = _dataset(todo, ext, plan, batch_size, device, dtype)
            _run(ds, fs, feature, ext, report, commit_every, progress)
        if compact and report.written:
            t_compact = time.time()
            fs.compact(feature)
            log.info("extract %s: compaction %.2f s", feature, time.time() - t_compact)
    except StoreAccessError as e:  # the store went away mid-run: say what is kept and that a rerun resumes
        kept = (f"the {report.already_stored + report.written} row(s) committed before are kept" if report is not None
                else "rows committed before are kept")
        raise StoreAccessError(f"{e}; extraction of {feature!r} stopped: {kept}, and the same command resumes "
                               "once the store answers") from e.__cause__
    finally:  # failed, or every stimulus was bad: no empty table is left behind
        _drop_if_empty(fs, feature, created)
    report.seconds = time.time() - t0
    return report


def _drop_if_empty(fs: FeatureStore, feature: str, created: bool) -> None:
    """Remove a table this run created when it holds no row (the run failed before writing any)."""
    try:
        if created and fs.exists(feature) and fs.info(feature).rows == 0:
            fs.drop(feature)
            log.info("extract %s: removed the empty table this run had created", feature)
    except StoreAccessError as e:  # the store is gone: the run's own error says so; nothing to add
        log.debug("extract %s: could not check for an empty table: %s", feature, e)
    except Exception as e:  # noqa: BLE001 - never hide the run's own error behind a cleanup error
        log.warning("extract %s: could not remove the empty table: %s", feature, e)


def _connect() -> tuple[int, float]:
    """Join (or start) Ray with Ray Data kept quiet; the cluster's CPUs and GPUs."""
    import ray

    from .._ray import ensure_connected, quiet_ray_data

    res = ensure_connected()
    quiet_ray_data()
    try:  # the model actor's resident memory is expected; Ray Data's periodic warning about it is noise
        ray.data.DataContext.get_current().issue_detectors_config.high_memory_detector_config \
            .detection_time_interval_s = -1
    except AttributeError:
        pass
    return int(res.get("CPU", 1)), float(res.get("GPU", 0))


def _check_captions(todo: pa.Table, ext) -> tuple[pa.Table, list[dict]]:
    """Rows whose caption the extractor accepts (``item`` replaced by its preprocess output), and the rest."""
    items, keep, failed = [], [], []
    for i, (sid, item, path) in enumerate(zip(*(todo.column(c).to_pylist() for c in ("stimulus_id", "item", "path")))):
        try:
            items.append(ext.preprocess(item))
            keep.append(i)
        except Exception as e:  # an empty or non-string caption is a bad stimulus
            failed.append({"stimulus_id": sid, "path": path, "error": _describe(e)})
    good = todo.take(pa.array(keep, pa.int64()))
    return good.set_column(good.schema.get_field_index("item"), "item", pa.array(items, pa.string())), failed


def _check_array_refs(rows: pa.Table) -> dict[str, dict]:
    """Check the image bricks that rows reference (on the driver, cheaply: one header per brick).

    Returns the rows whose reference cannot be read (``{stimulus_id: {stimulus_id, path, error}}``:
    a missing dataset key, an index out of range); these are bad stimuli.

    Raises
    ------
    BrickError
        One error naming every unusable brick (the file missing or not HDF5 / npy, or not holding
        uint8 N x H x W x 3 / N x H x W images) and the fix: every reference into it would fail.
    """
    by_brick: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    for sid, path in zip(rows.column("stimulus_id").to_pylist(), rows.column("item").to_pylist()):
        ref = parse_array_ref(path) if path else None
        if ref is not None:
            by_brick.setdefault((ref.file, ref.key), []).append((sid, path, ref.index))
    failed: dict[str, dict] = {}
    unusable: list[str] = []
    kinds: set[type] = set()
    for (file, key), refs in by_brick.items():
        try:
            n = brick_info(file, key).n
        except (BrickFileError, BrickFormatError) as e:
            kinds.add(type(e))
            unusable.append(f"{e} ({len(refs)} stimul{'us' if len(refs) == 1 else 'i'} reference it, "
                            f"e.g. {refs[0][1]})")
            continue
        except BrickError as e:  # a wrong key: these references are wrong, the brick may be fine
            failed.update({sid: {"stimulus_id": sid, "path": path, "error": f"BrickError: array reference {path}: {e}"}
                           for sid, path, _ in refs})
            continue
        failed.update({sid: {"stimulus_id": sid, "path": path,
                             "error": _describe(range_error(ArrayRef(file, key, i), n))}
                       for sid, path, i in refs if i >= n})
    if unusable:
        what = unusable[0] if len(unusable) == 1 else \
            f"{len(unusable)} image bricks are unusable: " + "; ".join(unusable)
        raise (kinds.pop() if len(kinds) == 1 else BrickError)(f"cannot extract: {what}")
    return failed


def _by_brick_index(todo: pa.Table) -> pa.Table:
    """Rows whose paths are array references grouped by brick in index order (the others first, in
    their order), so that a batch reads runs of consecutive indices in one slice each."""
    keys = []
    for i, path in enumerate(todo.column("item").to_pylist()):
        ref = parse_array_ref(path) if path else None
        keys.append((0, "", "", i) if ref is None else (1, ref.file, ref.key, ref.index))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if order == list(range(len(keys))):
        return todo
    return todo.take(pa.array(order, pa.int64()))


def _by_length(todo: pa.Table) -> pa.Table:
    """Rows sorted by caption length (stable): a model batch costs its longest caption, so
    batches of similar lengths pad little (10-15 % faster on COCO-style captions). Embeddings
    change by float32 rounding only (padding is masked)."""
    import pyarrow.compute as pc

    return todo.take(pc.sort_indices(pc.utf8_length(todo.column("item"))))


def _dataset(todo: pa.Table, ext, plan: dict, batch_size: int, device: str, dtype: str):
    """The Ray Data plan: blocks cut on the driver -> [decode tasks] -> model actor pool."""
    import ray

    step = plan["block_rows"]
    # from_blocks computes block metadata on the driver; from_arrow runs a remote task per block
    # for it, which delays the model actors' start by seconds on a small cluster.
    ds = ray.data.from_blocks([todo.slice(i, step) for i in range(0, todo.num_rows, step)])
    if plan["prep_cpus"] is not None:
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"ext": ext, "modality": ext.modality},
                            batch_size=batch_size, num_cpus=plan["prep_cpus"], batch_format="numpy")
    return ds.map_batches(_Embedder, fn_constructor_kwargs={"ext": ext, "device": device, "dtype": dtype,
                                                            "threads": plan["threads"]},
                          batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=plan["n_actors"]),
                          num_gpus=plan["actor_gpus"], num_cpus=plan["actor_cpus"],
                          batch_format="numpy")  # Ray Data restarts lost actors and retries their tasks by default


def _run(ds, fs: FeatureStore, feature: str, ext, report: ExtractReport, commit_every: int, progress: bool) -> None:
    """Commit the good rows chunk by chunk, record bad stimuli; stop on a failed forward pass."""
    from tqdm.auto import tqdm

    written_ids: list[str] = []
    with tqdm(total=report.requested - report.already_stored, initial=len(report.failed), desc=f"extract {feature}",
              unit="stim", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=commit_every, batch_format="numpy", prefetch_batches=2):
            fatal = np.asarray([f != "" for f in batch["fatal"]], dtype=bool)
            err = np.asarray([e != "" for e in batch["error"]], dtype=bool)  # bad stimuli (decode, non-finite)
            good = np.flatnonzero(~err & ~fatal)
            if len(good):
                ids = [str(s) for s in batch["stimulus_id"][good]]
                n = fs.write(feature, ids, np.asarray(batch["embedding"])[good],
                             dataset=[str(d) for d in batch["dataset"][good]],
                             split=[str(s) for s in batch["split"][good]])
                report.written += n
                report.stored_by_other += len(ids) - n  # another run on this table committed them first
                written_ids += ids
            _record_failed(fs, feature, [{"stimulus_id": str(batch["stimulus_id"][i]), "path": str(batch["path"][i]),
                                          "error": str(batch["error"][i])} for i in np.flatnonzero(err)], report)
            if fatal.any():
                fs.clear_bad(feature, written_ids)
                raise _forward_error(feature, ext, str(batch["fatal"][np.flatnonzero(fatal)[0]]), report)
            bar.update(len(batch["stimulus_id"]))
    fs.clear_bad(feature, written_ids)


def _record_failed(fs: FeatureStore, feature: str, failed: list[dict], report: ExtractReport) -> None:
    """Log, record in the store and report bad stimuli."""
    if not failed:
        return
    for f in failed:
        log.warning("bad stimulus %s (%s): %s", f["stimulus_id"], f["path"], f["error"])
    fs.record_bad(feature, failed)
    report.failed += failed


def _forward_error(feature: str, ext, cause: str, report: ExtractReport) -> ExtractionError:
    """The one error a persistently failing forward pass ends the job with."""
    kept = report.already_stored + report.written
    return ExtractionError(
        f"extraction of feature version {feature!r} stopped: the model's forward pass ({ext.spec}) failed: {cause}. "
        f"This is a system error (out of memory, a device fault or a bug), not a bad stimulus: the batch's stimuli "
        f"were not recorded as bad. The {kept} row(s) committed so far are kept; fix the cause (e.g. a smaller --batch-size for out of "
        f"memory) and rerun the same command to resume.")

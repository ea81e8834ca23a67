"""Feature extraction with Ray Data: read -> decode/preprocess (CPU tasks) -> extractor actor pool
(GPUs when present) -> chunked, idempotent commits into the LanceDB feature store.

Resumable: stimuli already stored under the feature version are skipped; each chunk of
``commit_every`` rows is one ``merge_insert`` commit keyed on ``stimulus_id``, so a killed job
keeps what it committed and a rerun (or a concurrent run) never duplicates a row.
Bad stimuli (zero-byte, corrupt, not an image, decompression bombs, unreadable videos) are
reported with their paths, recorded in the store's ``_bad_stimuli`` table, and never written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..datasets import decode_image, open_stimuli
from ._store import FeatureStore

__all__ = ["extract", "ExtractReport", "plan_resources", "select_stimuli"]

log = logging.getLogger("brainstore.features")


@dataclass
class ExtractReport:
    """What an extraction run did."""

    feature: str
    store: str
    requested: int  # unique stimuli the extractor applies to
    already_stored: int  # skipped because present (resume)
    written: int  # rows inserted by this run
    failed: list[dict] = field(default_factory=list)  # {stimulus_id, path, error}
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
    """CPU task: read + decode + preprocess each item; failures become rows with ``error`` set.

    Preprocessed arrays travel as raw bytes (+ shape) so a batch mixing good and bad rows keeps
    one column type whatever the extractor's input shape.
    """
    data, shapes, errors = [], [], []
    dtype_name = ""
    for item in batch["item"]:
        try:
            # images are decoded here (safely); video extractors decode their own frames from the path
            x = ext.preprocess(decode_image(str(item)) if modality == "image" else str(item))
            if isinstance(x, str):
                data.append(x.encode())
                shapes.append(np.zeros(0, np.int64))
                dtype_name = "str"
            else:
                x = np.ascontiguousarray(x)
                data.append(x.tobytes())
                shapes.append(np.asarray(x.shape, np.int64))
                dtype_name = x.dtype.str
            errors.append("")
        except Exception as e:  # one bad stimulus must not stop the job
            data.append(b"")
            shapes.append(np.zeros(0, np.int64))
            errors.append(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    return {
        "stimulus_id": batch["stimulus_id"],
        "path": batch["path"],
        "dataset": batch["dataset"],
        "split": batch["split"],
        "data": np.array(data, dtype=object),
        "shape": np.array([",".join(map(str, s)) for s in shapes], dtype=object),
        "dtype": np.array([dtype_name] * len(data), dtype=object),
        "error": np.array(errors, dtype=object),
    }


class _Embedder:
    """Actor: holds the loaded model; embeds the good rows of each batch."""

    def __init__(self, ext, device: str, dtype: str, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.ext = ext
        self.ext.load(device=device, dtype=dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["stimulus_id"])
        ok = np.array([e == "" for e in batch["error"]], dtype=bool)
        dim = self.ext.dim
        emb = np.zeros((n, dim), np.float32)
        errors = list(batch["error"])
        if ok.any():
            idx = np.flatnonzero(ok)
            if batch["dtype"][idx[0]] == "str":
                items = [bytes(batch["data"][i]).decode() for i in idx]
            else:
                items = np.stack([
                    np.frombuffer(batch["data"][i], dtype=np.dtype(batch["dtype"][i])).reshape(
                        tuple(int(v) for v in str(batch["shape"][i]).split(",")))
                    for i in idx
                ])
            try:
                out = np.asarray(self.ext.embed(items), dtype=np.float32)
                emb[idx] = out
                bad = ~np.isfinite(out).all(1)
                for j in np.flatnonzero(bad):
                    errors[idx[j]] = "extractor returned non-finite values"
            except Exception as e:  # e.g. a video whose frames decode but break the model
                for i in idx:
                    errors[i] = f"{type(e).__name__}: {e}"
        return {"stimulus_id": batch["stimulus_id"], "path": batch["path"], "dataset": batch["dataset"],
                "split": batch["split"], "embedding": emb, "error": np.array(errors, dtype=object)}


def _gpus_per_actor(num_gpus: float | None, n_gpus: float) -> float:
    """GPUs each model actor asks for: ``num_gpus`` when given, else 1 on a cluster with GPUs, else 0."""
    return float(num_gpus) if num_gpus is not None else (1.0 if n_gpus > 0 else 0.0)


def plan_resources(n_rows: int, batch_size: int, n_cpus: int, n_gpus: float, *, concurrency: int | None = None,
                   num_gpus: float | None = None, actor_cpus: float | None = None,
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

    Parameters
    ----------
    n_rows, batch_size : stimuli to extract, rows per model batch.
    n_cpus, n_gpus : the cluster's CPUs and GPUs.
    concurrency, num_gpus, actor_cpus, prep_cpus : as in :func:`extract` (None: the defaults).

    Returns
    -------
    dict
        ``n_blocks`` (input blocks cut on the driver), ``n_actors``, ``use_gpu``, ``actor_cpus``,
        ``actor_gpus``, ``threads`` (torch threads per actor, None on GPU), ``prep_cpus``.
    """
    actor_gpus = _gpus_per_actor(num_gpus, n_gpus)
    use_gpu = actor_gpus > 0
    # Blocks of a few batches each, cut on the driver (no all-to-all repartition stage).
    n_blocks = max(1, min(-(-n_rows // batch_size), 16 * n_cpus))
    n_actors = concurrency or (max(1, int(n_gpus // actor_gpus)) if use_gpu else max(1, n_cpus // 8))
    n_actors = min(n_actors, n_blocks)  # no idle actors for small jobs
    threads = None if use_gpu else max(1, n_cpus // n_actors)
    if actor_cpus is None:  # a CPU model actor reserves half its threads' cores (at most half the cluster)
        actor_cpus = 1.0 if use_gpu else min(max(1.0, float(threads // 2)), n_cpus / 2)
    return {
        "n_blocks": n_blocks,
        "n_actors": n_actors,
        "use_gpu": use_gpu,
        "actor_gpus": actor_gpus,
        "actor_cpus": actor_cpus,
        "threads": threads,
        "prep_cpus": prep_cpus if prep_cpus is not None else (1.0 if use_gpu or n_cpus > 4 else 0.5),
    }


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
    source : stimulus table (:data:`~brainstore.datasets.STIMULUS_SCHEMA`), dataset folder or manifest path.
    extractor : spec string (``"clip:arch=ViT-B-32"``) or an extractor object.
    store : FeatureStore or URI.
    version : table name; default the extractor's version name.
    batch_size : rows per model batch (and per preprocessing task).
    concurrency : extractor actors (default: one per GPU; without GPUs, one per 8 CPUs, each with
        that many torch threads).
    num_gpus : GPUs per actor (default 1 when the cluster has GPUs, else 0; fractional values
        put several actors on one GPU).
    actor_cpus : CPUs reserved per actor (default 1 with GPUs; half the actor's torch threads
        without, at least 1 and at most half the cluster).
    prep_cpus : CPUs reserved per decode/preprocess task (default 1; 0.5 on CPU-only clusters of
        at most 4 CPUs, so that decoding uses every core beside a decode-bound model). Equal
        ``actor_cpus`` and ``prep_cpus`` on a CPU-only cluster let Ray Data fuse decoding into
        the actors (no start-up overlap, no inter-process copies).
    dtype : model compute dtype (default bfloat16 on GPU, float32 on CPU).
    storage_dtype : ``float32`` or ``float16`` embeddings on disk.
    commit_every : rows per store commit (a killed job keeps every committed chunk).
    limit : only the first ``limit`` unique stimuli (for smoke runs).

    Returns
    -------
    ExtractReport
    """
    import ray

    from ._extractors import get_extractor

    t0 = time.time()
    ext = get_extractor(extractor) if isinstance(extractor, str) else extractor
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    stimuli = source if isinstance(source, pa.Table) else open_stimuli(Path(source))
    rows = select_stimuli(stimuli, ext.modality)
    if limit is not None:
        rows = rows.slice(0, limit)
    feature = version or ext.version
    if rows.num_rows == 0:
        raise ValueError(f"no {ext.modality} stimuli in the source for extractor {ext.name!r} "
                         f"({'no captions' if ext.modality == 'text' else 'no rows with modality=' + ext.modality})")

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    # brainstore shows one progress bar (committed rows); Ray Data's per-operator logs stay quiet.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    try:  # the model actor's resident memory is expected; Ray Data's periodic warning about it is noise
        ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    except AttributeError:
        pass
    res = ray.cluster_resources()
    n_cpus, n_gpus = int(res.get("CPU", 1)), float(res.get("GPU", 0))
    use_gpu = _gpus_per_actor(num_gpus, n_gpus) > 0
    if use_gpu and n_gpus == 0:
        raise ValueError(f"num_gpus={num_gpus} per actor was asked for, but the Ray cluster has no GPUs; "
                         "pass num_gpus=0 (or leave it unset) to extract on CPUs")
    device = "cuda" if use_gpu else "cpu"
    dtype = dtype or ("bfloat16" if use_gpu else "float32")

    # Metadata (and so the identity check) is known before any weights are loaded when possible.
    meta = dict(ext.metadata())
    meta.update({"dtype": dtype, "device": device})
    dim = int(ext.dim)
    fs.ensure_table(feature, dim, meta, storage_dtype=storage_dtype)
    stored = set(fs.ids(feature))
    todo = rows.filter(pa.array([s not in stored for s in rows.column("stimulus_id").to_pylist()]))
    report = ExtractReport(feature=feature, store=fs.uri, requested=rows.num_rows,
                           already_stored=rows.num_rows - todo.num_rows, written=0, dim=dim)
    if todo.num_rows == 0:
        report.seconds = time.time() - t0
        return report

    plan = plan_resources(todo.num_rows, batch_size, n_cpus, n_gpus,
                          concurrency=concurrency, num_gpus=num_gpus, actor_cpus=actor_cpus, prep_cpus=prep_cpus)
    step = -(-todo.num_rows // plan["n_blocks"])

    ds = ray.data.from_arrow([todo.slice(i, step) for i in range(0, todo.num_rows, step)])
    ds = ds.map_batches(_prepare_batch, fn_kwargs={"ext": ext, "modality": ext.modality},
                        batch_size=batch_size, num_cpus=plan["prep_cpus"], batch_format="numpy")
    ds = ds.map_batches(_Embedder, fn_constructor_kwargs={"ext": ext, "device": device, "dtype": dtype,
                                                          "threads": plan["threads"]},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=plan["n_actors"]),
                        num_gpus=plan["actor_gpus"], num_cpus=plan["actor_cpus"],
                        batch_format="numpy")  # Ray Data restarts lost actors and retries their tasks by default

    from tqdm.auto import tqdm

    bar = tqdm(total=todo.num_rows, desc=f"extract {feature}", unit="stim", disable=not progress)
    written_ids: list[str] = []
    for batch in ds.iter_batches(batch_size=commit_every, batch_format="numpy", prefetch_batches=2):
        err = np.asarray([e != "" for e in batch["error"]], dtype=bool)
        good = np.flatnonzero(~err)
        if len(good):
            ids = [str(s) for s in batch["stimulus_id"][good]]
            report.written += fs.write(feature, ids, np.asarray(batch["embedding"])[good],
                                       dataset=[str(d) for d in batch["dataset"][good]],
                                       split=[str(s) for s in batch["split"][good]])
            written_ids += ids
        if err.any():
            failed = [{"stimulus_id": str(batch["stimulus_id"][i]), "path": str(batch["path"][i]),
                       "error": str(batch["error"][i])} for i in np.flatnonzero(err)]
            for f in failed:
                log.warning("bad stimulus %s (%s): %s", f["stimulus_id"], f["path"], f["error"])
            fs.record_bad(feature, failed)
            report.failed += failed
        bar.update(len(batch["stimulus_id"]))
    bar.close()
    fs.clear_bad(feature, written_ids)
    t_compact = time.time()
    if compact:
        fs.compact(feature)
    log.info("extract %s: compaction %.2f s", feature, time.time() - t_compact)
    report.seconds = time.time() - t0
    return report

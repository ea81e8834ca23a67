"""The Ray Data stages of a stimulus extraction and how they use the cluster.

Blocks of rows cut on the driver -> decode/preprocess CPU tasks (:func:`_prepare_batch`; images and
videos, not captions) -> an actor pool holding the loaded model (:class:`_Embedder`; GPUs when
present). :func:`plan_resources` sizes both stages; :func:`build_dataset` wires them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from ..datasets import decode_image, parse_array_ref, read_array_refs
from ._job import describe

__all__ = ["FORWARD_ATTEMPTS", "MAX_CAPTION_ACTORS", "build_dataset", "gpus_per_actor", "plan_resources"]

log = logging.getLogger("brainstore.features")
# Tries of one batch's forward pass before the job stops (a transient fault, e.g. memory freed
# by another process, passes on a retry; a persistent one stops the job).
FORWARD_ATTEMPTS = 3
# Caption extraction on CPUs: at most this many model actors (one per CPU below it), each a copy
# of the model in memory.
MAX_CAPTION_ACTORS = 8


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
            errors.append(describe(e))
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
                cause = describe(e)
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


def gpus_per_actor(num_gpus: float | None, n_gpus: float) -> float:
    """GPUs each model actor asks for: ``num_gpus`` when given, else 1 on a cluster with GPUs, else 0."""
    return float(num_gpus) if num_gpus is not None else (1.0 if n_gpus > 0 else 0.0)


def plan_resources(n_rows: int, batch_size: int, n_cpus: int, n_gpus: float, *, decode: bool = True,
                   concurrency: int | None = None, num_gpus: float | None = None, actor_cpus: float | None = None,
                   prep_cpus: float | None = None) -> dict[str, Any]:
    """How an extraction uses the cluster (see :class:`~._job.ExtractSpec` for the parameters).

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
    concurrency, num_gpus, actor_cpus, prep_cpus : as in :class:`~._job.ExtractSpec` (None: the defaults).

    Returns
    -------
    dict
        ``n_blocks`` (input blocks cut on the driver), ``block_rows`` (rows per block, a multiple
        of ``batch_size``), ``n_actors``, ``use_gpu``, ``actor_cpus``, ``actor_gpus``, ``threads``
        (torch threads per actor, None on GPU), ``prep_cpus`` (None without a decode stage).
    """
    actor_gpus = gpus_per_actor(num_gpus, n_gpus)
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


def build_dataset(todo: pa.Table, ext, plan: dict, batch_size: int, device: str, dtype: str):
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

"""Extraction of a stimulus table: one row per stimulus the extractor applies to, committed into the store.

Captions need no decoding: they are validated on the driver and go straight to the model
actors, which then hold every CPU. Images and videos are decoded and preprocessed in CPU tasks
(:mod:`._stages`).

Resumable: stimuli already stored under the feature version are skipped; each chunk of
``commit_every`` rows is one ``merge_insert`` commit keyed on ``stimulus_id``, so a killed job
keeps what it committed and a rerun (or a concurrent run) never duplicates a row.
Bad stimuli (zero-byte, corrupt, not an image, decompression bombs, unreadable videos, empty
captions, array references with a missing key or an index out of range, and rows the model maps to
non-finite values) are reported with their paths, recorded in the store's ``_bad_stimuli`` table,
and never written.

Images may come from a pixel array instead of files: a row whose ``path`` is an array reference
(``/data/nsd_stimuli.hdf5#imgBrick[2950]``, ``/data/imgs.npy#[17]``; :func:`brainstore.datasets.parse_array_ref`)
is read by index from its brick in the CPU tasks (no decoding), then preprocessed like a file's
pixels; such rows are sorted by brick and index so a batch reads runs of indices in one slice. A
brick that is unusable as a whole (file missing or unreadable, not uint8 images) is one error before
any Ray work. Tables may mix files and references. A failure of the model's forward pass
(out of memory, a CUDA fault, a bug) is a system error, not a bad stimulus: it is retried, and if
it persists the job stops with :class:`~._job.ExtractionError` (committed rows are kept).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from ..datasets import ArrayRef, BrickError, BrickFileError, BrickFormatError, brick_info, parse_array_ref, range_error
from ._job import ExtractionError, ExtractReport, ExtractSpec, connect, describe, drop_if_empty
from ._stages import build_dataset, gpus_per_actor, plan_resources
from ._store import FeatureStore, StoreAccessError

__all__ = ["extract_table", "select_stimuli"]

log = logging.getLogger("brainstore.features")


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


# ----------------------------------------------------------------------------- driver
def extract_table(stimuli: pa.Table, ext, fs: FeatureStore, spec: ExtractSpec, t0: float | None = None) -> ExtractReport:
    """Extract every stimulus of ``stimuli`` (:data:`~brainstore.datasets.STIMULUS_SCHEMA`) that ``ext``
    applies to into ``fs`` (see :func:`~brainstore.features.extract`; ``t0``: when the run started)."""
    t0 = time.time() if t0 is None else t0
    rows = select_stimuli(stimuli, ext.modality)
    if spec.limit is not None:
        rows = rows.slice(0, spec.limit)
    feature = spec.version or ext.version
    if rows.num_rows == 0:
        raise ValueError(f"no {ext.modality} stimuli in the source for extractor {ext.name!r} "
                         f"({'no captions' if ext.modality == 'text' else 'no rows with modality=' + ext.modality})")
    ref_failed = _pending_ref_failures(rows, ext, fs, feature)
    n_cpus, n_gpus = connect()
    device, dtype = _device(spec, n_gpus)

    # Metadata (and so the identity check) is known before any weights are loaded when possible.
    meta = dict(ext.metadata())
    meta.update({"dtype": dtype, "device": device})  # device is provenance only: it may differ on resume
    dim = int(ext.dim)
    created = not fs.exists(feature)
    fs.ensure_table(feature, dim, meta, storage_dtype=spec.storage_dtype)
    report = None
    try:
        stored = set(fs.ids(feature))
        todo = rows.filter(pa.array([s not in stored for s in rows.column("stimulus_id").to_pylist()]))
        report = ExtractReport(feature=feature, store=fs.uri, requested=rows.num_rows,
                               already_stored=rows.num_rows - todo.num_rows, written=0, dim=dim)
        todo = _to_embed(todo, ext, fs, feature, ref_failed, report)
        if todo.num_rows:
            plan = plan_resources(todo.num_rows, spec.batch_size, n_cpus, n_gpus, decode=ext.modality != "text",
                                  concurrency=spec.concurrency, num_gpus=spec.num_gpus, actor_cpus=spec.actor_cpus,
                                  prep_cpus=spec.prep_cpus)
            ds = build_dataset(todo, ext, plan, spec.batch_size, device, dtype)
            _run(ds, fs, feature, ext, report, spec.commit_every, spec.progress)
        if spec.compact and report.written:
            t_compact = time.time()
            fs.compact(feature)
            log.info("extract %s: compaction %.2f s", feature, time.time() - t_compact)
    except StoreAccessError as e:  # the store went away mid-run: say what is kept and that a rerun resumes
        kept = (f"the {report.already_stored + report.written} row(s) committed before are kept" if report is not None
                else "rows committed before are kept")
        raise StoreAccessError(f"{e}; extraction of {feature!r} stopped: {kept}, and the same command resumes "
                               "once the store answers") from e.__cause__
    finally:  # failed, or every stimulus was bad: no empty table is left behind
        drop_if_empty(fs, feature, created)
    report.seconds = time.time() - t0
    return report


def _device(spec: ExtractSpec, n_gpus: float) -> tuple[str, str]:
    """``(device, dtype)`` of the model actors on a cluster with ``n_gpus`` GPUs."""
    use_gpu = gpus_per_actor(spec.num_gpus, n_gpus) > 0
    if use_gpu and n_gpus == 0:
        raise ValueError(f"num_gpus={spec.num_gpus} per actor was asked for, but the Ray cluster has no GPUs; "
                         "pass num_gpus=0 (or leave it unset) to extract on CPUs")
    return ("cuda" if use_gpu else "cpu"), spec.dtype or ("bfloat16" if use_gpu else "float32")


def _pending_ref_failures(rows: pa.Table, ext, fs: FeatureStore, feature: str) -> dict[str, dict]:
    """Array references (images of an HDF5 / npy brick) of the stimuli still to extract, checked: an
    unusable brick is one error now, before any Ray work; a reference that cannot be read (missing
    key, index out of range) is a bad stimulus (returned, see :func:`_check_array_refs`)."""
    if ext.modality == "image" and any(p and parse_array_ref(p) for p in rows.column("item").to_pylist()):
        done = set(fs.ids(feature)) if fs.exists(feature) else set()
        pending = pa.array([s not in done for s in rows.column("stimulus_id").to_pylist()])
        return _check_array_refs(rows.filter(pending))
    return {}


def _to_embed(todo: pa.Table, ext, fs: FeatureStore, feature: str, ref_failed: dict[str, dict],
              report: ExtractReport) -> pa.Table:
    """The rows to send to the workers, in the order they go: bad references and (on the driver)
    rejected captions are recorded as bad stimuli; references sorted by brick index, captions by length."""
    if ref_failed:  # recorded as bad stimuli, never sent to the workers
        todo_ids = todo.column("stimulus_id").to_pylist()
        _record_failed(fs, feature, [ref_failed[s] for s in todo_ids if s in ref_failed], report)
        todo = todo.filter(pa.array([s not in ref_failed for s in todo_ids]))
    if ext.modality != "text":
        return _by_brick_index(todo)
    todo, failed = _check_captions(todo, ext)  # captions are checked here, on the driver: no decode stage at all
    _record_failed(fs, feature, failed, report)
    return _by_length(todo)


# ----------------------------------------------------------------------------- checks and order
def _check_captions(todo: pa.Table, ext) -> tuple[pa.Table, list[dict]]:
    """Rows whose caption the extractor accepts (``item`` replaced by its preprocess output), and the rest."""
    items, keep, failed = [], [], []
    for i, (sid, item, path) in enumerate(zip(*(todo.column(c).to_pylist() for c in ("stimulus_id", "item", "path")))):
        try:
            items.append(ext.preprocess(item))
            keep.append(i)
        except Exception as e:  # an empty or non-string caption is a bad stimulus
            failed.append({"stimulus_id": sid, "path": path, "error": describe(e)})
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
                             "error": describe(range_error(ArrayRef(file, key, i), n))}
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


# ----------------------------------------------------------------------------- commits
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

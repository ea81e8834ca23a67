"""Feature time series of a video fMRI dataset: per-frame features -> one row per TR, per clip.

A time-series dataset (``DescribedDataset.timeseries``; TR timing in :mod:`brainstore.datasets`) has
clips of frames at ``fps`` and one response row per TR. :func:`extract_timeseries` makes a feature
table with one row per TR stimulus (``{clip}/tr{k:04d}``):

1. **Frames -> features.** An image extractor (``clip``, ``hf``, ``sam``, ``motion-energy`` with
   ``modality=image``) embeds every frame; ``motion-energy`` with ``modality=video`` filters the
   clip's whole frame sequence (its temporal filters see the frames before and after each one;
   the clip's edges count as zero, as pymoten's ``project_stimulus``) at the dataset's ``fps``.
2. **Resampling to the TR** (``resample``):

   * ``average`` (default): TR ``k`` is the mean of the frames with time ``j / fps`` in
     ``[k tr, (k + 1) tr)`` (image features "pooled per TR");
   * ``lanczos``: a Lanczos-windowed sinc interpolation (``window`` lobes, 3 by default, cut-off at
     the TR's rate, as Huth et al.'s ``lanczosinterp2D``) evaluated at each TR's middle
     ``(k + 0.5) tr``, its weights normalised to sum to one (a weighted mean of nearby frames,
     so both methods give features on the same scale).
3. **z-scoring per clip**: each feature over the clip's TRs (mean 0, s.d. 1, ddof 0; a constant
   feature becomes 0). A clip is one run's stimulus, so this is the field's per-run z-scoring.

Finite-impulse-response delays are a derived table (:func:`derive_delays`): row ``t`` of a clip is
the concatenation of rows ``t - d`` for each delay ``d`` (zeros before the clip's start; never a
row of another clip), so a ridge fitted on it learns each vertex's hemodynamic response.

Extraction runs on Ray Data: one item per clip, embedded by an actor pool (the model loaded once per
actor), and each clip's TRs committed in one ``merge_insert`` (keyed on ``stimulus_id``) under the
table's lock. A clip whose TRs are all stored is skipped, so a killed job resumes at its first
missing clip with no duplicate or lost row.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa

from ._job import ExtractionError, ExtractReport, ExtractSpec, connect, describe, drop_if_empty
from ._stimuli import extract_table
from ._store import FeatureStore, FeatureStoreError
from .extractors import get_extractor

__all__ = ["extract_timeseries", "derive_delays", "derive_event_timeseries", "timeseries_extractor", "timeseries_table", "delayed_table", "resample_to_trs", "lanczos_weights", "zscore_columns",
           "delay_rows", "RESAMPLE_METHODS"]

log = logging.getLogger("brainstore.features")

RESAMPLE_METHODS = ("average", "lanczos")
_FRAME_BATCH = 64  # frames per forward pass of an image extractor


# ----------------------------------------------------------------------------- pure functions
def lanczos_weights(frame_times: np.ndarray, new_times: np.ndarray, cutoff: float, window: int = 3) -> np.ndarray:
    """Lanczos interpolation matrix ``(len(new_times), len(frame_times))``, rows summing to 1: the kernel
    (:func:`~brainstore.datasets.lanczos_kernel`) at ``cutoff * (t_new - t_frame)``."""
    from ..datasets import lanczos_kernel

    w = lanczos_kernel(cutoff * (np.asarray(new_times, np.float64)[:, None]
                                 - np.asarray(frame_times, np.float64)[None, :]), window)
    total = w.sum(1, keepdims=True)
    return w / np.where(total != 0, total, 1.0)


def resample_to_trs(frames: np.ndarray, fps: float, tr: float, n_tr: int, method: str = "average",
                    window: int = 3) -> np.ndarray:
    """Per-frame features ``(n_frames, d)`` of one clip -> ``(n_tr, d)`` per TR (see the module docstring)."""
    from ..datasets import frames_of_tr

    X = np.asarray(frames, dtype=np.float64)
    if method == "average":
        out = np.empty((n_tr, X.shape[1]))
        for k in range(n_tr):
            a, b = frames_of_tr(k, fps, tr)
            out[k] = X[a:min(b, len(X))].mean(0)
        return out
    if method == "lanczos":
        times = np.arange(len(X)) / fps
        return lanczos_weights(times, (np.arange(n_tr) + 0.5) * tr, 1.0 / tr, window) @ X
    raise ValueError(f"resample must be one of {list(RESAMPLE_METHODS)}, got {method!r}")


def zscore_columns(X: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and s.d. 1 (ddof 0); a constant column becomes 0."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)


def delay_rows(X: np.ndarray, delays) -> np.ndarray:
    """``[X shifted down by d for d in delays]`` side by side: row ``t`` holds ``X[t - d]`` (zeros
    where ``t - d`` falls outside the clip); a negative ``d`` looks ahead."""
    X = np.asarray(X)
    n = len(X)
    out = np.zeros((n, X.shape[1] * len(delays)), dtype=X.dtype)
    for i, d in enumerate(delays):
        cols = slice(i * X.shape[1], (i + 1) * X.shape[1])
        if d >= 0:
            out[d:, cols] = X[:n - d] if d < n else 0
        else:
            out[:n + d, cols] = X[-d:]
    return out


# ----------------------------------------------------------------------------- extraction
def _read_frames(path: str, key: str, a: int, b: int) -> np.ndarray:
    """Frames ``[a, b)`` of a brick (uint8 RGB)."""
    from ..datasets import ArrayRef, read_array_refs

    got = read_array_refs([ArrayRef(path, key, i) for i in range(a, b)])
    bad = next((g for g in got if isinstance(g, Exception)), None)
    if bad is not None:
        raise bad
    return np.stack(got)


class _ClipEmbedder:
    """Actor: holds the loaded extractor; one clip per call -> its TR rows (resampled, z-scored)."""

    def __init__(self, ext, device: str, dtype: str, threads: int | None, frames: str, key: str, fps: float,
                 tr: float, resample: str):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.ext, self.frames, self.key = ext, frames, key
        self.fps, self.tr, self.resample = fps, tr, resample
        self.ext.load(device=device, dtype=dtype)

    def frame_features(self, first: int, n: int) -> np.ndarray:
        from PIL import Image

        if self.ext.modality == "video":  # motion energy: temporal filters over the whole clip
            return self.ext.frame_features(_read_frames(self.frames, self.key, first, first + n))
        out = []
        for a in range(first, first + n, _FRAME_BATCH):
            pix = _read_frames(self.frames, self.key, a, min(a + _FRAME_BATCH, first + n))
            out.append(self.ext.embed(np.stack([self.ext.preprocess(Image.fromarray(p)) for p in pix])))
        return np.concatenate(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        data, shapes, errors = [], [], []
        for first, n, n_tr in zip(batch["first_frame"], batch["n_frames"], batch["n_trs"]):
            try:
                X = self.frame_features(int(first), int(n))
                Z = zscore_columns(resample_to_trs(X, self.fps, self.tr, int(n_tr), self.resample)).astype(np.float32)
                if not np.isfinite(Z).all():
                    raise ValueError("the extractor returned non-finite values")
                data.append(Z.tobytes())
                shapes.append(",".join(map(str, Z.shape)))
                errors.append("")
            except Exception as e:  # noqa: BLE001 - reported with its clip; the driver stops the job
                data.append(b"")
                shapes.append("")
                errors.append(describe(e))
        return {"clip": batch["clip"], "data": np.array(data, dtype=object), "shape": np.array(shapes, dtype=object),
                "error": np.array(errors, dtype=object)}


def _timeseries_dataset(dataset):
    from ..datasets import open_dataset

    ds = open_dataset(dataset)
    if not ds.is_timeseries:
        raise ValueError(f"{ds.root} is not a time-series dataset (its description has no timeseries: section); "
                         "extract its stimuli with `brainstore extract` (one row per stimulus)")
    return ds, ds.timeseries


def timeseries_extractor(ext, fps: float):
    """The extractor to run on frames: image extractors as they are; motion energy over the clip at
    the dataset's frame rate."""
    if ext.modality == "image":
        return ext
    if ext.name == "motion-energy" and ext.modality == "video":
        if not float(fps).is_integer():
            raise ValueError(f"motion energy needs a whole frame rate; the dataset's frames are at {fps:g} fps")
        if "fps" in ext.explicit and ext.options["fps"] != int(fps):
            raise ValueError(f"extractor {ext.spec}: fps={ext.options['fps']} but the dataset's frames are at "
                             f"{fps:g} fps; drop fps= (it is set from the dataset) or give fps={int(fps)}")
        return get_extractor(ext, fps=int(fps)) if ext.options["fps"] != int(fps) else ext
    raise ValueError(f"extractor {ext.spec} ({ext.modality}) cannot make a feature time series: give an image "
                     "extractor (run on every frame, pooled per TR) or motion-energy:modality=video (filters over "
                     "the clip's frames)")


def timeseries_table(ext, ts, resample: str = "average", window: int = 3) -> str:
    """Default name of the per-TR table :func:`extract_timeseries` makes (``ext``: as it runs on frames,
    see :func:`timeseries_extractor`)."""
    how = resample if resample == "average" else f"lanczos{window}"
    base = ext.version
    if ext.modality == "video":  # no pooling over the clip: its per-frame energy is resampled per TR
        base = base.replace(f"-{ext.options['pool']}-", "-")
    return f"{base}-{how}-tr{ts.tr:g}"


def delayed_table(source: str, delays) -> str:
    """Default name of the table :func:`derive_delays` makes."""
    return f"{source}-delays{'-'.join(str(int(d)) for d in delays)}"


def _tr_splits(ds) -> dict[str, str]:
    """Split of every TR stimulus some subject's trials use (TRs no trial uses are left out)."""
    t = ds.stimuli()
    return dict(zip(t.column("stimulus_id").to_pylist(), t.column("split").to_pylist()))


def extract_timeseries(dataset, extractor, store: str | FeatureStore, *, version: str | None = None,
                       resample: str = "average", window: int = 3, concurrency: int | None = None,
                       dtype: str | None = None, num_gpus: float | None = None, progress: bool = True) -> ExtractReport:
    """Feature time series of a time-series dataset: one row per TR of every clip (see the module docstring).

    Parameters
    ----------
    dataset : a time-series dataset (its description file or folder) or the dataset object.
    extractor : spec string or extractor: an image extractor or ``motion-energy:modality=video``.
    store : FeatureStore or URI.
    version : table name; default ``{extractor version}-{resample}-tr{tr}``.
    resample : ``average`` or ``lanczos``; ``window``: Lanczos lobes.
    concurrency : extractor actors (default: one per GPU, else one per 4 CPUs, at least 1).

    Returns
    -------
    ExtractReport (``requested`` / ``written`` count TR rows).

    Raises
    ------
    ExtractionError
        A clip's frames could not be read or embedded; clips committed before are kept, a rerun resumes.
    FeatureStoreError
        The table exists and was made differently (another extractor, resampling, TR or frame rate).
    """
    t0 = time.time()
    if resample not in RESAMPLE_METHODS:
        raise ValueError(f"resample must be one of {list(RESAMPLE_METHODS)}, got {resample!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"the Lanczos window must be a positive integer number of lobes, got {window!r}")
    ds, ts = _timeseries_dataset(dataset)
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if ts.kind == "events":
        ext = get_extractor(extractor) if isinstance(extractor, str) else extractor
        return _extract_events(ds, ts, ext, fs, version=version, resample=resample, window=window,
                               concurrency=concurrency, dtype=dtype, num_gpus=num_gpus, progress=progress, t0=t0)
    ext = timeseries_extractor(get_extractor(extractor) if isinstance(extractor, str) else extractor, ts.fps)
    feature = version or timeseries_table(ext, ts, resample, window)
    splits = _tr_splits(ds)
    clips = [c for c in ts.clips if any(i in splits for i in c.ids())]
    n_cpus, n_gpus = connect()
    use_gpu = (num_gpus if num_gpus is not None else (1 if n_gpus else 0)) > 0
    if use_gpu and n_gpus == 0:
        raise ValueError(f"num_gpus={num_gpus} per actor was asked for, but the Ray cluster has no GPUs")
    device = "cuda" if use_gpu else "cpu"
    dtype = dtype or ("bfloat16" if use_gpu else "float32")
    meta = _timeseries_metadata(ext, ds, ts, resample, window, dtype, device)
    created = not fs.exists(feature)
    fs.ensure_table(feature, int(ext.dim), meta)
    report = None
    try:
        stored = set(fs.ids(feature))
        todo = [c for c in clips if not all(i in stored for i in c.ids() if i in splits)]
        n_rows = sum(sum(i in splits for i in c.ids()) for c in clips)
        report = ExtractReport(feature=feature, store=fs.uri, requested=n_rows,
                               already_stored=n_rows - sum(sum(i in splits for i in c.ids()) for c in todo),
                               written=0, dim=int(ext.dim))
        if todo:
            pipe = _clip_pipeline(todo, ext, ts, resample, device, dtype, concurrency, n_cpus, n_gpus)
            _commit(pipe, fs, feature, ts, splits, ds.name, ext, report, progress)
    finally:
        drop_if_empty(fs, feature, created)
    if report.written:
        fs.compact(feature)
    report.seconds = time.time() - t0
    return report


def _timeseries_metadata(ext, ds, ts, resample: str, window: int, dtype: str, device: str) -> dict[str, str]:
    """The per-TR table's metadata: the frame extractor's, with how its features were taken to the TRs."""
    how = resample if resample == "average" else f"lanczos{window}"
    meta = dict(ext.metadata())
    meta_pool = meta.get("pooling", "")
    meta.update({
        "dtype": dtype, "device": device, "modality": "timeseries",
        "pooling": (f"per TR ({ts.tr:g} s): {'mean of the frames in the TR' if resample == 'average' else f'Lanczos interpolation ({window} lobes) at the TR middle'}"
                    f" of the per-frame features ({'each frame pooled as ' + str(meta_pool) if ext.modality == 'image' else 'motion energy over the whole clip, not pooled'})"),
        "transform": f"timeseries(resample={how}, tr={ts.tr:g}, fps={ts.fps:g}, zscore=clip)",
        "timeseries": json.dumps({"tr": ts.tr, "fps": ts.fps, "resample": resample, "window": window,
                                  "tr_time": "middle of the TR ((k + 0.5) tr)" if resample == "lanczos" else
                                  "frames with time in [k tr, (k + 1) tr)", "zscore": "per clip, ddof 0",
                                  "frames": "per frame" if ext.modality == "image" else "motion energy over the clip",
                                  "dataset": str(ds.root), "clips_table": str(ts.clips_table)}, sort_keys=True),
    })
    return meta


def _clip_pipeline(todo: list, ext, ts, resample: str, device: str, dtype: str, concurrency: int | None,
                   n_cpus: int, n_gpus: float):
    """The Ray Data plan over clips: one item per clip, embedded by an actor pool (the model loaded once per
    actor: one per GPU, else one per 4 CPUs, at most one per clip)."""
    import ray

    use_gpu = device != "cpu"
    n_actors = max(1, min(len(todo), concurrency or (int(n_gpus) if use_gpu else max(1, n_cpus // 4))))
    threads = None if use_gpu else max(1, n_cpus // n_actors)
    items = ray.data.from_items([{"clip": c.name, "first_frame": c.first_frame, "n_frames": c.n_frames,
                                  "n_trs": c.n_trs} for c in todo], override_num_blocks=len(todo))
    return items.map_batches(
        _ClipEmbedder, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs=dict(ext=ext, device=device, dtype=dtype, threads=threads, frames=str(ts.frames),
                                   key=ts.key, fps=ts.fps, tr=ts.tr, resample=resample),
        compute=ray.data.ActorPoolStrategy(size=n_actors), num_gpus=1 if use_gpu else 0,
        num_cpus=1 if use_gpu else max(1, threads // 2))


def _extract_events(ds, ts, ext, fs: FeatureStore, *, version, resample, window, concurrency, dtype, num_gpus,
                    progress, t0) -> ExtractReport:
    """An event time series: the presented stimuli extracted as a stimulus table (resumable, one row per
    stimulus: :func:`~._stimuli.extract_table`, as :func:`~._extract.extract` does), then their features
    placed at their onsets and taken to the TRs (:func:`derive_event_timeseries`)."""
    per = extract_table(ds.event_stimuli(), ext, fs, ExtractSpec(concurrency=concurrency, dtype=dtype,
                                                                 num_gpus=num_gpus, progress=progress))
    if per.failed:
        raise ExtractionError(f"{len(per.failed)} presented stimulus(i) of {ts.events_table} failed to extract (first: "
                              f"{per.failed[0]['stimulus_id']} {per.failed[0]['path']}: {per.failed[0]['error']}); the "
                              f"TRs they fall in cannot be made: fix them and rerun (the {per.already_stored + per.written}"
                              " stored stimuli are kept)")
    name = derive_event_timeseries(fs, per.feature, ds, resample=resample, window=window,
                                   name=version or timeseries_table(ext, ts, resample, window))
    n = fs.info(name).rows
    return ExtractReport(feature=name, store=fs.uri, requested=n, already_stored=0, written=n, dim=fs.info(name).dim,
                         seconds=time.time() - t0)


def derive_event_timeseries(store: str | FeatureStore, source: str, dataset, *, resample: str = "average",
                            window: int = 3, name: str | None = None) -> str:
    """Per-TR features of an event time series from a per-stimulus table: each clip's events placed at
    their onsets and taken to its TRs (:func:`~brainstore.datasets.event_weights`:
    overlap-weighted mean, or Lanczos from the onsets), then z-scored over the clip. Rebuilt whole
    (a pure function of ``source``). Returns the table's name."""
    from ..datasets import event_weights

    if resample not in RESAMPLE_METHODS:
        raise ValueError(f"resample must be one of {list(RESAMPLE_METHODS)}, got {resample!r}")
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, create=False)
    ds, ts = _timeseries_dataset(dataset)
    splits = _tr_splits(ds)
    src_meta = fs.metadata(source)
    have = set(fs.ids(source))
    ids, blocks = [], []
    for c in ts.clips:
        cids = [i for i in c.ids() if i in splits]
        if not cids:
            continue
        events = ts.events.get(c.name, ())
        missing = [e.stimulus_id for e in events if e.stimulus_id not in have]
        if missing:
            raise FeatureStoreError(f"feature table {source!r} lacks {len(missing)} stimulus(i) presented in clip "
                                    f"{c.name} (e.g. {missing[0]}); extract them first")
        X = fs.load(source, [e.stimulus_id for e in events]) if events else np.zeros((0, fs.info(source).dim))
        Z = zscore_columns(event_weights(events, c.n_trs, ts.tr, resample, window) @ X).astype(np.float32)
        keep = [k for k, i in enumerate(c.ids()) if i in splits]
        ids += cids
        blocks.append(Z[keep])
    how = resample if resample == "average" else f"lanczos{window}"
    new = name or f"{source}-{how}-tr{ts.tr:g}"
    meta = {
        **{k: v for k, v in src_meta.items() if k not in ("feature_version", "dim", "created")},
        "derived_from": source, "modality": "timeseries",
        "transform": f"timeseries(events, resample={how}, tr={ts.tr:g}, zscore=clip)",
        "pooling": (f"per TR ({ts.tr:g} s): " + ("the overlap-weighted mean of the events in the TR"
                    if resample == "average" else f"Lanczos ({window} lobes) from the onsets, unnormalised (a sum)")),
        "source_metadata": json.dumps(src_meta, sort_keys=True),
        "timeseries": json.dumps({"tr": ts.tr, "events": str(ts.events_table), "resample": resample, "window": window,
                                  "zscore": "per clip, ddof 0", "dataset": str(ds.root)}, sort_keys=True),
    }
    if fs.exists(new):
        fs.drop(new)
    X = np.concatenate(blocks)
    fs.ensure_table(new, X.shape[1], meta)
    fs.write(new, ids, X, dataset=[ds.name] * len(ids), split=[splits[i] for i in ids])
    return new


def _commit(pipe, fs: FeatureStore, feature: str, ts, splits: dict, dataset_name: str, ext, report: ExtractReport,
            progress: bool) -> None:
    """Write each clip's TR rows as its result comes (one commit per clip); stop at a failed clip."""
    from tqdm.auto import tqdm

    with tqdm(total=report.requested - report.already_stored, desc=f"extract {feature}", unit="TR",
              disable=not progress) as bar:
        for row in pipe.iter_rows():
            clip = ts.clip(str(row["clip"]))
            if row["error"]:
                raise ExtractionError(
                    f"extraction of feature time series {feature!r} stopped at clip {clip.name} (frames "
                    f"{clip.first_frame} to {clip.first_frame + clip.n_frames - 1} of {ts.frames}): {row['error']}. "
                    f"The {report.already_stored + report.written} TR row(s) committed so far are kept; fix the cause "
                    "and rerun the same command to resume.")
            Z = np.frombuffer(row["data"], dtype=np.float32).reshape(tuple(int(v) for v in str(row["shape"]).split(",")))
            keep = [k for k, i in enumerate(clip.ids()) if i in splits]
            ids = [clip.ids()[k] for k in keep]
            n = fs.write(feature, ids, Z[keep], dataset=[dataset_name] * len(ids), split=[splits[i] for i in ids])
            report.written += n
            report.stored_by_other += len(ids) - n
            bar.update(len(ids))


# ----------------------------------------------------------------------------- delays
def derive_delays(store: str | FeatureStore, source: str, dataset, delays=(1, 2, 3, 4), *,
                  name: str | None = None) -> str:
    """A table of finite-impulse-response delays of a feature time series (see the module docstring).

    Parameters
    ----------
    store : FeatureStore or URI.
    source : a per-TR table (:func:`extract_timeseries`) holding every TR of the dataset's clips.
    dataset : the time-series dataset whose clips give the TR order.
    delays : distinct integers, in TRs (e.g. 1-4 TRs: 2-8 s at TR = 2 s, spanning the hemodynamic peak).
    name : new table (default ``{source}-delays{d1}-{d2}...``).

    Returns
    -------
    The new table's name; its metadata records the source's metadata and the delays.
    """
    delays = [int(d) for d in delays]
    if not delays or len(set(delays)) != len(delays):
        raise ValueError(f"delays must be distinct integers (in TRs), e.g. 1,2,3,4; got {delays}")
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, create=False)
    if not fs.exists(source):
        raise FeatureStoreError(f"feature table {source!r} is not in {fs.uri} (tables: {', '.join(fs.names())}); "
                                "extract it first with `brainstore extract` on the time-series dataset")
    src_meta = fs.metadata(source)
    if "timeseries" not in src_meta:
        raise FeatureStoreError(f"feature table {source!r} is not a feature time series (one row per TR, made by "
                                "`brainstore extract` on a time-series dataset); delays need the TR order")
    ds, ts = _timeseries_dataset(dataset)
    rows = fs.read(source, ("stimulus_id", "split"))
    splits = dict(zip(rows.column("stimulus_id").to_pylist(), rows.column("split").to_pylist()))
    have = set(splits)
    needed = set(ds.stimuli().column("stimulus_id").to_pylist())
    ids, blocks = [], []
    for c in ts.clips:
        cids = c.ids()
        if not any(i in needed for i in cids):
            continue
        missing = [i for i in cids if i not in have]
        if missing:
            raise FeatureStoreError(f"feature table {source!r} lacks {len(missing)} TR(s) of clip {c.name} (e.g. "
                                    f"{missing[0]}); delays need the clip's whole time series: rerun "
                                    "`brainstore extract` on the dataset to complete it")
        blocks.append(delay_rows(fs.load(source, cids), delays))
        ids += cids
    new = name or delayed_table(source, delays)
    meta = {
        **{k: v for k, v in src_meta.items() if k not in ("feature_version", "dim", "created")},
        "derived_from": source,
        "transform": f"{src_meta.get('transform', 'timeseries')}; delays({','.join(map(str, delays))} TRs)",
        "source_metadata": json.dumps(src_meta, sort_keys=True),
        "delays": ",".join(map(str, delays)),
    }
    if fs.exists(new):
        fs.drop(new)  # a pure function of its source: rebuilt whole
    X = np.concatenate(blocks).astype(np.float32)
    fs.ensure_table(new, X.shape[1], meta)
    fs.write(new, ids, X, dataset=[ds.name] * len(ids), split=[splits.get(i, "train") for i in ids])
    return new

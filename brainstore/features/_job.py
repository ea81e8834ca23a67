"""An extraction job: what it is given (:class:`ExtractSpec`), what it gives back (:class:`ExtractReport`,
:class:`ExtractionError`), and the plumbing every extraction shares (joining Ray, naming a failure,
removing the empty table of a run that wrote nothing)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from ._store import FeatureStore, StoreAccessError
from .extractors import DTYPES

__all__ = ["ExtractSpec", "ExtractReport", "ExtractionError", "connect", "describe", "drop_if_empty"]

log = logging.getLogger("brainstore.features")


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


@dataclass(frozen=True)
class ExtractSpec:
    """How :func:`~brainstore.features.extract` runs: every option besides the source, the extractor and the store.

    ``extract(src, "text", store, batch_size=128)`` and ``extract(src, "text", store,
    ExtractSpec(batch_size=128))`` are the same call; keywords given beside a spec override its fields.

    Attributes
    ----------
    version : table name; default the extractor's version name.
    batch_size : rows per model batch (and per preprocessing task).
    concurrency : extractor actors (default: one per GPU; without GPUs, one per 8 CPUs, each with
        that many torch threads, or for captions one per CPU up to 8).
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
    progress : show a progress bar.
    compact : compact the table after writing.
    """

    version: str | None = None
    batch_size: int = 64
    concurrency: int | None = None
    num_gpus: float | None = None
    actor_cpus: float | None = None
    prep_cpus: float | None = None
    dtype: str | None = None
    storage_dtype: str = "float32"
    commit_every: int = 512
    limit: int | None = None
    progress: bool = True
    compact: bool = True

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

    @classmethod
    def of(cls, spec: ExtractSpec | None, options: dict[str, Any], who: str = "extract") -> ExtractSpec:
        """``spec`` (default: the defaults) with ``options`` in place of its fields.

        Raises
        ------
        TypeError
            An option that is no field of :class:`ExtractSpec` (named, with the valid ones).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise TypeError(f"{who}() got an unexpected keyword argument {unknown[0]!r}; its options are "
                            f"the fields of ExtractSpec: {', '.join(names)}")
        if spec is None:
            return cls(**options)
        if not isinstance(spec, cls):
            raise TypeError(f"{who}(): spec must be an ExtractSpec, got {type(spec).__name__}")
        return dataclasses.replace(spec, **options) if options else spec


def connect() -> tuple[int, float]:
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


def describe(e: BaseException) -> str:
    """``Type: message`` (just the type when the message is empty)."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def drop_if_empty(fs: FeatureStore, feature: str, created: bool) -> None:
    """Remove a table this run created when it holds no row (the run failed before writing any)."""
    try:
        if created and fs.exists(feature) and fs.info(feature).rows == 0:
            fs.drop(feature)
            log.info("extract %s: removed the empty table this run had created", feature)
    except StoreAccessError as e:  # the store is gone: the run's own error says so; nothing to add
        log.debug("extract %s: could not check for an empty table: %s", feature, e)
    except Exception as e:  # noqa: BLE001 - never hide the run's own error behind a cleanup error
        log.warning("extract %s: could not remove the empty table: %s", feature, e)

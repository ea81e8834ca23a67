"""Base class, option schema and shared helpers for feature extractors.

Nothing here imports torch at module level: building an extractor from a spec
string is cheap, and heavy imports happen inside :meth:`Extractor.load`.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from ..._provenance import package_versions
from ._spec import Option, format_value
from ._util import slugify

MODALITIES = ("image", "text", "video")
DTYPES = ("float32", "bfloat16", "float16")
#: Layer numbering shared by every extractor with intermediate layers (``clip``, ``hf``).
BLOCK_LAYERS = "block index: 0 = output of the first transformer block, -1 = of the last (negative from the end)"

#: Keys every :meth:`Extractor.metadata` dict contains (all values are ``str``).
REQUIRED_METADATA_KEYS = (
    "extractor", "spec", "version", "modality", "dim", "architecture", "pretrained",
    "weights_source", "weights_sha256", "layer", "pooling", "preprocessing", "dtype",
    "device", "random_init", "torch_version", "package_versions", "brainstore_version",
)


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are not available locally (nothing is ever downloaded).

    The message names every place that was searched and how to provide the
    weights; ``searched`` holds those places.
    """

    def __init__(self, message: str, searched: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.searched = list(searched)

    def __str__(self) -> str:  # FileNotFoundError formats (errno, strerror) otherwise
        return str(self.args[0])

    def __reduce__(self):  # rebuilt from its fields after pickling (Ray returns task errors pickled)
        return type(self), (str(self.args[0]), self.searched)

# ----------------------------------------------------------------------------- info
@dataclass(frozen=True)
class ExtractorInfo:
    """What :func:`list_extractors` reports about one registry entry."""

    name: str
    modalities: tuple[str, ...]
    default_spec: str
    default_dim: int | None
    layers: str
    poolings: tuple[str, ...]
    options: dict[str, str]
    weights: str
    offline: bool
    offline_detail: str
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- base
class Extractor:
    """Base class: cheap construction from options, lazy :meth:`load`, batched :meth:`embed`.

    Subclasses define ``name``, ``OPTIONS`` and implement ``_setup``,
    ``_version_parts``, ``preprocess``, ``_load``, ``_embed`` and
    ``_metadata``.  Runtime objects (model, tokenizer, processor) live in
    ``self._rt`` and are dropped when pickling, so an extractor can be shipped
    to Ray workers and loaded there.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Option]] = {}
    DESCRIPTION: ClassVar[str] = ""
    #: The option holding the spec of a wrapped extractor (``video``: ``image``), if any.
    WRAPS: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = {}
        self.explicit: set[str] = set()
        for key, raw in options.items():
            self.options[key] = self.parse_option(key, raw)
            self.explicit.add(key)
        for key, opt in self.OPTIONS.items():
            self.options.setdefault(key, opt.default)
        self.modality: str = ""
        self._dim: int | None = None
        self._version: str | None = None
        self._rt: dict[str, Any] = {}
        self._setup()

    # -- options -------------------------------------------------------------
    @classmethod
    def parse_option(cls, key: str, raw: Any) -> Any:
        """Validate ``key`` and convert ``raw`` (string or typed value)."""
        if key not in cls.OPTIONS:
            raise ValueError(
                f"unknown option {key!r} for extractor {cls.name!r}; valid options: {sorted(cls.OPTIONS)}"
            )
        if raw is None:
            return cls.OPTIONS[key].default
        try:
            return cls.OPTIONS[key].parse(raw if isinstance(raw, str) else str(raw))
        except ValueError as e:
            raise ValueError(f"bad value for option {key!r} of extractor {cls.name!r}: {e}") from None

    def _setup(self) -> None:
        """Check option combinations, set ``modality`` and ``_dim`` (no heavy imports)."""
        raise NotImplementedError

    # -- identity ------------------------------------------------------------
    @property
    def spec(self) -> str:
        """Canonical spec string (explicit options only, in schema order)."""
        parts = [f"{k}={format_value(self.options[k])}" for k in self.OPTIONS if k in self.explicit]
        return self.name + (":" + ",".join(parts) if parts else "")

    @property
    def dim(self) -> int:
        """Output dimension of :meth:`embed`."""
        if self._dim is None:
            raise RuntimeError(f"{self!r}: dim is only known after load()")
        return self._dim

    @property
    def version(self) -> str:
        """Stable, table-safe name derived from every setting that changes the output."""
        if self._version is None:
            self._version = slugify(self.name, *self._version_parts())
        return self._version

    def _version_parts(self) -> list[Any]:
        raise NotImplementedError

    def resolve_weights(self) -> str:
        """Locate weights without loading them; return a description of the source.

        Raises
        ------
        WeightsNotFoundError
            If the weights are not available locally.
        """
        return "none"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rt"] = {}  # models/tokenizers/processors are rebuilt where used
        return state

    # -- work ----------------------------------------------------------------
    def preprocess(self, item: Any) -> np.ndarray | str:
        """CPU-side preparation of one item (see subclasses for shapes)."""
        raise NotImplementedError

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has been called in this process."""
        return "model" in self._rt

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        """Load the weights onto ``device``; ``dtype`` other than float32 enables autocast.

        Parameters
        ----------
        device
            ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        dtype
            ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if not (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device)):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<i>', got {device!r}")
        if self.loaded and self._rt.get("device") == device:
            self._rt["dtype"] = dtype  # weights stay float32; dtype only selects autocast
            return
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"{self!r}: device={device!r} requested but CUDA is not available")
        self._load(device)
        self._rt["device"], self._rt["dtype"] = device, dtype

    def _load(self, device: str) -> None:
        raise NotImplementedError

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the loaded dtype (null context for float32)."""
        dtype = self._rt.get("dtype", "float32")
        if dtype == "float32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self._rt["device"].split(":")[0], dtype=getattr(torch, dtype))

    def embed(self, batch: Any) -> np.ndarray:
        """Embed a batch of preprocessed items.

        Parameters
        ----------
        batch
            ``np.stack`` of :meth:`preprocess` outputs, or ``list[str]`` for text.

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``(n, dim)``.
        """
        if not self.loaded:
            raise RuntimeError(f"{self!r}: call load() before embed()")
        import torch

        with torch.inference_mode(), self.autocast():
            out = self._embed(batch)
        if isinstance(out, torch.Tensor):
            out = out.detach().float().cpu().numpy()
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self._dim is None:
            self._dim = int(out.shape[1])
        if out.ndim != 2 or out.shape[1] != self._dim:
            raise RuntimeError(f"{self!r}: embed produced shape {out.shape}, expected (n, {self._dim})")
        return out

    def _embed(self, batch: Any) -> Any:
        raise NotImplementedError

    def to_tensor(self, batch: Any) -> Any:
        """``np.ndarray`` batch -> float32 tensor on the loaded device."""
        import torch

        return torch.as_tensor(np.asarray(batch, dtype=np.float32)).to(self._rt["device"])

    # -- provenance ----------------------------------------------------------
    PACKAGES: ClassVar[tuple[str, ...]] = ()

    def metadata(self, dtype: str | None = None, device: str | None = None) -> dict[str, str]:
        """Everything that says how the features were made (all values ``str``).

        Parameters
        ----------
        dtype, device
            Record these instead of the loaded ones (useful on a driver that
            never calls :meth:`load`); default: what :meth:`load` used.
        """
        dists = ("brainstore", "torch", "numpy", "pillow") + self.PACKAGES
        versions = package_versions(*dists)
        md: dict[str, str] = {
            "extractor": self.name,
            "spec": self.spec,
            "version": self.version,
            "modality": self.modality,
            "dim": str(self._dim) if self._dim is not None else "unknown",
            "dtype": dtype or self._rt.get("dtype", "float32"),
            "device": device or self._rt.get("device", "not-loaded"),
            "torch_version": versions["torch"],
            "brainstore_version": versions["brainstore"],
            "package_versions": json.dumps(versions, sort_keys=True),
        }
        for d in self.PACKAGES:
            md[d.replace("-", "_").replace("_torch", "") + "_version"] = versions[d]
        for k, v in self._metadata().items():
            md[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        missing = [k for k in REQUIRED_METADATA_KEYS if k not in md]
        if missing:  # pragma: no cover - programming error in a subclass
            raise RuntimeError(f"{type(self).__name__}.metadata() lacks keys {missing}")
        return md

    def _metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- registry info -------------------------------------------------------
    @classmethod
    def info(cls) -> ExtractorInfo:
        """Describe this extractor for :func:`list_extractors`."""
        raise NotImplementedError

    @classmethod
    def option_docs(cls) -> dict[str, str]:
        """``{key: 'default=...; doc'}`` for every option."""
        return {k: f"default={format_value(o.default)}; {o.doc}" for k, o in cls.OPTIONS.items()}

    @classmethod
    def offline_status(cls, **options: Any) -> tuple[bool, str]:
        """Whether the extractor built from ``options`` can load right now, offline."""
        try:
            where = cls(**options).resolve_weights()
        except WeightsNotFoundError as e:
            return False, str(e).splitlines()[0]
        except Exception as e:  # noqa: BLE001 - report, never raise, from a listing
            return False, f"{type(e).__name__}: {e}"
        return True, where

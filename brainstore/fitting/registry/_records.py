"""What the registry keeps and checks, whatever the storage: model names, versions, aliases and references
(``NAME``, ``NAME@3``, ``NAME@champion``), records, the file layout (``<name>/@<version>/model.safetensors``
+ ``model.json``; ``<name>/@aliases.json``), the tensors safetensors can hold, the parsed ``model.json``,
refusal of old models with unstable scales, and the loaders of model kinds."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ModelRecord", "RegistryError", "safe_name", "NON_ENCODER_KINDS", "register_loader", "MODEL_LOADERS",
           "WEIGHTS_FILE", "META_FILE", "FORMAT_VERSION", "ALIASES_FILE", "DEFAULT_ALIAS", "parse_ref", "model_ref",
           "check_alias", "version_folder", "folder_version", "parse_aliases", "model_base"]

#: ``kind`` of registered models that are not encoding models (ridge decoders, adaptors, captioners):
#: encoder evaluation, best-model choice and selectivity skip them.
NON_ENCODER_KINDS = ("decoder", "adaptor", "captioner")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 2  # 2: near-constant features dropped (see ..ridge._scaling); models of 1 are checked for them on load
#: Keys of model.json written by the registry (they override the same keys in ``meta``).
RESERVED_KEYS = ("name", "version", "created", "safetensors_sha256", "tensors", "package_versions", "format_version")
#: ``<name>/@aliases.json``: ``{alias: version}`` of one model name.
ALIASES_FILE = "@aliases.json"
#: The alias a bare ``NAME`` resolves to when it is set (else the latest version).
DEFAULT_ALIAS = "champion"
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_SAFETENSORS_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                       "float16", "float32", "float64"}


#: kind -> ``loader(registry, name, store)`` returning the usable model; filled by the modules that define the
#: model classes (encoding models, decoders, adaptors, captioners) through :func:`register_loader`.
MODEL_LOADERS: dict = {}


def register_loader(*kinds: str):
    """Decorator: ``fn(registry, name, store)`` loads registered models of ``kinds`` for :meth:`ModelRegistry.load`."""
    def deco(fn):
        for k in kinds:
            MODEL_LOADERS[k] = fn
        return fn
    return deco


class RegistryError(ValueError):
    """A registry operation was refused (the message names the model, the file or field, and the fix)."""


@dataclass
class ModelRecord:
    """One saved version of a model: its name, its folder (a ``Path``; on object storage its URI, a string),
    its parsed ``model.json``, its version number and the aliases that point at it."""

    name: str
    path: Path | str
    meta: dict = field(repr=False)
    version: int = 1
    aliases: tuple = ()

    @property
    def ref(self) -> str:
        """``NAME@VERSION``: the reference that always loads exactly this version."""
        return f"{self.name}@{self.version}"

    @property
    def feature_versions(self) -> dict:
        """``meta["feature_versions"]``: feature version -> store metadata at fit time."""
        return dict(self.meta.get("feature_versions") or {})


def safe_name(s: str) -> str:
    """Turn any string into one valid name component (no ``/``), e.g. ``"CLIP ViT-B/32"`` -> ``"CLIP-ViT-B-32"``.

    Characters outside ``A-Z a-z 0-9 . _ + = -`` become ``-``; runs of ``-`` collapse; leading
    dots and dashes are stripped (hidden names are reserved for temporary folders).
    """
    out = re.sub(r"[^A-Za-z0-9._+=-]+", "-", str(s))
    out = re.sub(r"-{2,}", "-", out).lstrip(".-_").rstrip("-")
    return out or "model"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise RegistryError(f"model name must be a non-empty string, got {name!r}")
    parts = name.strip("/").split("/")
    bad = [p for p in parts if not _COMPONENT.match(p)]
    if bad or name != name.strip("/"):
        raise RegistryError(
            f"invalid model name {name!r}: each '/'-separated part must start with a letter or digit and use only "
            f"A-Z a-z 0-9 . _ + = - (bad part(s): {bad or [name]}; '@' separates a version or alias: NAME@3, "
            "NAME@champion); use safe_name() on each part")
    return name


def check_alias(alias: str) -> str:
    """``alias`` if it can name a version (a letter, then letters, digits, ``. _ -``; not ``latest``)."""
    if not isinstance(alias, str) or not _ALIAS.match(alias) or alias == "latest":
        raise RegistryError(f"invalid alias {alias!r}: an alias starts with a letter and uses only A-Z a-z 0-9 . _ - "
                            "(at most 64 characters; 'latest' is reserved), e.g. 'champion' or 'staging'")
    return alias


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """``"NAME"`` -> (NAME, None); ``"NAME@3"`` -> (NAME, 3); ``"NAME@champion"`` -> (NAME, "champion")."""
    if not isinstance(ref, str) or not ref:
        raise RegistryError(f"model reference must be a non-empty string like 'clip/subj01' or 'clip/subj01@3', "
                            f"got {ref!r}")
    name, at, sel = ref.rpartition("@")
    if not at or "/" in sel:  # an '@' inside a name component, not a selector
        return check_name(ref), None
    check_name(name)
    if sel.isdigit():
        if int(sel) < 1:
            raise RegistryError(f"model reference {ref!r}: versions are numbered from 1")
        return name, int(sel)
    if sel == "latest":
        return name, "latest"
    return name, check_alias(sel)


def model_ref(model: str, subject: str) -> str:
    """The registry reference of ``model``'s fit for ``subject``: ``("clip@3", "subj01")`` -> ``"clip/subj01@3"``
    (a version or alias given for a model applies to each subject's record)."""
    base, at, sel = model.rpartition("@")
    if not at or "/" in sel:
        return f"{model}/{subject}"
    return f"{base}/{subject}@{sel}"


def model_base(ref: str) -> str:
    """``ref`` without its version or alias: ``"clip@3"`` -> ``"clip"``, ``"clip/subj01@champion"`` ->
    ``"clip/subj01"`` (the inverse of the selector :func:`model_ref` carries over)."""
    base, at, sel = ref.rpartition("@")
    return base if at and "/" not in sel else ref


def version_folder(version: int) -> str:
    """The folder of a version inside its model's folder: ``@3``."""
    return f"@{int(version)}"


def folder_version(part: str) -> int | None:
    """Inverse of :func:`version_folder`; None for any other folder name."""
    return int(part[1:]) if part.startswith("@") and part[1:].isdigit() else None


def check_tensors(name: str, tensors: dict) -> dict[str, np.ndarray]:
    """``tensors`` as C-contiguous numpy arrays of a dtype safetensors stores, or a RegistryError naming the tensor."""
    if not isinstance(tensors, dict) or not tensors:
        raise RegistryError(f"tensors for model {name!r} must be a non-empty dict of name -> numpy array")
    out = {}
    for k, v in tensors.items():
        if not isinstance(k, str) or not k:
            raise RegistryError(f"tensor key {k!r} of model {name!r} must be a non-empty string")
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu().numpy()
        a = np.asarray(v)
        a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        if a.dtype.name not in _SAFETENSORS_DTYPES:
            raise RegistryError(f"tensor {k!r} of model {name!r} has dtype {a.dtype}; safetensors stores only "
                                f"{sorted(_SAFETENSORS_DTYPES)} (convert it, or put strings in meta)")
        out[k] = a
    return out


def parse_meta(name: str, path: Path | str, raw: bytes) -> dict:
    """The JSON object of a ``model.json`` read from ``path``, or a RegistryError naming the file."""
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"model {name!r}: {path} is not valid JSON ({e}); re-save the model") from None
    if not isinstance(meta, dict):
        raise RegistryError(f"model {name!r}: {path} must hold a JSON object; re-save the model")
    return meta


def check_scales(name: str, tensors: dict[str, np.ndarray]) -> None:
    """Refuse a model saved before near-constant features were dropped when it has such a feature.

    Such a model divides a near-constant input column by its tiny std (MiniLM's dead dimensions: 1e-33),
    so any input off the stored rows is amplified up to 1e30 times. Its coefficients on those columns were
    fitted to rounding noise, so the model cannot be repaired in place: it must be refitted.
    """
    from ..ridge import unstable_scales

    for key, v in tensors.items():
        if not (key.endswith("x_scale_") or (key.startswith("norm.") and key.endswith(".std"))):
            continue
        bad = unstable_scales(v)
        if bad.size:
            cols = ", ".join(map(str, bad[:5].tolist())) + (f" and {bad.size - 5} more" if bad.size > 5 else "")
            raise RegistryError(
                f"model {name!r} was saved by an older brainstore that standardized near-constant inputs: its input "
                f"column(s) {cols} ({key}) have a scale of {float(np.min(v[bad])):.2g}, so inputs not in the store "
                f"would be amplified up to {float(np.median(v)) / max(float(np.min(v[bad])), 1e-300):.0e} times; "
                "refit it (`brainstore fit`, or `brainstore fit --decode` for a decoder)")


def parse_aliases(name: str, where, raw: bytes) -> dict:
    """The ``{alias: version}`` object of an ``@aliases.json`` read from ``where``, or a RegistryError naming it."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"model {name!r}: {where} is not valid JSON ({e}); remove it and set the aliases again "
                            "(`brainstore models alias`)") from None
    if not isinstance(doc, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in doc.values()):
        raise RegistryError(f"model {name!r}: {where} must map alias names to version numbers; remove it and set the "
                            "aliases again (`brainstore models alias`)")
    return doc

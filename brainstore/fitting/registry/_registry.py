"""The model registry: fitted models as immutable, numbered versions of safetensors + JSON, never pickle.

Layout: ``<uri>/<name>/@<version>/model.safetensors`` (the arrays) and ``.../model.json`` (how the
model was made: the caller's metadata plus name, version, creation time, the safetensors file's sha256,
tensor shapes/dtypes and package versions), and ``<uri>/<name>/@aliases.json`` (``{alias: version}``).
Names may contain ``/`` to group models (``"clip-image+text/subj01"``). Folders starting with ``_``
(``_runs/``: fit and evaluation run folders; ``_locks/``) or ``.`` (temporaries) are never models.

Saving under an existing name adds version n+1; a version is never rewritten (saving the same weights
and metadata again returns the existing version, so a resumed job adds none). A reference names what to
load: ``NAME`` (its ``champion`` alias when set, else its latest version), ``NAME@3`` (version 3),
``NAME@latest`` or ``NAME@staging`` (an alias). Aliases move under the name's lock with an optional
compare-and-swap (``expect=``). Loads verify the sha256 recorded at save time. How versions are written
atomically is in :mod:`._local` (a folder) and :mod:`._object_store` (``s3://``, ``gs://``, ``az://``; a
local registry copied there is a registry); names, references and records in :mod:`._records`.

>>> reg = ModelRegistry("models/")
>>> reg.save("ridge/subj01", est.state_dict(), {"feature_versions": {fv: store.metadata(fv)}}).version
2
>>> reg.set_alias("ridge/subj01", "champion", 1)
>>> state, record = reg.load_arrays("ridge/subj01@1")  # the arrays; reg.load(ref) gives the model
>>> reg.check_features(record, store)            # refuses features made differently
"""

from __future__ import annotations

import contextlib
import difflib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..._provenance import sha256
from ._fileio import json_bytes, jsonable, package_versions
from ._local import STALE_TMP_S, LocalFiles
from ._object_store import ObjectStoreBackend
from ._services import ServiceAnnouncements
from ._records import (DEFAULT_ALIAS, FORMAT_VERSION, META_FILE, MODEL_LOADERS, NON_ENCODER_KINDS, WEIGHTS_FILE,
                       ModelRecord, RegistryError, check_alias, check_name, check_scales, check_tensors, parse_meta,
                       parse_ref, register_loader, safe_name)

__all__ = ["ModelRegistry", "ModelRecord", "RegistryError", "safe_name", "NON_ENCODER_KINDS", "register_loader",
           "STALE_TMP_S"]

#: model.json keys that differ between two saves of the same model (not part of what was saved).
_VOLATILE = ("created", "package_versions", "version")
_ANY = object()


class ModelRegistry(LocalFiles, ObjectStoreBackend, ServiceAnnouncements):
    """Fitted models in a local folder or under an object-store URI, each name a series of immutable
    versions (``<name>/@<version>/model.safetensors`` + ``model.json``) with aliases.

    Parameters
    ----------
    uri : str or path
        The registry folder, or an object-store URI (``s3://bucket/models``).
    create : bool
        Create it if missing (writers). False (readers): a missing folder (on object storage: a
        prefix holding no model) is a :class:`RegistryError`. A file, or (with ``create``) an
        unwritable folder, is refused.
    storage_options : dict, optional
        Object-store options over those of ``$BRAINSTORE_STORAGE_OPTIONS``; unknown keys are an error.
    lock_timeout : float
        Seconds a write waits for another writer of the same name.
    """

    def __init__(self, uri: str | Path, *, create: bool = True, storage_options: dict | None = None,
                 lock_timeout: float = 120.0):
        from ..._paths import check_folder
        from ..._storage import is_remote

        s = str(uri)
        self.remote = is_remote(s)
        self.lock_timeout = lock_timeout
        if self.remote:
            self._init_remote(s, storage_options, create)
            return
        self.storage_options = None
        self.root = check_folder(s[len("file://"):] if s.startswith("file://") else s, "model registry",
                                 "--registry", create=create, error=RegistryError,
                                 missing_hint="fit models into it first (`brainstore fit --registry ...`)")

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    def path(self, name: str) -> Path | str:
        """The folder of model ``name`` holding its versions (whether or not it exists); on object storage its URI."""
        if self.remote:
            return f"{self.root}/{check_name(name)}"
        return self._name_dir(check_name(name))

    @staticmethod
    def _file(folder: Path | str, fname: str) -> Path | str:
        return f"{folder}/{fname}" if isinstance(folder, str) else folder / fname

    # ------------------------------------------------------------------ storage primitives
    def _versions_of(self, name: str) -> list[int]:
        return self._remote_versions(name) if self.remote else self._local_versions(name)

    def _read(self, name: str, version: int, fname: str) -> bytes | None:
        return self._remote_read(name, version, fname) if self.remote else self._local_read(name, version, fname)

    def _aliases_of(self, name: str) -> dict:
        return self._remote_aliases(name) if self.remote else self._local_aliases(name)

    def _version_path(self, name: str, version: int) -> Path | str:
        if self.remote:
            key = self._remote_key(name, version, META_FILE)
            return f"{self.root}/{key.rpartition('/')[0]}"
        return self._local_version_dir(name, version)

    @contextlib.contextmanager
    def _name_lock(self, name: str):
        """Exclusive hold on ``name`` for writers (new versions, aliases, deletions)."""
        if self.remote:
            with self._reaching(), self._remote_lock(name):
                yield
        else:
            with self._local_lock(name):
                yield

    def _models(self, prefix: str = "") -> dict[str, list[int]]:
        return self._remote_models(prefix) if self.remote else self._local_models(prefix)

    def stamp(self, rec: ModelRecord) -> tuple:
        """A token that changes whenever the version's files change (mtimes, sizes, inodes; on object
        storage the objects' ETags), for caches of verified models.

        Raises
        ------
        FileNotFoundError
            When one of the model's files is missing (its ``filename`` names it).
        """
        if self.remote:
            return (rec.name, rec.version, *self._stamp_remote(rec))
        try:
            return (rec.name, rec.version, *self._local_stamp(rec.name, rec.version))
        except FileNotFoundError as e:
            raise FileNotFoundError(2, "missing", e.filename) from None

    # ------------------------------------------------------------------ write
    def save(self, name: str, tensors: dict[str, np.ndarray], meta: dict, *, new_version: bool = True) -> ModelRecord:
        """Save ``tensors`` and ``meta`` as the next version of ``name`` (version 1 for a new name).

        Parameters
        ----------
        name : str
            Model name; ``/`` separates groups (``"clip-image+text/subj01"``).
        tensors : dict of str to ndarray
            Numeric arrays of any shape (e.g. ``RidgeCVEncoder.state_dict()``).
        meta : dict
            JSON-serializable description (numpy scalars/arrays are converted). Put the fit's
            feature metadata under ``"feature_versions"`` ({feature_version: store metadata}) so
            that :meth:`check_features` can verify it later.
        new_version : bool
            When ``name`` exists, add a version (the default); False refuses instead.

        Returns
        -------
        ModelRecord
            The saved version; when the latest version already holds the same weights and metadata, that
            version (nothing is written).
        """
        import safetensors.numpy

        check_name(name)
        if not isinstance(meta, dict):
            raise RegistryError(f"meta for model {name!r} must be a dict, got {type(meta).__name__}")
        try:
            doc = jsonable(meta, "", RegistryError)
        except RegistryError as e:
            raise RegistryError(f"model {name!r}: {e}") from None
        arrays = check_tensors(name, tensors)
        data = safetensors.numpy.save(arrays, metadata={"brainstore_model": name})
        doc.update({  # the registry's own keys
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
            "package_versions": package_versions(),
            "format_version": FORMAT_VERSION,
            "safetensors_sha256": sha256(data),
        })
        with self._name_lock(name):
            self._remote_check_placement(name) if self.remote else self._local_check_placement(name)
            versions = self._versions_of(name)
            if versions and not new_version:
                raise RegistryError(f"model {name!r} already exists in {self.root} (versions {_span(versions)}); pass "
                                    "new_version=True to add a version or choose another name")
            if versions:
                last = self._record_at(name, versions[-1])
                if _content(last.meta) == _content(doc):
                    return last
            doc["version"] = version = (versions[-1] if versions else 0) + 1
            try:
                if self.remote:
                    self._remote_put_version(name, version, data, json_bytes(doc))
                else:
                    self._local_put_version(name, version, data, json_bytes(doc))
            except FileExistsError:
                raise RegistryError(f"model {name!r}: version {version} was created by another writer that ignored "
                                    f"the lock of {self.root}; save again") from None
        return ModelRecord(name, self._version_path(name, version), doc, version, ())

    def set_alias(self, name: str, alias: str, version: int, *, expect: Any = _ANY) -> int | None:
        """Point ``alias`` of model ``name`` at ``version``; returns the version it pointed at before (or None).

        ``expect`` (a version, or None for "unset") makes it a compare-and-swap: the alias moves only if it
        still points there, else a :class:`RegistryError` says where it points now.
        """
        check_alias(alias)
        name = check_name(name)
        with self._name_lock(name):
            versions = self._versions_of(name)
            if not versions:
                raise self._missing(name)
            if version not in versions:
                raise RegistryError(f"model {name!r} has no version {version} (versions {_span(versions)}); "
                                    f"`brainstore models {name}` lists them")
            aliases = self._aliases_of(name)
            before = aliases.get(alias)
            if expect is not _ANY and before != expect:
                raise RegistryError(f"alias {name}@{alias} points at version {before} now, not {expect}: it was moved "
                                    "concurrently; read it again and retry")
            aliases[alias] = int(version)
            self._remote_put_aliases(name, aliases) if self.remote else self._local_put_aliases(name, aliases)
        return before

    def remove_alias(self, name: str, alias: str) -> int:
        """Remove ``alias`` of model ``name``; returns the version it pointed at."""
        check_alias(alias)
        with self._name_lock(check_name(name)):
            aliases = self._aliases_of(name)
            if alias not in aliases:
                raise RegistryError(f"model {name!r} has no alias {alias!r} (aliases: {_shown(aliases)})")
            before = aliases.pop(alias)
            self._remote_put_aliases(name, aliases) if self.remote else self._local_put_aliases(name, aliases)
        return before

    def delete(self, ref: str) -> None:
        """Remove ``NAME`` (every version and its aliases) or one version ``NAME@3``; a version an alias points at
        is refused (move or remove the alias first). Nothing is half removed: model.json leaves first."""
        name, sel = parse_ref(ref)
        with self._name_lock(name):
            versions = self._versions_of(name)
            if not versions:
                raise self._missing(name)
            if sel is None:
                self._remote_remove_name(name) if self.remote else self._local_remove_name(name)
                return
            version = self._select(name, sel, versions, self._aliases_of(name))
            if len(versions) == 1:
                self._remote_remove_name(name) if self.remote else self._local_remove_name(name)
                return
            if version == versions[-1]:
                raise RegistryError(f"cannot delete {name}@{version} alone: it is the latest version, whose number the next "
                                    f"save would reuse; delete the whole model ({name!r}) or older versions only")
            held = sorted(a for a, v in self._aliases_of(name).items() if v == version)
            if held:
                raise RegistryError(f"cannot delete {name}@{version}: alias(es) {', '.join(held)} point at it; move "
                                    f"them first (`brainstore models alias {name}@{held[0]} VERSION`)")
            self._remote_remove_version(name, version) if self.remote else self._local_remove_version(name, version)

    # ------------------------------------------------------------------ read
    def exists(self, ref: str) -> bool:
        """Whether ``ref`` (``NAME``, ``NAME@3``, ``NAME@alias``) names a saved version."""
        try:
            self.resolve(ref)
        except RegistryError as e:
            if "invalid" in str(e) or "must be" in str(e):
                raise
            return False
        return True

    def _select(self, name: str, sel, versions: list[int], aliases: dict) -> int:
        if sel is None:
            v = aliases.get(DEFAULT_ALIAS)
            return v if v in versions else versions[-1]
        if sel == "latest":
            return versions[-1]
        if isinstance(sel, int):
            if sel not in versions:
                raise RegistryError(f"model {name!r} has no version {sel} (versions {_span(versions)}); "
                                    f"`brainstore models {name}` lists them")
            return sel
        if sel not in aliases:
            raise RegistryError(f"model {name!r} has no alias {sel!r} (aliases: {_shown(aliases)}); set it with "
                                f"`brainstore models alias {name}@{sel} VERSION`")
        if aliases[sel] not in versions:
            raise RegistryError(f"alias {name}@{sel} points at version {aliases[sel]}, which no longer exists; move it "
                                f"(`brainstore models alias {name}@{sel} VERSION`)")
        return aliases[sel]

    def resolve(self, ref: str) -> tuple[str, int]:
        """``(name, version)`` that ``ref`` names now: ``NAME`` -> its ``champion`` alias when set, else its latest
        version; ``NAME@3``; ``NAME@latest``; ``NAME@alias``.

        Raises
        ------
        RegistryError
            Naming the model and its versions or aliases when ``ref`` names none.
        """
        name, sel = parse_ref(ref)
        versions = self._versions_of(name)
        if not versions:
            raise self._missing(name)
        return name, self._select(name, sel, versions, self._aliases_of(name) if sel != "latest" and
                                  not isinstance(sel, int) else {})

    def _record_at(self, name: str, version: int, aliases: dict | None = None) -> ModelRecord:
        path = self._version_path(name, version)
        raw = self._read(name, version, META_FILE)
        if raw is None:
            raise RegistryError(f"model {name!r} has no version {version} any more (removed meanwhile); "
                                f"`brainstore models {name}` lists its versions")
        aliases = self._aliases_of(name) if aliases is None else aliases
        return ModelRecord(name, path, parse_meta(name, self._file(path, META_FILE), raw), version,
                           tuple(sorted(a for a, v in aliases.items() if v == version)))

    def record(self, ref: str) -> ModelRecord:
        """The :class:`ModelRecord` of the version ``ref`` names (reads model.json only, not the weights)."""
        return self._record_at(*self.resolve(ref))

    def versions(self, name: str) -> list[ModelRecord]:
        """Every version of model ``name``, oldest first, each with the aliases pointing at it."""
        name = check_name(name)
        versions = self._versions_of(name)
        if not versions:
            raise self._missing(name)
        aliases = self._aliases_of(name)
        return [self._record_at(name, v, aliases) for v in versions]

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of model ``name``."""
        if not self._versions_of(check_name(name)):
            raise self._missing(name)
        return dict(self._aliases_of(name))

    def load(self, ref: str, *, store=None):
        """The registered model ``ref`` names, verified and ready to use: an object with ``.predict(...)``.

        Parameters
        ----------
        ref : str
            ``MODEL/SUBJECT`` for encoding models and ridge decoders (``"clip/subj01"``), ``MODEL/shared``
            for adaptors, the captioner's name for captioners; ``@3`` or ``@champion`` picks a version.
        store : str or FeatureStore, optional
            The feature store to read embeddings from (default: the one the model was fitted with).

        Returns
        -------
        EncodingModel, Decoder, AdaptorModel or Captioner
            By the model's ``kind``: ``EncodingModel.predict(stimulus_ids)`` gives ``{hemi: (n, n_vertices)}``,
            ``Decoder.predict(responses)`` ``(n, dim)`` embeddings, ``AdaptorModel.predict(responses,
            subject=...)`` ``{target: (n, dim)}``, ``Captioner.predict(embeddings)`` captions.

        Raises
        ------
        RegistryError
            When the model does not exist, its files changed since it was saved, or its inputs drifted
            (each loader's checks: feature tables, members, fingerprints).
        """
        rec = self.record(ref)
        kind = rec.meta.get("kind")
        loader = MODEL_LOADERS.get(kind)
        if loader is None:
            raise RegistryError(f"model {rec.name!r} is of kind {kind!r}, which no loader knows "
                                f"(kinds: {', '.join(sorted(MODEL_LOADERS))}); use load_arrays({ref!r}) for its arrays")
        return loader(self, rec.ref, store)

    def load_arrays(self, ref: str) -> tuple[dict[str, np.ndarray], ModelRecord]:
        """Read the arrays and record of the version ``ref`` names, verifying the safetensors file's sha256.

        Returns
        -------
        tensors : dict of str to ndarray
        record : ModelRecord

        Raises
        ------
        RegistryError
            When the model does not exist (naming close and available names), or its file changed
            since it was saved.
        """
        import safetensors.numpy

        rec = self.record(ref)
        where = self._file(rec.path, WEIGHTS_FILE)
        data = self._read(rec.name, rec.version, WEIGHTS_FILE)
        if data is None:
            raise RegistryError(f"model {rec.ref!r}: {where} is missing; the model is incomplete (re-save it, or "
                                f"delete it with ModelRegistry.delete({rec.ref!r}))")
        want, got = rec.meta.get("safetensors_sha256"), sha256(data)
        if want != got:
            raise RegistryError(
                f"model {rec.ref!r}: {where} changed since it was saved (sha256 {got[:12]}..., model.json records "
                f"{str(want)[:12]}...); the weights cannot be trusted: re-save or refit the model")
        try:
            tensors = safetensors.numpy.load(data)
        except Exception as e:
            raise RegistryError(f"model {rec.ref!r}: {where} is not a readable safetensors file ({e}); "
                                "re-save or refit the model") from e
        if int(rec.meta.get("format_version", 1)) < 2:
            check_scales(rec.name, tensors)
        return tensors, rec

    def list(self, prefix: str = "") -> list[ModelRecord]:
        """What each model name whose name starts with ``prefix`` loads by default (its ``champion`` alias when
        set, else its latest version), sorted by name; unreadable ones are skipped with a warning."""
        out = []
        for name, versions in sorted(self._models(prefix).items()):
            try:
                aliases = self._aliases_of(name)
                out.append(self._record_at(name, self._select(name, None, versions, aliases), aliases))
            except RegistryError as e:
                warnings.warn(f"skipping model {name!r}: {e}", stacklevel=2)
        return out

    def all_versions(self, prefix: str = "") -> list[ModelRecord]:
        """Every version of every model whose name starts with ``prefix``, by name then version."""
        out = []
        for name, versions in sorted(self._models(prefix).items()):
            try:
                aliases = self._aliases_of(name)
                out += [self._record_at(name, v, aliases) for v in versions]
            except RegistryError as e:
                warnings.warn(f"skipping model {name!r}: {e}", stacklevel=2)
        return out

    def names(self, prefix: str = "") -> list[str]:
        """Names of the saved models (see :meth:`list`)."""
        return sorted(self._models(prefix))

    def names_of(self, model: str) -> list[str]:
        """``[model]`` when it is a registered name, else the names of model ``model``'s fits (``"clip"`` ->
        ``["clip/subj01", "clip/subj02"]``); a RegistryError naming close names when there are none."""
        name = check_name(model)
        if self._versions_of(name):
            return [name]
        under = self.names(f"{name}/")
        if not under:
            raise self._missing(name)
        return under

    def _missing(self, name: str) -> RegistryError:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none yet"
        return RegistryError(f"no model {name!r} in registry {self.root}; {hint}available: {shown}. "
                             "Fit and save it first (ModelRegistry.save)")

    # ------------------------------------------------------------------ provenance
    def check_features(self, name_or_record: str | ModelRecord, store: Any) -> None:
        """Check that a feature store still holds the feature versions a model was fit on.

        Every entry of ``meta["feature_versions"]`` ({feature_version: store metadata at fit time})
        must name a table of ``store`` whose metadata agrees on every field of
        ``brainstore.features.IDENTITY_KEYS`` (compared as strings; absent equals absent).

        Parameters
        ----------
        name_or_record : str or ModelRecord
        store : FeatureStore or str or path (a store URI)

        Raises
        ------
        RegistryError
            Naming the model, each feature version, the differing fields (old vs new) and the fix.
        """
        from ...features import IDENTITY_KEYS, FeatureStore

        rec = name_or_record if isinstance(name_or_record, ModelRecord) else self.record(name_or_record)
        if isinstance(store, (str, Path)):
            store = FeatureStore(store, create=False)
        fvs = rec.meta.get("feature_versions")
        if not isinstance(fvs, dict) or not fvs:
            raise RegistryError(
                f"model {rec.name!r}: model.json has no 'feature_versions' to check ({self._file(rec.path, META_FILE)}); "
                "save the model with meta={'feature_versions': {fv: store.metadata(fv)}, ...}")
        problems = []
        for fv, old in fvs.items():
            if not store.exists(fv):
                tables = ", ".join(store.names()) or "none"
                problems.append(f"feature version {fv!r} is not in store {store.uri} (tables: {tables})")
                continue
            new = store.metadata(fv)
            old = old if isinstance(old, dict) else {}
            diffs = [f"{k}: model fit on {old.get(k)!r}, store has {new.get(k)!r}"
                     for k in IDENTITY_KEYS if str(old.get(k)) != str(new.get(k))]
            if diffs:
                problems.append(f"feature version {fv!r} in store {store.uri} was made differently ("
                                + "; ".join(diffs) + ")")
        if problems:
            raise RegistryError(
                f"model {rec.name!r} cannot use these features: " + " | ".join(problems)
                + ". Re-extract the features with the extractor settings the model was fit on, "
                  "or refit the model on the current features")


def _content(meta: dict) -> dict:
    """What a save holds, without the keys that differ between two saves of the same thing."""
    return {k: v for k, v in meta.items() if k not in _VOLATILE}


def _span(versions: list[int]) -> str:
    return f"{versions[0]}-{versions[-1]}" if len(versions) > 2 and versions == list(range(versions[0], versions[-1] + 1)) \
        else ", ".join(map(str, versions))


def _shown(aliases: dict) -> str:
    return ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"

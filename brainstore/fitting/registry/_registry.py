"""The model registry: fitted encoding models as safetensors + JSON on disk, never pickle.

Layout: ``<uri>/<name>/model.safetensors`` (the arrays) and ``<uri>/<name>/model.json`` (how the
model was made: the caller's metadata plus name, creation time, the safetensors file's sha256,
tensor shapes/dtypes and package versions). Names may contain ``/`` to group models
(``"clip-image+text/subj01"``). Folders starting with ``_`` (``_runs/``: fit and evaluation run
folders) or ``.`` (temporaries) are never models.

Writes are atomic: both files are written and fsynced in a hidden temporary sibling folder
which is then renamed into place (an existing model is swapped out with one ``renameat2``
exchange on Linux), so a crash never leaves a half-written model visible; a temporary folder
that a killed writer left behind is removed by the next write into its folder once it is an hour
old. Loads verify the sha256 recorded at save time. Permissions follow the umask, the same for
both files: ``0666 & ~umask`` for files and ``0777 & ~umask`` for model folders (0644 / 0755
under the usual 022), so a registry shared by a lab is readable by its members.

On object storage (``s3://``, ``gs://``, ``az://``) the layout is the same, so a local registry copied
there (``aws s3 sync``) is a registry; how writes and reads stay consistent there is in
:mod:`._object_store`. Names, records, the file layout and the checks of what is saved and read are in
:mod:`._records`.

>>> reg = ModelRegistry("models/")
>>> reg.save("ridge/subj01", est.state_dict(), {"feature_versions": {fv: store.metadata(fv)}})
>>> state, record = reg.load_arrays("ridge/subj01")  # the arrays; reg.load(name) gives the model
>>> reg.check_features(record, store)            # refuses features made differently
"""

from __future__ import annotations

import difflib
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..._provenance import sha256
from ._fileio import fsync, install_dir, jsonable, package_versions, write_json, write_safetensors
from ._object_store import ObjectStoreBackend
from ._records import (FORMAT_VERSION, META_FILE, MODEL_LOADERS, NON_ENCODER_KINDS, WEIGHTS_FILE, ModelRecord,
                       RegistryError, check_name, check_scales, check_tensors, parse_meta, register_loader, safe_name)

__all__ = ["ModelRegistry", "ModelRecord", "RegistryError", "safe_name", "NON_ENCODER_KINDS", "register_loader"]

#: A temporary model folder older than this (seconds) was left by a killed writer: the next write
#: into its folder removes it (a model write takes seconds, so live ones are never this old).
STALE_TMP_S = 3600.0


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_modes(folder: Path, files: Sequence[str]) -> None:
    """Registry permissions: files ``0666 & ~umask``, folders ``0777 & ~umask`` (0644 / 0755 under the
    usual umask 022), the same for weights and JSON whichever library wrote them."""
    mask = _umask()
    for f in files:
        os.chmod(folder / f, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _remove_stale_tmp(parent: Path) -> None:
    """Remove temporary model folders a killed writer left in ``parent`` (older than :data:`STALE_TMP_S`)."""
    now = time.time()
    for p in parent.glob(".*.tmp-*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:  # removed by a concurrent writer
            pass


class ModelRegistry(ObjectStoreBackend):
    """Fitted models in a local folder or under an object-store URI, as ``<name>/model.safetensors`` +
    ``<name>/model.json``.

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
        Object storage: seconds a write waits for another writer of the same model.
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
        """The folder of model ``name`` (whether or not it exists); on object storage its URI."""
        if self.remote:
            return f"{self.root}/{check_name(name)}"
        return self.root.joinpath(*check_name(name).split("/"))

    @staticmethod
    def _file(folder: Path | str, fname: str) -> Path | str:
        return f"{folder}/{fname}" if isinstance(folder, str) else folder / fname

    def stamp(self, rec: ModelRecord) -> tuple:
        """A token that changes whenever the model's files change (mtimes, sizes, inodes; on object
        storage the objects' ETags), for caches of verified models.

        Raises
        ------
        FileNotFoundError
            When one of the model's files is missing (its ``filename`` names it).
        """
        if self.remote:
            return self._stamp_remote(rec)
        return (rec.name, *((st.st_mtime_ns, st.st_size, st.st_ino) for st in
                            (Path(self._file(rec.path, f)).stat() for f in (WEIGHTS_FILE, META_FILE))))

    # ------------------------------------------------------------------ write
    def save(self, name: str, tensors: dict[str, np.ndarray], meta: dict, *, overwrite: bool = True) -> ModelRecord:
        """Write a model atomically.

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
        overwrite : bool
            Replace an existing model of that name (atomically); else refuse.

        Returns
        -------
        ModelRecord
        """
        final = self.path(name)
        if not isinstance(meta, dict):
            raise RegistryError(f"meta for model {name!r} must be a dict, got {type(meta).__name__}")
        try:
            doc = jsonable(meta, "", RegistryError)
        except RegistryError as e:
            raise RegistryError(f"model {name!r}: {e}") from None
        arrays = check_tensors(name, tensors)
        doc.update({  # the registry's own keys (safetensors_sha256 follows once the weights are written)
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
            "package_versions": package_versions(),
            "format_version": FORMAT_VERSION,
        })
        if self.remote:
            return self._save_remote(name, arrays, doc, overwrite)
        self._check_placement(name, final)
        if (final / META_FILE).is_file() and not overwrite:
            raise RegistryError(f"model {name!r} already exists in {self.root}; pass overwrite=True to replace "
                                "it or choose another name")
        created_dirs = [p for p in reversed(final.parents) if self.root in p.parents and not p.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(final.parent)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
        tmp.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would hide the model from other users)
        try:
            write_safetensors(tmp / WEIGHTS_FILE, arrays, {"brainstore_model": name})
            fsync(tmp / WEIGHTS_FILE)
            doc["safetensors_sha256"] = sha256(tmp / WEIGHTS_FILE)
            write_json(tmp / META_FILE, doc)
            _set_modes(tmp, (WEIGHTS_FILE, META_FILE))
            fsync(tmp / META_FILE)
            fsync(tmp)
            try:
                install_dir(tmp, final, overwrite)
            except FileExistsError:
                raise RegistryError(f"model {name!r} was created concurrently in {self.root}; "
                                    "pass overwrite=True to replace it") from None
            fsync(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in reversed(created_dirs):  # deepest first; only the empty ones we made
                try:
                    d.rmdir()
                except OSError:
                    pass
            raise
        return ModelRecord(name, final, doc)

    def _check_placement(self, name: str, final: Path) -> None:
        """Refuse names nested inside another model, or naming a folder that holds models."""
        for p in final.parents:
            if p == self.root or self.root not in p.parents:
                break
            if (p / META_FILE).is_file():
                raise RegistryError(f"cannot save model {name!r}: {p.relative_to(self.root).as_posix()!r} is already a "
                                    "model and models cannot be nested inside models; choose another name")
        if final.is_dir() and not (final / META_FILE).is_file() and any(
                not c.name.startswith(".") for c in final.iterdir()):
            raise RegistryError(f"cannot save model {name!r}: {final} is a folder of other models; choose another name")

    def delete(self, name: str) -> None:
        """Remove a model (its folder leaves the registry in one rename; on object storage model.json goes first)."""
        if self.remote:
            return self._delete_remote(name)
        final = self.path(name)
        if not (final / META_FILE).is_file():
            raise self._missing(name)
        trash = final.with_name(f".{final.name}.del-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
        for p in final.parents:  # drop group folders left empty
            if p == self.root or self.root not in p.parents:
                break
            try:
                p.rmdir()
            except OSError:
                break

    # ------------------------------------------------------------------ read
    def exists(self, name: str) -> bool:
        if self.remote:
            return self._exists_remote(name)
        return (self.path(name) / META_FILE).is_file()

    def record(self, name: str) -> ModelRecord:
        """The :class:`ModelRecord` of ``name`` (reads model.json only, not the weights)."""
        if self.remote:
            return self._record_remote(name)
        final = self.path(name)
        try:
            raw = (final / META_FILE).read_bytes()
        except FileNotFoundError:
            raise self._missing(name) from None
        return ModelRecord(name, final, parse_meta(name, final / META_FILE, raw))

    def load(self, name: str, *, store=None):
        """The registered model ``name``, verified and ready to use: an object with ``.predict(...)``.

        Parameters
        ----------
        name : str
            ``MODEL/SUBJECT`` for encoding models and ridge decoders (``"clip/subj01"``), ``MODEL/shared``
            for adaptors, the captioner's name for captioners.
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
        kind = self.record(name).meta.get("kind")
        loader = MODEL_LOADERS.get(kind)
        if loader is None:
            raise RegistryError(f"model {name!r} is of kind {kind!r}, which no loader knows "
                                f"(kinds: {', '.join(sorted(MODEL_LOADERS))}); use load_arrays({name!r}) for its arrays")
        return loader(self, name, store)

    def load_arrays(self, name: str) -> tuple[dict[str, np.ndarray], ModelRecord]:
        """Read a model's arrays and record, verifying the safetensors file's sha256.

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

        final = self.path(name)
        if self.remote:
            data, meta = self._load_remote(name)
        for attempt in range(0 if self.remote else 3):  # retry when a concurrent overwrite swaps the folder mid-read
            try:
                dfd = os.open(final, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                raise self._missing(name) from None
            try:
                opener = lambda p, flags: os.open(p, flags, dir_fd=dfd)  # noqa: E731
                with open(META_FILE, "rb", opener=opener) as f:
                    raw = f.read()
                with open(WEIGHTS_FILE, "rb", opener=opener) as f:
                    data = f.read()
            except FileNotFoundError as e:
                if attempt < 2 and self.exists(name):
                    continue
                if e.filename == META_FILE or not self.exists(name):
                    raise self._missing(name) from None
                raise RegistryError(f"model {name!r}: {final / WEIGHTS_FILE} is missing; the model is incomplete "
                                    f"(re-save it, or delete it with ModelRegistry.delete({name!r}))") from None
            finally:
                os.close(dfd)
            meta = parse_meta(name, final / META_FILE, raw)
            want, got = meta.get("safetensors_sha256"), sha256(data)
            if want == got:
                break
            if attempt < 2 and (final / META_FILE).is_file() and (final / META_FILE).read_bytes() != raw:
                continue
            raise RegistryError(
                f"model {name!r}: {final / WEIGHTS_FILE} changed since it was saved (sha256 {got[:12]}..., "
                f"model.json records {str(want)[:12]}...); the weights cannot be trusted: re-save or refit the model")
        try:
            tensors = safetensors.numpy.load(data)
        except Exception as e:
            raise RegistryError(f"model {name!r}: {self._file(final, WEIGHTS_FILE)} is not a readable safetensors file ({e}); "
                                "re-save or refit the model") from e
        if int(meta.get("format_version", 1)) < 2:
            check_scales(name, tensors)
        return tensors, ModelRecord(name, final, meta)

    def list(self, prefix: str = "") -> list[ModelRecord]:
        """Every saved model whose name starts with ``prefix``, sorted by name."""
        out = []
        if self.remote:
            return sorted(self._list_remote(prefix), key=lambda r: r.name)
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]  # temporaries, run folders
            if META_FILE not in filenames or Path(dirpath) == self.root:
                continue
            dirnames[:] = []  # models are not nested
            p = Path(dirpath)
            name = p.relative_to(self.root).as_posix()
            if not name.startswith(prefix):
                continue
            try:
                out.append(ModelRecord(name, p, parse_meta(name, p / META_FILE, (p / META_FILE).read_bytes())))
            except (RegistryError, OSError) as e:
                warnings.warn(f"skipping model {name!r}: {e}", stacklevel=2)
        return sorted(out, key=lambda r: r.name)

    def names(self, prefix: str = "") -> list[str]:
        """Names of the saved models (see :meth:`list`)."""
        return [r.name for r in self.list(prefix)]

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

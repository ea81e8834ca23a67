"""Fingerprints of the feature rows a model was fitted on, and the check that refuses drift.

A model's weights only make sense on the embeddings it was fitted on. The store's metadata check
(``ModelRegistry.check_features``) catches a table made by another extractor; it cannot see a table
dropped and re-extracted with the same settings but other weights or hardware, or a PCA table
re-derived on more rows (same name, same metadata keys, every embedding different). So every base
model records, per feature table, the sha256 of its fitted stimulus ids and their embeddings
(``rows_sha256``) beside the table's version, creation time and, for derived tables, the rows the
derivation was fitted on and the sha256 of its projection. Loading the model recomputes the
rows' hash and refuses any difference, naming what changed. (No cache across loads: a dropped and
re-created table restarts its version numbers, so a version is no proof of unchanged content.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..._provenance import sha256
from ...features import FeatureStore, MissingStimuliError
from ._registry import RegistryError

__all__ = ["table_fingerprint", "check_fingerprint", "encode_ids", "decode_ids"]

#: Metadata of derived tables (``features.derive_pca``) recorded in fingerprints.
DERIVED_KEYS = ("derived_from", "n_fit", "fit_ids_sha256", "projection_sha256")


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """Stimulus ids as a uint8 tensor (UTF-8, newline separated) for a safetensors file."""
    return np.frombuffer("\n".join(ids).encode(), dtype=np.uint8).copy()


def decode_ids(t: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_ids`."""
    s = np.asarray(t, dtype=np.uint8).tobytes().decode()
    return s.split("\n") if s else []


def _rows_sha256(fs: FeatureStore, table: str, ids: Sequence[str]) -> str:
    emb = np.ascontiguousarray(fs.load(table, ids), dtype=np.float32)
    return sha256(["\n".join(ids).encode(), emb.tobytes()])


def table_fingerprint(fs: FeatureStore, table: str, ids: Sequence[str]) -> dict:
    """What identifies the rows ``ids`` of ``table`` now (see the module docstring)."""
    meta = fs.metadata(table)
    version = fs.version(table)
    rows = _rows_sha256(fs, table, ids)
    fp = {"table": table, "table_version": version, "created": meta.get("created"), "n_rows": len(ids),
          "rows_sha256": rows}
    fp.update({k: meta[k] for k in DERIVED_KEYS if k in meta})
    return fp


def check_fingerprint(model: str, recorded: dict, fs: FeatureStore, ids: Sequence[str]) -> None:
    """Raise :class:`RegistryError` unless the fitted rows of ``recorded["table"]`` are unchanged.

    Parameters
    ----------
    model : the model's name (for the message).
    recorded : the fingerprint saved at fit time (:func:`table_fingerprint`).
    fs : the store predictions will read from.
    ids : the stimulus ids the model was fitted on.
    """
    table = recorded["table"]
    fix = ("Refit the model on the current table (`brainstore fit`), or point --store at the store holding "
           "the table it was fitted on")
    try:
        version = fs.version(table)
        rows = _rows_sha256(fs, table, ids)
    except MissingStimuliError as e:
        raise RegistryError(f"model {model!r} cannot use feature table {table!r} in store {fs.uri}: "
                            f"{len(e.missing)} of the {len(ids)} stimuli it was fitted on are no longer in it "
                            f"(e.g. {e.missing[:3]}); the table was rebuilt. {fix}") from None
    if rows == recorded["rows_sha256"]:
        return
    meta = fs.metadata(table)
    what = [f"the embeddings of the {len(ids)} stimuli it was fitted on differ (sha256 "
            f"{recorded['rows_sha256'][:12]}... at fit time, {rows[:12]}... now)"]
    if meta.get("created") != recorded.get("created"):
        what.append(f"the table was re-created ({recorded.get('created')} at fit time, {meta.get('created')} now)")
    if str(meta.get("n_fit")) != str(recorded.get("n_fit")) and ("n_fit" in meta or "n_fit" in recorded):
        what.append(f"its derivation ({meta.get('transform', 'derived table')} of {meta.get('derived_from')!r}) was "
                    f"re-fitted on {meta.get('n_fit')} rows ({recorded.get('n_fit')} at fit time)")
    elif meta.get("fit_ids_sha256") != recorded.get("fit_ids_sha256"):
        what.append("its derivation was re-fitted on other rows")
    if meta.get("projection_sha256") != recorded.get("projection_sha256") and "projection_sha256" in recorded:
        what.append("its projection changed")
    if version != recorded.get("table_version"):
        what.append(f"table version {recorded.get('table_version')} at fit time, {version} now")
    raise RegistryError(f"model {model!r} was fitted on other features than feature table {table!r} in store "
                        f"{fs.uri} now holds: " + "; ".join(what) + f". Its predictions would be silently wrong. {fix}")

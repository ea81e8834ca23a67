"""What a request's arrays mean to a model: embeddings given for an encoding model's feature tables (one
array side by side, or one per table), and response vectors for a decoder's voxel selection (one array,
lh then rh, or one per hemisphere: the hemisphere's selected voxels or all its vertices). Every mismatch
is a 422 :class:`~._codec.ServingError` naming the field, the sizes expected and the fix.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from ._codec import ServingError

__all__ = ["STIMULUS_ID", "check_id", "table_arrays", "response_rows", "check_voxels"]

#: What a stimulus id may look like (store ids are ``nsd-00012``-like; no path separators, no ``..``).
STIMULUS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_id(value, field: str) -> str:
    if not isinstance(value, str) or not STIMULUS_ID.match(value) or ".." in value:
        raise ServingError(422, f"{field}: {value!r} is not a stimulus id (letters, digits, '_', '-', '.', ':'; "
                                "at most 128 characters, no '..' or '/')")
    return value


def table_arrays(embedding, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """``{table: (n, dim)}`` float32 from ``embedding``: ``{table: array}``, or one array of the tables'
    columns side by side in the order of ``dims`` (``{table: dimension}``)."""
    tables = list(dims)
    if isinstance(embedding, dict):
        unknown = sorted(set(embedding) - set(tables))
        missing = [t for t in tables if t not in embedding]
        if unknown or missing:
            raise ServingError(422, f"embedding: the model reads {', '.join(tables)}; "
                                    + (f"unknown {', '.join(unknown)}; " if unknown else "")
                                    + (f"missing {', '.join(missing)}" if missing else ""))
        parts = {t: np.atleast_2d(embedding[t]) for t in tables}
    else:
        E = np.atleast_2d(embedding)
        total = sum(dims.values())
        if E.shape[1] != total:
            raise ServingError(422, f"embedding has {E.shape[1]} values per stimulus; the model reads "
                                    + " + ".join(f"{t} ({d})" for t, d in dims.items())
                                    + f" = {total} (send one array, or {{table: array}})")
        cuts = np.cumsum([0] + list(dims.values()))
        parts = {t: E[:, cuts[i]:cuts[i + 1]] for i, t in enumerate(tables)}
    for t, E in parts.items():
        if E.shape[1] != dims[t]:
            raise ServingError(422, f"embedding[{t!r}] has {E.shape[1]} values per stimulus, the table's "
                                    f"dimension is {dims[t]}")
    n = {len(E) for E in parts.values()}
    if len(n) != 1:
        raise ServingError(422, f"embedding: the tables' arrays have different row counts {sorted(n)}")
    return {t: E.astype(np.float32) for t, E in parts.items()}


def response_rows(responses, voxels: dict, model: str, subject: str,
                  hemisphere_size: Callable[[str], int | None]) -> np.ndarray:
    """(n, n_voxels) float32 rows from one array or from ``{hemisphere: array}``; ``voxels``: the decoder's
    selection per hemisphere, ``hemisphere_size(h)``: the vertices of the hemisphere (None: unknown)."""
    if not isinstance(responses, dict):
        return np.array(np.atleast_2d(responses), dtype=np.float32)  # writable (handle arrays are read-only)
    hemis = [h for h in voxels if len(voxels[h])]
    unknown, missing = sorted(set(responses) - set(hemis)), [h for h in hemis if h not in responses]
    if unknown or missing:
        raise ServingError(422, f"responses: {model} for {subject} reads {' and '.join(hemis)}; "
                                + (f"unknown key(s) {', '.join(unknown)}; " if unknown else "")
                                + (f"missing {', '.join(missing)}" if missing else "")
                                + " (send {hemisphere: array} for each, or one array, lh then rh)")
    parts, rows = [], set()
    for h in hemis:
        P = np.atleast_2d(np.asarray(responses[h], dtype=np.float32))
        n_sel = len(voxels[h])
        if P.ndim != 2 or P.shape[1] != n_sel:
            n_all = hemisphere_size(h)
            if P.ndim != 2 or P.shape[1] != n_all:
                whole = f" or the whole hemisphere's {n_all} vertices" if n_all and n_all != n_sel else ""
                raise ServingError(422, f"responses.{h} has {P.shape[-1]} values per row; {model} for {subject} "
                                        f"reads {n_sel} {h} voxels{whole}")
            P = P[:, np.asarray(voxels[h], dtype=np.int64)]  # the whole hemisphere: the decoder's voxels of it
        parts.append(P)
        rows.add(len(P))
    if len(rows) != 1:
        raise ServingError(422, f"responses: the hemispheres' arrays have different row counts {sorted(rows)}")
    return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)


def check_voxels(R: np.ndarray, n: int, voxels: dict, model: str, subject: str) -> None:
    """422 unless the rows ``R`` hold the decoder's ``n`` voxels."""
    if R.ndim != 2 or R.shape[1] != n:
        per = ", ".join(f"{h}: {len(v)}" for h, v in voxels.items())
        raise ServingError(422, f"responses have {R.shape[-1]} values per row; {model} for {subject} expects {n} "
                                f"({per}, lh then rh, in the order of its voxel selection)")

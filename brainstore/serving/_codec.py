"""Arrays over HTTP: ``{"dtype", "shape", "data_b64"}`` JSON (the default), plain nested lists, or
``application/x-npy`` bodies; every decoder refuses what it cannot read with a :class:`ServingError`
(4xx) that says what was wrong, never an exception that would become a 500."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

__all__ = ["ServingError", "NPY", "encode_array", "decode_array", "array_from_npy", "array_to_npy"]

#: Media type of numpy's ``.npy`` format.
NPY = "application/x-npy"
#: dtypes a client may send (responses and embeddings are real numbers).
_DTYPES = {"float32", "float64", "float16", "<f4", "<f8", "<f2", "int32", "int64", "<i4", "<i8"}


class ServingError(Exception):
    """A request the service refuses: HTTP ``status`` and a message naming the field and the fix."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, headers or {}

    def __reduce__(self):  # rebuilt from its fields after pickling (deployment handles return errors pickled)
        return (_rebuild, (self.status, self.message, self.headers))

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def _rebuild(status: int, message: str, headers: dict) -> "ServingError":
    return ServingError(status, message, headers=headers)


def encode_array(a: np.ndarray, fmt: str = "b64") -> dict | list:
    """``{"dtype", "shape", "data_b64"}`` (little-endian float32), or nested lists (``fmt="list"``)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    if fmt == "list":
        return a.tolist()
    return {"dtype": "float32", "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode("ascii")}


#: The largest float32: values beyond it would become infinite once read as float32.
F32_MAX = float(np.finfo(np.float32).max)


def _finite(a: np.ndarray, field: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, not warned about
        out = np.array(a, dtype=np.float32)  # a writable copy (frombuffer views are read-only)
    if out.size and not np.isfinite(out).all():
        nonfinite = int((~np.isfinite(np.asarray(a, dtype=np.float64))).sum())
        beyond = int((~np.isfinite(out)).sum()) - nonfinite  # finite numbers too large for float32
        what = " and ".join(([f"{nonfinite} value(s) are NaN or infinite"] if nonfinite else [])
                            + ([f"{beyond} value(s) are beyond float32's range (+-{F32_MAX:.3g})"] if beyond else []))
        raise ServingError(422, f"{field}: {what}; send finite numbers")
    return out


def _numbers(value: list) -> bool:
    """A list of JSON numbers, or a list of lists of JSON numbers (``true``/``false`` and strings are not
    numbers, although Python's bool is an int and numpy reads "1.5" as a float)."""
    if all(type(x) in (int, float) for x in value):
        return True
    return all(type(row) is list and all(type(x) in (int, float) for x in row) for row in value)


def decode_array(value, field: str, max_values: int) -> np.ndarray:
    """A float32 array from a JSON field: nested lists of numbers or ``{"dtype", "shape", "data_b64"}``."""
    if isinstance(value, dict):
        missing = [k for k in ("dtype", "shape", "data_b64") if k not in value]
        if missing:
            raise ServingError(422, f"{field}: an encoded array needs dtype, shape and data_b64; missing "
                                    f"{', '.join(missing)}")
        extra = sorted(set(value) - {"dtype", "shape", "data_b64"})
        if extra:
            raise ServingError(422, f"{field}: unknown key(s) {', '.join(map(str, extra))[:200]} in an encoded array; "
                                    "its keys: dtype, shape, data_b64")
        dtype, shape = value["dtype"], value["shape"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ServingError(422, f"{field}.dtype must be one of float32, float64, float16, int32, int64; "
                                    f"got {dtype!r}")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise ServingError(422, f"{field}.shape must be a list of 1 or 2 non-negative integers; got {shape!r}")
        n = int(np.prod(shape))
        if n > max_values:
            raise ServingError(413, f"{field}: {n:,} values, above the limit of {max_values:,} per request; "
                                    "send fewer rows per request")
        if not isinstance(value["data_b64"], str):
            raise ServingError(422, f"{field}.data_b64 must be a base64 string")
        try:
            raw = base64.b64decode(value["data_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ServingError(422, f"{field}.data_b64 is not valid base64") from None
        dt = np.dtype(dtype).newbyteorder("<")
        if len(raw) != n * dt.itemsize:
            raise ServingError(422, f"{field}: data_b64 holds {len(raw)} bytes, shape {shape} of {dtype} needs "
                                    f"{n * dt.itemsize}")
        return _finite(np.frombuffer(raw, dtype=dt).reshape(shape), field)
    if isinstance(value, list):
        if not _numbers(value):
            raise ServingError(422, f"{field} must be a list of numbers (or a list of equal-length lists of "
                                    "numbers); true, false, strings and null are not numbers")
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ServingError(422, f"{field} must be a list of numbers (or a list of equal-length lists of "
                                    "numbers)") from None
        if a.ndim not in (1, 2):
            raise ServingError(422, f"{field} must be 1- or 2-dimensional; got {a.ndim} dimensions")
        if a.size > max_values:
            raise ServingError(413, f"{field}: {a.size:,} values, above the limit of {max_values:,} per request")
        return _finite(a, field)
    raise ServingError(422, f"{field} must be a list of numbers or an encoded array "
                            '{"dtype", "shape", "data_b64"}; got ' + type(value).__name__)


def array_from_npy(body: bytes, field: str, max_values: int) -> np.ndarray:
    """A float32 array from an ``.npy`` body (no pickles: object arrays are refused)."""
    try:
        a = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # not npy, truncated, or an object array
        raise ServingError(400, f"{field}: not a readable .npy body ({type(e).__name__}: {e})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
        raise ServingError(422, f"{field}: the .npy array must hold numbers, got dtype {getattr(a, 'dtype', '?')}")
    if a.ndim not in (1, 2):
        raise ServingError(422, f"{field}: the .npy array must be 1- or 2-dimensional, got shape {a.shape}")
    if a.size > max_values:
        raise ServingError(413, f"{field}: {a.size:,} values, above the limit of {max_values:,} per request")
    return _finite(a.astype(np.float64, copy=False), field)


def array_to_npy(a: np.ndarray) -> bytes:
    """``a`` as the bytes of a ``.npy`` file (little-endian float32, no pickle): an ``application/x-npy`` answer."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype="<f4"), allow_pickle=False)
    return buf.getvalue()

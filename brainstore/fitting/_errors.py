"""Errors a fitted model raises on input it cannot answer for (shared by encoders and decoders)."""

from __future__ import annotations

import numpy as np

__all__ = ["NonFiniteOutputError", "check_finite_output"]


class NonFiniteOutputError(ValueError):
    """A prediction would hold NaN or infinite values (the input is far outside what the model was fitted
    on, or overflows float32). ``field`` names the input at fault (``"embedding"``, ``"responses"``, a
    feature table); ``rows`` lists the offending input rows (0-based). A server answers it with 422."""

    def __init__(self, message: str, *, field: str = "input", rows: list[int] | None = None):
        super().__init__(message)
        self.field, self.rows = field, list(rows or [])

    def __reduce__(self):  # rebuilt from its fields after pickling (Ray returns task errors pickled)
        return _rebuild, (str(self), self.field, self.rows)


def _rebuild(message: str, field: str, rows: list[int]) -> NonFiniteOutputError:
    return NonFiniteOutputError(message, field=field, rows=rows)


def check_finite_output(out: np.ndarray, *, model: str, field: str = "input") -> np.ndarray:
    """``out`` (n_rows, ...) unchanged when every value is finite; else :class:`NonFiniteOutputError` naming
    ``model``, ``field`` and the first offending rows."""
    out = np.asarray(out)
    if out.size == 0 or np.isfinite(out).all():
        return out
    bad = np.nonzero(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))[0] if out.ndim else np.array([0])
    rows = [int(i) for i in bad[:10]]
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise NonFiniteOutputError(
        f"{field}: {model} gives non-finite values (overflow) for row(s) {', '.join(map(str, rows))}{more}; the "
        f"input is far outside the range the model was fitted on: send values on the scale of its feature table",
        field=field, rows=[int(i) for i in bad])

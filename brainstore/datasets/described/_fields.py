"""What every part of :class:`~._described.DescribedDataset` stands on: the description (its
fields, per subject or shared), where a field is written (file and line, for messages), paths
resolved against the description's folder, and the per-dataset memo of what was read."""

from __future__ import annotations

import glob as _glob
import os
from pathlib import Path

from .._base import DESCRIPTION_NAME, BrainDataset
from .._errors import DatasetError
from ._description import load_description, where

__all__ = ["DescribedBase", "shown"]

_SHOWN = 5  # ids / rows named in one message


def shown(items) -> str:
    """The first few ``items`` for a message (and how many there are in all)."""
    items = list(items)
    return ", ".join(map(str, items[:_SHOWN])) + (f" ... ({len(items)} in all)" if len(items) > _SHOWN else "")


class DescribedBase(BrainDataset):
    """The description and its helpers (the parts of :class:`~._described.DescribedDataset` build on it)."""

    def __init__(self, path: str | Path, *, name: str | None = None):
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / DESCRIPTION_NAME
        self.root = p.absolute().resolve()
        self.base = self.root.parent
        self.spec, self._lines = load_description(self.root)
        self.name = name or self.spec.name or (self.base.name if self.root.name == DESCRIPTION_NAME else self.root.stem)
        self._memo: dict = {}

    def __repr__(self) -> str:
        return f"DescribedDataset({str(self.root)!r}, subjects={self.subjects})"

    # ------------------------------------------------------------------ description helpers
    @property
    def subjects(self) -> list[str]:
        return list(self.spec.subjects)

    def _check_subject(self, subject: str) -> str:
        if subject not in self.spec.subjects:
            raise DatasetError(f"subject {subject!r} is not in {self.root} (subjects: {', '.join(self.subjects)})")
        return subject

    def _field(self, subject: str, name: str):
        own = getattr(self.spec.subject_spec(subject), name)
        return own if own is not None else getattr(self.spec, name)

    def _loc(self, subject: str, name: str, *rest) -> tuple:
        own = getattr(self.spec.subject_spec(subject), name) is not None
        return (("subjects", subject, name) if own else (name,)) + rest

    def _where(self, subject: str | None, loc: tuple) -> str:
        text = where(self.root, self._lines, loc)
        return text + (f" (for {subject})" if subject and loc[:1] != ("subjects",) else "")

    def _path(self, subject: str | None, value: str) -> Path:
        p = Path(value.replace("{subject}", subject) if subject else value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base / p))

    def _paths(self, subject: str, value, what: str) -> list[Path]:
        """Files of a ``str | list`` field; a name with ``*``, ``?`` or ``[`` is a glob (sorted matches)."""
        out = []
        for v in [value] if isinstance(value, str) else value:
            p = self._path(subject, v)
            if any(c in v for c in "*?["):
                matches = sorted(Path(m) for m in _glob.glob(str(p)))
                if not matches:
                    raise DatasetError(f"{what}: {p} matches no file")
                out += matches
            else:
                out.append(p)
        return out

    def _memoized(self, key, build):
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def _need(self, result):
        """The object of a ``(object, problems)`` result, or the first problem raised."""
        obj, problems = result
        if problems:
            more = (f" (and {len(problems) - 1} more problem(s); `brainstore info {self.root}` lists them)"
                    if len(problems) > 1 else "")
            raise DatasetError(problems[0] + more)
        return obj

    def ground_truth_dir(self) -> Path | None:
        """The ``ground_truth:`` folder (noiseless responses: the oracle) when described and present."""
        if self.spec.ground_truth is None:
            return None
        p = self._path(None, self.spec.ground_truth)
        return p if p.is_dir() else None

"""Errors raised by the dataset layer: each names the file or field at fault and the fix."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk does not follow its contract (the message names the file and the fix)."""


class DatasetValidationError(DatasetError):
    """Validation found one or more problems; ``problems`` lists each as its own sentence."""

    def __init__(self, root: str, problems: list[str]):
        self.root = root
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"dataset {root} has {len(self.problems)} problem(s):\n{lines}")

    def __reduce__(self):  # rebuilt from its fields after pickling (Ray returns task errors pickled)
        return type(self), (self.root, self.problems)

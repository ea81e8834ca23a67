"""brainstore.cluster: the application on top of the library: the ``brainstore`` CLI, the demo, and
whole-pipeline runs from one YAML file (:func:`run_pipeline`, resumable stage by stage).

``run_pipeline`` and ``load_pipeline`` are imported on first use, so ``import brainstore.cluster`` stays light.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and the API reference (imported lazily at run time)
    from .pipeline import Pipeline, PipelineError, load_pipeline, run_pipeline

#: Public names, loaded on first access (PEP 562).
_LAZY = {"run_pipeline": ".pipeline", "load_pipeline": ".pipeline", "Pipeline": ".pipeline",
         "PipelineError": ".pipeline"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

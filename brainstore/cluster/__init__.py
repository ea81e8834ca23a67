"""brainstore.cluster: the application on top of the library: the ``brainstore`` CLI, the demo, and
whole-pipeline runs from one YAML file (:func:`run_pipeline`, resumable stage by stage).

``run_pipeline`` and ``load_pipeline`` are imported on first use, so ``import brainstore.cluster`` stays light.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:  # for type checkers and the API reference (imported lazily at run time)
    from .pipeline import Pipeline, PipelineError, load_pipeline, run_pipeline

#: Public names, loaded on first access (PEP 562).
_LAZY = {"run_pipeline": ".pipeline", "load_pipeline": ".pipeline", "Pipeline": ".pipeline",
         "PipelineError": ".pipeline"}

__all__ = list(_LAZY)


__getattr__ = lazy_names(__name__, _LAZY, globals())

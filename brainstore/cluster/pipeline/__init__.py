"""``brainstore run PIPELINE.yaml``: extract -> fit -> evaluate -> report -> serve from one validated YAML,
resumable stage by stage.

=============  =====================================================================================
module         role
=============  =====================================================================================
``_spec``      the file's pydantic model (:class:`PipelineSpec`), the stages, :class:`Pipeline`
``_load``      :func:`load_pipeline`: the file read and checked before any work, errors with lines
``_identity``  what each stage's fingerprint is made of (config, dataset, tables, records, upstream)
``_state``     ``<out>/pipeline-state.json``, and what the stages share during a run
``_plan``      :func:`plan_pipeline`: run / skip / off per stage, and why
``_run``       :func:`run_pipeline`: the stages that are not current, in order
``_stages``    each stage's work through the library functions the CLI verbs use (``RUNNERS``)
=============  =====================================================================================
"""

from ._load import load_pipeline
from ._plan import Step, plan_pipeline
from ._run import run_pipeline
from ._spec import (DEPENDS, STAGES, STATE_FILE, EvaluateStage, ExtractorEntry, FitStage, Pipeline, PipelineError,
                    PipelineSpec, ReportStage, ServeStage)
from ._state import read_state

__all__ = ["STAGES", "DEPENDS", "STATE_FILE", "PipelineError", "PipelineSpec", "ExtractorEntry", "FitStage",
           "EvaluateStage", "ReportStage", "ServeStage", "Pipeline", "Step", "load_pipeline", "plan_pipeline",
           "run_pipeline", "read_state"]

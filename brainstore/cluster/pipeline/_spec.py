"""The pipeline file's model: :class:`PipelineSpec` (pydantic, ``extra="forbid"`` everywhere; YAML keys are its
field names, paths relative to the file), the stages (:data:`STAGES`, in the order they run, and
:data:`DEPENDS`, what each reads), and :class:`Pipeline`: a file read and checked by ``load_pipeline``.

A pipeline without ``fit:`` is an extract-only pipeline: fit and the stages that read it (evaluate,
report, serve) are off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...fitting import FitSpec

__all__ = ["STAGES", "DEPENDS", "STATE_FILE", "OPERATIONAL", "PipelineError", "PipelineSpec", "ExtractorEntry",
           "FitStage", "EvaluateStage", "ReportStage", "ServeStage", "Pipeline"]

#: The stages, in the order they run.
STAGES = ("extract", "fit", "evaluate", "report", "serve")
#: The stages each stage reads the outputs of (downstream stages re-run when one of these runs).
DEPENDS: dict[str, tuple[str, ...]] = {"extract": (), "fit": ("extract",), "evaluate": ("fit",),
                                       "report": ("evaluate",), "serve": ("fit",)}
#: The state file under the pipeline's ``out`` folder.
STATE_FILE = "pipeline-state.json"
#: Extractor settings that change how fast a table is made, not what it holds: not fingerprinted.
OPERATIONAL = ("batch_size", "concurrency", "commit_every", "allow_failures")


class PipelineError(ValueError):
    """A pipeline file is invalid, or a stage cannot run (the message names the file, field, line and fix)."""


# ----------------------------------------------------------------------------- the pipeline file
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExtractorEntry(_Strict):
    """One feature table the extract stage makes (a plain spec string is short for ``{spec: ...}``)."""

    spec: str  # extractor spec: text, clip:arch=ViT-B-32,pretrained=openai, motion-energy, ...
    layer: Optional[str] = None  # layer to extract (sets layer=L in the spec, as `extract --layer`)
    version: Optional[str] = None  # table name (default: the extractor's version name)
    batch_size: int = Field(64, ge=1)  # rows per model batch
    concurrency: Optional[int] = Field(None, ge=1)  # extractor actors (default: one per GPU, else by CPUs)
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None  # compute dtype (default by device)
    storage_dtype: Literal["float32", "float16"] = "float32"  # embeddings on disk
    limit: Optional[int] = Field(None, ge=1)  # only the first N stimuli (smoke runs)
    commit_every: int = Field(512, ge=1)  # rows per store commit
    allow_failures: bool = False  # finish the stage even when some stimuli fail to decode
    # time-series datasets (video fMRI): frame features to the TR, and the FIR-delayed table made beside it
    resample: Literal["average", "lanczos"] = "average"  # mean of the TR's frames, or Lanczos interpolation
    delays: Optional[list[int]] = Field(default_factory=lambda: [1, 2, 3, 4])  # in TRs; null: no delayed table

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    def identity(self) -> dict:
        """The settings that decide what the table holds (the fingerprinted part)."""
        return self.model_dump(exclude=set(OPERATIONAL))


class _FitFile(FitSpec):
    """A fit spec inside a pipeline: ``dataset`` may be left out (the pipeline's is used)."""

    dataset: Optional[str] = None  # default (and required value): the pipeline's dataset


class FitStage(_FitFile):
    """The fit stage: FitSpec's fields inline, or ``spec:`` naming a fit-spec YAML file."""

    spec: Optional[str] = None  # a fit-spec YAML file (relative to the pipeline file) instead of inline fields

    @model_validator(mode="after")
    def _references(self):  # (overrides FitSpec's: a `spec:` file is checked when it is read)
        if self.spec is not None:
            given = sorted(self.model_fields_set - {"spec"})
            if given:
                raise ValueError(f"give either `spec:` (a fit-spec file) or the fit fields inline, not both; "
                                 f"remove `spec` or {', '.join(given)}")
            return self
        return FitSpec._references(self)


class EvaluateStage(_Strict):
    """The evaluate stage: the fitted models scored on the test split (``brainstore evaluate``)."""

    rois: Literal["families", "named"] = "families"  # tables per ROI family, or also per named ROI
    maps: bool = True  # the maps on the cortex (evaluate/maps/, shown by the report); false: none (faster)


class ReportStage(_Strict):
    """The report stage: ``<out>/report/report.html``."""

    html: bool = True  # write the HTML report (false: the stage is off)
    title: Optional[str] = None  # report title (default: "brainstore pipeline <file name>")


class ServeStage(_Strict):
    """The serve stage: the fitted models behind Ray Serve on 127.0.0.1."""

    enabled: bool = False  # start the service at the end of the run
    port: int = Field(8000, ge=1, le=65535)  # HTTP port (a free one when something already answers there)
    keep_serving: bool = False  # stay up until Ctrl-C (default: check /healthz, then stop)


class PipelineSpec(_Strict):
    """Everything `brainstore run` needs; YAML keys are these field names, paths relative to the file."""

    dataset: str  # dataset folder (Algonauts layout)
    store: str  # feature store URI (a local folder or s3://...)
    registry: str  # model registry URI (a local folder or s3://...)
    out: Optional[str] = None  # the pipeline's folder: state file, fit / evaluate / report (default <file>-run/)
    address: Optional[str] = None  # Ray cluster address (default: an embedded local Ray)
    storage_options: Optional[dict[str, Any]] = None  # object-store options, for the calls that take them
    extract: list[ExtractorEntry] = Field(default_factory=list)  # feature tables to make
    fit: Optional[FitStage] = None  # encoders and decoders to fit (none: an extract-only pipeline)
    evaluate: EvaluateStage = Field(default_factory=EvaluateStage)
    report: ReportStage = Field(default_factory=ReportStage)
    serve: ServeStage = Field(default_factory=ServeStage)


# ----------------------------------------------------------------------------- a checked pipeline
@dataclass
class Pipeline:
    """A validated pipeline: paths resolved, extractors parsed, the fit spec made whole."""

    path: Path  # the pipeline file
    spec: PipelineSpec  # dataset, store, registry and out resolved against the file's folder
    fit_spec: Optional[FitSpec]  # the fit stage's spec, with the pipeline's dataset, store and registry (None: no fit)
    extractors: list = field(default_factory=list)  # Extractor objects, one per extract entry
    tables: list[str] = field(default_factory=list)  # the table each extract entry makes
    delayed: list = field(default_factory=list)  # time series: the delayed table each entry makes beside it, or None
    notes: list[str] = field(default_factory=list)  # said on screen before the run

    @property
    def out(self) -> Path:
        return Path(self.spec.out)

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage


def _title(pipe: Pipeline) -> str:
    return pipe.spec.report.title or f"brainstore pipeline {pipe.path.stem}"

"""``brainstore run PIPELINE.yaml``: extract -> fit -> evaluate -> report -> serve from one validated YAML.

The file is read into :class:`PipelineSpec` (pydantic, ``extra="forbid"`` everywhere). Errors name
the file, the line (from the YAML node marks: the document is composed as well as loaded), the field
and, for an unknown key, the nearest known ones. Everything cheap is checked before any work: the
dataset, every extractor spec and its weights, the fit spec (inline or a ``spec:`` file, with its
own line numbers), that every feature table it names is either in the store or made by the
extract stage, and the folders written.

Each stage's **fingerprint** is the sha256 of a canonical JSON of its inputs: its own config (without
settings that cannot change its outputs, such as ``batch_size``), the dataset's identity (its
summary and the sizes and mtimes of its files: cheap, nothing is hashed), the versions and metadata
of the feature tables it reads, the ``safetensors_sha256`` of the registry records it reads, and its
upstream stages' fingerprints. ``<out>/pipeline-state.json`` (written atomically after every stage)
keeps, per finished stage, that fingerprint, a digest of each input part (to say *why* a stage
runs), and its outputs. A stage is skipped when its fingerprint is unchanged and its outputs are
still there; otherwise it runs, and so does every stage downstream of it. A stage that starts is
forgotten first (with its downstream), so a crash leaves it to be run again: a rerun resumes at
the stage that failed (extraction itself resumes row by row, an adaptor from its last epoch).
The stages' work (library calls, the stage folders under ``out``) is in :mod:`._stages`.

A pipeline without ``fit:`` is an extract-only pipeline: fit and the stages that read it (evaluate,
report, serve) are off.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._yamllines import dotted, line_of, read_text, read_yaml_text, unknown_key_message
from ..fitting import FitSpec

__all__ = ["STAGES", "DEPENDS", "STATE_FILE", "PipelineError", "PipelineSpec", "ExtractorEntry", "FitStage",
           "EvaluateStage", "ReportStage", "ServeStage", "Pipeline", "Step", "load_pipeline", "plan_pipeline",
           "run_pipeline", "read_state"]

#: The stages, in the order they run.
STAGES = ("extract", "fit", "evaluate", "report", "serve")
#: The stages each stage reads the outputs of (downstream stages re-run when one of these runs).
DEPENDS: dict[str, tuple[str, ...]] = {"extract": (), "fit": ("extract",), "evaluate": ("fit",),
                                       "report": ("evaluate",), "serve": ("fit",)}
#: The state file under the pipeline's ``out`` folder.
STATE_FILE = "pipeline-state.json"
STATE_FORMAT = 1
#: Extractor settings that change how fast a table is made, not what it holds: not fingerprinted.
OPERATIONAL = ("batch_size", "concurrency", "commit_every", "allow_failures")
#: Names of a fingerprint's parts, for the reasons the plan gives.
PART_NAMES = {"config": "config", "stimuli": "stimuli (images, captions)",
              "dataset": "dataset (responses, ROIs, noise ceilings)", "tables": "feature tables",
              "records": "registered models", "upstream": "an upstream stage", "metrics": "metrics.json"}


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


# ----------------------------------------------------------------------------- YAML with line numbers
def _read_yaml(path: Path, what: str) -> tuple[Any, dict]:
    """The document and ``{loc: line}`` (1-based; a key's line for mapping entries)."""
    import yaml

    text = read_text(path, what, PipelineError)
    try:
        raw, lines, dups = read_yaml_text(text)
    except yaml.YAMLError as e:
        raise PipelineError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None
    for loc, line, first in dups:
        raise PipelineError(f"{what} {path} line {line}: {dotted(loc)} is given twice (first on line {first}); "
                            "keep one")
    return raw, lines


def _where(path: Path, lines: dict, loc: tuple) -> str:
    line = line_of(lines, loc)
    return f"{path}" + (f" line {line}" if line else "")


def _given(err: dict) -> str:
    v = err.get("input")
    if err.get("type") in ("missing", "extra_forbidden") or isinstance(v, (dict, list)) or v is None:
        return ""
    return f" (given: {v!r})"


def _validate(model: type[BaseModel], raw: Any, path: Path, lines: dict, what: str):
    """``model(**raw)``, or a :class:`PipelineError` with one line per problem: line, field, message, fix."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{what} {path} must be a mapping of fields ({', '.join(list(model.model_fields)[:4])}, ...)")
    try:
        return model(**raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = unknown_key_message(model, loc)
            elif err["type"] == "missing":
                msg = f"required field {loc[-1]!r} is missing" if loc else msg
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            line = line_of(lines, loc)
            problems.append(f"{'line ' + str(line) if line else 'top level'}: {dotted(loc)}: {msg}{_given(err)}")
        raise PipelineError(f"{what} {path} is invalid:\n  " + "\n  ".join(problems)) from None


# ----------------------------------------------------------------------------- loading and checks
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


def _resolve(base: Path, p: str) -> str:
    """A URI as given; a local path made absolute against ``base`` (the pipeline file's folder)."""
    if "://" in p and not p.startswith("file://"):
        return p
    p = p[len("file://"):] if p.startswith("file://") else p
    return str((base / Path(p).expanduser()).resolve())


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file before any work (no Ray, no extraction, no fit).

    Raises
    ------
    PipelineError
        Naming the file, the line, the field and the fix: an unknown key (and the nearest known
        ones), a wrong type, a missing dataset, an extractor spec that does not parse or whose
        weights are not on disk, a fit spec that is invalid or names a feature table neither in
        the store nor made by the extract stage, a folder that cannot be written.
    """
    from .._paths import check_folder
    from ..datasets import DatasetError, is_description, open_dataset
    from ..features import WeightsNotFoundError, get_extractor, with_layer

    path = Path(path).expanduser().absolute()
    raw, lines = _read_yaml(path, "pipeline file")
    spec: PipelineSpec = _validate(PipelineSpec, raw, path, lines, "pipeline file")
    base = path.parent
    resolved = {k: _resolve(base, getattr(spec, k)) for k in ("dataset", "store", "registry")}
    resolved["out"] = _resolve(base, spec.out) if spec.out else str(base / f"{path.stem}-run")
    if "://" in resolved["out"]:
        raise PipelineError(f"{_where(path, lines, ('out',))}: out: {spec.out!r} must be a local folder (it holds the "
                            "state file and the fit's memory-mapped run folders); store and registry may be URIs")
    spec = spec.model_copy(update=resolved)
    notes: list[str] = []

    if not (Path(spec.dataset).is_dir() or is_description(spec.dataset)):
        state = "is not a folder or a description (.yaml)" if Path(spec.dataset).exists() else "does not exist"
        raise PipelineError(f"{_where(path, lines, ('dataset',))}: dataset {spec.dataset} {state} (paths are relative "
                            f"to the pipeline file's folder {base}); give a dataset folder in the Algonauts layout "
                            "or a dataset description file")
    try:
        ds = open_dataset(spec.dataset)
    except DatasetError as e:
        raise PipelineError(f"{_where(path, lines, ('dataset',))}: dataset: {e}") from None

    extractors, tables, delayed_tables = [], [], []
    for i, e in enumerate(spec.extract):
        where = _where(path, lines, ("extract", i, "spec"))
        try:
            ext = with_layer(e.spec, e.layer) if e.layer is not None else get_extractor(e.spec)
            ext.resolve_weights()
        except WeightsNotFoundError as err:
            raise PipelineError(f"{where}: extract[{i}] {e.spec!r}: {err}") from None
        except (ValueError, KeyError, TypeError) as err:
            raise PipelineError(f"{where}: extract[{i}]: extractor spec {e.spec!r} is invalid: {err}") from None
        delayed = None
        if ds.is_timeseries:
            from ..features import delayed_table, timeseries_extractor, timeseries_table

            try:
                if ds.timeseries.kind == "frames":
                    ext = timeseries_extractor(ext, ds.timeseries.fps)
            except ValueError as err:
                raise PipelineError(f"{where}: extract[{i}]: {err}") from None
            odd = sorted({"limit", "storage_dtype", "commit_every"} & e.model_fields_set)
            if odd:
                raise PipelineError(f"{_where(path, lines, ('extract', i, odd[0]))}: extract[{i}].{odd[0]} does not "
                                    f"apply to a time-series dataset (whole clips are extracted and committed): remove it")
            table = e.version or timeseries_table(ext, ds.timeseries, e.resample)
            if e.delays is not None:
                if not e.delays or len(set(e.delays)) != len(e.delays):
                    raise PipelineError(f"{_where(path, lines, ('extract', i, 'delays'))}: extract[{i}].delays must be "
                                        f"distinct integers (TRs), e.g. [1, 2, 3, 4], or null; got {e.delays}")
                delayed = delayed_table(table, e.delays)
        else:
            table = e.version or ext.version
            odd = sorted({"resample", "delays"} & e.model_fields_set)
            if odd:
                raise PipelineError(f"{_where(path, lines, ('extract', i, odd[0]))}: extract[{i}].{odd[0]} is for "
                                    f"time-series datasets; {ds.root} has one row per stimulus: remove it")
        if table in tables:
            raise PipelineError(f"{where}: extract[{i}] makes table {table!r}, as extract[{tables.index(table)}] does; "
                                "give one of them another `version:` or remove it")
        extractors.append(ext)
        tables.append(table)
        delayed_tables.append(delayed)

    if spec.fit is None:  # an extract-only pipeline: the stages that read a fit have nothing to read
        if not spec.extract:
            raise PipelineError(f"{path}: the pipeline has neither `extract:` nor `fit:`, so it would do nothing; "
                                "list extractors under `extract:` and/or give a fit spec under `fit:`")
        if spec.serve.enabled:
            raise PipelineError(f"{_where(path, lines, ('serve', 'enabled'))}: serve.enabled: the serve stage serves "
                                "the models of the fit stage, and this pipeline has no `fit:`; add one, or turn "
                                "serving off")
        fit_spec = None
    else:
        fit_spec = _fit_spec(spec, path, lines, notes)
    if fit_spec is not None and fit_spec.subjects != "all":
        bad = [s for s in fit_spec.subjects if s not in ds.subjects]
        if bad:
            raise PipelineError(f"{_where(path, lines, ('fit', 'subjects'))}: fit.subjects: {bad} are not in "
                                f"{ds.root} (subjects: {', '.join(ds.subjects)})")
    if fit_spec is not None:
        _check_tables(spec, fit_spec, tables + [d for d in delayed_tables if d], path, lines)

    for what, key, p in (("pipeline folder", "out", spec.out), ("feature store", "store", spec.store),
                         ("model registry", "registry", spec.registry)):
        if "://" not in p:
            check_folder(p, what, f"`{key}:` in {path}", create=True, make=False, error=PipelineError)
    return Pipeline(path=path, spec=spec, fit_spec=fit_spec, extractors=extractors, tables=tables,
                    delayed=delayed_tables, notes=notes)


def _fit_spec(spec: PipelineSpec, path: Path, lines: dict, notes: list[str]) -> FitSpec:
    """The fit stage's FitSpec: inline fields, or the ``spec:`` file (checked with its own line numbers)."""
    pinned = {"dataset": spec.dataset, "store": spec.store, "registry": spec.registry}
    fit = spec.fit
    if fit.spec is not None:
        fpath = Path(_resolve(path.parent, fit.spec))
        if not fpath.is_file():
            state = "is not a file" if fpath.exists() else "does not exist"
            raise PipelineError(f"{_where(path, lines, ('fit', 'spec'))}: fit.spec: fit-spec file {fpath} {state} "
                                f"(relative to {path.parent})")
        raw, flines = _read_yaml(fpath, "fit spec")
        fit = _validate(_FitFile, raw, fpath, flines, "fit spec")
        for k, v in pinned.items():
            given = getattr(fit, k)
            if given is not None and _resolve(fpath.parent, given) != v and given != v:
                notes.append(f"fit spec {fpath} names {k} {given!r}; the pipeline's {k} {v} is used")
    else:
        for k, v in pinned.items():
            given = getattr(fit, k)
            if given is not None and _resolve(path.parent, given) != v:
                raise PipelineError(f"{_where(path, lines, ('fit', k))}: fit.{k} is {given!r}, not the pipeline's "
                                    f"{k} ({v}); remove it from `fit:` (the pipeline's {k} is used)")
    return FitSpec(**{**fit.model_dump(exclude={"spec"}), **pinned})


def _check_tables(spec: PipelineSpec, fit_spec: FitSpec, made: list[str], path: Path, lines: dict) -> None:
    """Every feature table the fit spec names is in the store already or made by the extract stage."""
    from ..features import FeatureStore, FeatureStoreError

    have: list[str] = []
    if "://" in spec.store or Path(spec.store).is_dir():
        try:
            have = FeatureStore(spec.store, spec.storage_options, create=False).names()
        except FeatureStoreError as e:
            raise PipelineError(f"{_where(path, lines, ('store',))}: store: {e}") from None
    known = set(have) | set(made)
    in_file = spec.fit.spec is None  # line numbers point into the pipeline file only for an inline fit spec
    refs = [(("fit", "models", i, "features", j), t) for i, m in enumerate(fit_spec.models) for j, t in enumerate(m.features)]
    refs += [(("fit", "decoders", i, "target"), d.target) for i, d in enumerate(fit_spec.decoders)]
    for loc, table in refs:
        if table not in known:
            where = _where(path, lines, loc) if in_file else f"{path} (fit spec {spec.fit.spec})"
            close = difflib.get_close_matches(table, sorted(known), n=2, cutoff=0.5)
            raise PipelineError(
                f"{where}: {dotted(loc)}: feature table {table!r} is neither made by the extract stage (it makes: "
                f"{', '.join(made) or 'nothing'}) nor in the store {spec.store} (tables: {', '.join(have) or 'none'})"
                + (f"; did you mean {' or '.join(map(repr, close))}?" if close else
                   "; add its extractor under `extract:`"))


# ----------------------------------------------------------------------------- fingerprints
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def _stat(p: Path) -> list:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _stimuli_identity(root: Path) -> dict:
    """The stimuli extraction reads: every image's name, size and mtime, and the captions files (no hashing)."""
    from ..datasets import AlgonautsDataset, open_dataset

    ds = open_dataset(root)
    if not isinstance(ds, AlgonautsDataset):  # a described dataset lists the files it reads
        return {"root": str(ds.root), "files": _digest([[str(p), *_stat(p)] for p in ds.input_files("stimuli")])}
    out: dict = {"root": str(ds.root), "captions": {f: _stat(ds.root / f) for f in ("captions.csv", "captions.parquet")
                                                    if (ds.root / f).exists()}}
    for s in ds.subjects:
        for split in ("train", "test"):
            out[f"{s}/{split}"] = _digest([[p.name, *_stat(p)] for p in ds.image_files(s, split)])
    return out


def _dataset_identity(root: Path, skip: tuple[str, ...] = ()) -> dict:
    """The dataset's summary and the size and mtime of every file but the images (responses, ROIs, ...);
    ``skip``: folders left out (the pipeline's own out, store and registry, should they lie inside)."""
    from ..datasets import AlgonautsDataset, open_dataset

    ds = open_dataset(root)
    if not isinstance(ds, AlgonautsDataset):  # a described dataset lists the files it reads
        return {"summary": ds.summary(), "files": {str(p): _stat(p) for p in ds.input_files("responses")}}
    files = {}
    for dirpath, dirnames, filenames in os.walk(ds.root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("training_images", "test_images")
                             and str(Path(dirpath) / d) not in skip)
        for f in sorted(filenames):
            p = Path(dirpath) / f
            files[p.relative_to(ds.root).as_posix()] = _stat(p)
    return {"summary": ds.summary(), "files": files}


def _own(spec: PipelineSpec) -> tuple[str, ...]:
    """The local folders the pipeline writes (left out of the dataset's identity)."""
    return tuple(str(Path(p)) for p in (spec.out, spec.store, spec.registry) if "://" not in p)


def _table_identity(fs, tables) -> dict:
    out = {}
    for t in sorted(set(tables)):
        out[t] = {"version": fs.version(t), "metadata": fs.metadata(t)} if fs is not None and fs.exists(t) else None
    return out


def _record_identity(reg, names) -> dict:
    out = {}
    for n in sorted(names):
        try:
            out[n] = reg.record(n).meta.get("safetensors_sha256") if reg is not None else None
        except Exception:  # noqa: BLE001 - a missing or unreadable record is a changed input
            out[n] = None
    return out


def _file_sha(p: Path) -> str | None:
    from .._provenance import sha256

    return sha256(p) if p.is_file() else None


# ----------------------------------------------------------------------------- state
def read_state(pipe: Pipeline) -> dict:
    """The state file's content (an empty state when there is none yet)."""
    try:
        state = json.loads(pipe.state_path.read_text())
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "pipeline": str(pipe.path), "stages": {}}
    except (OSError, ValueError) as e:
        raise PipelineError(f"state file {pipe.state_path} is unreadable ({e}); remove it to run every stage "
                            "again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("stages"), dict):
        raise PipelineError(f"state file {pipe.state_path} is not a brainstore pipeline state (format {STATE_FORMAT}); "
                            "remove it to run every stage again")
    return state


def _write_state(pipe: Pipeline, state: dict) -> None:
    """Atomically: a temporary file in the same folder, then renamed over the state file."""
    pipe.out.mkdir(parents=True, exist_ok=True)
    tmp = pipe.state_path.with_name(f".{STATE_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    os.replace(tmp, pipe.state_path)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Step:
    """One stage of the plan: ``run``, ``skip`` (current, or left out by --only / --from) or ``off``."""

    stage: str
    action: Literal["run", "skip", "off"]
    reason: str
    current: bool = False  # fingerprint unchanged and outputs there (or off)


class _Ctx:
    """What the stages share during one planning / run: the pipeline, its state, lazily opened stores."""

    def __init__(self, pipe: Pipeline, state: dict, quiet: bool = True):
        self.pipe, self.state, self.quiet = pipe, state, quiet
        self.fingerprints: dict[str, str | None] = {}

    @property
    def spec(self) -> PipelineSpec:
        return self.pipe.spec

    def store(self, create: bool = False):
        from ..features import FeatureStore

        if not create and "://" not in self.spec.store and not Path(self.spec.store).is_dir():
            return None
        return FeatureStore(self.spec.store, self.spec.storage_options, create=create)

    def registry(self, create: bool = False):
        """The registry; None (create False) when there is none yet: nothing in it is current."""
        from ..fitting import ModelRegistry, RegistryError

        if not create and "://" not in self.spec.registry and not Path(self.spec.registry).is_dir():
            return None
        kw = _options_kw(ModelRegistry, self.spec.storage_options)
        if create or "://" not in self.spec.registry:
            return ModelRegistry(self.spec.registry, create=create, **kw)
        try:  # an object-store prefix holding no model yet is refused by a reader
            return ModelRegistry(self.spec.registry, create=False, **kw)
        except RegistryError:
            return None

    def outputs(self, stage: str) -> dict:
        return (self.state["stages"].get(stage) or {}).get("outputs") or {}


def _use_storage_options(options: dict) -> None:
    """The file's ``storage_options`` for every library call of this process and the Ray tasks it starts:
    folded into ``$BRAINSTORE_STORAGE_OPTIONS`` under the keys already set there (``-S`` flags and the
    variable win over the file)."""
    from .._storage import StorageOptionsError, use_options

    try:
        use_options(options, "storage_options", over_env=False)
    except StorageOptionsError as e:
        raise PipelineError(str(e)) from None


def _options_kw(fn, options: dict | None) -> dict:
    """``{"storage_options": options}`` when ``fn`` takes that argument (and options are given), else ``{}``."""
    import inspect

    if not options:
        return {}
    try:
        return {"storage_options": options} if "storage_options" in inspect.signature(fn).parameters else {}
    except (TypeError, ValueError):
        return {}


def _enabled(stage: str, pipe: Pipeline) -> str | None:
    """None when the stage is on; else why it is off."""
    if stage == "extract" and not pipe.spec.extract:
        return "nothing to extract (`extract:` lists no extractor)"
    if stage in ("fit", "evaluate", "report", "serve") and pipe.fit_spec is None:
        return "off: no `fit:` in the pipeline (extract only)" if stage == "fit" else \
            "off: no fit stage to read (extract only)"
    if stage == "report" and not pipe.spec.report.html:
        return "off (report.html: false)"
    if stage == "serve" and not pipe.spec.serve.enabled:
        return "off (serve.enabled: false)"
    return None


def _fit_tables(fit_spec: FitSpec) -> list[str]:
    return sorted({t for m in fit_spec.models for t in m.features} | {d.target for d in fit_spec.decoders})


def _inputs(stage: str, ctx: _Ctx) -> tuple[dict, dict]:
    """(config, parts) of a stage's fingerprint, as they are now."""
    pipe, spec = ctx.pipe, ctx.spec
    up = {d: ctx.fingerprints.get(d) for d in DEPENDS[stage]}
    if stage == "extract":
        config = {"store": spec.store, "extractors": [dict(e.identity(), table=t, delayed=d) for e, t, d in
                                                      zip(spec.extract, pipe.tables, pipe.delayed)]}
        return config, {"stimuli": _stimuli_identity(Path(spec.dataset))}
    if stage == "fit":
        fs, reg = ctx.store(), ctx.registry()
        init = [f"{d.init_from}" for d in pipe.fit_spec.decoders if d.init_from]
        return pipe.fit_spec.model_dump(), {"dataset": _dataset_identity(Path(spec.dataset), _own(spec)),
                                            "tables": _table_identity(fs, _fit_tables(pipe.fit_spec)),
                                            "records": _record_identity(reg, init), "upstream": up}
    fit_out = ctx.outputs("fit")
    records = _record_identity(ctx.registry(), fit_out.get("records", {}))
    if stage == "evaluate":
        config = {**spec.evaluate.model_dump(), "encoders": fit_out.get("encoders", []),
                  "decoders": fit_out.get("decoders", [])}
        return config, {"dataset": _dataset_identity(Path(spec.dataset), _own(spec)),
                        "tables": _table_identity(ctx.store(), _fit_tables(pipe.fit_spec)), "records": records,
                        "upstream": up}
    if stage == "report":
        ev = ctx.outputs("evaluate")
        return ({**spec.report.model_dump(), "title": _title(pipe)},
                {"metrics": _file_sha(Path(ev["metrics"])) if ev.get("metrics") else None, "records": records,
                 "upstream": up})
    return spec.serve.model_dump(), {"upstream": up}


def _title(pipe: Pipeline) -> str:
    return pipe.spec.report.title or f"brainstore pipeline {pipe.path.stem}"


def _fingerprint(config: dict, parts: dict) -> tuple[str, dict]:
    digests = {"config": _digest(config), **{k: _digest(v) for k, v in parts.items()}}
    return _digest(digests), digests


def _missing_outputs(stage: str, ctx: _Ctx) -> str | None:
    """Why a finished stage's outputs are no longer what it left (None when they are)."""
    out = ctx.outputs(stage)
    if stage == "extract":
        fs = ctx.store()
        gone = [t for t in out.get("tables", {}) if fs is None or not fs.exists(t)]
        return f"table(s) {', '.join(gone)} no longer in the store" if gone else None
    if stage == "fit":
        now = _record_identity(ctx.registry(), out.get("records", {}))
        gone = [n for n, sha in out.get("records", {}).items() if now.get(n) is None]
        if gone:
            return f"model(s) {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''} no longer in the registry"
        changed = [n for n, sha in out.get("records", {}).items() if now.get(n) != sha]
        if changed:
            return f"model(s) {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} re-saved since (other weights)"
        return None
    if stage == "evaluate":
        p = Path(out.get("metrics", ""))
        return None if p.is_file() and _file_sha(p) == out.get("metrics_sha256") else f"{p} missing or changed"
    if stage == "report":
        p = Path(out.get("html", ""))
        return None if p.is_file() else f"{p} missing"
    return None


def _why(rec: dict | None, config: dict, digests: dict, ctx: _Ctx, stage: str) -> str | None:
    """Why a stage is not current (None when it is)."""
    if rec is None:
        return ("did not finish last time" if ctx.state.get("running") == stage else "never run")
    if rec.get("fingerprint") != _digest(digests):
        old = rec.get("parts", {})
        changed = [k for k in digests if old.get(k) != digests[k]]
        said = []
        for k in changed:
            if k == "config":
                was = rec.get("config") or {}
                keys = sorted(k2 for k2 in {*was, *config} if _canonical(was.get(k2)) != _canonical(config.get(k2)))
                said.append(f"config changed ({', '.join(keys)})" if keys else "config changed")
            else:
                said.append(f"{PART_NAMES.get(k, k)} changed")
        return "; ".join(said) or "inputs changed"
    missing = _missing_outputs(stage, ctx)
    return f"outputs changed: {missing}" if missing else None


def plan_pipeline(pipe: Pipeline, *, from_stage: str | None = None, only: str | None = None,
                  state: dict | None = None) -> list[Step]:
    """What a run would do: for every stage, run / skip / off and why (reads the store and registry only).

    Raises
    ------
    PipelineError
        An unknown stage, both ``from_stage`` and ``only``, a stage asked for that is off, or (with
        either) an upstream stage the asked-for stages read that is not current.
    """
    for opt, v in (("--from", from_stage), ("--only", only)):
        if v is not None and v not in STAGES:
            close = difflib.get_close_matches(v, STAGES, n=1)
            raise PipelineError(f"{opt} {v!r} is not a stage" + (f"; did you mean {close[0]!r}?" if close else "")
                                + f" (stages: {', '.join(STAGES)})")
    if from_stage and only:
        raise PipelineError("give --from STAGE or --only STAGE, not both")
    ctx = _Ctx(pipe, read_state(pipe) if state is None else state)
    return _plan(ctx, from_stage, only)


def _plan(ctx: _Ctx, from_stage: str | None, only: str | None) -> list[Step]:
    pipe = ctx.pipe
    asked = only or from_stage
    steps: dict[str, Step] = {}
    for i, stage in enumerate(STAGES):
        off = _enabled(stage, pipe)
        if off:
            if stage == asked:
                raise PipelineError(f"{'--only' if only else '--from'} {stage}: the {stage} stage is {off}; "
                                    f"turn it on in {pipe.path}")
            steps[stage] = Step(stage, "off", off, current=True)
            ctx.fingerprints[stage] = None
            continue
        upstream_runs = [d for d in DEPENDS[stage] if steps[d].action == "run"]
        if upstream_runs:
            why = f"upstream {upstream_runs[0]} runs"
        elif stage == "serve":
            why = "serving is never cached"
        else:
            config, parts = _inputs(stage, ctx)
            fp, digests = _fingerprint(config, parts)
            ctx.fingerprints[stage] = fp
            why = _why(ctx.state["stages"].get(stage), config, digests, ctx, stage)
        current = why is None
        excluded = (only is not None and stage != only) or (from_stage is not None and i < STAGES.index(from_stage))
        forced = stage == only or (from_stage is not None and i >= STAGES.index(from_stage))
        if excluded:
            flag = f"--only {only}" if only else f"--from {from_stage}"
            steps[stage] = Step(stage, "skip", ("current, skipped" if current else f"not run ({flag}); {why}"), current)
        elif forced and current:
            steps[stage] = Step(stage, "run", f"forced ({'--only' if only else '--from'} {asked}); was current", True)
        elif current:
            steps[stage] = Step(stage, "skip", "current, skipped", True)
        else:
            steps[stage] = Step(stage, "run", why)
    if asked:
        for stage in STAGES:
            if steps[stage].action != "run":
                continue
            for d in _upstream(stage):
                if steps[d].action == "skip" and not steps[d].current:
                    flag = f"--only {only}" if only else f"--from {from_stage}"
                    raise PipelineError(f"{flag}: upstream stage {d} is not current ({steps[d].reason.split('; ', 1)[-1]}); "
                                        f"run it first: `brainstore run {pipe.path} --only {d}` (or run without "
                                        f"{flag.split()[0]} to run every stage that needs it)")
    return [steps[s] for s in STAGES]


def _upstream(stage: str) -> list[str]:
    out: list[str] = []
    for d in DEPENDS[stage]:
        out += [*_upstream(d), d]
    return list(dict.fromkeys(out))


def _downstream(stage: str) -> list[str]:
    return [s for s in STAGES if stage in _upstream(s)]


# ----------------------------------------------------------------------------- running
def run_pipeline(path: str | Path | Pipeline, *, from_stage: str | None = None, only: str | None = None,
                 dry_run: bool = False, address: str | None = None, quiet: bool = True) -> dict:
    """Run the stages that are not current (see the module docstring); returns the plan and each stage's outcome.

    Parameters
    ----------
    path : the pipeline file (or a loaded :class:`Pipeline`).
    from_stage : force this stage and every later one (the earlier ones they read must be current).
    only : run just this stage (the stages it reads must be current).
    dry_run : print the plan and return; nothing runs, Ray is not started.
    address : Ray address (over the file's ``address``).
    quiet : drop Ray's known per-run notices from stderr (``brainstore --verbose`` keeps them).

    Returns
    -------
    dict
        ``{"plan": [Step...], "ran": [stage...], "seconds": {stage: s}, "out": Path}``.
    """
    from filelock import FileLock, Timeout

    from ._console import console
    from ._stages import RUNNERS

    pipe = path if isinstance(path, Pipeline) else load_pipeline(path)
    if pipe.spec.storage_options:
        _use_storage_options(pipe.spec.storage_options)
    for n in pipe.notes:
        console.print(f"[yellow]note:[/] {n}")
    lock = None
    if not dry_run:
        pipe.out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(pipe.out / ".pipeline.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise PipelineError(f"another `brainstore run` is using {pipe.out} (lock {pipe.out / '.pipeline.lock'}); "
                                "wait for it to finish, or give this pipeline another `out:`") from None
    try:
        state = read_state(pipe)
        steps = plan_pipeline(pipe, from_stage=from_stage, only=only, state=state)
        _print_plan(steps, pipe, dry_run)
        result = {"plan": steps, "ran": [], "seconds": {}, "out": pipe.out}
        if dry_run:
            return result
        ctx = _Ctx(pipe, state, quiet=quiet)
        t_all = time.time()
        todo = [s for s in steps if s.action == "run"]
        for k, step in enumerate(steps):
            if step.action != "run":
                if step.action == "skip" and step.current:  # its fingerprint feeds the stages after it
                    ctx.fingerprints[step.stage] = state["stages"][step.stage]["fingerprint"]
                else:
                    ctx.fingerprints[step.stage] = None
                continue
            if step.stage in ("extract", "fit", "serve"):
                _connect(address or pipe.spec.address)
            console.rule(f"[bold]{step.stage}[/] ({todo.index(step) + 1}/{len(todo)}): {step.reason}", align="left")
            t0 = time.time()
            config, parts = _inputs(step.stage, ctx)  # now: after the stages before it ran
            fp, digests = _fingerprint(config, parts)
            ctx.fingerprints[step.stage] = fp
            for s in (step.stage, *_downstream(step.stage)):  # a crash from here on leaves them to run again
                state["stages"].pop(s, None)
            state["running"] = step.stage
            _write_state(pipe, state)
            outputs = RUNNERS[step.stage](ctx, fp)  # (looked up now: tests replace one)
            dt = time.time() - t0
            if step.stage != "serve":  # a service is never current: nothing to record
                state["stages"][step.stage] = {"fingerprint": fp, "parts": digests, "config": config,
                                               "outputs": outputs, "seconds": round(dt, 2),
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            state.pop("running", None)
            _write_state(pipe, state)
            result["ran"].append(step.stage)
            result["seconds"][step.stage] = dt
            console.print(f"[green]{step.stage} done[/] in {dt:.1f} s")
        ran = ", ".join(result["ran"]) or "nothing (every stage current)"
        console.print(f"[green]pipeline finished[/] in {time.time() - t_all:.1f} s; ran: {ran}; state: {pipe.state_path}")
        return result
    finally:
        if lock is not None:
            lock.release()


def _connect(address: str | None) -> None:
    from ._ray import connect
    from ._console import console

    import ray

    if not ray.is_initialized():
        res = connect(address)
        console.print(f"Ray: {int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU")


def _print_plan(steps: list[Step], pipe: Pipeline, dry_run: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ._console import console

    t = Table(title=f"pipeline {pipe.path} (out: {pipe.out}){' - dry run, nothing runs' if dry_run else ''}")
    for c in ("stage", "action", "why"):
        t.add_column(c)
    style = {"run": "[bold yellow]runs[/]", "skip": "[green]skipped[/]", "off": "[dim]off[/]"}
    for s in steps:
        t.add_row(s.stage, style[s.action], escape(s.reason))
    console.print(t)

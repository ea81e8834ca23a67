"""Reading a pipeline file: :func:`load_pipeline` gives a checked :class:`~._spec.Pipeline`, before any work.

Errors name the file, the line (from the YAML node marks: the document is composed as well as
loaded), the field and, for an unknown key, the nearest known ones. Everything cheap is checked
before any work: the dataset, every extractor spec and its weights, the fit spec (inline or a
``spec:`` file, with its own line numbers), that every feature table it names is either in the
store or made by the extract stage, and the folders written.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..._yamllines import dotted, line_of, read_text, read_yaml_text, unknown_key_message
from ...fitting import FitSpec
from ._spec import Pipeline, PipelineError, PipelineSpec, _FitFile

__all__ = ["load_pipeline"]

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
    from ..._paths import check_folder

    path = Path(path).expanduser().absolute()
    raw, lines = _read_yaml(path, "pipeline file")
    spec: PipelineSpec = _validate(PipelineSpec, raw, path, lines, "pipeline file")
    spec = _resolved(spec, path, lines)
    ds = _dataset(spec, path, lines)
    notes: list[str] = []
    extractors, tables, delayed_tables = [], [], []
    for i, e in enumerate(spec.extract):
        ext, table, delayed = _extractor(i, e, ds, path, lines)
        if table in tables:
            raise PipelineError(f"{_where(path, lines, ('extract', i, 'spec'))}: extract[{i}] makes table {table!r}, as "
                                f"extract[{tables.index(table)}] does; give one of them another `version:` or remove it")
        extractors.append(ext)
        tables.append(table)
        delayed_tables.append(delayed)
    fit_spec = _fit_stage(spec, ds, tables + [d for d in delayed_tables if d], path, lines, notes)
    for what, key, p in (("pipeline folder", "out", spec.out), ("feature store", "store", spec.store),
                         ("model registry", "registry", spec.registry)):
        if "://" not in p:
            check_folder(p, what, f"`{key}:` in {path}", create=True, make=False, error=PipelineError)
    return Pipeline(path=path, spec=spec, fit_spec=fit_spec, extractors=extractors, tables=tables,
                    delayed=delayed_tables, notes=notes)


def _resolved(spec: PipelineSpec, path: Path, lines: dict) -> PipelineSpec:
    """The spec with its dataset, store, registry and out resolved against the file's folder (``out`` local)."""
    base = path.parent
    resolved = {k: _resolve(base, getattr(spec, k)) for k in ("dataset", "store", "registry")}
    resolved["out"] = _resolve(base, spec.out) if spec.out else str(base / f"{path.stem}-run")
    if "://" in resolved["out"]:
        raise PipelineError(f"{_where(path, lines, ('out',))}: out: {spec.out!r} must be a local folder (it holds the "
                            "state file and the fit's memory-mapped run folders); store and registry may be URIs")
    return spec.model_copy(update=resolved)


def _dataset(spec: PipelineSpec, path: Path, lines: dict):
    """The pipeline's dataset, opened (a folder or a description file)."""
    from ...datasets import DatasetError, is_description, open_dataset

    if not (Path(spec.dataset).is_dir() or is_description(spec.dataset)):
        state = "is not a folder or a description (.yaml)" if Path(spec.dataset).exists() else "does not exist"
        raise PipelineError(f"{_where(path, lines, ('dataset',))}: dataset {spec.dataset} {state} (paths are relative "
                            f"to the pipeline file's folder {path.parent}); give a dataset folder in the Algonauts "
                            "layout or a dataset description file")
    try:
        return open_dataset(spec.dataset)
    except DatasetError as e:
        raise PipelineError(f"{_where(path, lines, ('dataset',))}: dataset: {e}") from None


def _extractor(i: int, e, ds, path: Path, lines: dict) -> tuple:
    """``extract[i]``'s extractor (weights checked), the table it makes and, on a time series, the delayed
    table made beside it (or None)."""
    from ...features import WeightsNotFoundError, get_extractor, with_layer

    where = _where(path, lines, ("extract", i, "spec"))
    try:
        ext = with_layer(e.spec, e.layer) if e.layer is not None else get_extractor(e.spec)
        ext.resolve_weights()
    except WeightsNotFoundError as err:
        raise PipelineError(f"{where}: extract[{i}] {e.spec!r}: {err}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"{where}: extract[{i}]: extractor spec {e.spec!r} is invalid: {err}") from None
    if not ds.is_timeseries:
        odd = sorted({"resample", "delays"} & e.model_fields_set)
        if odd:
            raise PipelineError(f"{_where(path, lines, ('extract', i, odd[0]))}: extract[{i}].{odd[0]} is for "
                                f"time-series datasets; {ds.root} has one row per stimulus: remove it")
        return ext, e.version or ext.version, None
    from ...features import delayed_table, timeseries_extractor, timeseries_table

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
    delayed = None
    if e.delays is not None:
        if not e.delays or len(set(e.delays)) != len(e.delays):
            raise PipelineError(f"{_where(path, lines, ('extract', i, 'delays'))}: extract[{i}].delays must be "
                                f"distinct integers (TRs), e.g. [1, 2, 3, 4], or null; got {e.delays}")
        delayed = delayed_table(table, e.delays)
    return ext, table, delayed


def _fit_stage(spec: PipelineSpec, ds, made: list[str], path: Path, lines: dict, notes: list[str]) -> FitSpec | None:
    """The fit stage's spec, checked against the dataset's subjects and the tables there or ``made`` (None: an
    extract-only pipeline, whose stages that read a fit have nothing to read)."""
    if spec.fit is None:
        if not spec.extract:
            raise PipelineError(f"{path}: the pipeline has neither `extract:` nor `fit:`, so it would do nothing; "
                                "list extractors under `extract:` and/or give a fit spec under `fit:`")
        if spec.serve.enabled:
            raise PipelineError(f"{_where(path, lines, ('serve', 'enabled'))}: serve.enabled: the serve stage serves "
                                "the models of the fit stage, and this pipeline has no `fit:`; add one, or turn "
                                "serving off")
        return None
    fit_spec = _fit_spec(spec, path, lines, notes)
    if fit_spec.subjects != "all":
        bad = [s for s in fit_spec.subjects if s not in ds.subjects]
        if bad:
            raise PipelineError(f"{_where(path, lines, ('fit', 'subjects'))}: fit.subjects: {bad} are not in "
                                f"{ds.root} (subjects: {', '.join(ds.subjects)})")
    _check_tables(spec, fit_spec, made, path, lines)
    return fit_spec


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
    from ...features import FeatureStore, FeatureStoreError

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

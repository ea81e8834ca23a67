"""The plan: for every stage, run / skip / off and why (:func:`plan_pipeline`; reads the store and registry only).

A stage is skipped when its fingerprint is unchanged and its outputs are still there; otherwise it
runs, and so does every stage downstream of it. ``--from`` / ``--only`` refuse to run over a stale
upstream stage, naming it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...fitting import FitSpec, read_cortex_maps
from ._identity import (_canonical, _dataset_identity, _digest, _file_sha, _fingerprint, _own, _record_identity,
                        _stimuli_identity, _table_identity)
from ._spec import DEPENDS, STAGES, Pipeline, PipelineError, _title
from ._state import _Ctx, read_state

__all__ = ["Step", "plan_pipeline", "PART_NAMES"]

#: Names of a fingerprint's parts, for the reasons the plan gives.
PART_NAMES = {"config": "config", "stimuli": "stimuli (images, captions)",
              "dataset": "dataset (responses, ROIs, noise ceilings)", "tables": "feature tables",
              "records": "registered models", "upstream": "an upstream stage", "metrics": "metrics.json",
              "maps": "the maps (maps.json)"}


@dataclass
class Step:
    """One stage of the plan: ``run``, ``skip`` (current, or left out by --only / --from) or ``off``."""

    stage: str
    action: Literal["run", "skip", "off"]
    reason: str
    current: bool = False  # fingerprint unchanged and outputs there (or off)


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
                 "upstream": up, "maps": _file_sha(Path(ev["maps"])) if ev.get("maps") else None})
    return spec.serve.model_dump(), {"upstream": up}


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
        if not (p.is_file() and _file_sha(p) == out.get("metrics_sha256")):
            return f"{p} missing or changed"
        return _missing_maps(out)
    if stage == "report":
        p = Path(out.get("html", ""))
        return None if p.is_file() else f"{p} missing"
    return None


def _missing_maps(out: dict) -> str | None:
    """Why the maps the evaluate stage wrote are no longer there (None when they are, or when it wrote none)."""
    if not out.get("maps"):
        return None
    p = Path(out["maps"])
    if not p.is_file() or _file_sha(p) != out.get("maps_sha256"):
        return f"{p} missing or changed"
    gone = [f for f in read_cortex_maps(p).files if not f.is_file()]
    return f"{len(gone)} of its map files missing ({gone[0]}{' ...' if len(gone) > 1 else ''})" if gone else None


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


def _upstream(stage: str) -> list[str]:
    out: list[str] = []
    for d in DEPENDS[stage]:
        out += [*_upstream(d), d]
    return list(dict.fromkeys(out))


def _downstream(stage: str) -> list[str]:
    return [s for s in STAGES if stage in _upstream(s)]


def _print_plan(steps: list[Step], pipe: Pipeline, dry_run: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .._console import console

    t = Table(title=f"pipeline {pipe.path} (out: {pipe.out}){' - dry run, nothing runs' if dry_run else ''}")
    for c in ("stage", "action", "why"):
        t.add_column(c)
    style = {"run": "[bold yellow]runs[/]", "skip": "[green]skipped[/]", "off": "[dim]off[/]"}
    for s in steps:
        t.add_row(s.stage, style[s.action], escape(s.reason))
    console.print(t)

"""Running a pipeline: :func:`run_pipeline` runs the stages that are not current, in order.

A stage that starts is forgotten first (with its downstream), so a crash leaves it to be run again:
a rerun resumes at the stage that failed (extraction itself resumes row by row, an adaptor from its
last epoch). The stages' work (library calls, the stage folders under ``out``) is in :mod:`._stages`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ._load import load_pipeline
from ._identity import _fingerprint
from ._plan import _downstream, _inputs, _print_plan, plan_pipeline
from ._spec import Pipeline, PipelineError
from ._state import _Ctx, _write_state, read_state

__all__ = ["run_pipeline"]

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
    from .._console import console

    pipe = path if isinstance(path, Pipeline) else load_pipeline(path)
    if pipe.spec.storage_options:
        _use_storage_options(pipe.spec.storage_options)
    for n in pipe.notes:
        console.print(f"[yellow]note:[/] {n}")
    lock = None if dry_run else _lock(pipe)
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
        for step in steps:
            if step.action != "run":
                if step.action == "skip" and step.current:  # its fingerprint feeds the stages after it
                    ctx.fingerprints[step.stage] = state["stages"][step.stage]["fingerprint"]
                else:
                    ctx.fingerprints[step.stage] = None
                continue
            if step.stage in ("extract", "fit", "serve"):
                _connect(address or pipe.spec.address)
            console.rule(f"[bold]{step.stage}[/] ({todo.index(step) + 1}/{len(todo)}): {step.reason}", align="left")
            dt = _run_stage(ctx, step.stage)
            result["ran"].append(step.stage)
            result["seconds"][step.stage] = dt
            console.print(f"[green]{step.stage} done[/] in {dt:.1f} s")
        ran = ", ".join(result["ran"]) or "nothing (every stage current)"
        console.print(f"[green]pipeline finished[/] in {time.time() - t_all:.1f} s; ran: {ran}; state: {pipe.state_path}")
        return result
    finally:
        if lock is not None:
            lock.release()


def _lock(pipe: Pipeline):
    """The pipeline's ``out`` folder taken for this run (another run on it is refused), as a held file lock."""
    from filelock import FileLock, Timeout

    pipe.out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(pipe.out / ".pipeline.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PipelineError(f"another `brainstore run` is using {pipe.out} (lock {pipe.out / '.pipeline.lock'}); "
                            "wait for it to finish, or give this pipeline another `out:`") from None
    return lock


def _run_stage(ctx: _Ctx, stage: str) -> float:
    """Run one stage and record it in the state file; its seconds. It and its downstream are dropped from the
    state first, so a crash leaves them to run again."""
    from ._stages import RUNNERS

    pipe, state = ctx.pipe, ctx.state
    t0 = time.time()
    config, parts = _inputs(stage, ctx)  # now: after the stages before it ran
    fp, digests = _fingerprint(config, parts)
    ctx.fingerprints[stage] = fp
    for s in (stage, *_downstream(stage)):  # a crash from here on leaves them to run again
        state["stages"].pop(s, None)
    state["running"] = stage
    _write_state(pipe, state)
    outputs = RUNNERS[stage](ctx, fp)  # (looked up now: tests replace one)
    dt = time.time() - t0
    if stage != "serve":  # a service is never current: nothing to record
        state["stages"][stage] = {"fingerprint": fp, "parts": digests, "config": config, "outputs": outputs,
                                  "seconds": round(dt, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    state.pop("running", None)
    _write_state(pipe, state)
    return dt


def _connect(address: str | None) -> None:
    """Ray, started or joined once per run (the stages that need it)."""
    import ray

    from .._console import console
    from .._ray import connect

    if not ray.is_initialized():
        res = connect(address)
        console.print(f"Ray: {int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU")


def _use_storage_options(options: dict) -> None:
    """The file's ``storage_options`` for every library call of this process and the Ray tasks it starts:
    folded into ``$BRAINSTORE_STORAGE_OPTIONS`` under the keys already set there (``-S`` flags and the
    variable win over the file)."""
    from ..._storage import StorageOptionsError, use_options

    try:
        use_options(options, "storage_options", over_env=False)
    except StorageOptionsError as e:
        raise PipelineError(str(e)) from None

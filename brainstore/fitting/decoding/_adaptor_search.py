"""The search over an adaptor's settings (:class:`~brainstore.fitting.SearchParams`) with Ray Tune.

Each trial is a Ray Train run of the adaptor (:func:`~._adaptor_train.train_loop`, on the spec's
workers) whose epochs report to Tune (``TuneReportCallback``); ASHA stops the trials that trail at
its rungs (epochs), and each trial stops early by ``patience`` and keeps its best epoch. The first
trial is the spec's own settings, the others are drawn (seeded) from the search space. The winner is
the trial with the best validation top-1 at its best epoch (the first of equals): its checkpoint
holds those weights, so nothing is trained again.

The search lives in ``<run folder>/train/search``: Tune's experiment state, and each trial's Ray
Train folder under ``trials/<trial id>``. Started again on the same run folder, a killed search
resumes with Tune's ``Tuner.restore`` (finished trials are kept, not rerun) and an unfinished trial
resumes from its last epoch's checkpoint, as a single training does.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .._spec import AdaptorParams, SearchParams
from ._adaptor_train import CKPT_FILE, train_loop
from ._adaptor_trainer import latest_checkpoint, run_trainer, spec_hash

__all__ = ["search_adaptor", "trial_table"]


def _trial(config: dict, cfg: dict, workers: int, use_gpu: bool) -> None:
    """One trial (a Tune function trainable): the adaptor trained with ``config``'s settings, each epoch reported
    to Tune. One worker: the worker loop runs in the trial's own process; more: a Ray Train run on ``workers``
    (DDP). A restarted trial resumes from its own last checkpoint."""
    from ray import tune

    from ._adaptor_init import adapter_specs

    p = AdaptorParams(**{**cfg["params"], **config})
    storage = Path(cfg["storage"]) / "search" / "trials" / tune.get_context().get_trial_id()
    tcfg = {**cfg, "params": p.model_dump(), "storage": str(storage),
            "adapters": adapter_specs(list(cfg["subjects"]), p, None)}
    tcfg["spec_hash"] = spec_hash(tcfg)
    if workers == 1:  # no worker group to start (~20 s a trial on a 2-core box): Tune keeps the checkpoints
        train_loop({**tcfg, "session": "tune", "resume_from": None})
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    latest = latest_checkpoint(storage)
    tcfg["resume_from"] = str(latest[1] / CKPT_FILE) if latest and latest[2] == tcfg["spec_hash"] else None
    run_trainer(tcfg, workers, use_gpu, storage, callbacks=[TuneReportCallback()])


class _Progress:
    """A line per finished trial: its settings' validation top-1, epochs, and why it stopped."""

    def __new__(cls, n_trials: int, epochs: int, patience: int | None):
        from ray.tune import Callback

        class Progress(Callback):
            done = 0

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.done += 1
                row = _row(trial.config, trial.last_result or {}, epochs, patience)
                print(f"  search trial {self.done}/{n_trials}: val top-1 {row['val_top1']:.3f} "
                      f"(best epoch {row['best_epoch']}, {row['epochs']} run, {row['stopped']}) "
                      f"{_short(trial.config)}", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                print(f"  search trial failed: {_short(trial.config)}", flush=True)

        return Progress()


def _short(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(config.items()))


def _row(config: dict, result: dict, epochs: int, patience: int | None) -> dict:
    """One trial of the search's table: its settings, validation top-1 at its best epoch (-1: the start, the ridge
    base's decoder) overall and per subject, epochs run, why it stopped."""
    run, best = int(result.get("epochs_done", 0)), result.get("best_epoch")
    if run >= epochs:
        stopped = "completed"
    elif best is not None and patience and run - 1 - int(best) >= patience:
        stopped = "early stopping"
    else:
        stopped = "ASHA" if run else "not run"
    return {"config": dict(config), "val_top1": float(result.get("best_val_top1", float("nan"))),
            "best_epoch": None if best is None else int(best), "epochs": run, "stopped": stopped,
            "val_items": int(result.get("val_items", 0)), "floor_held": bool(result.get("best_floor_held", True)),
            "val_subjects": {k[len("best_val_top1_"):]: v for k, v in result.items() if k.startswith("best_val_top1_")}}


def trial_table(results, epochs: int, patience: int | None) -> list[dict]:
    """The search's rows in trial order (``trial`` 0 is the spec's own settings), with each trial's checkpoint."""
    rows = []
    for r in sorted(results, key=lambda r: (r.metrics or {}).get("trial_id", "")):
        m = r.metrics or {}
        row = {"trial": len(rows), **_row(r.config, m, epochs, patience)}
        if r.error is not None:
            row["stopped"] = f"error: {type(r.error).__name__}"
        # a Ray Train trial's last checkpoint (reported by its callback), or Tune's of a one-process trial
        row["checkpoint"] = m.get("checkpoint_path") or (r.checkpoint.path if r.checkpoint else None)
        rows.append(row)
    return rows


def trial_settings(search: SearchParams, p: AdaptorParams) -> list[dict]:
    """The trials' settings, in order: ``p``'s own, the same with the other start (``ridge_base`` flipped, when
    the space varies it), then distinct draws from the space (seeded: the same seed, the same list), as many as
    ``search.trials`` (fewer when the space has fewer combinations)."""
    import numpy as np

    space = search.resolved_space()
    keys = sorted(space)
    own = {k: getattr(p, k) for k in keys}
    n_distinct = int(np.prod([len(space[k]) for k in keys])) + (0 if all(own[k] in space[k] for k in keys) else 1)
    rng = np.random.default_rng(search.seed)
    out, seen = [own], {tuple(own[k] for k in keys)}
    if "ridge_base" in space and len(space["ridge_base"]) > 1 and search.trials > 1:  # then the other start
        other = {**own, "ridge_base": not own["ridge_base"]}
        out.append(other)
        seen.add(tuple(other[k] for k in keys))
    while len(out) < min(search.trials, n_distinct):
        c = {k: space[k][int(rng.integers(len(space[k])))] for k in keys}
        if tuple(c[k] for k in keys) not in seen:
            seen.add(tuple(c[k] for k in keys))
            out.append(c)
    return out


def _tuner(cfg: dict, search: SearchParams, p: AdaptorParams, use_gpu: bool, path: Path):
    """A new Tuner for the search, or the killed one restored from ``path``."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if search.workers > 1:  # the trial's driver holds nothing: its Ray Train workers hold the CPUs
        resources = {"cpu": 0, "memory": 2 ** 20}
    else:
        cpus = search.cpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // search.concurrent)
        resources = {"cpu": cpus, "gpu": 1 if use_gpu else 0}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, cfg=cfg, workers=search.workers, use_gpu=use_gpu), resources)
    if tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    settings = trial_settings(search, p)
    scheduler = ASHAScheduler(time_attr="epochs_done", max_t=p.epochs, grace_period=min(search.grace, p.epochs),
                              reduction_factor=search.reduction)
    return tune.Tuner(
        # every trial's settings are given (points_to_evaluate); the choices name their values, the spec's included
        trainable, param_space={k: tune.choice(list(dict.fromkeys([c[k] for c in settings])))
                                for k in search.resolved_space()},
        tune_config=tune.TuneConfig(metric="best_val_top1", mode="max", num_samples=len(settings), scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(points_to_evaluate=settings,
                                                                     max_concurrent=search.concurrent),
                                    time_budget_s=search.time_budget_s),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[_Progress(search.trials, p.epochs, p.patience)]))


def _kept_trial(done: list[dict], min_delta: float | None) -> dict:
    """The trial kept, in trial order (the spec's own settings first), by the rule epochs are kept by
    (:func:`~._scores.replaces_kept`)."""
    from ._scores import replaces_kept

    kept = done[0]
    for r in done[1:]:
        if replaces_kept(r["val_top1"], r.get("floor_held", True), kept["val_top1"], kept.get("floor_held", True),
                         r.get("val_items") or 0, min_delta):
            kept = r
    return kept


@contextlib.contextmanager
def _legacy_output():
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def search_adaptor(cfg: dict, search: SearchParams, p: AdaptorParams, use_gpu: bool,
                   storage: Path) -> tuple[dict, AdaptorParams, dict]:
    """Search ``p``'s settings over ``search``'s space; the winning trial's last checkpoint (its best epoch's
    weights in it), its settings, and the search's record (``trials`` table, ``best`` trial, ``seconds``)."""
    import logging

    import torch

    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # "Wrote the latest version of all result files ..."
    # one checkpoint kept per trial forces a snapshot of the experiment's state each epoch, which Tune warns of
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)
    t0 = time.time()
    path = storage / "search"
    print(f"searching the adaptor's settings: {len(trial_settings(search, p))} trials (Ray Tune, ASHA), validation top-1 on "
          f"{p.val_fraction:.0%} of each subject's training images", flush=True)
    tuner = _tuner(cfg, search, p, use_gpu, path)
    with _legacy_output():  # verbose=0 then prints nothing (the new output prints the experiment's paths regardless)
        results = tuner.fit()
    rows = trial_table(results, p.epochs, p.patience)
    done = [r for r in rows if r["checkpoint"] and r["val_top1"] == r["val_top1"]]
    if not done:
        raise RuntimeError(f"no trial of the adaptor search finished an epoch (see {path}); "
                           f"stops: {[r['stopped'] for r in rows]}")
    best = _kept_trial(done, p.min_delta)
    saved = torch.load(Path(best["checkpoint"]) / CKPT_FILE, map_location="cpu", weights_only=False)
    winner = AdaptorParams(**{**p.model_dump(), **best["config"]})
    record = {"trials": [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows], "best": best["trial"],
              "space": search.resolved_space(), "settings": search.model_dump(), "seconds": time.time() - t0,
              "epochs_run": sum(r["epochs"] for r in rows)}
    return saved, winner, record

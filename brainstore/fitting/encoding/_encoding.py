"""Base encoding models for one subject x hemisphere: design matrices from the feature store, the
estimators by method, and the fit task that writes its predictions to the run folder.

A base fit makes two models (see :mod:`._choice` for why):

* a **validation copy** fitted on the first K-1 contiguous folds of the training split, with its
  hyperparameters chosen by CV over those folds, predicting the last fold (the validation fold);
* the **final model** fitted on the whole training split (hyperparameters by K-fold CV), which
  is registered and predicts the test split.

Both predictions go to files (:class:`~._runfiles.RunLayout`), never back to the driver.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np

from ...datasets import AlgonautsDataset, open_dataset
from ...features import FeatureStore
from ..registry import RunLayout, write_array, write_state

__all__ = ["design_matrix", "subject_stimuli", "validation_folds", "group_folds", "fit_base", "make_estimator",
           "load_estimator", "limit_threads", "METHODS"]

#: Base-model methods: name -> (module, estimator class).
METHODS = {"ridge": ("..ridge", "RidgeCVEncoder"), "mlp": ("..ridge", "MLPEncoder"),
           "banded": ("..ridge", "BandedRidgeCVEncoder")}


def subject_stimuli(ds: AlgonautsDataset, subject: str, split: str) -> list[str]:
    """Stimulus ids of a subject's split, in response-matrix row order."""
    t = ds.stimuli([subject], splits=(split,))
    idx = np.asarray(t.column("index").to_pylist())
    ids = np.asarray(t.column("stimulus_id").to_pylist(), dtype=object)
    return list(ids[np.argsort(idx)])


def design_matrix(fs: FeatureStore, features: list[str], stimulus_ids: list[str]) -> np.ndarray:
    """Concatenated embeddings of ``features`` for ``stimulus_ids``, shape (n, sum of dims), float32."""
    return np.hstack([fs.load(f, stimulus_ids) for f in features]).astype(np.float32, copy=False)


def group_folds(groups, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K contiguous folds that never split a group (a time series' clip: never a fold boundary
    inside a run).

    ``groups`` labels each row; a group's rows must be adjacent. Fold boundaries are the group
    boundaries nearest to sklearn ``KFold``'s, each fold holding at least one group.

    Raises
    ------
    ValueError
        Fewer groups than folds, or a group whose rows are not adjacent.
    """
    from ...datasets import run_starts

    g = np.asarray(groups, dtype=object)
    n = len(g)
    starts = run_starts(g)
    names = [g[i] for i in starts]
    if len(set(names)) != len(names):
        again = next(x for x in names if names.count(x) > 1)
        raise ValueError(f"the rows of run {again!r} are not adjacent; cross-validation by run needs each run's rows "
                         "together")
    if len(names) < n_folds:
        raise ValueError(f"{len(names)} runs (clips) cannot make {n_folds} folds that keep each run whole; lower "
                         f"folds to at most {len(names)} (folds: in the fit spec) or add runs")
    ideal = [f * n // n_folds for f in range(1, n_folds)]  # KFold's boundaries (up to its remainder rows)
    bounds, last = [], 0  # last: index in starts of the previous boundary
    for f, b in enumerate(ideal, start=1):
        # a group start after the previous boundary that leaves one group for each later fold
        pick = min(range(last + 1, len(starts) - (n_folds - f) + 1), key=lambda i: (abs(starts[i] - b), i))
        bounds.append(starts[pick])
        last = pick
    edges = [0, *bounds, n]
    return [(np.concatenate([np.arange(0, a), np.arange(b, n)]), np.arange(a, b)) for a, b in zip(edges, edges[1:])]


def validation_folds(n_samples: int, n_folds: int, groups=None) -> tuple[list, int, list]:
    """K contiguous folds, the size of the rows before the last fold, and the folds of those rows.

    With ``groups`` (a time series' clip per row) the folds keep each group whole (:func:`group_folds`),
    and so do the inner folds: the validation copy's K-1 folds are the first K-1 folds.

    Returns
    -------
    folds : list of (train, val) index arrays over all ``n_samples`` rows (sklearn ``KFold``)
    n_fit : int
        Rows ``[0, n_fit)`` fit the validation copy; rows ``[n_fit, n_samples)`` are the validation fold.
    inner : list of (train, val) index arrays over rows ``[0, n_fit)``: the first K-1 folds.
    """
    from sklearn.model_selection import KFold

    if n_folds < 3:
        raise ValueError(f"folds must be >= 3 (one fold is held out for validation, the others choose "
                         f"hyperparameters by CV), got {n_folds}")
    if groups is not None:
        if len(groups) != n_samples:
            raise ValueError(f"{len(groups)} group labels for {n_samples} rows")
        folds = group_folds(groups, n_folds)
    else:
        folds = list(KFold(n_folds).split(np.zeros(n_samples)))
    n_fit = int(folds[-1][1][0])
    inner = [(np.setdiff1d(np.arange(n_fit), va), va) for _, va in folds[:-1]]
    return folds, n_fit, inner


def _estimator_class(method: str):
    import importlib

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {sorted(METHODS)}")
    module, name = METHODS[method]
    return getattr(importlib.import_module(module, __package__), name)


def make_estimator(job: dict, device: str):
    """A new estimator for ``job["method"]`` with the job's hyperparameters."""
    method = job["method"]
    cls = _estimator_class(method)
    if method == "mlp":
        return cls(device=device, **(job.get("params") or {}))
    kw: dict[str, Any] = dict(alphas=tuple(job["alphas"]), n_folds=int(job["folds"]), scoring=job["scoring"],
                              device=device)
    if method == "banded":
        kw.update(bands=list(job["band_sizes"]), **(job.get("params") or {}))
    return cls(**kw)


def load_estimator(method: str, state: dict[str, np.ndarray], params: dict | None = None):
    """A fitted estimator from its saved state (``params``: the MLP's hyperparameters)."""
    cls = _estimator_class(method)
    kw = dict(params or {}) if method == "mlp" else {}
    return cls.from_state_dict(state, device="cpu", **kw)


def _fit(method: str, est, X: np.ndarray, Y: np.ndarray, folds: list):
    """Fit; the CV folds go to the methods that choose hyperparameters by CV (the MLP early-stops)."""
    return est.fit(X, Y) if method == "mlp" else est.fit(X, Y, folds=folds)


def limit_threads(threads: int | None):
    """Torch and BLAS threads = the CPUs this task was given."""
    import contextlib

    import torch

    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(int(threads))
    return threadpool_limits(int(threads))


def fit_base(job: dict) -> dict:
    """Fit one base model for one subject x hemisphere; write its predictions and state to the run folder.

    ``job`` keys: dataset, store, run_dir, subject, hemi, model, method, features, alphas, folds,
    scoring, device, params (method settings or None), threads.

    Returns
    -------
    dict
        A small summary (model, subject, hemi, method, info); the arrays are in the run folder.
    """
    import torch

    t0 = time.time()
    device = job.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = open_dataset(job["dataset"])
    fs = FeatureStore(job["store"], job.get("store_options"), create=False)
    layout = RunLayout(job["run_dir"])
    model, subject, hemi = job["model"], job["subject"], job["hemi"]
    X = design_matrix(fs, job["features"], subject_stimuli(ds, subject, "train"))
    Xt = design_matrix(fs, job["features"], subject_stimuli(ds, subject, "test"))
    Y = np.asarray(ds.responses(subject, hemi, "train"), dtype=np.float32)  # memory map: read in vertex batches
    if len(X) != len(Y):
        raise ValueError(f"{subject} {hemi}: {len(X)} training stimuli but {len(Y)} response rows")
    folds, n_fit, inner = validation_folds(len(X), int(job["folds"]), ds.cv_groups(subject, "train"))
    job = {**job, "band_sizes": [fs.info(f).dim for f in job["features"]]}
    with limit_threads(job.get("threads")):
        torch_threads = torch.get_num_threads()
        val_copy = _fit(job["method"], make_estimator(job, device), X[:n_fit], Y[:n_fit], inner)
        write_array(layout.val_pred(model, subject, hemi), val_copy.predict(X[n_fit:]))
        del val_copy
        est = _fit(job["method"], make_estimator(job, device), X, Y, folds)
        write_array(layout.test_pred(model, subject, hemi), est.predict(Xt))
        if job["method"] == "banded" and ds.has_test_responses(subject):
            from ...scoring import correlation_split

            Yt = np.asarray(ds.responses(subject, hemi, "test"), dtype=np.float32)
            write_array(layout.split(model, subject, hemi), correlation_split(est.predict_split(Xt), Yt))
    write_state(layout.state(model, subject, hemi), est.state_dict())
    info: dict[str, Any] = {"n_train": len(X), "n_fit": n_fit, "n_val": len(X) - n_fit, "n_test": len(Xt),
                            "n_features": int(X.shape[1]), "n_vertices": int(Y.shape[1]), "device": device,
                            "threads": job.get("threads"), "torch_threads": torch_threads}
    alpha = getattr(est, "alpha_", None)
    if alpha is not None:
        info["alpha_median"] = float(np.median(alpha))
        info["alpha_counts"] = {f"{a:g}": int(c) for a, c in zip(*np.unique(alpha, return_counts=True))}
    info["seconds"] = time.time() - t0
    info["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"model": model, "subject": subject, "hemi": hemi, "method": job["method"], "info": info}

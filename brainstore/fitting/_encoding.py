"""Encoding models for one subject and hemisphere: design matrices from the feature store,
base fits (ridge / MLP) with out-of-fold predictions, and derived models (per-ROI choice,
ensembles) combined from their members' predictions.

Voxelwise ridge with one alpha per vertex is separable over vertices, so a per-ROI model (SAM
features for early visual cortex, CLIP elsewhere) is exactly the vertex-wise selection of the
predictions of base models fitted on all vertices; ensembles average predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..datasets import AlgonautsDataset
from ..features import FeatureStore

__all__ = ["design_matrix", "subject_stimuli", "oof_ridge_predictions", "fit_base", "BaseFit"]


def subject_stimuli(ds: AlgonautsDataset, subject: str, split: str) -> list[str]:
    """Stimulus ids of a subject's split, in response-matrix row order."""
    t = ds.stimuli([subject], splits=(split,))
    idx = np.asarray(t.column("index").to_pylist())
    ids = np.asarray(t.column("stimulus_id").to_pylist(), dtype=object)
    return list(ids[np.argsort(idx)])


def design_matrix(fs: FeatureStore, features: list[str], stimulus_ids: list[str]) -> np.ndarray:
    """Concatenated embeddings of ``features`` for ``stimulus_ids``, shape (n, sum of dims), float32."""
    return np.hstack([fs.load(f, stimulus_ids) for f in features]).astype(np.float32, copy=False)


def oof_ridge_predictions(X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, folds, *, standardize: bool = True,
                          device: str = "cpu") -> np.ndarray:
    """Out-of-fold ridge predictions with a fixed alpha per target.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    Y : array of shape (n_samples, n_targets)
    alpha : array of shape (n_targets,)
        Each target's (already selected) regularization.
    folds : list of (train, val) index arrays

    Returns
    -------
    pred : array of shape (n_samples, n_targets), float32; row i predicted by the fold that held it out.
    """
    import torch

    dev = torch.device(device)
    Xt = torch.as_tensor(np.asarray(X, np.float64), device=dev)
    Yt = torch.as_tensor(np.asarray(Y, np.float32), device=dev)
    alpha = np.asarray(alpha, np.float64)
    out = torch.empty_like(Yt)
    groups = [(a, torch.as_tensor(np.flatnonzero(alpha == a), device=dev)) for a in np.unique(alpha)]
    for tr, va in folds:
        tr_t, va_t = torch.as_tensor(tr, device=dev), torch.as_tensor(va, device=dev)
        Xtr = Xt[tr_t]
        mu = Xtr.mean(0)
        sd = Xtr.std(0, unbiased=False) if standardize else torch.ones_like(mu)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        Xs, Xv = (Xtr - mu) / sd, (Xt[va_t] - mu) / sd
        evals, V = torch.linalg.eigh(Xs.T @ Xs)
        ym = Yt[tr_t].mean(0)
        B = (V.T @ Xs.T).to(torch.float32) @ (Yt[tr_t] - ym)  # p x t, in the eigenbasis
        A = (Xv @ V).to(torch.float32)
        ev = evals.clamp_min(0).to(torch.float32)
        pred = torch.empty((len(va), Yt.shape[1]), dtype=torch.float32, device=dev)
        for a, idx in groups:
            pred[:, idx] = A @ (B[:, idx] / (ev + float(a))[:, None])
        out[va_t] = pred + ym
    return out.cpu().numpy()


@dataclass
class BaseFit:
    """A fitted base model for one subject x hemisphere, with what evaluation needs."""

    subject: str
    hemi: str
    model: str
    method: str
    features: list[str]
    state: dict[str, np.ndarray]
    oof: np.ndarray  # (n_train, n_vertices) out-of-fold predictions
    test_pred: np.ndarray  # (n_test, n_vertices)
    seconds: float
    info: dict = field(default_factory=dict)


def fit_base(job: dict) -> BaseFit:
    """Fit one base model (ridge or MLP) for one subject x hemisphere. Pure function of ``job``.

    ``job`` keys: dataset, store, subject, hemi, model, method, features, alphas, folds, scoring,
    device, mlp (dict or None), threads (int or None).
    """
    import torch

    from ._ridge import RidgeCVEncoder
    from ._solvers import kfold_indices

    t0 = time.time()
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = job.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = AlgonautsDataset(job["dataset"])
    fs = FeatureStore(job["store"])
    subject, hemi = job["subject"], job["hemi"]
    train_ids = subject_stimuli(ds, subject, "train")
    test_ids = subject_stimuli(ds, subject, "test")
    X = design_matrix(fs, job["features"], train_ids)
    Xt = design_matrix(fs, job["features"], test_ids)
    Y = np.asarray(ds.responses(subject, hemi, "train"), dtype=np.float32)
    folds = kfold_indices(len(X), int(job["folds"]))
    info: dict = {"n_train": len(X), "n_test": len(Xt), "n_features": X.shape[1], "n_vertices": Y.shape[1]}
    if job["method"] == "ridge":
        est = RidgeCVEncoder(alphas=tuple(job["alphas"]), n_folds=int(job["folds"]), scoring=job["scoring"], device=device)
        est.fit(X, Y)
        oof = oof_ridge_predictions(X, Y, est.alpha_, folds, device=device)
        info["alpha_median"] = float(np.median(est.alpha_))
        info["alpha_counts"] = {f"{a:g}": int(c) for a, c in zip(*np.unique(est.alpha_, return_counts=True))}
    elif job["method"] == "mlp":
        from ._mlp import MLPEncoder

        params = dict(job.get("mlp") or {})
        est = MLPEncoder(device=device, **params).fit(X, Y)
        oof = np.empty_like(Y)
        for tr, va in folds:
            oof[va] = MLPEncoder(device=device, **params).fit(X[tr], Y[tr]).predict(X[va])
    else:
        raise ValueError(f"unknown method {job['method']!r}; use 'ridge' or 'mlp'")
    return BaseFit(subject=subject, hemi=hemi, model=job["model"], method=job["method"], features=list(job["features"]),
                   state=est.state_dict(), oof=oof.astype(np.float32), test_pred=est.predict(Xt).astype(np.float32),
                   seconds=time.time() - t0, info=info)


def predict_base(method: str, state: dict[str, np.ndarray], X: np.ndarray, mlp_params: dict | None = None) -> np.ndarray:
    """Predictions of a registered base model from its saved state, shape (n, n_vertices)."""
    if method == "ridge":
        from ._ridge import RidgeCVEncoder

        return RidgeCVEncoder.from_state_dict(state).predict(X)
    if method == "mlp":
        from ._mlp import MLPEncoder

        return MLPEncoder.from_state_dict(state, **(mlp_params or {})).predict(X)
    raise ValueError(f"unknown method {method!r}")

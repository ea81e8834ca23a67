"""The ridge decoder an adaptor is built on and judged against, on the adaptor's own rows.

The rows are the adaptor's: each trained subject's labeled training images (the first ``fraction``),
the last ``val_fraction`` of them held out. The ridge is the ridge decoder's method
(:func:`~._ridge_decoders.fit_subject_decoder`: voxels z-scored inside each fold, one alpha for every
dimension by 5-fold CV over :data:`~._ridge_decoders.DECODER_ALPHAS`), fitted on the rows the adaptor
trains on, one per subject and target. It serves twice:

- :func:`ridge_base_state`: the adaptor's fixed base (``ridge_base``), the ridge's map rewritten for the
  adaptor's input (voxels z-scored with the adaptor's statistics), so the untrained network decodes as
  the ridge does;
- :func:`ridge_floor`: the ridge's validation top-1 each way, the floor the adaptor's kept epoch must hold
  (``ridge_floor``, :func:`~._scores.holds_floor`);
- :func:`ridge_on_validation`: the honest comparison, on the same validation rows
  (:func:`~._scores.validation_top1`) and on the test split.
"""

from __future__ import annotations

import numpy as np

from ..encoding import subject_stimuli
from ._inputs import response_matrix
from ._ridge_decoders import DECODER_ALPHAS
from ._scores import both_ways, validation_directions

__all__ = ["fit_ridges", "ridge_base_state", "ridge_floor", "ridge_on_validation", "winner"]


def fit_ridges(prep, folds: int = 5) -> dict[str, dict]:
    """``{subject: {"est": {target: RidgeCVEncoder}, "R", "E": {target: embeddings}, "cut", "n"}}``: the ridge of
    each trained subject and target, fitted on its labeled rows before ``cut`` (the rest is validation)."""
    import torch

    from ..ridge import RidgeCVEncoder

    ds, fs = prep.ds, prep.fs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for s in prep.subjects:
        n = prep.n_lab[s]
        cut = prep.n_fit[s]  # the validation cut (whole runs held out for a time series)
        R = response_matrix(ds, s, "train", prep.voxels[s])[:n]
        ids = subject_stimuli(ds, s, "train")[:n]
        E = {t: fs.load(t, ids) for t in prep.targets}
        est = {t: RidgeCVEncoder(alphas=DECODER_ALPHAS, n_folds=min(folds, cut), scoring="r2", alpha_per_target=False,
                                 device=device).fit(R[:cut], E[t][:cut]) for t in prep.targets}
        out[s] = {"est": est, "R": R, "E": E, "cut": cut, "n": n}
    return out


def ridge_base_state(prep, ridges: dict[str, dict]) -> dict[str, np.ndarray]:
    """The adaptor's base buffers: each ridge's ``((R - m) / s) @ C + c`` as a map of the adaptor's input
    ``x = (R - mean) / std``: ``W = (std / s) C``, ``b = ((mean - m) / s) @ C + c``."""
    from ._adaptor_net import base_name

    out = {}
    for s, r in ridges.items():
        mean, std = (np.asarray(prep.norm[s][k], np.float64) for k in ("mean", "std"))
        for t, est in r["est"].items():
            C, xm, xs = (np.asarray(a, np.float64) for a in (est.coef_, est.x_mean_, est.x_scale_))
            out[base_name(s, t, "w")] = ((std / xs)[:, None] * C).astype(np.float32)
            out[base_name(s, t, "b")] = (((mean - xm) / xs) @ C + np.asarray(est.intercept_, np.float64)
                                         ).astype(np.float32)
    return out


def ridge_floor(ridges: dict[str, dict], target: str) -> dict[str, dict]:
    """``{subject: {"b2s", "s2b", "n"}}``: each ridge's validation top-1 each way on ``target``, over ``n`` images."""
    out = {}
    for s, r in ridges.items():
        if r["n"] - r["cut"] >= 2:
            est, R, E, cut = r["est"][target], r["R"], r["E"][target], r["cut"]
            out[s] = {**validation_directions(est.predict(R[cut:]), E[cut:]), "n": r["n"] - cut}
    return out


def ridge_on_validation(prep, ridges: dict[str, dict], ridge_val: dict[str, dict], adaptor_val: dict[str, float],
                        adaptor_dirs: dict | None = None, *, n_candidates: int = 300,
                        n_draws: int = 30) -> dict[str, dict]:
    """``{subject: {"adaptor_val_top1", "ridge_val_top1", "adaptor_val", "ridge_val", "ridge_alpha", "ridge_test",
    "n_fit", "n_val"}}`` for each trained subject with a validation split, on the first target; ``ridge_val``:
    :func:`ridge_floor`'s figures; ``*_val``: top-1 each way (``{"b2s", "s2b"}``; the adaptor's from
    ``adaptor_dirs``, ``{"b2s_<subject>": ...}``, when given)."""
    from ...scoring import retrieval_metrics

    ds, fs, target = prep.ds, prep.fs, prep.targets[0]
    out = {}
    for s, r in ridges.items():
        if s not in adaptor_val:
            continue
        est, cut, n = r["est"][target], r["cut"], r["n"]
        rv = {d: ridge_val[s][d] for d in ("b2s", "s2b")}
        row = {"adaptor_val_top1": float(adaptor_val[s]), "ridge_val_top1": both_ways(rv), "ridge_val": rv,
               "ridge_alpha": float(est.alpha_[0]), "n_fit": cut, "n_val": n - cut}
        if adaptor_dirs and f"b2s_{s}" in adaptor_dirs:
            row["adaptor_val"] = {d: float(adaptor_dirs[f"{d}_{s}"]) for d in ("b2s", "s2b")}
        if ds.has_test_responses(s):
            Et = fs.load(target, subject_stimuli(ds, s, "test"))
            D = est.predict(response_matrix(ds, s, "test", prep.voxels[s]))
            row["ridge_test"] = retrieval_metrics(D, Et, n_candidates=n_candidates, n_draws=n_draws)
        out[s] = row
    return out


def winner(comparison: dict[str, dict]) -> str | None:
    """"adaptor" unless ridge's mean validation top-1 is higher (a tie keeps the adaptor); None without figures."""
    if not comparison:
        return None
    a = np.mean([c["adaptor_val_top1"] for c in comparison.values()])
    r = np.mean([c["ridge_val_top1"] for c in comparison.values()])
    return "ridge" if r > a else "adaptor"

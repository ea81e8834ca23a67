"""The honest comparison an adaptor gets: the ridge decoder fitted on the same training rows and judged on
the same validation split (:func:`~._scores.validation_top1`), and scored on the test split too.

The rows are the adaptor's: each trained subject's labeled training images (the first ``fraction``),
the last ``val_fraction`` of them held out. The ridge is the ridge decoder's method
(:func:`~._ridge_decoders.fit_subject_decoder`: voxels z-scored inside each fold, one alpha for every
dimension by 5-fold CV over :data:`~._ridge_decoders.DECODER_ALPHAS`), on the first target table.
"""

from __future__ import annotations

import numpy as np

from ..encoding import subject_stimuli
from ._inputs import response_matrix
from ._ridge_decoders import DECODER_ALPHAS
from ._scores import validation_top1

__all__ = ["ridge_on_validation", "winner"]


def ridge_on_validation(prep, adaptor_val: dict[str, float], *, n_candidates: int = 300, n_draws: int = 30,
                        folds: int = 5) -> dict[str, dict]:
    """``{subject: {"adaptor_val_top1", "ridge_val_top1", "ridge_alpha", "ridge_test"}}`` for each trained
    subject with a validation split (``prep``: the adaptor driver's prepared inputs)."""
    import torch

    from ...scoring import retrieval_metrics
    from ..ridge import RidgeCVEncoder

    ds, fs, target, p = prep.ds, prep.fs, prep.targets[0], prep.p
    out = {}
    for s in prep.subjects:
        if s not in adaptor_val:
            continue
        n = prep.n_lab[s]
        n_val = int(round(n * p.val_fraction))
        R = response_matrix(ds, s, "train", prep.voxels[s])[:n]
        E = fs.load(target, subject_stimuli(ds, s, "train")[:n])
        fit, val = slice(0, n - n_val), slice(n - n_val, n)
        est = RidgeCVEncoder(alphas=DECODER_ALPHAS, n_folds=min(folds, n - n_val), scoring="r2",
                             alpha_per_target=False,
                             device="cuda" if torch.cuda.is_available() else "cpu").fit(R[fit], E[fit])
        row = {"adaptor_val_top1": float(adaptor_val[s]), "ridge_val_top1": validation_top1(est.predict(R[val]), E[val]),
               "ridge_alpha": float(est.alpha_[0]), "n_fit": n - n_val, "n_val": n_val}
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

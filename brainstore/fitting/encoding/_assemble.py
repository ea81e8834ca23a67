"""Per-subject assembly (a Ray task): derived models from the members' files, scores, registration.

Runs once every base fit of a subject has written its predictions to the run folder. Per
hemisphere it composes each per-ROI model and ensemble from its members' memory-mapped
predictions (vertex block by vertex block, :func:`~._compose.compose`), scores every model on the
validation fold (:func:`~._choice.validation_r`) and, where the dataset has them, on the test
responses (noise-normalized), then registers the subject's models: base models with their fitted
arrays, fitted stimulus ids and feature-row fingerprints; derived models with their choices or
weights and the sha256 of every member's weights. It returns only small summaries.
"""

from __future__ import annotations

import resource
from typing import Any

import numpy as np
import safetensors.numpy

from ...datasets import AlgonautsDataset, open_dataset
from ...features import FeatureStore
from ...scoring import roi_summary
from .._spec import FitSpec, PerRoiSpec
from ..registry import (ModelRegistry, RunLayout, dataset_digest, encode_ids, new_array, open_array, stimuli_digest,
                        table_fingerprint)
from ._choice import cross_fitted_choices, resolve_regions, rule_choice, validation_halves, validation_r
from ._compose import compose, normalized_weights
from ._encoding import subject_stimuli, validation_folds
from ._scores import pooled_roi_summary, pooled_split_scores, pooled_test_scores, score_test_split

__all__ = ["assemble_subject", "per_roi_members"]

#: Columns of a validation fold scored at once (bounds the float64 copies in Pearson r).
_SCORE_CHUNK = 2048


def per_roi_members(p: PerRoiSpec, base: list[str]) -> list[str]:
    """A per-ROI model's members in index order: the default first, then candidates and rule targets."""
    names = [p.default] + [x for x in (p.members or (base if p.choose_by_cv else [])) if x != p.default]
    return names + [x for x in p.rules.values() if x not in names]


def _choice_regions(ds: AlgonautsDataset, subject: str, hemi: str, p: PerRoiSpec) -> list[np.ndarray]:
    """Regions a data-driven per-ROI choice is made for, in priority order."""
    if p.roi_level == "family":
        return list(ds.roi_masks(subject, hemi, families=ds.report_families(subject)).values())
    return list(ds.roi_masks(subject, hemi, level="roi", families=ds.report_families(subject)).values())


def _half_scores(layout: RunLayout, members: list[str], subject: str, hemi: str, Yv: np.ndarray):
    """Per-half validation Pearson r of each member, two arrays of shape (n_members, n_vertices)."""
    from ...scoring import pearson_r

    a, b = validation_halves(len(Yv))
    preds = [open_array(layout.val_pred(m, subject, hemi)) for m in members]
    return (np.stack([pearson_r(p[a], Yv[a], chunk=_SCORE_CHUNK) for p in preds]),
            np.stack([pearson_r(p[b], Yv[b], chunk=_SCORE_CHUNK) for p in preds]))


def _compose_per_roi(layout, ds, p: PerRoiSpec, members: list[str], subject: str, hemi: str, Yv) -> np.ndarray:
    """Write a per-ROI model's validation and test predictions; return its final choice."""
    vals = [open_array(layout.val_pred(m, subject, hemi)) for m in members]
    tests = [open_array(layout.test_pred(m, subject, hemi)) for m in members]
    n_vertices = vals[0].shape[1]
    if p.choose_by_cv:
        regions = _choice_regions(ds, subject, hemi, p)
        c_a, c_b, choice = cross_fitted_choices(_half_scores(layout, members, subject, hemi, Yv), regions)
    else:
        regions = resolve_regions(ds.regions(subject, hemi), list(p.rules), f"per_roi {p.name!r} rules")
        choice = rule_choice(regions, {r: members.index(m) for r, m in p.rules.items()}, n_vertices)
        c_a = c_b = choice  # rules use no data: nothing to cross-fit
    a, b = validation_halves(vals[0].shape[0])
    with new_array(layout.val_pred(p.name, subject, hemi), vals[0].shape) as out:
        compose("per-roi", [v[a] for v in vals], choice=c_a, out=out[a])
        compose("per-roi", [v[b] for v in vals], choice=c_b, out=out[b])
    with new_array(layout.test_pred(p.name, subject, hemi), tests[0].shape) as out:
        compose("per-roi", tests, choice=choice, out=out)
    return choice


def _compose_ensemble(layout, name: str, members: list[str], weights: np.ndarray, subject: str, hemi: str) -> None:
    for path in (layout.val_pred, layout.test_pred):
        preds = [open_array(path(m, subject, hemi)) for m in members]
        with new_array(path(name, subject, hemi), preds[0].shape) as out:
            compose("ensemble", preds, weights=weights, out=out)


def _metrics(ds, layout, model: str, subject: str, hemis: list[str], Yvs: dict, split_names: list[str] | None) -> dict:
    """Validation and (when the dataset has them) test scores of one model, per hemisphere and pooled."""
    out: dict[str, Any] = {}
    val_v, score_v, split_v = {}, {}, {}
    for h in hemis:
        masks = ds.roi_masks(subject, h)
        val_v[h] = validation_r(open_array(layout.val_pred(model, subject, h)), Yvs[h])
        out[h] = {"val_r": roi_summary(val_v[h], masks)}
        if ds.has_test_responses(subject):
            t = score_test_split(ds, subject, h, open_array(layout.test_pred(model, subject, h)),
                                 require_noise_ceiling=False)
            out[h]["test_r"] = roi_summary(t["r"], masks)
            if t["score"] is not None:
                out[h]["test_nnmc"] = roi_summary(t["score"], masks)
                score_v[h] = t["score"]
            if split_names and layout.split(model, subject, h).exists():
                split_v[h] = open_array(layout.split(model, subject, h))
    both: dict[str, Any] = {"val_r_mean": float(np.mean(np.concatenate([val_v[h] for h in hemis]))),
                            "val_r_roi": pooled_roi_summary(ds, subject, val_v)}
    if len(score_v) == len(hemis):
        both.update(pooled_test_scores(ds, subject, score_v))
    if split_names and len(split_v) == len(hemis):
        both["split_test_r_roi"] = pooled_split_scores(ds, subject, split_v, split_names)
    out["both"] = both
    return out


def assemble_subject(job: dict) -> dict:
    """Compose, score and register every model of one subject (see the module docstring).

    ``job`` keys: dataset, store, registry, run_dir, subject, spec (``FitSpec.model_dump()``),
    fitted (base models fitted for every hemisphere), infos ({model: {hemi: fit info}}), register.

    Returns
    -------
    dict with ``metrics`` ({model: metrics}), ``failures`` (list of dicts), ``registered`` (names)
    and ``peak_rss_gb``.
    """
    spec = FitSpec(**job["spec"])
    ds, fs = open_dataset(job["dataset"]), FeatureStore(job["store"], job.get("store_options"), create=False)
    layout, subject, hemis = RunLayout(job["run_dir"]), job["subject"], list(spec.hemispheres)
    train_ids = subject_stimuli(ds, subject, "train")
    n_fit = validation_folds(len(train_ids), spec.folds, ds.cv_groups(subject, "train"))[1]
    Yvs = {h: ds.responses(subject, h, "train")[n_fit:] for h in hemis}
    base = [m.name for m in spec.models]
    ready = [m for m in base if m in job["fitted"]]
    failures: list[dict] = []
    derived: dict[str, dict] = {}  # name -> {"kind", "members", per-hemi choice or weights}
    for p in spec.per_roi:
        members = per_roi_members(p, base)
        if not set(members) <= set(ready):
            failures.append({"subject": subject, "hemi": "both", "model": p.name,
                             "error": f"member(s) {sorted(set(members) - set(ready))} failed"})
            continue
        choices = {h: _compose_per_roi(layout, ds, p, members, subject, h, Yvs[h]) for h in hemis}
        derived[p.name] = {"kind": "per-roi", "members": members, "choices": choices}
        ready.append(p.name)
    for e in spec.ensembles:
        if not set(e.members) <= set(ready):
            failures.append({"subject": subject, "hemi": "both", "model": e.name,
                             "error": f"member(s) {sorted(set(e.members) - set(ready))} failed"})
            continue
        w = normalized_weights(e.weights, len(e.members))
        for h in hemis:
            _compose_ensemble(layout, e.name, e.members, w, subject, h)
        derived[e.name] = {"kind": "ensemble", "members": list(e.members), "weights": w}
        ready.append(e.name)
    methods = {m.name: m for m in spec.models}
    metrics = {name: _metrics(ds, layout, name, subject, hemis, Yvs,
                              methods[name].features if name in methods and methods[name].method == "banded" else None)
               for name in ready}
    registered = []
    if job["register"]:
        registered = _register_subject(ModelRegistry(job["registry"], storage_options=job.get("registry_options")), fs, spec, ds, layout, subject, ready, derived,
                                       metrics, job["infos"], train_ids, n_fit)
    return {"subject": subject, "metrics": metrics, "failures": failures, "registered": registered,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def _register_subject(reg, fs, spec: FitSpec, ds, layout, subject: str, ready: list[str], derived: dict,
                      metrics: dict, infos: dict, train_ids: list[str], n_fit: int) -> list[str]:
    """Register base models (arrays, fitted ids, fingerprints) then derived ones (member sha256), each with the
    provenance its lineage reads: the run folder and the digests of the subject's dataset inputs."""
    hemis = list(spec.hemispheres)
    common = {"subject": subject, "dataset": str(ds.root), "store": fs.uri, "hemispheres": hemis,
              "dataset_digest": dataset_digest(ds, [subject], hemis), "stimuli_sha256": stimuli_digest(ds, [subject]),
              "run": str(layout.root),
              "fit": {"alphas": spec.alphas, "folds": spec.folds, "scoring": spec.scoring,
                      "validation_fold": f"training rows {n_fit}-{len(train_ids) - 1} (the last of {spec.folds} "
                                         f"contiguous folds)"}}
    fingerprints: dict[str, dict] = {}
    shas: dict[str, str] = {}
    versions: dict[str, int] = {}
    names = []
    for m in spec.models:
        if m.name not in ready:
            continue
        for f in m.features:
            if f not in fingerprints:
                fingerprints[f] = table_fingerprint(fs, f, train_ids)
        tensors = {"fit_ids": encode_ids(train_ids)}
        for h in hemis:
            state = safetensors.numpy.load_file(str(layout.state(m.name, subject, h)))
            tensors.update({f"{h}.{k}": v for k, v in state.items()})
        meta = {**common, "kind": m.method, "method": m.method, "model": m.name, "features": m.features,
                "spec": m.model_dump(), "feature_versions": {f: fs.metadata(f) for f in m.features},
                "fingerprints": {f: fingerprints[f] for f in m.features},
                "metrics": metrics[m.name], "val_score": metrics[m.name]["both"]["val_r_mean"],
                "n_vertices": {h: int(infos[m.name][h]["n_vertices"]) for h in hemis},
                "info": {h: infos[m.name][h] for h in hemis}}
        saved = reg.save(f"{m.name}/{subject}", tensors, meta)
        shas[m.name], versions[m.name] = saved.meta["safetensors_sha256"], saved.version
        names.append(saved.ref)
    specs = {**{p.name: p for p in spec.per_roi}, **{e.name: e for e in spec.ensembles}}
    for name, d in derived.items():
        members = d["members"]
        if d["kind"] == "per-roi":
            tensors = {f"{h}.choice": d["choices"][h] for h in hemis}
        else:
            tensors = {"weights": d["weights"]}
        meta = {**common, "kind": d["kind"], "model": name, "members": members, "spec": specs[name].model_dump(),
                "member_sha256": {x: shas[x] for x in members}, "member_versions": {x: versions[x] for x in members},
                "feature_versions": {f: fs.metadata(f) for m in spec.models if m.name in members for f in m.features},
                "metrics": metrics[name], "val_score": metrics[name]["both"]["val_r_mean"],
                "n_vertices": {h: int(open_array(layout.test_pred(name, subject, h)).shape[1]) for h in hemis}}
        saved = reg.save(f"{name}/{subject}", tensors, meta)
        shas[name], versions[name] = saved.meta["safetensors_sha256"], saved.version
        names.append(saved.ref)
    return names

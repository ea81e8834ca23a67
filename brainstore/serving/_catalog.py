"""What ``/v1/models`` says: the servable models of the versions the bare names serve now (encoders per
subject, decoders and adaptors), and per model name its versions, aliases and the version it serves."""

from __future__ import annotations

import math

from ..datasets import HEMISPHERES
from ..fitting import NON_ENCODER_KINDS

__all__ = ["servable", "catalog_of", "versions_of", "finite_score"]


def finite_score(v) -> float | None:
    """A registry score as JSON can carry it: None for a missing, NaN or infinite one."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def servable(rec) -> bool:
    """A version the service answers with: an encoding model of a subject, a ridge decoder or an adaptor."""
    kind = rec.meta.get("kind")
    return kind in ("decoder", "adaptor") or (kind not in NON_ENCODER_KINDS and bool(rec.meta.get("subject")))


def catalog_of(records) -> dict:
    """``{"encoders": {subject: {model: meta}}, "decoders": {model: {...}}}`` of the versions ``records`` (what
    each bare name serves), each entry naming the version it serves (``model_version``: ``NAME@VERSION``;
    a decoder's per subject, ``model_versions``)."""
    enc: dict[str, dict] = {}
    dec: dict[str, dict] = {}
    for r in records:
        m = r.meta
        kind = m.get("kind")
        if kind == "decoder":
            e = dec.setdefault(m["model"], {"kind": "decoder", "targets": [m["target"]], "subjects": [],
                                            "dataset": m.get("dataset"), "model_versions": {}})
            e["subjects"].append(m["subject"])
            e["model_versions"][m["subject"]] = r.ref
        elif kind == "adaptor":
            dec[m["model"]] = {"kind": "adaptor", "targets": list(m["targets"]), "subjects": list(m["subjects"]),
                               "dataset": m.get("dataset"), "model_versions": {s: r.ref for s in m["subjects"]}}
        elif kind not in NON_ENCODER_KINDS and m.get("subject"):
            enc.setdefault(m["subject"], {})[m["model"]] = {
                "kind": kind, "features": list(m.get("features", [])), "dataset": m.get("dataset"),
                "val_score": finite_score(m.get("val_score")),
                "hemispheres": list(m.get("hemispheres", HEMISPHERES)), "model_version": r.ref}
    return {"encoders": enc, "decoders": dec}


def versions_of(all_versions, serving: dict, held: list[dict]) -> dict:
    """``{name: {"kind", "serving", "aliases", "versions", "held"?}}`` of the names in ``serving`` ({name: the
    record its bare name serves}): every version (number, creation time, validation score, aliases) from
    ``all_versions`` (the registry's records), and a version held back because it cannot be served."""
    out: dict[str, dict] = {}
    for rec in all_versions:
        if rec.name not in serving:
            continue
        e = out.setdefault(rec.name, {"kind": serving[rec.name].meta.get("kind"),
                                      "serving": serving[rec.name].version, "aliases": {}, "versions": []})
        e["versions"].append({"version": rec.version, "created": rec.meta.get("created"),
                              "val_score": finite_score(rec.meta.get("val_score")), "aliases": list(rec.aliases)})
        e["aliases"].update({a: rec.version for a in rec.aliases})
    for h in held:
        if h["model"] in out:
            out[h["model"]]["held"] = {"wanted": int(h["wanted"].rpartition("@")[2]), "error": h["error"]}
    return out

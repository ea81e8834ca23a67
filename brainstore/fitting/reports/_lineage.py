"""The lineage of a registered model version: the chain from the data to the service that answers with it.

``lineage(registry, "clip/subj01@2")`` reads the version's ``model.json`` and follows it link by link::

    dataset   the dataset's path and the digest of the responses and ids the fit read (``dataset_digest``)
    stimuli   the digest of the stimulus table (ids and paths, ``stimuli_sha256``)
    features  per feature table: the table version the fit pinned, its rows' sha256, the extractor spec,
              architecture, pretrained weights and their sha256 (from the store's metadata at fit time)
    fit       the fit's spec (method, alphas, folds) and its run folder
    model     the version itself: reference, creation time, weights sha256, scores
    aliases   the aliases pointing at it, and what the bare name loads now
    serving   the services (announced in the registry, :meth:`ModelRegistry.services`) serving it now

A composite (per-ROI model, ensemble) adds a ``members`` link and the lineage of each member version it was
made from. Every link also says what changed since the fit, where it can tell cheaply: the table has newer
versions or lost the pinned one, the dataset or the run folder is gone, another version is served; with
``verify_dataset`` the dataset's digests are recomputed (one read of the responses). ``Lineage.to_dict()`` is the
machine-readable form (``brainstore lineage --json``), ``Lineage.text()`` the chain one line per link.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import ModelRegistry, RegistryError

__all__ = ["lineage", "Lineage", "LineageLink"]

#: Hex digits of a sha256 shown in the text form (the dict holds them whole).
SHORT = 16
_COMPOSITES = ("per-roi", "ensemble")


@dataclass
class LineageLink:
    """One link of the chain: its ``kind`` (dataset, stimuli, features, fit, model, aliases, serving, members),
    a one-line ``summary``, the ``facts`` behind it and what ``changed`` since the fit (sentences; empty when
    nothing did or it cannot be told)."""

    kind: str
    summary: str
    facts: dict = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"link": self.kind, "summary": self.summary, **self.facts, "changed": list(self.changed)}


@dataclass
class Lineage:
    """The chain of one model version (see the module docstring); ``members``: the chains of a composite's
    member versions."""

    ref: str
    name: str
    version: int
    kind: str | None
    links: list[LineageLink] = field(default_factory=list)
    members: list["Lineage"] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        """Every change flagged along the chain, the members' included (prefixed with their reference)."""
        out = [f"{link.kind}: {c}" for link in self.links for c in link.changed]
        return out + [f"{m.ref} {c}" for m in self.members for c in m.changed]

    def link(self, kind: str) -> list[LineageLink]:
        """The links of one kind (several ``features`` links for a model on several tables)."""
        return [x for x in self.links if x.kind == kind]

    def to_dict(self) -> dict:
        return {"ref": self.ref, "name": self.name, "version": self.version, "kind": self.kind,
                "chain": [x.to_dict() for x in self.links], "members": [m.to_dict() for m in self.members],
                "changed": self.changed}

    def lines(self, depth: int = 0) -> list[tuple[int, LineageLink | None, str]]:
        """``(depth, link, text)`` rows of the text form: a heading row (link None), then one per link, then each
        member's rows one level deeper."""
        rows: list[tuple[int, LineageLink | None, str]] = [(depth, None, f"{self.ref} ({self.kind or 'model'})")]
        rows += [(depth, x, f"{x.kind:<9} {x.summary}") for x in self.links]
        for m in self.members:
            rows += m.lines(depth + 1)
        return rows

    def text(self) -> str:
        """The chain as plain text, one line per link; ``! ...`` lines say what changed since the fit."""
        out = []
        for depth, link, line in self.lines():
            pad = "    " * depth
            out.append(pad + (line if link is None else "  " + line))
            for c in link.changed if link is not None else ():
                out.append(pad + "  " + " " * 10 + "! " + c)
        return "\n".join(out)

    __str__ = text


def _short(digest: Any) -> str:
    return str(digest)[:SHORT] if digest else "not recorded"


def _local_path(p: Any) -> Path | None:
    """A path of this machine (None for object-store URIs and missing values)."""
    if not p or ("://" in str(p) and not str(p).startswith("file://")):
        return None
    return Path(str(p)[len("file://"):] if str(p).startswith("file://") else str(p))


def _subjects(meta: dict) -> list[str]:
    """The subjects whose responses the fit read (an adaptor's: trained and adapt subjects)."""
    if meta.get("subject") not in (None, "shared"):
        return [meta["subject"]]
    subs = list(meta.get("trained_subjects") or []) + list(meta.get("adapt_subjects") or [])
    subs = subs or list(meta.get("subjects") or [])
    return list(dict.fromkeys(subs))


# ------------------------------------------------------------------------------------------ the links
def _dataset_links(meta: dict, verify: bool) -> list[LineageLink]:
    from ..registry import dataset_digest, stimuli_digest

    path, subjects = meta.get("dataset"), _subjects(meta)
    digest, stim = meta.get("dataset_digest"), meta.get("stimuli_sha256")
    d_changed: list[str] = []
    s_changed: list[str] = []
    local = _local_path(path)
    if local is not None and not local.exists():
        d_changed.append(f"the dataset {path} is gone")
    elif verify and (digest or stim):
        from ...datasets import open_dataset

        try:
            ds = open_dataset(path)
            if digest and dataset_digest(ds, subjects, meta.get("hemispheres") or ("lh", "rh")) != digest:
                d_changed.append("the dataset's responses or ids differ from those the fit read (digest mismatch)")
            if stim and stimuli_digest(ds, subjects) != stim:
                s_changed.append("the stimulus table's ids or paths differ from those the fit read")
        except Exception as e:  # noqa: BLE001 - a dataset that cannot be read is a finding, not a crash
            d_changed.append(f"cannot verify: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    who = f"{'subject' if len(subjects) == 1 else 'subjects'} {', '.join(subjects) or '-'}"
    return [LineageLink("dataset", f"{path} ({who}) · digest {_short(digest)}",
                        {"path": path, "subjects": subjects, "dataset_digest": digest, "verified": bool(verify)},
                        d_changed),
            LineageLink("stimuli", f"stimulus table (ids, paths) sha256 {_short(stim)}", {"stimuli_sha256": stim},
                        s_changed)]


def _open_store(uri: str, cache: dict):
    from ...features import FeatureStore

    if uri not in cache:
        try:
            cache[uri] = FeatureStore(uri, create=False)
        except Exception as e:  # noqa: BLE001 - unreachable or gone: said in the chain
            cache[uri] = e
    return cache[uri]


def _table_changes(fs, table: str, pinned: Any, fv: dict) -> tuple[dict, list[str]]:
    """What the store says of ``table`` now, and what changed since the fit pinned version ``pinned``."""
    from ...features import IDENTITY_KEYS

    if isinstance(fs, Exception):
        return {}, [f"cannot check the store: {str(fs).splitlines()[0] if str(fs) else type(fs).__name__}"]
    try:
        if not fs.exists(table):
            return {"in_store": False}, [f"the table is no longer in {fs.uri}"]
        kept = [int(v["version"]) for v in fs.versions(table)]
        latest = fs.version(table)
        made = fs.metadata(table)
    except Exception as e:  # noqa: BLE001
        return {}, [f"cannot check the store: {str(e).splitlines()[0]}"]
    out: list[str] = []
    if pinned is not None and int(pinned) not in kept:
        out.append(f"the pinned version {pinned} is no longer kept (versions kept: {', '.join(map(str, kept))})")
    if pinned is not None and latest != int(pinned):
        out.append(f"the table is at version {latest} now (the fit pinned {pinned})")
    diffs = [k for k in IDENTITY_KEYS if str(fv.get(k)) != str(made.get(k))] if fv else []
    if diffs:
        out.append(f"the table is made differently now ({', '.join(diffs)})")
    return {"in_store": True, "latest_version": latest, "kept_versions": kept}, out


def _feature_links(meta: dict, store, cache: dict) -> list[LineageLink]:
    fps, fvs = meta.get("fingerprints") or {}, meta.get("feature_versions") or {}
    uri = store if isinstance(store, str) else getattr(store, "uri", None) or meta.get("store")
    fs = store if store is not None and not isinstance(store, str) else (_open_store(uri, cache) if uri else None)
    links = []
    for t in meta.get("features") or list(fps) or list(fvs):
        fp = fps.get(t) if isinstance(fps.get(t), dict) else {}
        fv = fvs.get(t) if isinstance(fvs.get(t), dict) else {}
        pinned = fp.get("table_version")
        random = str(fv.get("random_init", "")).lower() == "true" or str(fv.get("pretrained", "")).lower() == "none"
        facts = {"table": t, "store": uri, "table_version": pinned, "pinned": fp.get("pinned"),
                 "rows_sha256": fp.get("rows_sha256"), "n_rows": fp.get("n_rows"), "table_created": fp.get("created"),
                 "extractor_spec": fv.get("spec"), "extractor": fv.get("extractor"),
                 "architecture": fv.get("architecture"), "pretrained": fv.get("pretrained_tag") or fv.get("pretrained"),
                 "weights_sha256": fv.get("weights_sha256"), "random_weights": random,
                 "derived_from": fv.get("derived_from")}
        now, changed = _table_changes(fs, t, pinned, fv) if fs is not None else ({}, ["no store recorded"])
        facts.update(now)
        how = f"derived ({fv.get('transform')}) from {fv['derived_from']}" if fv.get("derived_from") else \
            f"extractor {fv.get('spec') or fv.get('extractor') or '?'}"
        weights = "none: RANDOM WEIGHTS" if random else _short(fv.get("weights_sha256"))
        summary = (f"{t} @ version {pinned if pinned is not None else '?'} · {how} · weights sha256 {weights} · "
                   f"{fp.get('n_rows', '?')} fitted rows sha256 {_short(fp.get('rows_sha256'))}")
        links.append(LineageLink("features", summary, facts, changed))
    return links


def _fit_link(meta: dict) -> LineageLink:
    spec, fit = meta.get("spec") or {}, meta.get("fit") or {}
    method = meta.get("method") or (spec.get("method") if isinstance(spec, dict) else None) or meta.get("kind")
    parts = [str(method or meta.get("kind") or "?")]
    if fit.get("alphas"):
        parts.append("alphas " + ", ".join(f"{a:g}" for a in fit["alphas"]))
    if fit.get("folds"):
        parts.append(f"{fit['folds']} folds")
    if isinstance(meta.get("metrics"), dict) and "alpha" in meta["metrics"]:
        parts.append(f"alpha {meta['metrics']['alpha']:g}")
    run = meta.get("run")
    local = _local_path(run)
    changed = [f"the run folder {run} is gone"] if local is not None and not local.exists() else []
    parts.append(f"run {run}" if run else "run not recorded")
    return LineageLink("fit", " · ".join(parts), {"method": method, "spec": spec, "fit": fit, "run": run}, changed)


def _model_link(rec) -> LineageLink:
    m = rec.meta
    nnmc = ((m.get("metrics") or {}).get("both") or {}).get("test_nnmc") if isinstance(m.get("metrics"), dict) else None
    val = m.get("val_score")
    parts = [rec.ref, f"created {m.get('created', '?')}", f"weights sha256 {_short(m.get('safetensors_sha256'))}"]
    parts += [f"val {val:.3f}"] if isinstance(val, (int, float)) else []
    parts += [f"test NNMC {nnmc:.2f}"] if isinstance(nnmc, (int, float)) else []
    facts = {"ref": rec.ref, "created": m.get("created"), "kind": m.get("kind"), "path": str(rec.path),
             "safetensors_sha256": m.get("safetensors_sha256"), "val_score": val, "test_nnmc": nnmc}
    return LineageLink("model", " · ".join(parts), facts)


def _alias_link(reg: ModelRegistry, rec) -> LineageLink:
    aliases = reg.aliases(rec.name)
    _, default = reg.resolve(rec.name)
    _, latest = reg.resolve(f"{rec.name}@latest")
    mine = sorted(a for a, v in aliases.items() if v == rec.version)
    here = "the bare name loads it" if default == rec.version else f"the bare name loads @{default}"
    changed = [] if latest == rec.version else [f"newer version(s) exist (latest @{latest})"]
    return LineageLink("aliases", f"{', '.join(mine) or 'no alias'} · {here} (latest @{latest})",
                       {"aliases": mine, "all_aliases": aliases, "default_version": default, "latest_version": latest},
                       changed)


def _serving_link(rec, services: list[dict] | None, note: str | None) -> LineageLink:
    if services is None:
        return LineageLink("serving", f"unknown ({note})", {"served_by": [], "note": note})
    mine = [s for s in services if rec.ref in (s.get("models") or [])]
    other = sorted({m for s in services for m in (s.get("models") or [])
                    if m.rpartition("@")[0] == rec.name and m != rec.ref})
    by = [{"id": s.get("id"), "url": s.get("url"), "age_s": round(float(s.get("age_s", 0)), 1)} for s in mine]
    if by:
        summary = "served by " + "; ".join(f"{b['id']} at {b['url'] or '?'} (heartbeat {b['age_s']:.0f} s ago)"
                                           for b in by)
    elif services:
        summary = "not served" + (f" (served: {', '.join(other)})" if other else
                                  f" by the {len(services)} service(s) announced")
    else:
        summary = "not served (no service announced in the registry)"
    return LineageLink("serving", summary, {"served": bool(by), "served_by": by, "other_versions_served": other},
                       [f"another version is served ({', '.join(other)})"] if other and not by else [])


def _members(reg, rec, store, services, note, cache, verify) -> tuple[LineageLink, list[Lineage]]:
    m = rec.meta
    subject = m.get("subject")
    pinned = m.get("member_versions") or {}
    refs = [f"{x}/{subject}@{pinned[x]}" if x in pinned else f"{x}/{subject}" for x in m.get("members") or []]
    chains, changed = [], []
    for r in refs:
        try:
            chains.append(_chain(reg, r, store, services, note, cache, verify))
        except RegistryError as e:
            changed.append(f"member {r} cannot be read: {str(e).splitlines()[0]}")
    unpinned = [x for x in m.get("members") or [] if x not in pinned]
    if unpinned:
        changed.append(f"member version(s) not recorded for {', '.join(unpinned)} (shown: what the name loads now)")
    return LineageLink("members", ", ".join(refs) or "none", {"members": refs}, changed), chains


def _chain(reg: ModelRegistry, ref: str, store, services, note, cache: dict, verify: bool) -> Lineage:
    rec = reg.record(ref)
    m = rec.meta
    out = Lineage(rec.ref, rec.name, rec.version, m.get("kind"))
    out.links += _dataset_links(m, verify)
    if m.get("kind") in _COMPOSITES:
        link, out.members = _members(reg, rec, store, services, note, cache, verify)
        out.links.append(link)
    else:
        out.links += _feature_links(m, store, cache)
    out.links += [_fit_link(m), _model_link(rec), _alias_link(reg, rec), _serving_link(rec, services, note)]
    return out


def lineage(registry, ref: str, *, store=None, max_age_s: float = 30.0, verify_dataset: bool = False,
            services: list[dict] | None = None, cache: dict | None = None) -> Lineage:
    """The chain of the model version ``ref`` names, from its dataset to the services serving it.

    Parameters
    ----------
    registry : URI or ModelRegistry
    ref : str
        ``NAME`` (what the bare name loads: its ``champion``, else its latest version), ``NAME@3``, ``NAME@alias``;
        NAME a registered name such as ``clip/subj01``.
    store : URI or FeatureStore, optional
        The feature store whose tables are checked (default: the one each model was fitted with).
    max_age_s : float
        Services whose last heartbeat is older are not counted as serving (see ``ModelRegistry.services``).
    verify_dataset : bool
        Recompute the dataset's digests and compare (one read of the responses); default: only check that the
        dataset's path exists.
    services : list of dict, optional
        Announcements already read (``registry.services()``), for many lineages at once.
    cache : dict, optional
        Feature stores opened, kept across calls.

    Returns
    -------
    Lineage
        ``.links`` in chain order, ``.members`` for composites, ``.changed``, ``.to_dict()``, ``.text()``.

    Raises
    ------
    RegistryError
        When ``ref`` names no saved version (naming the model's versions or aliases).
    """
    from ..._storage import uri_of

    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(uri_of(registry), create=False)
    if isinstance(store, (str, os.PathLike)):
        store = uri_of(store)
    note = None
    if services is None:
        try:
            services = reg.services(max_age_s)
        except RegistryError as e:
            services, note = None, f"cannot read the services' announcements: {str(e).splitlines()[0]}"
    return _chain(reg, ref, store, services, note, {} if cache is None else cache, verify_dataset)

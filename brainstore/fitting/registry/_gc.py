"""Garbage collection that never breaks a model someone can still load: old model versions and the feature
table versions that only they pinned.

A version is kept when it is the latest of its name, when an alias points at it, when it is younger than
the age given, or when a kept composite (a per-ROI model or an ensemble) was made from it; everything else
goes. Then, in every feature store the registry's models read, the version tags (pins) that no kept model
needs are removed, and table versions older than the age are cleaned up, except the pinned ones and
each table's latest. ``dry_run`` says what would go and changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ._records import ModelRecord, RegistryError
from ._registry import ModelRegistry

__all__ = ["GcReport", "collect_garbage"]

_COMPOSITES = ("per-roi", "ensemble")


@dataclass
class GcReport:
    """What :func:`collect_garbage` removed (or, with ``dry_run``, would remove) and why the rest stays."""

    removed: list[str] = field(default_factory=list)       # model versions, NAME@V
    kept: dict[str, str] = field(default_factory=dict)     # NAME@V -> why
    tables: list[dict] = field(default_factory=list)       # {store, table, unpinned, pinned, cleaned}
    dry_run: bool = False


def _created(rec: ModelRecord) -> float:
    try:
        return time.mktime(time.strptime(rec.meta["created"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (KeyError, ValueError, TypeError):
        return float("inf")  # unknown age: never old enough


def _member_refs(rec: ModelRecord, by_name: dict[str, list[ModelRecord]]) -> list[tuple[str, str]]:
    """(member NAME@V, why) of a composite: the versions it records (or whose weights sha256 it records)."""
    out = []
    subject = rec.meta.get("subject")
    for x in rec.meta.get("members") or []:
        name = f"{x}/{subject}"
        want = (rec.meta.get("member_sha256") or {}).get(x)
        pinned = (rec.meta.get("member_versions") or {}).get(x)
        for r in by_name.get(name, []):
            if (pinned is not None and r.version == pinned) or (pinned is None and r.meta.get("safetensors_sha256") == want):
                out.append((r.ref, f"member of {rec.ref}"))
    return out


def _plan(records: list[ModelRecord], older_than_s: float, now: float) -> tuple[dict[str, str], list[ModelRecord]]:
    by_name: dict[str, list[ModelRecord]] = {}
    for r in records:
        by_name.setdefault(r.name, []).append(r)
    keep: dict[str, str] = {}
    for name, recs in by_name.items():
        latest = max(r.version for r in recs)
        for r in recs:
            if r.version == latest:
                keep[r.ref] = "latest version"
            elif r.aliases:
                keep[r.ref] = "alias " + ", ".join(r.aliases)
            elif now - _created(r) < older_than_s:
                keep[r.ref] = f"newer than {older_than_s / 86400:g} days"
    todo = [r for r in records if r.ref in keep]
    while todo:  # what kept composites were made from, transitively
        rec = todo.pop()
        if rec.meta.get("kind") not in _COMPOSITES:
            continue
        for ref, why in _member_refs(rec, by_name):
            if ref not in keep:
                keep[ref] = why
                todo += [r for r in by_name[ref.rpartition("@")[0]] if r.ref == ref]
    return keep, [r for r in records if r.ref not in keep]


def _pins(records: list[ModelRecord]) -> dict[tuple[str, str], set[int]]:
    """{(store, table): table versions} the fingerprints of ``records`` pin."""
    out: dict[tuple[str, str], set[int]] = {}
    for r in records:
        store = r.meta.get("store")
        for fp in (r.meta.get("fingerprints") or {}).values():
            if store and isinstance(fp, dict) and fp.get("table_version") is not None:
                out.setdefault((store, fp["table"]), set()).add(int(fp["table_version"]))
    return out


def _clean_tables(kept: list[ModelRecord], gone: list[ModelRecord], stores: list[str] | None, older_than_s: float,
                  dry_run: bool) -> list[dict]:
    from ...features import FeatureStore, FeatureStoreError

    need = _pins(kept)
    uris = stores if stores is not None else sorted({s for s, _ in need} | {s for s, _ in _pins(gone)})
    out = []
    for uri in uris:
        try:
            fs = FeatureStore(uri, create=False)
        except FeatureStoreError as e:
            out.append({"store": uri, "table": None, "error": str(e)})
            continue
        for table in fs.names():
            want = need.get((fs.uri, table), set()) | need.get((uri, table), set())
            tagged = set(fs.pinned(table))
            unpin = sorted(tagged - want)
            row = {"store": fs.uri, "table": table, "pinned": sorted(tagged & want), "unpinned": unpin, "cleaned": []}
            if not dry_run:
                for v in unpin:
                    fs.unpin(table, v)
                row["cleaned"] = fs.cleanup(table, older_than_s)["removed"]
            out.append(row)
    return out


def collect_garbage(registry: ModelRegistry | str, *, older_than_s: float, stores: list[str] | None = None,
                    tables: bool = True, dry_run: bool = False, now: float | None = None) -> GcReport:
    """Remove model versions nobody can need any more, then feature table versions no kept model pins.

    Parameters
    ----------
    registry : the model registry (or its URI).
    older_than_s : only versions (of models and of tables) older than this many seconds may go.
    stores : the feature stores to clean (default: every store a model of the registry records).
    tables : also clean feature tables (False: the registry only).
    dry_run : report what would go; change nothing.

    Returns
    -------
    GcReport
    """
    if older_than_s < 0:
        raise RegistryError(f"older_than_s must be >= 0, got {older_than_s}")
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
    records = reg.all_versions()
    keep, gone = _plan(records, older_than_s, time.time() if now is None else now)
    rep = GcReport(kept=dict(sorted(keep.items())), dry_run=dry_run)
    for r in sorted(gone, key=lambda r: (r.name, r.version)):
        if not dry_run:
            try:
                reg.delete(r.ref)  # refuses, under the name's lock, a version aliased or made latest meanwhile
            except RegistryError as e:
                rep.kept[r.ref] = f"changed meanwhile ({e})"
                continue
        rep.removed.append(r.ref)
    if tables:
        kept = [r for r in records if r.ref in keep]
        rep.tables = _clean_tables(kept, gone, stores, older_than_s, dry_run)
    return rep

"""Versions of a feature table: reading one, pinning those models were fitted on, removing the others.

Lance keeps every commit of a table as a version (:meth:`FeatureStore.version` is the counter) until
it is cleaned up. A model records the version it was fitted on and pins it: the tag
``brainstore-v{N}`` (:meth:`TableVersions.pin`), which :meth:`~TableVersions.cleanup` and
:meth:`~TableVersions.compact` keep, so the model reads the rows it saw (``load(..., version=N)``)
however the table changes later. A dropped and re-created table restarts its numbers and loses its
tags: a version number alone proves nothing about content (the model's fingerprints check rows by
sha256, ``brainstore.fitting.registry``).
"""

from __future__ import annotations

import datetime as _dt

from ._store_errors import FeatureStoreError, _io

__all__ = ["TableVersions", "TAG_PREFIX", "KEEP_S"]

#: Name of the tag pinning version N: ``brainstore-v{N}``.
TAG_PREFIX = "brainstore-v"
#: Seconds :meth:`TableVersions.compact` keeps old versions for (Lance's default, 7 days); tagged ones always.
KEEP_S = 7 * 86400.0
#: ``optimize``'s own pruning is turned off (it fails on a tagged old version); ours keeps them.
_NO_PRUNING = _dt.timedelta(days=36500)


def _iso(ts) -> str:
    """Lance's version time (a naive local datetime) as ISO 8601 UTC."""
    if isinstance(ts, _dt.datetime):
        return ts.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(ts)


def _span(versions: list[int]) -> str:
    if not versions:
        return "none"
    if versions == list(range(versions[0], versions[-1] + 1)) and len(versions) > 2:
        return f"{versions[0]}-{versions[-1]}"
    return ", ".join(map(str, versions[-12:])) + (" ..." if len(versions) > 12 else "")


class TableVersions:
    """The version methods of :class:`~._store.FeatureStore` (mixed in; they use its ``_open`` and ``uri``)."""

    @_io
    def _dataset(self, feature: str, version: int | None = None):
        """The Lance dataset of ``feature`` at ``version`` (default: the latest).

        Raises
        ------
        FeatureStoreError
            When ``version`` is not (or no longer) a version of the table.
        """
        ds = self._open(feature).to_lance()
        if version is None or _as_version(feature, version) == ds.version:
            return ds
        try:
            return ds.checkout_version(int(version))
        except Exception:
            if int(version) in {int(v["version"]) for v in ds.versions()}:
                raise  # there, yet unreadable: a storage failure (_io says which)
            raise FeatureStoreError(self._no_version(feature, version, ds)) from None

    def _no_version(self, feature: str, version: int, ds) -> str:
        have = sorted(int(v["version"]) for v in ds.versions())
        return (f"feature table {feature!r} in store {self.uri} has no version {version} (its versions: {_span(have)}): "
                "it was removed by a cleanup, or the table was dropped and re-created. Read the latest version "
                "(no version=), or refit the model that needs it (`brainstore fit`)")

    @_io
    def versions(self, feature: str) -> list[dict]:
        """Every kept version of ``feature``, oldest first: ``{"version", "timestamp" (ISO 8601 UTC), "rows",
        "tags"}`` (tags: the names of the tags on that version, ours ``brainstore-v{N}`` among them)."""
        ds = self._dataset(feature)
        tags: dict[int, list[str]] = {}
        for name, t in ds.tags.list().items():
            tags.setdefault(int(t["version"]), []).append(name)
        return [{"version": int(v["version"]), "timestamp": _iso(v["timestamp"]),
                 "rows": int((v.get("metadata") or {}).get("total_rows", 0)), "tags": sorted(tags.get(int(v["version"]), []))}
                for v in sorted(ds.versions(), key=lambda v: int(v["version"]))]

    @_io
    def version_id(self, feature: str, version: int | None = None) -> str:
        """What ``version`` of ``feature`` (default the latest) holds, as a sha256 of its manifest's fragments (data
        and deletion files, which Lance names uniquely per write): two versions with one id hold the same rows,
        and version N of a re-created table never has the id of the dropped table's version N. Reads the manifest
        only (no rows)."""
        from .._provenance import sha256

        parts = []
        for f in self._dataset(feature, version).get_fragments():
            m = f.metadata
            deletion = m.deletion_file.json() if m.deletion_file is not None else ""
            parts.append(f"{m.id}|{','.join(d.path for d in m.files)}|{deletion}".encode())
        return sha256(parts)

    @_io
    def pin(self, feature: str, version: int) -> str:
        """Tag ``version`` of ``feature`` (``brainstore-v{version}``) so cleanup and compaction keep it; returns
        the tag's name. Pinning a pinned version does nothing."""
        v = _as_version(feature, version)
        ds = self._dataset(feature)
        name = f"{TAG_PREFIX}{v}"
        tags = ds.tags.list()
        if int(tags.get(name, {}).get("version", -1)) == v:
            return name
        if v not in {int(x["version"]) for x in ds.versions()}:
            raise FeatureStoreError(self._no_version(feature, v, ds))
        try:
            if name in tags:  # a tag left by a dropped table's namesake: point it at this table's version
                ds.tags.update(name, v)
            else:
                ds.tags.create(name, v)
        except Exception:
            if int(ds.tags.list().get(name, {}).get("version", -1)) != v:
                raise
            # another process pinned the same version at the same time: done
        return name

    @_io
    def unpin(self, feature: str, version: int) -> bool:
        """Remove our tag of ``version`` (the version is then cleaned up like any other); False if it had none."""
        name = f"{TAG_PREFIX}{_as_version(feature, version)}"
        ds = self._dataset(feature)
        if name not in ds.tags.list():
            return False
        try:
            ds.tags.delete(name)
        except Exception:
            if name in ds.tags.list():
                raise
        return True

    @_io
    def pinned(self, feature: str) -> list[int]:
        """The versions of ``feature`` pinned by our tags, ascending."""
        tags = self._dataset(feature).tags.list()
        return sorted({int(t["version"]) for name, t in tags.items() if name.startswith(TAG_PREFIX)})

    @_io
    def cleanup(self, feature: str, older_than_s: float) -> dict:
        """Remove the versions of ``feature`` older than ``older_than_s`` seconds, except tagged (pinned) ones
        and the latest. Returns ``{"table", "removed": [versions], "kept": [versions], "bytes_removed"}``.

        A reader still using a removed version fails; remove only versions no process is reading."""
        try:
            seconds = float(older_than_s)
        except (TypeError, ValueError):
            seconds = -1.0
        if not seconds >= 0:
            raise FeatureStoreError(f"cleanup of feature table {feature!r}: older_than_s must be a number of seconds "
                                    f">= 0, not {older_than_s!r}")
        ds = self._dataset(feature)
        before = {int(v["version"]) for v in ds.versions()}
        stats = ds.cleanup_old_versions(older_than=_dt.timedelta(seconds=seconds), error_if_tagged_old_versions=False)
        after = {int(v["version"]) for v in self._dataset(feature).versions()}
        return {"table": feature, "removed": sorted(before - after), "kept": sorted(after),
                "bytes_removed": int(getattr(stats, "bytes_removed", 0))}

    @_io
    def compact(self, feature: str) -> None:
        """Merge the small fragments left by chunked commits (faster reads), then remove versions older than
        :data:`KEEP_S` except pinned ones (pinned versions stay readable; a tag never makes this fail)."""
        t = self._open(feature)
        try:
            t.optimize(cleanup_older_than=_NO_PRUNING)
        except Exception:  # e.g. a concurrent writer's commit: compact the files alone
            t.to_lance().optimize.compact_files()
        try:
            self.cleanup(feature, KEEP_S)
        except Exception:  # noqa: BLE001
            pass  # pruning old versions is housekeeping; a reader holding one may make it fail, and it can wait


def _as_version(feature: str, version) -> int:
    if isinstance(version, bool) or not isinstance(version, (int,)) and not str(version).isdigit():
        raise FeatureStoreError(f"version of feature table {feature!r} must be a whole number >= 1, not {version!r}")
    v = int(version)
    if v < 1:
        raise FeatureStoreError(f"version of feature table {feature!r} must be a whole number >= 1, not {version!r}")
    return v

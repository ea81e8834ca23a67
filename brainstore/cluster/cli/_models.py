"""``brainstore models`` (names, versions, aliases) and ``brainstore gc``: the registry's history, from the CLI.

``models`` lists each name with its latest version and aliases; ``models NAME`` every version of a model
(NAME a registered name such as ``clip/subj01``, or a model such as ``clip`` for all its subjects) with its
date, spec, feature table versions and scores; ``models alias NAME@ALIAS VERSION`` points an alias at a
version (for every subject of a model given without one), ``--remove`` removes it, ``--expect V`` makes the
move a compare-and-swap. ``gc --older-than 30d`` removes what no alias, no newer fit and no kept model needs.
``lineage NAME[@V]`` prints a version's chain from its dataset to the services serving it (``--json``).
"""

from __future__ import annotations

import json
import re
from typing import List, Optional

import typer
from rich.markup import escape

from ._common import RegistryOpt, fail, open_registry

__all__ = ["models_cmd", "gc_cmd", "lineage_cmd", "parse_age"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` or ``"0"`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise ValueError(f"--older-than {text!r} must be a number with a unit: 45s, 90m, 12h, 30d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _score(m: dict) -> tuple[str, str]:
    val = m.get("val_score")
    nn = (m.get("metrics") or {}).get("both", {}).get("test_nnmc") if isinstance(m.get("metrics"), dict) else None
    return ("-" if val is None else f"{val:.3f}"), ("-" if nn is None else f"{nn:.2f}")


def _tables(m: dict) -> str:
    fps = m.get("fingerprints") or {}
    return ", ".join(f"{t}@{fps[t].get('table_version')}" if isinstance(fps.get(t), dict) else t
                     for t in (m.get("features") or list(fps)))


def _list_names(reg, registry: str, as_json: bool) -> None:
    from rich.table import Table

    from .._console import console

    rows = []
    for r in reg.list():
        versions = reg.versions(r.name)
        aliases = reg.aliases(r.name)
        rows.append((r, versions[-1].version, aliases))
    if as_json:
        print(json.dumps([{"name": r.name, "latest": latest, "serves": r.version, "aliases": aliases,
                           **{k: r.meta.get(k) for k in ("kind", "model", "subject", "val_score", "features", "members",
                                                          "store", "created")}}
                          for r, latest, aliases in rows], indent=2))
        return
    t = Table(title=f"models in {registry}")
    for c in ("name", "latest", "serves", "aliases", "kind", "subject", "val r", "test NNMC", "features / members",
              "created"):
        t.add_column(c)
    for r, latest, aliases in rows:
        m = r.meta
        val, nn = _score(m)
        t.add_row(escape(r.name), str(latest), str(r.version), escape(", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "-"),
                  m.get("kind", ""), m.get("subject", ""), val, nn,
                  escape(", ".join(m.get("features") or m.get("members") or [])[:60]), str(m.get("created", "")))
    console.print(t)


def _list_versions(reg, name: str, as_json: bool) -> None:
    from rich.table import Table

    from .._console import console

    recs = [r for n in reg.names_of(name) for r in reg.versions(n)]
    if as_json:
        print(json.dumps([{"name": r.name, "version": r.version, "ref": r.ref, "aliases": list(r.aliases),
                           "created": r.meta.get("created"), "kind": r.meta.get("kind"), "spec": r.meta.get("spec"),
                           "feature_versions": {t: (fp or {}).get("table_version") for t, fp in
                                                (r.meta.get("fingerprints") or {}).items()},
                           "members": r.meta.get("member_versions") or r.meta.get("members"),
                           "val_score": r.meta.get("val_score"), "metrics": r.meta.get("metrics")}
                          for r in recs], indent=2))
        return
    t = Table(title=f"versions of {name}")
    for c in ("model", "version", "aliases", "created", "kind", "feature tables (version)", "spec", "val r", "test NNMC"):
        t.add_column(c)
    for r in recs:
        m = r.meta
        spec = m.get("spec") or {}
        brief = ", ".join(f"{k}={spec[k]}" for k in ("method", "alphas", "folds") if k in spec) if isinstance(spec, dict) else ""
        members = m.get("member_versions") or {}
        feats = _tables(m) if m.get("fingerprints") else ", ".join(f"{x}@{v}" for x, v in members.items())
        val, nn = _score(m)
        t.add_row(escape(r.name), str(r.version), escape(", ".join(r.aliases) or "-"), str(m.get("created", "")),
                  m.get("kind", ""), escape(feats or "-"), escape(brief[:50] or "-"), val, nn)
    console.print(t)


def _alias(reg, args: list[str], remove: bool, expect: Optional[int]) -> None:
    from ...fitting import parse_ref
    from .._console import console

    want = 1 if remove else 2
    if len(args) != want:
        fail("usage: brainstore models alias NAME@ALIAS VERSION (or NAME@ALIAS --remove), e.g. "
             "`brainstore models alias clip@champion 3`")
    name, alias = parse_ref(args[0])
    if not isinstance(alias, str) or alias == "latest":
        fail(f"{args[0]!r} names no alias: write NAME@ALIAS, e.g. {name}@champion")
    version = None
    if not remove:
        if not args[1].isdigit() or int(args[1]) < 1:
            fail(f"VERSION must be a version number (1, 2, ...), got {args[1]!r}; `brainstore models {name}` lists them")
        version = int(args[1])
    names = reg.names_of(name)
    if version is not None:  # every subject must have that version before any alias moves
        lacking = [n for n in names if version not in [r.version for r in reg.versions(n)]]
        if lacking:
            fail(f"no version {version} of {', '.join(lacking)}; `brainstore models {name}` lists the versions")
    for n in names:
        if remove:
            before = reg.remove_alias(n, alias)
            console.print(f"{n}@{alias} removed (it pointed at version {before})")
        else:
            before = reg.set_alias(n, alias, version, **({} if expect is None else {"expect": expect}))
            console.print(f"{n}@{alias} -> {version}" + (f" (was {before})" if before is not None else ""))


def models_cmd(
    args: Optional[List[str]] = typer.Argument(None, help="Nothing: every model. NAME: its versions (a name such as "
                                                           "clip/subj01, or a model such as clip: all its subjects). "
                                                           "alias NAME@ALIAS VERSION: point an alias at a version."),
    remove: bool = typer.Option(False, "--remove", help="With alias: remove the alias."),
    expect: Optional[int] = typer.Option(None, "--expect", help="With alias: move it only if it points at this "
                                                                "version now (compare-and-swap)."),
    registry: str = RegistryOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Registered models: names with their latest version and aliases; a model's versions; aliases."""
    from ...fitting import RegistryError

    args = list(args or [])
    try:
        reg = open_registry(registry)
        if args and args[0] == "alias":
            _alias(reg, args[1:], remove, expect)
        elif len(args) > 1:
            fail(f"unexpected arguments {args[1:]}: `brainstore models NAME` lists one model's versions")
        elif args:
            _list_versions(reg, args[0], as_json)
        else:
            _list_names(reg, registry, as_json)
    except RegistryError as e:
        fail(str(e))


def gc_cmd(
    older_than: str = typer.Option(..., "--older-than", help="Only versions older than this go: 45s, 90m, 12h, 30d, 2w."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
    store: Optional[List[str]] = typer.Option(None, "--store", help="Feature store(s) to clean (default: every store "
                                                                   "the registry's models read)."),
    tables: bool = typer.Option(True, "--tables/--no-tables", help="Also remove feature table versions no kept model pins."),
    registry: str = RegistryOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Remove old model versions no alias, newer fit or kept model needs, and table versions no kept model pins."""
    from ...features import FeatureStoreError
    from ...fitting import RegistryError, collect_garbage
    from .._console import console

    try:
        age = parse_age(older_than)
        rep = collect_garbage(open_registry(registry), older_than_s=age, stores=store or None, tables=tables,
                              dry_run=dry_run)
    except (RegistryError, FeatureStoreError, ValueError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps({"removed": rep.removed, "kept": rep.kept, "tables": rep.tables, "dry_run": rep.dry_run},
                         indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {len(rep.removed)} model version(s){': ' + escape(', '.join(rep.removed)) if rep.removed else ''}")
    console.print(f"kept {len(rep.kept)}: " + escape("; ".join(f"{k} ({v})" for k, v in rep.kept.items())))
    for t in rep.tables:
        if t.get("error"):
            console.print(f"[yellow]store {escape(t['store'])}:[/] {escape(t['error'])}")
            continue
        console.print(f"{escape(t['table'])} in {escape(t['store'])}: pinned {t['pinned'] or '-'}; "
                      f"{'would unpin' if dry_run else 'unpinned'} {t['unpinned'] or '-'}; "
                      f"removed versions {t['cleaned'] or '-'}")


def _lineage_refs(reg, ref: str) -> tuple[list[str], bool]:
    """The registered references ``ref`` stands for: itself for a registered name (``clip/subj01@2``), else one
    per subject of a model (``clip@2`` -> ``clip/subj01@2``, ...); and whether it named one registered name."""
    from ...fitting import parse_ref

    name, sel = parse_ref(ref)
    names = reg.names_of(name)
    if names == [name]:
        return [ref], True
    return [n + (f"@{ref.rpartition('@')[2]}" if sel is not None else "") for n in names], False


def _print_lineage(chain) -> None:
    from .._console import console

    for depth, link, line in chain.lines():
        pad = "    " * depth
        if link is None:
            console.print(f"{pad}[bold]{escape(line)}[/]", soft_wrap=True)
            continue
        kind, _, rest = line.partition(" ")
        flag = " [yellow]![/]" if link.changed else ""
        console.print(f"{pad}  [cyan]{escape(kind):<9}[/]{flag} {escape(rest.strip())}", soft_wrap=True)
        for c in link.changed:
            console.print(f"{pad}  {'':<9}   [yellow]! {escape(c)}[/]", soft_wrap=True)


def lineage_cmd(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS: a registered name (clip/subj01) or a "
                                        "model (clip: each subject's fit)."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store to check the tables in (default: the "
                                                              "one each model was fitted with)."),
    verify: bool = typer.Option(False, "--verify", help="Recompute the dataset's digests and compare them with the "
                                                        "fit's (reads the responses once)."),
    max_age: float = typer.Option(30.0, "--max-age", help="Seconds since a service's last heartbeat for it to count "
                                                          "as serving."),
    registry: str = RegistryOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object for a name, a list for a model)."),
) -> None:
    """Where a model version comes from and where it goes: dataset -> stimulus table -> feature table versions ->
    fit and run -> model version -> aliases -> the services serving it, with what changed since the fit."""
    from ...features import FeatureStoreError
    from ...fitting import RegistryError, lineage

    try:
        reg = open_registry(registry)
        refs, single = _lineage_refs(reg, ref)
        services, cache = reg.services(max_age), {}
        chains = [lineage(reg, r, store=store, verify_dataset=verify, services=services, cache=cache) for r in refs]
    except (RegistryError, FeatureStoreError) as e:
        fail(str(e))
    if as_json:
        docs = [c.to_dict() for c in chains]
        print(json.dumps(docs[0] if single else docs, indent=2))
        return
    for chain in chains:
        _print_lineage(chain)

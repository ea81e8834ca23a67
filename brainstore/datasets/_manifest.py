"""Generic manifest reader (Parquet / CSV) for collections outside the Algonauts layout.

Columns: ``stimulus_id``, ``path``, ``modality`` (image | video | text), optional ``caption``,
``split``, ``subject``. Relative paths are resolved against the manifest's folder. A ``text``
row needs a caption (its path may be empty). An image's ``path`` may be an array reference into an
image brick (``images.hdf5#imgBrick[17]``, ``images.npy#[17]``, :mod:`._arrays`); its file resolves
like any path, and ``check_files`` checks the brick (file, key, uint8 N x H x W x 3 or N x H x W) and
the index cheaply, from the brick's header.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ._arrays import array_ref, brick_problem, parse_array_ref, ref_problem
from ._errors import DatasetError, DatasetValidationError
from ._images import image_problem
from ._layout import STIMULUS_SCHEMA

__all__ = ["read_manifest", "MODALITIES"]

MODALITIES = ("image", "video", "text")
_REQUIRED = ("stimulus_id", "path", "modality")


def read_manifest(path: str | Path, *, check_files: bool = True, name: str | None = None) -> pa.Table:
    """Read and validate a manifest into a stimulus table (:data:`STIMULUS_SCHEMA`).

    Parameters
    ----------
    path : path to a ``.parquet`` or ``.csv`` file.
    check_files : bool
        Check that every image/video file exists and is non-empty, and that images decode (for an
        array reference: that the brick file and key exist, hold uint8 images and the index is in range).
    name : str, optional
        Dataset name for the ``dataset`` column (default: the manifest's file stem).

    Raises
    ------
    DatasetValidationError
        Listing every problem: missing columns, unknown modality, missing/empty/undecodable
        files, text rows without caption, duplicate (subject, stimulus_id) rows, one stimulus id
        pointing at two different files.
    """
    path = Path(path).expanduser().resolve()
    rows = _read_rows(path)
    problems: list[str] = []
    seen_keys: dict[tuple, int] = {}
    sid_path: dict[str, str] = {}
    bricks: dict[tuple[str, str], list] = {}  # (file, key) -> [problem or None, first row, rows]
    out: dict[str, list] = {f.name: [] for f in STIMULUS_SCHEMA}
    for i, r in enumerate(rows, start=2 if path.suffix == ".csv" else 0):
        where = f"{path.name} row {i}"
        sid = r.get("stimulus_id")
        mod = r.get("modality")
        if sid is None or str(sid).strip() == "":
            problems.append(f"{where}: empty stimulus_id")
            continue
        sid = str(sid)
        if mod not in MODALITIES:
            problems.append(f"{where} ({sid}): modality {mod!r} is not one of {MODALITIES}")
            continue
        caption = r.get("caption")
        resolved = ""
        if mod == "text":
            if not caption:
                problems.append(f"{where} ({sid}): a text stimulus needs a non-empty caption")
        else:
            resolved = _resolved_path(r.get("path"), mod, f"{where} ({sid})", path, check_files, bricks, problems)
            if resolved is None:
                continue
        subject = r.get("subject")
        key = (subject, r.get("split"), sid)
        if key in seen_keys:
            problems.append(f"{where}: duplicate stimulus id {sid!r} (subject {subject}), first at row {seen_keys[key]}")
            continue
        seen_keys[key] = i
        ident = resolved or f"text:{caption}"
        if sid in sid_path and sid_path[sid] != ident:
            problems.append(f"{where}: stimulus id {sid!r} points at {ident} but earlier at {sid_path[sid]}; ids must be unique per stimulus")
        sid_path.setdefault(sid, ident)
        out["stimulus_id"].append(sid)
        out["subject"].append(None if subject is None else str(subject))
        out["split"].append(r.get("split"))
        out["path"].append(resolved or None)
        out["nsd_id"].append(r.get("nsd_id"))
        out["caption"].append(caption)
        out["modality"].append(mod)
        out["index"].append(r.get("index"))
        out["dataset"].append(name or path.stem)
    for prob, first, count in bricks.values():
        if prob:
            problems.append(f"{first}{f' and {count - 1} more row(s)' if count > 1 else ''}: {prob}")
    if problems:
        raise DatasetValidationError(str(path), problems)
    return pa.table(out, schema=STIMULUS_SCHEMA)


def _read_rows(path: Path) -> list[dict]:
    """The manifest's rows (every CSV column read as text), its required columns checked."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise DatasetError(f"manifest {path} does not exist")
    try:
        if path.suffix == ".parquet":
            raw = pq.read_table(path)
        elif path.suffix == ".csv":
            # every column is text: ids such as 00012 keep their leading zeros, subjects stay "01"
            text = {c: pa.string() for c in (*_REQUIRED, "caption", "split", "subject")}
            raw = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=True, column_types=text))
        else:
            raise DatasetError(f"manifest {path} must be .parquet or .csv")
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"cannot read manifest {path}: {e}") from e
    missing = [c for c in _REQUIRED if c not in raw.column_names]
    if missing:
        raise DatasetError(f"manifest {path} lacks required column(s) {missing}; columns needed: {list(_REQUIRED)}")
    return raw.to_pylist()


def _resolved_path(p, mod: str, where: str, path: Path, check_files: bool, bricks: dict,
                   problems: list[str]) -> str | None:
    """The absolute path (or array reference) of an image / video row, None when it has none; with
    ``check_files``, its file's (or brick's and index's) problems go to ``problems`` (a brick's own
    problem once, counted in ``bricks``)."""
    if not p:
        problems.append(f"{where}: an {mod} stimulus needs a path")
        return None
    ref = parse_array_ref(str(p)) if mod == "image" else None
    if ref is not None:  # an image of a brick: FILE.hdf5#KEY[INDEX] / FILE.npy#[INDEX], FILE relative or not
        file = ref.file if Path(ref.file).is_absolute() else str((path.parent / ref.file).resolve())
        resolved = array_ref(file, ref.key, ref.index)
        if check_files:  # a brick's own problem is listed once, with its rows; an index per row
            brick = (file, ref.key)
            if brick not in bricks:
                bricks[brick] = [brick_problem(*brick), where, 0]
            bricks[brick][2] += 1
            if bricks[brick][0] is None:
                prob = ref_problem(resolved)
                if prob:
                    problems.append(f"{where}: {prob}")
        return resolved
    resolved = str((path.parent / str(p)).resolve()) if not Path(str(p)).is_absolute() else str(p)
    if check_files:
        f = Path(resolved)
        if not f.exists():
            problems.append(f"{where}: file {resolved} does not exist")
        elif f.stat().st_size == 0:
            problems.append(f"{where}: file {resolved} is empty (0 bytes)")
        elif mod == "image":
            prob = image_problem(f)
            if prob:
                problems.append(f"{where}: {prob}")
    return resolved

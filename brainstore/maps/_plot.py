"""``brainstore plot``'s library half: any per-vertex array (a predicted response, a difference of two
models, a served ``/v1/encode`` answer saved to a file) laid in its space and drawn with the same pictures
as ``evaluate``'s maps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ._files import read_map
from ._spaces import FSAVERAGE_VERTICES, HEMIS, Cortex, Space, SpaceError

__all__ = ["read_plot_inputs", "plot_map"]

_HEMI_RE = re.compile(r"(?:^|[._-])(lh|rh)(?:[._-]|$)")


def _hemi_of(path: Path) -> str | None:
    m = _HEMI_RE.search(path.name.lower())
    return m.group(1) if m else None


def _encode_answer(path: Path, row: int) -> tuple[dict, dict]:
    """A saved ``/v1/encode`` answer: its arrays per hemisphere (row ``row``) and the fields around them."""
    import base64

    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path} is not JSON ({e}); save the /v1/encode answer as it came") from None
    if not isinstance(doc, dict) or not any(h in doc for h in HEMIS):
        raise SpaceError(f"{path} holds no lh / rh arrays; plot takes a /v1/encode answer saved as JSON")
    out = {}
    for h in HEMIS:
        if h not in doc:
            continue
        v = doc[h]
        a = (np.frombuffer(base64.b64decode(v["data_b64"]), "<f4").reshape(v["shape"]) if isinstance(v, dict)
             else np.asarray(v, np.float32))
        a = np.atleast_2d(a)
        if not 0 <= row < len(a):
            raise SpaceError(f"{path}: --row {row} is past its {len(a)} row(s)")
        out[h] = a[row]
    return out, {k: doc.get(k) for k in ("model", "subject", "vertices")}


def read_plot_inputs(paths: list, *, hemi: str | None = None, row: int = 0) -> tuple[dict, dict]:
    """The arrays to plot, ``{hemi: 1-D values}`` (or ``{"volume": 3-D}``), and what the files say about
    themselves (a served answer's model, subject and ROI columns).

    Each path is a ``.npy`` (1-D values, or rows x columns: ``row`` picks one), a GIfTI (``.func.gii``),
    a NIfTI volume, or a ``/v1/encode`` answer (``.json``, both hemispheres). A file's hemisphere comes from
    its name (``lh.test_r.func.gii``, ``rh_pred_test.npy``) or ``hemi``."""
    arrays, info = {}, {}
    for p in map(Path, paths):
        if p.suffix.lower() == ".json":
            got, info = _encode_answer(p, row)
            arrays.update(got)
            continue
        a = read_map(p)
        if a.ndim == 3 or (a.ndim == 4 and a.shape[3] == 1):
            arrays["volume"] = a.reshape(a.shape[:3])
            continue
        if a.ndim == 2:
            if not 0 <= row < a.shape[0]:
                raise SpaceError(f"{p}: --row {row} is past its {a.shape[0]} rows")
            a = a[row]
        if a.ndim != 1:
            raise SpaceError(f"{p} has shape {a.shape}; plot takes one value per vertex (1-D), rows x vertices "
                             "(with --row), or a 3-D volume")
        h = _hemi_of(p) or hemi
        if h is None:
            raise SpaceError(f"{p}: which hemisphere? name the file lh.* / rh.* or pass --hemi lh|rh")
        if h in arrays:
            raise SpaceError(f"{p}: a second {h} map; give one file per hemisphere")
        arrays[h] = np.asarray(a, np.float32)
    return arrays, info


def _whole_space(arrays: dict, cortex: Cortex | None, info: dict, source: str) -> tuple[dict, Space]:
    """Every hemisphere's values on its whole surface: columns laid through the subject's cortex, a served
    answer's ROI columns through its ``vertices``, or arrays that already cover an fsaverage surface."""
    out, space = {}, cortex.space if cortex else None
    for h, a in arrays.items():
        cols = (info.get("vertices") or {}).get(h)
        if cortex is not None and cols is not None:
            full = np.full(cortex.n_measured(h), np.nan, np.float32)
            full[np.asarray(cols)] = a
            a = full
        if cortex is not None and a.size == cortex.n_measured(h):
            out[h] = cortex.to_space(a, h)
        elif cortex is not None and a.size == cortex.size(h):
            out[h] = a
        elif cortex is None and a.size in FSAVERAGE_VERTICES.values():
            name = next(k for k, v in FSAVERAGE_VERTICES.items() if v == a.size)
            if space is not None and space.name != name:
                raise SpaceError(f"{source}: the hemispheres' maps cover different fsaverage meshes")
            space, out[h] = Space.fsaverage(name), a
        else:
            known = (f"the subject's {cortex.n_measured(h):,} columns or the {cortex.size(h):,} vertices of "
                     f"{cortex.space.describe()}" if cortex else
                     "an fsaverage surface (" + ", ".join(f"{v:,}" for v in FSAVERAGE_VERTICES.values()) +
                     " values), or pass --dataset and --subject for a dataset's own columns")
            raise SpaceError(f"{source}: the {h} map has {a.size:,} values; plot needs {known}")
    return out, space


def plot_map(arrays: dict, out: str | Path, *, cortex: Cortex | None = None, info: dict | None = None,
             title: str = "", label: str = "", meshes=None, cmap: str | None = None, vmin=None, vmax=None,
             html: bool = False, source: str = "the map") -> list[Path]:
    """Draw ``arrays`` (from :func:`read_plot_inputs`) as ``evaluate`` draws its maps: a PNG at ``out``
    (flat map, inflated lateral / medial / ventral views; or a volume's stat map and glass brain), and with
    ``html`` an interactive 3-D view beside it (``.html``). Returns the files written."""
    from ._interactive import surface_view_html
    from ._render import render_surface_map, render_volume_map

    out = Path(out)
    info = info or {}
    if "volume" in arrays or (cortex is not None and cortex.space.kind == "volume"):
        if cortex is None or cortex.space.kind != "volume":
            raise SpaceError(f"{source}: a volume needs its dataset's grid: pass --dataset and --subject of a volume "
                             "dataset")
        vol = arrays.get("volume")
        if vol is None:
            vol = cortex.volume({h: a for h, a in arrays.items()})
        elif tuple(vol.shape) != tuple(cortex.space.shape):
            raise SpaceError(f"{source}: a volume of shape {vol.shape}; the dataset's grid is {cortex.space.shape}")
        return [render_volume_map(vol, cortex.space.affine, out, title=title, label=label, cmap=cmap, vmin=vmin,
                                  vmax=vmax)]
    maps, space = _whole_space(arrays, cortex, info, source)
    rois = cortex.rois if cortex is not None else None
    files = [render_surface_map(maps, space, out, title=title, label=label, rois=rois, meshes=meshes, cmap=cmap,
                                vmin=vmin, vmax=vmax)]
    if html:
        page = out.with_suffix(".html")
        page.write_text(surface_view_html(maps, space, title=title, meshes=meshes, cmap=cmap, vmin=vmin, vmax=vmax))
        files.append(page)
    return files

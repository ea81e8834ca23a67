"""``brainstore plot``: any per-vertex array drawn on the cortex: whole-fsaverage maps without a dataset, a
subject's columns (a predicted response, row by row) through the dataset's placement, a saved ``/v1/encode``
answer with ROI columns; wrong sizes and files are one ``error:`` line."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from brainstore.cluster.cli import app
from brainstore.datasets import AlgonautsDataset

runner = CliRunner()
N5 = 10242


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _placed(root):
    """Release-style fsaverage files for subj01: its columns on fsaverage5's occipital vertices (indices < 10,242,
    so every one shows on the bundled mesh), ascending."""
    from nilearn.datasets import load_fsaverage

    ds = AlgonautsDataset(root)
    mesh = load_fsaverage("fsaverage5")["pial"]
    out = {}
    for h, part in (("lh", "left"), ("rh", "right")):
        n = ds.n_vertices("subj01", h)
        y = np.asarray(mesh.parts[part].coordinates)[:, 1]
        idx = np.sort(np.argsort(y)[:n])  # the n most posterior vertices
        mask = np.zeros(163842, np.int8)
        mask[idx] = 1
        np.save(root / "subj01" / "roi_masks" / f"{h}.all-vertices_fsaverage_space.npy", mask)
        out[h] = idx
    return out


def test_whole_fsaverage_maps_need_no_dataset_and_html_works_offline(tmp_path):
    v = np.full(N5, np.nan, np.float32)
    v[:3000] = np.linspace(-1, 1, 3000)
    np.save(tmp_path / "lh.diff.npy", v)
    np.save(tmp_path / "rh.diff.npy", -v)
    r = runner.invoke(app, ["plot", str(tmp_path / "lh.diff.npy"), str(tmp_path / "rh.diff.npy"),
                            "--out", str(tmp_path / "diff.png"), "--html", "--label", "model A - model B"])
    assert r.exit_code == 0, r.output
    px = _pixels(tmp_path / "diff.png")
    assert px.std() > 10  # not blank
    page = (tmp_path / "diff.html").read_text()
    assert "plotly" in page.lower() and "<script src=\"http" not in page


def test_a_predicted_response_row_is_laid_through_the_subjects_placement(dataset_copy, tmp_path):
    idx = _placed(dataset_copy)
    ds = AlgonautsDataset(dataset_copy)
    n = ds.n_vertices("subj01", "lh")
    pred = np.zeros((3, n), np.float32)
    pred[1] = np.linspace(0, 1, n)  # row 1 has the pattern, row 0 is flat
    np.save(tmp_path / "lh_pred_test.npy", pred)
    outs = {}
    for row in (0, 1):
        out = tmp_path / f"row{row}.png"
        r = runner.invoke(app, ["plot", str(tmp_path / "lh_pred_test.npy"), "--dataset", str(dataset_copy),
                                "--subject", "subj01", "--row", str(row), "--vmin", "0", "--vmax", "1", "--out", str(out)])
        assert r.exit_code == 0, r.output
        outs[row] = _pixels(out)
    assert np.abs(outs[0] - outs[1]).sum() > 0  # the row's values, not the file's first row, were drawn
    assert len(idx["lh"]) == n


def test_a_saved_encode_answer_with_roi_columns(dataset_copy, tmp_path):
    _placed(dataset_copy)
    ds = AlgonautsDataset(dataset_copy)
    roi = np.flatnonzero(ds.regions("subj01", "lh")["floc-faces"])
    vals = np.linspace(-1, 1, len(roi), dtype="<f4")[None]
    answer = {"model": "m", "subject": "subj01", "shape": {"lh": list(vals.shape)}, "vertices": {"lh": roi.tolist()},
              "lh": {"dtype": "float32", "shape": list(vals.shape), "data_b64": base64.b64encode(vals.tobytes()).decode()}}
    (tmp_path / "answer.json").write_text(json.dumps(answer))
    r = runner.invoke(app, ["plot", str(tmp_path / "answer.json"), "--dataset", str(dataset_copy),
                            "--out", str(tmp_path / "answer.png")])
    assert r.exit_code == 0, r.output
    assert _pixels(tmp_path / "answer.png").std() > 10


@pytest.mark.parametrize("case, message", [
    ("short", "the lh map has 7 values; plot needs an fsaverage surface"),
    ("nohemi", "which hemisphere? name the file lh.* / rh.* or pass --hemi lh|rh"),
    ("notamap", "cannot read"),
    ("pdf", "--out"),
])
def test_bad_inputs_are_one_error_line(tmp_path, case, message):
    f = tmp_path / {"short": "lh.x.npy", "nohemi": "x.npy", "notamap": "lh.x.txt", "pdf": "lh.y.npy"}[case]
    if case == "notamap":
        f.write_text("not a map")
    else:
        np.save(f, np.zeros(7 if case == "short" else N5, np.float32))
    out = tmp_path / ("x.pdf" if case == "pdf" else "x.png")
    r = runner.invoke(app, ["plot", str(f), "--out", str(out)])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()

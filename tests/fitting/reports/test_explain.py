"""Selectivity ("explain"): the stored stimuli with the highest predicted ROI response, on a real local
Ray fit and LanceDB store. Rankings are checked against references computed here (the ridge weights
by hand; predict_model on every id then numpy), captions against the synthetic ROIs' known tuning."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from brainstore.cluster.cli import app
from brainstore.datasets import AlgonautsDataset, DatasetError, make_dataset
from brainstore.features import FeatureStore
from brainstore.fitting import FitSpec, ModelRegistry, RegistryError, fit_encoding_models, predict_model
from brainstore.fitting.reports._explain import (GAP, LINE, TEXT_LINES, TILE, TITLE, explain_roi, sheet_size,
                                                 write_contact_sheet)

pytestmark = pytest.mark.slow

#: A stimulus held in the store but in no dataset: six faces in one caption (no image, no caption known).
EXTRA = "extra-faces"
EXTRA_TEXT = "a large face with a red hat " * 6


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _bow(texts: list[str], vocab: list[str]) -> np.ndarray:
    """Word counts (a cheap, deterministic caption embedding: no extraction job needed)."""
    col = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(texts), len(vocab)), np.float32)
    for r, t in enumerate(texts):
        for w, c in Counter(_words(t)).items():
            if w in col:
                out[r, col[w]] = c
    return out


def _hashed_trigrams(texts: list[str], dim: int = 24) -> np.ndarray:
    import zlib

    out = np.zeros((len(texts), dim), np.float32)
    for r, t in enumerate(texts):
        s = t.lower()
        for i in range(len(s) - 2):
            out[r, zlib.crc32(s[i:i + 3].encode()) % dim] += 1.0
    return out / np.maximum(out.sum(1, keepdims=True), 1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("explain")
    data = make_dataset(root / "synth", n_subjects=1, n_train=120, n_test=20, n_vertices=200, seed=11,
                        image_size=48, progress=False)
    ds = AlgonautsDataset(data)
    t = ds.stimuli()
    caption = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
    ids = sorted(caption)
    vocab = sorted({w for c in caption.values() for w in _words(c)})
    store, registry = root / "store", root / "registry"
    fs = FeatureStore(store)
    fs.ensure_table("words", len(vocab), {"extractor": "bow", "architecture": "test", "pretrained": "none"})
    fs.write("words", ids + [EXTRA], _bow([caption[i] for i in ids] + [EXTRA_TEXT], vocab), dataset="synth")
    fs.ensure_table("chars", 24, {"extractor": "trigrams", "architecture": "test", "pretrained": "none"})
    fs.write("chars", ids, _hashed_trigrams([caption[i] for i in ids]), dataset="synth")  # no EXTRA row
    spec = FitSpec(dataset=str(data), alphas=np.logspace(-1, 4, 6).tolist(), folds=4,
                   models=[{"name": "w", "features": ["words"]}, {"name": "wc", "features": ["words", "chars"]}],
                   ensembles=[{"name": "ens", "members": ["w", "wc"]}])
    run = fit_encoding_models(spec, store=str(store), registry=str(registry), out=root / "run", progress=False)
    assert not run.failures, run.failures
    return {"root": root, "data": data, "ds": ds, "store": store, "registry": registry, "caption": caption,
            "ids": ids}


def _roi_mean_reference(pred: dict, ds: AlgonautsDataset, roi: str) -> np.ndarray:
    masks = {h: ds.regions("subj01", h)[roi] for h in ("lh", "rh")}
    return np.hstack([np.asarray(pred[h], np.float64)[:, masks[h]] for h in ("lh", "rh")]).mean(1)


def test_ranking_matches_the_ridge_weights_by_hand(fitted):
    """Base ridge model: every stored stimulus (the extra one too), scored from its saved weights."""
    ds, fs = fitted["ds"], FeatureStore(fitted["store"], create=False)
    ex = explain_roi(fitted["registry"], "w", "subj01", roi="FFA-1", top=15, chunk=16)
    all_ids = sorted(fs.ids("words"))
    assert ex.n_stimuli == len(all_ids) == len(fitted["ids"]) + 1 and ex.stimulus_ids == all_ids
    tensors, _ = ModelRegistry(fitted["registry"], create=False).load_arrays("w/subj01")
    X = fs.load("words", all_ids).astype(np.float64)
    pred = {h: ((X - tensors[f"{h}.x_mean_"]) / tensors[f"{h}.x_scale_"]) @ tensors[f"{h}.coef_"]
            + tensors[f"{h}.intercept_"] for h in ("lh", "rh")}
    ref = _roi_mean_reference(pred, ds, "FFA-1")
    np.testing.assert_allclose(ex.scores, ref, rtol=1e-4, atol=1e-5)
    order = np.argsort(-ref, kind="stable")[:15]
    assert [t.stimulus_id for t in ex.top] == [all_ids[i] for i in order]
    assert [t.rank for t in ex.top] == list(range(1, 16))
    z = (ref - ref.mean()) / ref.std()
    np.testing.assert_allclose([t.z for t in ex.top], z[order], rtol=1e-4, atol=1e-5)
    assert ex.n_vertices == sum(int(ds.regions("subj01", h)["FFA-1"].sum()) for h in ("lh", "rh"))
    for t in ex.top:  # captions and images from the dataset; the extra stimulus has neither
        if t.stimulus_id == EXTRA:
            assert t.caption is None and t.image is None
        else:
            assert t.caption == fitted["caption"][t.stimulus_id] and Path(t.image).is_file()
            assert t.stimulus_id[4:] in Path(t.image).name


def test_derived_model_scores_the_ids_of_all_its_tables(fitted):
    """Ensemble over two tables: only stimuli held in both are scored; ranking = predict_model + numpy."""
    ds = fitted["ds"]
    ex = explain_roi(fitted["registry"], "ens", "subj01", roi="floc-places", top=10, chunk=7)
    assert ex.n_stimuli == len(fitted["ids"]) and EXTRA not in ex.stimulus_ids
    assert ex.tables == ["words", "chars"]
    pred = predict_model(ModelRegistry(fitted["registry"], create=False), "ens", "subj01", None, fitted["ids"])
    ref = _roi_mean_reference(pred, ds, "floc-places")
    np.testing.assert_allclose(ex.scores, ref, rtol=1e-5, atol=1e-6)
    assert [t.stimulus_id for t in ex.top] == [fitted["ids"][i] for i in np.argsort(-ref, kind="stable")[:10]]
    # one hemisphere, and explicit vertices (lh then rh) give the same figures as their masks
    lh = explain_roi(fitted["registry"], "ens", "subj01", roi="floc-places", hemisphere="lh", top=3)
    m = ds.regions("subj01", "lh")["floc-places"]
    np.testing.assert_allclose(lh.scores, np.asarray(pred["lh"], np.float64)[:, m].mean(1), rtol=1e-5, atol=1e-6)
    n_lh = len(m)
    verts = list(np.flatnonzero(m)) + list(n_lh + np.flatnonzero(ds.regions("subj01", "rh")["floc-places"]))
    by_index = explain_roi(fitted["registry"], "ens", "subj01", vertices=verts, top=10)
    np.testing.assert_allclose(by_index.scores, ex.scores, rtol=1e-6)
    assert by_index.roi == f"vertices[{len(verts)}]"


def test_face_roi_prefers_face_captions(fitted):
    """The synthetic face ROIs respond to faces: their top captions mention faces far above the base rate,
    and the store-only stimulus made of six faces tops the base model's ranking."""
    caption = fitted["caption"]
    base = np.mean(["face" in _words(c) for c in caption.values()])
    ex = explain_roi(fitted["registry"], "ens", "subj01", roi="floc-faces", top=10)
    hits = np.mean(["face" in _words(t.caption) for t in ex.top])
    assert base < 0.5 and hits >= 0.8 and hits >= 2 * base, (hits, base, [t.caption for t in ex.top])
    assert ex.top[0].z > 1.5
    w = explain_roi(fitted["registry"], "w", None, roi="floc-faces", top=3)
    assert w.subject == "subj01" and w.top[0].stimulus_id == EXTRA
    # places ROIs prefer scenes with a place (room or street), faces ROIs do not
    places = explain_roi(fitted["registry"], "ens", "subj01", roi="floc-places", top=10)
    place = lambda c: "room" in c or "street" in c  # noqa: E731
    assert np.mean([place(t.caption) for t in places.top]) > np.mean([place(c) for c in caption.values()]) + 0.25


def test_errors_name_the_thing_and_the_fix(fitted, tmp_path):
    reg = fitted["registry"]
    with pytest.raises(RegistryError, match=r"no encoding model 'nope' .*models: ens, w, wc"):
        explain_roi(reg, "nope", "subj01", roi="FFA-1")
    with pytest.raises(RegistryError, match=r"'w' has no fit for subject 'subj07'.*fitted for subj01"):
        explain_roi(reg, "w", "subj07", roi="FFA-1")
    with pytest.raises(DatasetError, match=r"unknown ROI 'FFA-9' .*known ROIs: .*FFA-1.*PPA"):
        explain_roi(reg, "w", "subj01", roi="FFA-9")
    with pytest.raises(ValueError, match=r"vertex index 9999 is out of range.*indices run from 0 to \d+"):
        explain_roi(reg, "w", "subj01", vertices=[0, 9999])
    with pytest.raises(ValueError, match="top must be a whole number >= 1"):
        explain_roi(reg, "w", "subj01", roi="FFA-1", top=0)
    with pytest.raises(ValueError, match="exactly one of"):
        explain_roi(reg, "w", "subj01")
    # an ROI without vertices in this subject (a copy of the dataset with FFA-2 emptied)
    copy = tmp_path / "synth"
    shutil.copytree(fitted["data"], copy)
    for h in ("lh", "rh"):
        f = copy / "subj01" / "roi_masks" / f"{h}.floc-faces_challenge_space.npy"
        lab = np.load(f)
        np.save(f, np.where(lab == 3, 0, lab))
    with pytest.raises(DatasetError, match=r"ROI 'FFA-2' has no vertices in subj01"):
        explain_roi(reg, "w", "subj01", roi="FFA-2", dataset=copy)


def test_contact_sheet_draws_images_and_grey_tiles(fitted, tmp_path):
    ex = explain_roi(fitted["registry"], "w", "subj01", roi="floc-faces", top=7)
    assert ex.top[0].stimulus_id == EXTRA and ex.top[1].image
    png = write_contact_sheet(ex, tmp_path / "sub" / "sheet.png", columns=3)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == sheet_size(7, 3)
        rgb = np.asarray(im.convert("RGB"))
    cell_h = TILE + TEXT_LINES * LINE + GAP

    def tile(k: int) -> np.ndarray:
        y, x = TITLE + GAP + (k // 3) * cell_h, GAP + (k % 3) * (TILE + GAP)
        return rgb[y:y + TILE, x:x + TILE]

    assert (tile(0)[:20, :20] == 170).all()  # no image file: a grey tile (with the id in its middle)
    with Image.open(ex.top[1].image) as src:  # an image file: the picture itself, scaled to the tile
        want = np.asarray(src.convert("RGB").resize((TILE, TILE)), np.float64)
    assert np.abs(tile(1).astype(np.float64) - want).mean() < 20


def test_cli_explain_prints_the_table_and_writes_the_sheet(fitted, tmp_path):
    out = tmp_path / "sheet.png"
    r = CliRunner().invoke(app, ["explain", "--model", "ens", "--roi", "floc-faces", "--top", "6",
                                 "--registry", str(fitted["registry"]), "--out", str(out)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "contact sheet:" in r.output and "sheet.png" in r.output and "face with" in r.output
    ex = explain_roi(fitted["registry"], "ens", "subj01", roi="floc-faces", top=6)
    assert all(t.stimulus_id in r.output for t in ex.top)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == sheet_size(6, 5)
    # default output under the registry's run folders; --vertices; model written as model/subject
    r = CliRunner().invoke(app, ["explain", "--model", "w/subj01", "--vertices", "1,2,3", "--top", "2",
                                 "--registry", str(fitted["registry"])])
    assert r.exit_code == 0, r.output
    sheets = list((fitted["registry"] / "_runs").glob("explain-*/w_subj01_vertices-3*.png"))
    assert len(sheets) == 1


def test_cli_bad_input_is_one_line_without_traceback(fitted, tmp_path):
    """As a user runs it: a separate process, exit code 2, one line naming the ROI and the known ones."""
    before = sorted(p.relative_to(fitted["root"]) for p in fitted["root"].rglob("*"))
    cmd = [sys.executable, "-m", "brainstore.cluster.cli", "explain", "--model", "w", "--roi", "FFA-9",
           "--registry", str(fitted["registry"]), "--out", str(tmp_path / "x.png")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2, out
    assert "Traceback" not in out and out.startswith("error:") and out.count("error:") == 1, out
    flat = " ".join(out.split())  # the console wraps long lines
    assert "unknown ROI 'FFA-9'" in flat and "known ROIs:" in flat and "FFA-1" in flat, out
    assert not (tmp_path / "x.png").exists()
    assert sorted(p.relative_to(fitted["root"]) for p in fitted["root"].rglob("*")) == before  # nothing written
    for argv, words in ((["--roi", "FFA-1", "--top", "0"], "top must be a whole number >= 1"),
                        (["--model", "nope", "--roi", "FFA-1"], "no encoding model 'nope'"),
                        (["--subject", "subj05", "--roi", "FFA-1"], "no fit for subject 'subj05'"),
                        (["--vertices", "1,x"], "--vertices '1,x' must be comma-separated whole numbers")):
        args = ["explain", "--model", "w", *argv, "--registry", str(fitted["registry"])]
        if "--model" in argv:
            args = ["explain", *argv, "--registry", str(fitted["registry"])]
        r = CliRunner().invoke(app, args)
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert r.exit_code == 2 and words in " ".join(r.output.split()) and "Traceback" not in r.output, r.output


def test_a_version_is_explained_as_registered(fitted, tmp_path):
    """``w@1`` explains version 1 after a version 2 with negated weights is saved: version 1's ranking is the
    first one's, the bare name (the latest) ranks the other way round; an absent version is named."""
    import shutil

    registry = tmp_path / "registry"
    shutil.copytree(fitted["registry"], registry)
    reg = ModelRegistry(registry)
    first = explain_roi(reg, "w", "subj01", roi="FFA-1", top=5)
    tensors, rec = reg.load_arrays("w/subj01")
    flipped = {k: (-v if k.endswith((".coef_", ".intercept_")) else v) for k, v in tensors.items()}
    assert reg.save("w/subj01", flipped, {**rec.meta, "note": "negated"}).version == 2
    again = explain_roi(reg, "w@1", "subj01", roi="FFA-1", top=5)
    assert [s.stimulus_id for s in again.top] == [s.stimulus_id for s in first.top]
    assert [s.score for s in again.top] == [s.score for s in first.top]
    latest = explain_roi(reg, "w", "subj01", roi="FFA-1", top=len(first.stimulus_ids))
    assert [s.stimulus_id for s in latest.top][-5:][::-1] == [s.stimulus_id for s in first.top]
    with pytest.raises(RegistryError, match="no version 9"):
        explain_roi(reg, "w@9", "subj01", roi="FFA-1")

"""``evaluate``'s maps on the cortex (``brainstore.fitting.reports._maps``): the GIfTI values are the
per-vertex test r, NNMC and noise ceiling computed here independently from the saved predictions and the
dataset; NaN exactly off the measured vertices; the subject average; volume datasets; datasets without a
cortex; the report's section; ``--meshes``."""

from __future__ import annotations

import html
import re
import warnings

import numpy as np
import pytest

HEMIS = ("lh", "rh")
N_FSAVERAGE = 163842


def _gifti(path) -> tuple[np.ndarray, dict]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.darrays[0].data), dict(img.darrays[0].meta)


def _pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column Pearson r with numpy's corrcoef, column by column (independent of brainstore.scoring)."""
    return np.array([np.corrcoef(pred[:, j].astype(np.float64), true[:, j].astype(np.float64))[0, 1]
                     for j in range(pred.shape[1])])


@pytest.mark.slow
def test_maps_hold_test_r_nnmc_and_the_noise_ceiling(mapped):
    ev, ds, out = mapped["ev"], mapped["ds"], mapped["out"]
    assert "maps/" in ev.files and ev.maps and all(p.startswith("maps/") for p in ev.maps)
    assert all((out / p).is_file() for p in ev.maps)
    for model in ("img", "both"):
        for s in ds.subjects:
            cortex = ds.cortex(s)
            folder = out / "maps" / model / s
            for h in HEMIS:
                pred = np.load(out / "predictions" / model / s / f"{h}_pred_test.npy")
                true = np.asarray(ds.responses(s, h, "test"))
                r = _pearson(pred, true)
                nc = np.asarray(ds.noise_ceiling(s, h), np.float64)
                measured = np.zeros(N_FSAVERAGE, bool)
                measured[cortex.vertices[h]] = True
                got_r, meta = _gifti(folder / f"{h}.test_r.func.gii")
                assert got_r.shape == (N_FSAVERAGE,) and np.array_equal(np.isnan(got_r), ~measured)
                np.testing.assert_allclose(got_r[cortex.vertices[h]], r, atol=2e-6)
                assert (meta["model"], meta["subject"], meta["metric"]) == (model, s, "test_r")
                got_nnmc, meta = _gifti(folder / f"{h}.nnmc.func.gii")
                assert np.array_equal(np.isnan(got_nnmc), ~measured) and meta["metric"] == "nnmc"
                want = np.minimum(100 * np.clip(r, 0, None) ** 2 / np.where(nc == 0, 1e-14, nc), 100)
                np.testing.assert_allclose(got_nnmc[cortex.vertices[h]], want, atol=2e-4, rtol=1e-5)
                got_nc, _ = _gifti(out / "maps" / "_data" / s / f"{h}.noise_ceiling.func.gii")
                assert np.array_equal(np.isnan(got_nc), ~measured)
                np.testing.assert_allclose(got_nc[cortex.vertices[h]], nc * 100, rtol=1e-6)
            for metric in ("test_r", "nnmc"):
                png = folder / f"{metric}.png"
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ev.maps_info.pictures[model][s][metric] == png
        assert not (out / "maps" / model / "noise_ceiling.png").exists()  # the noise ceiling is written once
    assert (out / "maps" / "_data" / ds.subjects[0] / "noise_ceiling.png").is_file()


@pytest.mark.slow
def test_the_average_is_the_nanmean_over_subjects(mapped):
    out, ds = mapped["out"], mapped["ds"]
    for folder, metric in (("img", "test_r"), ("both", "nnmc"), ("_data", "noise_ceiling")):
        for h in HEMIS:
            per_subject = np.stack([_gifti(out / "maps" / folder / s / f"{h}.{metric}.func.gii")[0] for s in ds.subjects])
            got, meta = _gifti(out / "maps" / folder / "average" / f"{h}.{metric}.func.gii")
            any_measured = np.isfinite(per_subject).any(axis=0)
            assert np.array_equal(np.isfinite(got), any_measured)  # a vertex measured by any subject
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (all-NaN columns: off every subject)
                want = np.nanmean(per_subject, axis=0)
            np.testing.assert_allclose(got[any_measured], want[any_measured], rtol=1e-6, atol=1e-7)
            assert meta["subject"] == f"mean of {', '.join(ds.subjects)}"
        assert (out / "maps" / folder / "average" / f"{metric}.png").is_file()


@pytest.mark.slow
def test_no_cortex_no_maps_and_one_line_why(mapped, tmp_path):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting.reports._html_maps import section_maps
    from brainstore.fitting.reports._maps import write_cortex_maps

    ds = AlgonautsDataset(mapped["data"])
    ds.cortex = lambda subject: None
    preds = {("img", s): {h: np.load(mapped["out"] / "predictions" / "img" / s / f"{h}_pred_test.npy") for h in HEMIS}
             for s in ds.subjects}
    maps = write_cortex_maps(ds, preds, tmp_path / "maps", progress=False)
    assert maps.files == [] and not (tmp_path / "maps").exists()
    assert len(maps.notes) == 1 and "does not say where its response columns sit" in maps.notes[0]
    section = section_maps(maps, {}, {})
    assert section.count("<p") == 1 and "<img" not in section and "<iframe" not in section
    assert "no maps here" in section_maps(None, {}, {}).lower()


@pytest.mark.slow
def test_volume_dataset_maps(mapped, tmp_path):
    """A volume placement: NIfTI in the mask's grid, NaN outside, the test r at the columns' voxels; no average."""
    import nibabel as nib

    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting.reports._maps import write_cortex_maps
    from brainstore.maps import Cortex, Space

    ds = AlgonautsDataset(mapped["data"])
    shape, affine = (14, 16, 12), np.diag([3.0, 3.0, 3.0, 1.0])
    cortices = {}
    for k, s in enumerate(ds.subjects):
        n = {h: ds.n_vertices(s, h) for h in HEMIS}
        flat = np.random.default_rng(k).permutation(np.prod(shape))[: n["lh"] + n["rh"]]
        cortices[s] = Cortex(Space.volume(shape, affine), {"lh": np.sort(flat[: n["lh"]]), "rh": np.sort(flat[n["lh"]:])})
    ds.cortex = cortices.get
    preds = {("img", s): {h: np.load(mapped["out"] / "predictions" / "img" / s / f"{h}_pred_test.npy") for h in HEMIS}
             for s in ds.subjects}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = write_cortex_maps(ds, preds, tmp_path / "maps", progress=False)
    s = ds.subjects[0]
    img = nib.load(str(tmp_path / "maps" / "img" / s / "test_r.nii.gz"))
    vol = np.asarray(img.dataobj)
    assert vol.shape == shape and np.allclose(img.affine, affine)
    flat = vol.ravel()
    inside = np.zeros(flat.size, bool)
    for h in HEMIS:
        inside[cortices[s].vertices[h]] = True
        r = _pearson(preds[("img", s)][h], np.asarray(ds.responses(s, h, "test")))
        np.testing.assert_allclose(flat[cortices[s].vertices[h]], r, atol=2e-6)
    assert np.array_equal(np.isnan(flat), ~inside)
    assert (tmp_path / "maps" / "img" / s / "nnmc.nii.gz").is_file()
    assert (tmp_path / "maps" / "_data" / s / "noise_ceiling.nii.gz").is_file()
    assert maps.pictures["img"][s]["test_r"].read_bytes()[:4] == b"\x89PNG"
    assert "average" not in maps.pictures["img"]  # subjects' grids are their own: no average


@pytest.mark.slow
def test_video_dataset_maps(tmp_path):
    """A time-series dataset: its test split is the held-out run's TRs; the maps score them as evaluate does."""
    from brainstore.datasets import make_video_dataset, open_dataset
    from brainstore.fitting.reports._maps import write_cortex_maps
    from tests.fitting.reports.conftest import placed

    root = make_video_dataset(tmp_path / "video", n_subjects=2, n_train_runs=2, trs_per_run=12, n_test_repeats=2,
                              frame_size=32, fps=2, n_vertices=120, seed=1, progress=False)
    ds = placed(open_dataset(root))
    rng = np.random.default_rng(0)
    preds = {}
    for s in ds.subjects:
        preds[("tr-model", s)] = {}
        for h in HEMIS:
            true = np.asarray(ds.responses(s, h, "test"), np.float64)
            preds[("tr-model", s)][h] = (true + rng.normal(0, 2 * true.std(), true.shape)).astype(np.float32)
    maps = write_cortex_maps(ds, preds, tmp_path / "maps", progress=False)
    assert not maps.notes, maps.notes
    for s in ds.subjects:
        cortex = ds.cortex(s)
        for h in HEMIS:
            got, meta = _gifti(tmp_path / "maps" / "tr-model" / s / f"{h}.test_r.func.gii")
            assert got.shape == (cortex.size(h),) and np.isfinite(got).sum() == cortex.n_measured(h)
            r = _pearson(preds[("tr-model", s)][h], np.asarray(ds.responses(s, h, "test")))
            np.testing.assert_allclose(got[cortex.vertices[h]], r, atol=2e-6)
        assert set(maps.pictures["tr-model"][s]) == {"test_r", "nnmc"}
    assert set(maps.pictures["tr-model"]["average"]) == {"test_r", "nnmc"}


@pytest.mark.slow
def test_report_section_shows_the_best_models_maps(mapped):
    from tests.fitting.reports.test_html import parse, section

    ev, ds = mapped["ev"], mapped["ds"]
    text = ev.html.read_text(encoding="utf-8")
    sec = section(parse(text), "maps")
    best = ev.report["best"]
    alts = [img.attrs["alt"] for img in sec.find_all("img")]
    assert alts == [f"{best} {s} {m}" for s in [*ds.subjects, "average"] for m in ("NNMC (%)", "test r")] + \
        ["noise ceiling average"]
    for img in sec.find_all("img"):
        assert img.attrs["src"].startswith("data:image/png;base64,")
    (frame,) = sec.find_all("iframe")
    assert frame.attrs["sandbox"] == "allow-scripts" and "src" not in frame.attrs
    page = frame.attrs["srcdoc"]  # (the parser unescapes the attribute: this is the page the frame shows)
    assert page.lstrip().lower().startswith("<!doctype html") and "Plotly" in page
    assert not re.findall(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert f"Interactive view: {best} · average · NNMC (%)" in [h.text() for h in sec.find_all("h3")]
    assert "<script" not in text.replace(html.escape(page, quote=True), "").lower()  # the report itself: no script


@pytest.mark.slow
def test_meshes_option_is_checked_first(serving_models, tmp_path):
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app

    bad = tmp_path / "nowhere"
    bad.mkdir()
    r = CliRunner().invoke(app, ["evaluate", "--dataset", str(serving_models["data"]), "--registry",
                                 serving_models["registry"], "--out", str(tmp_path / "ev"), "--meshes", str(bad)])
    assert r.exit_code != 0
    assert f"--meshes {bad}: no surf/lh.inflated there" in " ".join(r.output.split())
    assert not (tmp_path / "ev" / "metrics.json").exists()  # refused before any work

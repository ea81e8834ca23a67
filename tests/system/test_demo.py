"""``brainstore demo`` (``cluster/_demo.py``): its evaluate step writes the maps on the cortex into the
report folder and its HTML step shows them. The steps run on the session's served registry (two encoders
on the small synthetic dataset, which places its columns on fsaverage) rather than on a whole demo run
(CLIP, motion energy, an adaptor and serving: minutes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

HEMIS = ("lh", "rh")


@pytest.mark.slow
def test_the_demo_report_holds_the_maps_and_shows_them(serving_models, tmp_path, capsys):
    import nibabel as nib

    from brainstore.cluster import _demo
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import ModelRegistry, evaluate_registered
    from tests.fitting.reports.test_html import parse, section

    data = serving_models["data"]
    ds = AlgonautsDataset(data)
    metrics, kinds, preds = evaluate_registered(ModelRegistry(serving_models["registry"], create=False), ds,
                                                models=["img", "both"])
    demo = SimpleNamespace(out=tmp_path, params={"seed": 3}, data=data, store=serving_models["store"],
                           registry=serving_models["registry"], quiet=True)
    run = SimpleNamespace(metrics=metrics, kinds=kinds, models=["img", "both"], test_preds=preds,
                          run_dir=tmp_path / "report")
    rep, _, maps = _demo._evaluate_step(demo, ds, run)
    html = _demo._html_step(demo, ds, run, {"img": serving_models["img"], "text": serving_models["txt"]}, maps)

    folder = tmp_path / "report" / "maps"
    assert maps.root == folder and not maps.notes
    assert f"maps: {folder}/MODEL/SUBJECT/" in " ".join(capsys.readouterr().out.split())
    for model, metric in (("img", "test_r"), ("both", "nnmc"), ("_data", "noise_ceiling")):
        for s in [*ds.subjects, "average"]:
            assert (folder / model / s / f"{metric}.png").read_bytes()[:4] == b"\x89PNG"
        for s in ds.subjects:  # the values sit on the vertices the synthetic cortex placed the columns on
            placed = ds.cortex(s).vertices
            for h in HEMIS:
                values = np.asarray(nib.load(str(folder / model / s / f"{h}.{metric}.func.gii")).darrays[0].data)
                assert np.array_equal(np.flatnonzero(np.isfinite(values)), np.sort(placed[h]))

    assert html == tmp_path / "report" / "report.html"
    sec = section(parse(html.read_text(encoding="utf-8")), "maps")
    alts = [img.attrs["alt"] for img in sec.find_all("img")]
    best = rep["best"]
    assert alts == [f"{best} {s} {m}" for s in [*ds.subjects, "average"] for m in ("NNMC (%)", "test r")] + \
        ["noise ceiling average"]
    assert len(sec.find_all("iframe")) == 1

"""The pipeline's stages (``cluster/pipeline/_stages.py``): the report stage hands the evaluate stage's metrics
and maps to the library's report writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainstore.cluster.pipeline import _stages, load_pipeline
from brainstore.cluster.pipeline._state import _Ctx
from tests.cluster.pipeline._pipelines import _pipeline_text, _write


def test_report_stage_calls_write_html_report(tmp_path, small_dataset, monkeypatch):
    """The report stage hands the evaluate stage's metrics to brainstore.fitting.write_html_report."""
    calls = []

    def fake(path, **kw):
        calls.append((Path(path), kw))
        Path(path).write_text("<html>report</html>")

    import brainstore.fitting

    monkeypatch.setattr(brainstore.fitting, "write_html_report", fake)
    pipe = load_pipeline(_write(tmp_path, _pipeline_text(small_dataset)))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"img": {"subj01": {}}}, "kinds": {"img": "ridge"},
                                   "decoders": {"decoder-ridge-x": {"subj01": {"top1_brain_to_stimulus": 0.5}}}}))
    state = {"format": 1, "stages": {"evaluate": {"fingerprint": "e" * 64, "outputs": {"metrics": str(metrics),
                                                                                    "dir": str(tmp_path)}},
                                     "fit": {"fingerprint": "f" * 64, "outputs": {"run_dir": "R"}}}}
    out = _stages.RUNNERS["report"](_Ctx(pipe, state), "r" * 64)
    [(path, kw)] = calls
    assert out == {"html": str(path)} and path == pipe.out / "report" / "report.html" and path.is_file()
    assert kw["metrics"] == {"img": {"subj01": {}}} and kw["kinds"] == {"img": "ridge"}
    assert kw["decoders"] == {"decoder-ridge-x": {"subj01": {"top1_brain_to_stimulus": 0.5}}}
    assert kw["registry"] == str(tmp_path / "registry") and kw["store"] == str(tmp_path / "store")
    assert str(kw["dataset"].root) == str(small_dataset.resolve()) and kw["title"] == "brainstore pipeline pipeline"
    assert kw["provenance_extra"]["stages"] == {"evaluate": "e" * 64, "fit": "f" * 64}


def test_report_stage_draws_the_maps_the_evaluate_stage_wrote(tmp_path, small_dataset, monkeypatch):
    """The evaluate stage's maps.json (``CortexMaps.save``) is read back and handed to the report writer;
    without one (no encoder) the report gets None."""
    import brainstore.fitting
    from brainstore.fitting import CortexMaps
    from brainstore.maps import Space

    calls = []
    monkeypatch.setattr(brainstore.fitting, "write_html_report",
                        lambda path, **kw: (calls.append(kw), Path(path).write_text("<html></html>")))
    pipe = load_pipeline(_write(tmp_path, _pipeline_text(small_dataset)))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {}, "kinds": {}}))
    root = tmp_path / "evaluate" / "maps"
    png = root / "img" / "subj01" / "nnmc.png"
    written = CortexMaps(root, files=[png], pictures={"img": {"subj01": {"nnmc": png}}},
                         spaces={"subj01": Space.fsaverage(), "subj02": Space.volume((2, 3, 4), np.eye(4) * 2)},
                         notes=["subj02: no NNMC map"], seconds=1.5)
    root.mkdir(parents=True)
    manifest = written.save(tmp_path / "evaluate" / "maps.json")
    for outputs, want in (({"metrics": str(metrics), "maps": str(manifest)}, written), ({"metrics": str(metrics)}, None)):
        state = {"format": 1, "stages": {"evaluate": {"fingerprint": "e" * 64, "outputs": outputs},
                                         "fit": {"fingerprint": "f" * 64, "outputs": {}}}}
        _stages.RUNNERS["report"](_Ctx(pipe, state), "r" * 64)
        got = calls.pop()["maps"]
        if want is None:
            assert got is None
            continue
        assert got.root == root.resolve() and got.files == [png.resolve()] and got.notes == written.notes
        assert got.pictures == {"img": {"subj01": {"nnmc": png.resolve()}}} and got.seconds == 1.5
        assert got.spaces == written.spaces and np.array_equal(got.spaces["subj02"].affine, np.eye(4) * 2)

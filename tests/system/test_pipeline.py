"""`brainstore run PIPELINE.yaml` end to end on the session's local Ray (extract -> fit -> evaluate -> report),
fingerprints that skip current stages, resume after a crash, --only / --from / --dry-run, an extract-only
pipeline; the registered models against the library's own fit (independent reference). The checks before any
work are in tests/cluster/pipeline/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from brainstore.cluster.cli import app
from brainstore.cluster.pipeline import PipelineError, _stages, load_pipeline, plan_pipeline, run_pipeline
from tests.cluster.pipeline._pipelines import TXT_TABLE, _img_table, _pipeline_text, _write

runner = CliRunner()

# ----------------------------------------------------------------------------- (b) end to end
@pytest.fixture(scope="module")
def pipe_env(small_dataset, tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("pipeline")
    path = _write(root, _pipeline_text(small_dataset))
    return {"root": root, "path": path, "text": path.read_text(), "store": str(root / "store"),
            "registry": str(root / "registry"), "data": small_dataset}


def _actions(result) -> dict:
    return {s.stage: (s.action, s.reason) for s in result["plan"]}


@pytest.mark.slow
def test_pipeline_end_to_end_skips_current_stages_and_resumes_after_a_crash(pipe_env, monkeypatch, tmp_path):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import FitSpec, ModelRegistry, fit_encoding_models, predict_model, subject_stimuli

    path = pipe_env["path"]
    first = run_pipeline(path)
    assert first["ran"] == ["extract", "fit", "evaluate", "report"]
    assert _actions(first)["serve"][0] == "off"
    out = pipe_env["root"] / "pipeline-run"  # default `out:`: next to the file
    state = json.loads((out / "pipeline-state.json").read_text())
    assert set(state["stages"]) == {"extract", "fit", "evaluate", "report"} and "running" not in state
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"img", "both"} and set(metrics["decoders"]) == {f"decoder-ridge-{TXT_TABLE}"}
    html = (out / "report" / "report.html").read_text()
    assert "<title>brainstore pipeline pipeline</title>" in html
    # the real report shows the decoder and the pipeline's provenance
    assert f"decoder-ridge-{TXT_TABLE}" in html and "evaluate_dir" in html

    # the registered models predict what the library's own fit of the same spec predicts (independent reference)
    ds = AlgonautsDataset(pipe_env["data"])
    spec = FitSpec(dataset=str(pipe_env["data"]), alphas=[1, 100, 10000], folds=3,
                   models=[{"name": "img", "features": [_img_table()]},
                           {"name": "both", "features": [_img_table(), TXT_TABLE]}])
    ref = fit_encoding_models(spec, store=pipe_env["store"], registry=str(tmp_path / "ref"), out=tmp_path / "run",
                              progress=False)
    assert not ref.failures
    for m in ("img", "both"):
        for s in ds.subjects:
            ids = subject_stimuli(ds, s, "test")
            got = predict_model(ModelRegistry(pipe_env["registry"], create=False), m, s, None, ids)
            want = predict_model(ModelRegistry(tmp_path / "ref", create=False), m, s, None, ids)
            for h in ("lh", "rh"):
                np.testing.assert_allclose(got[h], want[h], rtol=1e-5, atol=1e-6)

    # a second run: every stage current
    second = run_pipeline(path)
    assert second["ran"] == []
    assert all(r == "current, skipped" for a, r in _actions(second).values() if a != "off")

    _maps_turned_on(path, pipe_env["text"], out, ds)


    # the fit config changes: fit and downstream run again, extract is skipped
    path.write_text(pipe_env["text"].replace("  alphas: [1, 100, 10000]\n  folds", "  alphas: [1, 1000, 100000]\n  folds"))
    third = run_pipeline(path)
    acts = _actions(third)
    assert third["ran"] == ["fit", "evaluate", "report"]
    assert acts["extract"] == ("skip", "current, skipped") and acts["fit"] == ("run", "config changed (alphas)")
    assert acts["evaluate"][1] == "upstream fit runs"

    # a crash in evaluate: the rerun resumes there, extract and fit stay skipped
    calls = {"n": 0}
    real = _stages.RUNNERS["evaluate"]

    def crash_once(ctx, fp):
        calls["n"] += 1
        raise RuntimeError("simulated crash in evaluate")

    path.write_text(pipe_env["text"])
    monkeypatch.setitem(_stages.RUNNERS, "evaluate", crash_once)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(path)
    state = json.loads((out / "pipeline-state.json").read_text())
    assert set(state["stages"]) == {"extract", "fit"} and state["running"] == "evaluate"
    monkeypatch.setitem(_stages.RUNNERS, "evaluate", real)
    resumed = run_pipeline(path)
    acts = _actions(resumed)
    assert calls["n"] == 1 and resumed["ran"] == ["evaluate", "report"]
    assert acts["extract"][1] == acts["fit"][1] == "current, skipped"
    assert acts["evaluate"] == ("run", "did not finish last time")


def _maps_turned_on(path, text: str, out, ds) -> None:
    """`evaluate: {maps: true}`: the evaluate stage runs again (`maps` is part of its identity) and writes the
    maps, the report stage shows them; a map file gone makes evaluate not current."""
    from tests.fitting.reports.test_html import parse, section

    path.write_text(text.replace("  maps: false\n", "  maps: true\n"))
    on = run_pipeline(path)
    assert on["ran"] == ["evaluate", "report"] and _actions(on)["evaluate"] == ("run", "config changed (maps)")
    maps = out / "evaluate" / "maps"
    for folder, subjects, metrics in (("img", [*ds.subjects, "average"], ("test_r", "nnmc")),
                                      ("_data", [*ds.subjects, "average"], ("noise_ceiling",))):
        for s in subjects:
            for m in metrics:
                assert (maps / folder / s / f"{m}.png").is_file() and (maps / folder / s / f"lh.{m}.func.gii").is_file()
    sec = section(parse((out / "report" / "report.html").read_text(encoding="utf-8")), "maps")
    alts = [img.attrs["alt"] for img in sec.find_all("img")]
    assert len(alts) == 2 * (len(ds.subjects) + 1) + 1 and alts[-1] == "noise ceiling average"
    assert len(sec.find_all("iframe")) == 1
    (maps / "img" / ds.subjects[0] / "test_r.png").unlink()
    plan = {s.stage: s for s in plan_pipeline(load_pipeline(path))}
    assert plan["evaluate"].action == "run"
    why = plan["evaluate"].reason
    assert why.startswith("outputs changed: 1 of its map files missing (") and why.endswith(f"/img/{ds.subjects[0]}/test_r.png)")


@pytest.mark.slow
def test_only_from_and_dry_run(pipe_env, monkeypatch):
    path = pipe_env["path"]
    path.write_text(pipe_env["text"])
    run_pipeline(path)  # current (or made so)

    only = run_pipeline(path, only="evaluate")
    assert only["ran"] == ["evaluate"]
    plan = {s.stage: s for s in plan_pipeline(load_pipeline(path))}
    assert plan["report"].action == "run" and plan["report"].reason == "never run"  # evaluate's outputs are new
    assert plan["fit"].reason == "current, skipped"

    r = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run" in r.output and "current, skipped" in r.output and "never run" in r.output

    fr = run_pipeline(path, from_stage="evaluate")
    assert fr["ran"] == ["evaluate", "report"]
    assert _actions(fr)["evaluate"][1] == "forced (--from evaluate); was current"
    assert _actions(fr)["fit"][1] == "current, skipped"

    # --only / --from need the stages they read to be current: the error names the one to run
    path.write_text(pipe_env["text"].replace("    concurrency: 1\n", "    concurrency: 1\n    dtype: float32\n"))
    with pytest.raises(PipelineError, match=r"--only fit: upstream stage extract is not current \(config changed "
                                            r"\(extractors\)\); run it first: `brainstore run .* --only extract`"):
        run_pipeline(path, only="fit")
    r = runner.invoke(app, ["run", str(path), "--from", "evaluate"])
    assert r.exit_code == 2 and "--from evaluate: upstream stage extract is not current" in r.output
    r = runner.invoke(app, ["run", str(path), "--only", "evalute"])
    assert r.exit_code == 2 and "--only 'evalute' is not a stage; did you mean 'evaluate'?" in r.output
    r = runner.invoke(app, ["run", str(path), "--only", "serve"])
    assert r.exit_code == 2 and "the serve stage is off (serve.enabled: false)" in r.output
    path.write_text(pipe_env["text"])


@pytest.mark.slow
def test_an_extract_only_pipeline_runs_its_extract_stage_and_nothing_else(tmp_path, small_dataset, ray_local):
    """No `fit:`: the extract stage runs (then is current), fit / evaluate / report / serve are off; a file with
    neither `extract:` nor `fit:`, or serving with no fit, is refused before any work."""
    import lancedb

    text = f"dataset: {small_dataset}\nstore: store\nregistry: registry\nextract:\n  - {{spec: text, limit: 40}}\n"
    p = _write(tmp_path, text)
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 0, r.output
    ids = lancedb.connect(tmp_path / "store").open_table(TXT_TABLE).to_arrow().column("stimulus_id").to_pylist()
    assert len(ids) == len(set(ids)) == 40
    state = json.loads((tmp_path / "pipeline-run" / "pipeline-state.json").read_text())
    assert list(state["stages"]) == ["extract"] and not (tmp_path / "registry").exists()
    plan = {s.stage: (s.action, s.reason) for s in plan_pipeline(load_pipeline(p))}
    assert plan["extract"] == ("skip", "current, skipped")
    assert all(plan[s][0] == "off" for s in ("fit", "evaluate", "report", "serve")), plan
    assert plan["fit"][1] == "off: no `fit:` in the pipeline (extract only)"
    with pytest.raises(PipelineError, match=r"neither `extract:` nor `fit:`"):
        load_pipeline(_write(tmp_path / "empty", f"dataset: {small_dataset}\nstore: s\nregistry: r\n"))
    with pytest.raises(PipelineError, match=r"line 6: serve.enabled: the serve stage serves the models of the fit"):
        load_pipeline(_write(tmp_path / "serve", text + "serve: {enabled: true}\n"))

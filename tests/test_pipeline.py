"""`brainstore run PIPELINE.yaml`: validation errors with their lines; end to end on the session's local Ray
(extract -> fit -> evaluate -> report), fingerprints that skip current stages, resume after a crash,
--only / --from / --dry-run; the registered models against the library's own fit (independent reference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from brainstore.cluster import _pipeline, _stages
from brainstore.cluster._pipeline import PipelineError, load_pipeline, plan_pipeline, run_pipeline
from brainstore.cluster.cli import app

runner = CliRunner()

IMG = "clip:arch=brainstore-tiny-clip,pretrained=none"
TXT_TABLE = "text-all-minilm-l6-v2"

PIPELINE = """\
# a tiny pipeline over the session's small dataset
dataset: {dataset}
store: store
registry: registry
extract:
  - spec: text
    concurrency: 1
  - spec: {img}
    batch_size: 32
fit:
  alphas: [1, 100, 10000]
  folds: 3
  models:
    - name: img
      features: [{img_table}]
    - name: both
      features: [{img_table}, {txt_table}]
  decoders:
    - target: {txt_table}
      alphas: [1, 100, 10000]
evaluate:
  rois: families
report:
  html: true
"""


def _img_table() -> str:
    from brainstore.features import get_extractor
    from brainstore.features._extractors._testing import register_tiny_models

    register_tiny_models(with_open_clip=False)
    return get_extractor(IMG).version


def _write(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


def _pipeline_text(dataset: Path) -> str:
    return PIPELINE.format(dataset=dataset, img=IMG, img_table=_img_table(), txt_table=TXT_TABLE)


# ----------------------------------------------------------------------------- (a) validation, before any work
def test_unknown_key_names_the_line_and_the_nearest_keys(tmp_path, small_dataset):
    text = _pipeline_text(small_dataset).replace("      features: [" + _img_table() + "]\n",
                                                 "      featurs: [" + _img_table() + "]\n", 1)
    text = text.replace("report:\n  html: true", "report:\n  html: true\n  titel: mine")
    p = _write(tmp_path, text)
    with pytest.raises(PipelineError) as e:
        load_pipeline(p)
    msg = str(e.value)
    lines = text.splitlines()
    feat_line = next(i for i, s in enumerate(lines, 1) if "featurs:" in s)
    titel_line = next(i for i, s in enumerate(lines, 1) if "titel:" in s)
    assert str(p) in msg
    assert f"line {feat_line}: fit.models[0].featurs: unknown key 'featurs'; did you mean 'features'?" in msg
    assert f"line {titel_line}: report.titel: unknown key 'titel'; did you mean 'title'?" in msg
    assert "known keys here: html, title" in msg
    # the pipeline's own top-level keys too, and the CLI says it in one error, exit 2
    p2 = _write(tmp_path / "b", "dataset: x\nstore: s\nregistry: r\nfit: {models: []}\nextrct: [text]\n")
    r = runner.invoke(app, ["run", str(p2)])
    assert r.exit_code == 2, r.output
    assert "line 5: extrct: unknown key 'extrct'; did you mean 'extract'?" in r.output
    assert "Traceback" not in r.output


def test_wrong_type_names_the_field_line_and_value(tmp_path, small_dataset):
    text = _pipeline_text(small_dataset).replace("  folds: 3", "  folds: three").replace(
        "    batch_size: 32", "    batch_size: -4")
    p = _write(tmp_path, text)
    with pytest.raises(PipelineError) as e:
        load_pipeline(p)
    msg, lines = str(e.value), text.splitlines()
    folds = next(i for i, s in enumerate(lines, 1) if "folds:" in s)
    batch = next(i for i, s in enumerate(lines, 1) if "batch_size:" in s)
    assert f"line {folds}: fit.folds: Input should be a valid integer" in msg and "(given: 'three')" in msg
    assert f"line {batch}: extract[1].batch_size: Input should be greater than or equal to 1" in msg
    # a repeated key is refused with both lines (YAML would keep the last one silently)
    text = _pipeline_text(small_dataset) + "store: other\n"
    p2 = _write(tmp_path / "dup", text)
    with pytest.raises(PipelineError, match=rf"line {len(text.splitlines())}: store is given twice \(first on line 3\)"):
        load_pipeline(p2)


def test_missing_dataset_and_bad_references_are_refused_before_any_work(tmp_path, small_dataset):
    p = _write(tmp_path, _pipeline_text(tmp_path / "no-such-data"))
    with pytest.raises(PipelineError, match=r"pipeline.yaml line 2: dataset .*no-such-data does not exist"):
        load_pipeline(p)
    # relative paths are relative to the file's folder, not the current directory
    (tmp_path / "d").mkdir()
    p = _write(tmp_path / "d", _pipeline_text(Path("../../data")))
    with pytest.raises(PipelineError, match=r"dataset .*/data does not exist \(paths are relative to the pipeline"):
        load_pipeline(p)
    # a fit model naming a table no extractor makes (and the store lacks): the line of that table
    text = _pipeline_text(small_dataset).replace(f"[{_img_table()}, {TXT_TABLE}]", f"[{_img_table()}, text-minilm]")
    p = _write(tmp_path / "t", text)
    with pytest.raises(PipelineError) as e:
        load_pipeline(p)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "text-minilm]" in s)
    assert f"line {line}: fit.models[1].features[1]: feature table 'text-minilm' is neither made by the extract" in str(e.value)
    assert f"did you mean '{TXT_TABLE}'" in str(e.value)
    # a bad extractor spec: its line and the parser's reason
    p = _write(tmp_path / "x", _pipeline_text(small_dataset).replace("  - spec: text\n", "  - spec: nosuch:foo=1\n"))
    with pytest.raises(PipelineError, match=r"line 6: extract\[0\]: extractor spec 'nosuch:foo=1' is invalid"):
        load_pipeline(p)


def test_fit_spec_file_is_checked_with_its_own_lines(tmp_path, small_dataset):
    img = _img_table()
    _write(tmp_path, f"alphas: [1, 10]\nfolds: 3\nmodels:\n  - name: img\n    features: [{img}]\n    methd: ridge\n",
           "fit.yaml")
    text = _pipeline_text(small_dataset)
    text = text[:text.index("fit:")] + "fit:\n  spec: fit.yaml\n"
    p = _write(tmp_path, text)
    with pytest.raises(PipelineError) as e:
        load_pipeline(p)
    assert f"fit spec {tmp_path / 'fit.yaml'} is invalid" in str(e.value)
    assert "line 6: models[0].methd: unknown key 'methd'; did you mean 'method'?" in str(e.value)
    (tmp_path / "fit.yaml").write_text(f"models:\n  - name: img\n    features: [{img}]\n")
    pipe = load_pipeline(p)
    assert pipe.fit_spec.dataset == str(small_dataset.resolve()) and pipe.fit_spec.models[0].features == [img]
    assert pipe.fit_spec.store == str(tmp_path / "store") and pipe.out == tmp_path / "pipeline-run"
    # inline fields beside `spec:` are refused
    p = _write(tmp_path, text.replace("  spec: fit.yaml\n", "  spec: fit.yaml\n  folds: 4\n"))
    with pytest.raises(PipelineError, match=r"fit: give either `spec:` \(a fit-spec file\) or the fit fields inline"):
        load_pipeline(p)


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
    out = _stages.RUNNERS["report"](_pipeline._Ctx(pipe, state), "r" * 64)
    [(path, kw)] = calls
    assert out == {"html": str(path)} and path == pipe.out / "report" / "report.html" and path.is_file()
    assert kw["metrics"] == {"img": {"subj01": {}}} and kw["kinds"] == {"img": "ridge"}
    assert kw["decoders"] == {"decoder-ridge-x": {"subj01": {"top1_brain_to_stimulus": 0.5}}}
    assert kw["registry"] == str(tmp_path / "registry") and kw["store"] == str(tmp_path / "store")
    assert str(kw["dataset"].root) == str(small_dataset.resolve()) and kw["title"] == "brainstore pipeline pipeline"
    assert kw["provenance_extra"]["stages"] == {"evaluate": "e" * 64, "fit": "f" * 64}


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


def test_storage_options_of_the_file_reach_every_library_call_under_the_flags(monkeypatch):
    import json

    from brainstore._storage import ENV
    from brainstore.cluster._pipeline import PipelineError, _use_storage_options

    monkeypatch.setenv(ENV, json.dumps({"aws_region": "eu-west-1"}))  # as -S aws_region=eu-west-1 leaves it
    _use_storage_options({"aws_endpoint": "http://127.0.0.1:9000", "aws_region": "us-east-1"})
    assert json.loads(__import__("os").environ[ENV]) == {"aws_endpoint": "http://127.0.0.1:9000",
                                                         "aws_region": "eu-west-1"}
    with pytest.raises(PipelineError, match=r"storage_options: unknown key\(s\): 'endpiont' \(did you mean endpoint"):
        _use_storage_options({"endpiont": "http://127.0.0.1:9000"})


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

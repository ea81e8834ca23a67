"""`brainstore run PIPELINE.yaml` before any work (``cluster/pipeline/_load.py``): validation errors with their
lines, the fields and the nearest known keys; a fit spec file checked with its own lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from brainstore.cluster.cli import app
from brainstore.cluster.pipeline import PipelineError, load_pipeline
from tests.cluster.pipeline._pipelines import TXT_TABLE, _img_table, _pipeline_text, _write

runner = CliRunner()


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

"""The CLI: fast --help without heavy imports, make-dataset / info / demo."""

import json
import subprocess
import sys

import pytest

from typer.testing import CliRunner

from brainstore.cluster.cli import app

runner = CliRunner()


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from brainstore.cluster.cli import app; "
        "heavy = [m for m in ('torch', 'ray', 'lancedb', 'open_clip', 'transformers') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "make-dataset" in r.output


def test_make_dataset_and_info(tmp_path):
    out = tmp_path / "d"
    r = runner.invoke(app, ["make-dataset", str(out), "--subjects", "1", "--train", "20", "--test", "5",
                            "--vertices", "60", "--image-size", "32"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["subjects"]["subj01"]["train_images"] == 20 and info["problems"] == []
    # an existing folder is refused with a clear message
    r = runner.invoke(app, ["make-dataset", str(out), "--subjects", "1", "--train", "20", "--test", "5"])
    assert r.exit_code == 2 and "not empty" in r.output


def test_info_reports_problems(dataset_copy):
    (dataset_copy / "subj01" / "roi_masks" / "rh.floc-faces_challenge_space.npy").unlink()
    r = runner.invoke(app, ["info", str(dataset_copy)])
    assert r.exit_code == 1 and "rh.floc-faces_challenge_space.npy" in r.output


#: A folder no command can create, even as root: the kernel's /proc takes no new entry (mkdir: ENOENT).
UNCREATABLE = "/proc/nope"


@pytest.mark.slow
def test_output_paths_that_cannot_be_created_are_refused_before_any_work(serving_models, tmp_path):
    """Every command that writes a folder checks it first: one error line naming the path, in seconds,
    where the job itself (predicting, evaluating, fitting, extracting) would run first and then fail."""
    import time

    data, reg, store, txt = str(serving_models["data"]), serving_models["registry"], serving_models["store"], \
        serving_models["txt"]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"dataset: {data}\nstore: {tmp_path / 'pstore'}\nregistry: {tmp_path / 'preg'}\n"
                        f"out: {UNCREATABLE}\nextract: [text]\n"
                        f"fit: {{models: [{{name: t, features: [{txt}]}}]}}\n")
    cases = [
        ["evaluate", "--dataset", data, "--registry", reg, "--out", UNCREATABLE],
        ["predict", "--dataset", data, "--registry", reg, "--out", UNCREATABLE],
        ["predict", "--dataset", data, "--registry", reg, "--out", UNCREATABLE, "--decode", txt],
        ["fit", "--dataset", data, "--store", store, "--registry", str(tmp_path / "reg"), "--out", UNCREATABLE],
        ["fit", "--dataset", data, "--decode", txt, "--store", store, "--registry", str(tmp_path / "reg"),
         "--out", UNCREATABLE],
        ["extract", "--dataset", data, "--extractor", "text", "--store", UNCREATABLE],
        ["run", str(pipeline)],
        ["demo", "--out", UNCREATABLE],
    ]
    for args in cases:
        t0 = time.monotonic()
        r = runner.invoke(app, args)
        took = time.monotonic() - t0
        flat = " ".join(r.output.split())
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert flat.startswith("error:") and flat.count("error:") == 1 and "Traceback" not in r.output, (args, r.output)
        assert "cannot create" in flat and UNCREATABLE in flat, (args, r.output)
        assert took < 10, (args, took)
    assert not (tmp_path / "pstore").exists() and not (tmp_path / "preg").exists()  # the run made nothing


@pytest.mark.slow
def test_predict_with_an_unknown_model_names_the_models_there_and_brainstore_fit(serving_models, tmp_path):
    """A CLI user is told which encoding models exist and to run `brainstore fit`, not to call a Python
    method; nothing is written."""
    data, reg = str(serving_models["data"]), serving_models["registry"]
    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", "--dataset", data, "--registry", reg, "--out", str(out), "--model", "bothh"])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert "no encoding model 'bothh'" in flat and "did you mean 'both'" in flat, flat
    assert "encoding models there: both, img" in flat and "brainstore fit --dataset" in flat, flat
    assert "ModelRegistry" not in flat and not out.exists()
    r = runner.invoke(app, ["predict", "--dataset", data, "--registry", reg, "--out", str(out), "--model", "both"])
    assert r.exit_code == 0, r.output  # the control: a model that is there predicts

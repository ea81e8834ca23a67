"""What every verb of the CLI shares (``cluster/cli/__init__.py``, ``_common.py``): a fast --help without heavy
imports; every folder a command writes checked before any work, one error line."""

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

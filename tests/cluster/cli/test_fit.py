"""The model verbs (``cluster/cli/_fit.py``): `brainstore predict` names the models there."""

import pytest
from typer.testing import CliRunner

from brainstore.cluster.cli import app

runner = CliRunner()


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

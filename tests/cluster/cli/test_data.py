"""`brainstore make-dataset` and `brainstore info` (``cluster/cli/_data.py``)."""

import json

from typer.testing import CliRunner

from brainstore.cluster.cli import app

runner = CliRunner()


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

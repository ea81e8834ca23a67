"""Validation of a described dataset (``described/_checks.py``): `brainstore info` lists every problem
with its file."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.datasets.described.helpers import GOOD, _broken, _write


def test_info_lists_every_problem_with_its_file(tmp_path):
    from brainstore.cluster.cli import app

    desc = _broken(tmp_path / "d")
    r = CliRunner().invoke(app, ["info", str(desc), "--json"])
    assert r.exit_code == 1, r.output
    problems = json.loads(r.output)["problems"]
    text = "\n".join(problems)
    expected = [
        r"trials\.csv \(.*broken\.yaml line 2: trials \(for subj01\)\) has 14 trials of subj01 but the responses "
        r"\(.*subj01_lh\.npy\) have 15 rows",
        r"trials\.csv .*: 1 stimulus id\(s\) of subj01 are not in the stimulus table .*stimuli\.csv: nsd-99999",
        r"stimulus nsd-00003 \(subj01\): file .*img/gone\.png does not exist",
        r"broken\.yaml line 6: subjects\.subj01\.rois\.floc-faces\.lh: the lh labels of subj01 use \[7\] that the "
        r"mapping does not name",
        r"broken\.yaml line 6: subjects\.subj01\.rois\.floc-faces\.rh: the rh labels of subj01 have length 3 but "
        r"subj01 rh has 4 vertices",
        r"subj02_lh\.npy \(subj02 lh\): 1\+ non-finite responses \(NaN first at trial 4 of the file, vertex 2\)",
        r"broken\.yaml line 9: subjects\.subj03\.responses\.lh: the lh files have different vertex counts: "
        r".*subj03_lh_a\.npy 4; .*subj03_lh_b\.npy 5",
        r"response volume .*subj04\.nii\.gz .* has a \(3, 3, 3\) grid but the brain mask .*subj04_mask\.nii\.gz "
        r"has \(3, 3, 4\)",
    ]
    import re

    for pat in expected:
        assert re.search(pat, text), f"{pat}\nnot in:\n{text}"
    assert len(problems) == len(expected), text
    r = CliRunner().invoke(app, ["info", str(desc)])
    assert r.exit_code == 1 and "8 problem(s)" in r.output
    # a description that does not parse: its problems are listed too (exit 1)
    bad = _write(tmp_path / "bad.yaml", GOOD + "zscore: trial\nname: [1]\n")
    r = CliRunner().invoke(app, ["info", str(bad)])
    assert r.exit_code == 1 and "2 problem(s)" in r.output and "line 5: zscore" in r.output and "line 6: name" in r.output

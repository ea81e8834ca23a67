"""Description files (``described/_description.py``): one-line errors naming file, line, field and fix;
the docs' example parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainstore.datasets import DescribedDataset, DescriptionError
from tests.datasets.described.helpers import GOOD, _write


@pytest.mark.parametrize("text,pattern", [
    (GOOD.replace("trials: trials.csv", "trails: trials.csv"),
     r"d\.yaml line 2: trails: unknown key 'trails'; did you mean 'trials'"),
    (GOOD.replace("{lh: lh.npy, rh: rh.npy}", "{lh: lh.h5, rh: rh.npy}"),
     r"d\.yaml line 3: responses\.lh: an HDF5 file needs key: the path of the dataset inside it"),
    (GOOD.replace("{lh: lh.npy, rh: rh.npy}", "{lh: lh.npy}"), r"line 3: responses: give both lh and rh"),
    (GOOD.replace("{lh: lh.npy, rh: rh.npy}", "{lh: lh.npy, rh: rh.npy, volume: v.nii.gz}"),
     r"line 3: responses: give lh and rh .* or volume and mask .*, not both"),
    (GOOD.replace("stimuli: {table: stimuli.csv}\n", ""), r"d\.yaml: stimuli: required field 'stimuli' is missing; give"),
    (GOOD + "train_trials: each\n", r"line 5: train_trials: Input should be 'average' or 'single' \(given: 'each'\)"),
    (GOOD.replace("trials: trials.csv\n", ""), r"line 3: subjects: subject subj01 has no trials: give subjects\.subj01\.trials"),
    (GOOD + "rois: {floc-faces: {lh: a.npy}}\n", r"line 5: rois\.floc-faces: give both lh and rh label files"),
    (GOOD + "noise_ceiling: 0.5\n", r"line 5: noise_ceiling: .*"),
    (GOOD.replace("subjects: [subj01]", "subjects: {subj01: {respones: {}}}"),
     r"line 4: subjects\.subj01\.respones: unknown key 'respones'; did you mean 'responses'"),
    (GOOD + "stimuli: {table: x.csv}\n", r"line 5: stimuli is given twice \(first on line 1\); keep one"),
    ("[1, 2]\n", r"d\.yaml must be a mapping of fields"),
    ("stimuli: {table: [\n", r"d\.yaml is not valid YAML"),
])
def test_bad_descriptions_are_one_line_errors(tmp_path, text, pattern):
    path = _write(tmp_path / "d.yaml", text)
    with pytest.raises(DescriptionError, match=pattern) as e:
        DescribedDataset(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_docs_example_is_a_valid_description(tmp_path):
    """The docs' one complete example parses (every field it shows exists, with the values it shows)."""
    readme = (Path(__file__).resolve().parents[3] / "docs" / "datasets.md").read_text()
    block = readme.split("## Dataset description files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    ds = DescribedDataset(_write(tmp_path / "brainstore-dataset.yaml", block))
    assert ds.subjects == ["subj01", "subj02", "subj03"] and ds.name == "nsd-subset"
    assert ds._responses_spec("subj03").is_volume and ds._field("subj02", "noise_ceiling").lh == "subj02/lh_nc.npy"
    assert ds.roi_families("subj01") == ["floc-faces", "prf-visualrois"] and ds.roi_families("subj03") == ["floc-faces"]

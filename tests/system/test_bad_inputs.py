"""Bad inputs over real CLI invocations: one error line naming the culprit, no traceback, nothing written.

Each case runs ``python -m brainstore.cluster.cli`` in a subprocess (as a user would), then checks
the exit code, that no Python or Ray traceback reached the user, that the message names the
culprit (the option, file, id or value at fault), and that the store, the registry and every other
folder of the session are exactly as before (no file created, changed or removed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, make_dataset, read_manifest
from brainstore.features import FeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny dataset, a store holding one complete feature table, an empty registry and a plain file."""
    root = tmp_path_factory.mktemp("bad-inputs")
    ds_root = make_dataset(root / "data", n_subjects=1, n_train=24, n_test=6, n_vertices=120, image_size=32, seed=3)
    ids = AlgonautsDataset(ds_root).stimuli().column("stimulus_id").to_pylist()
    ids = sorted(set(ids))
    fs = FeatureStore(root / "store")
    fs.ensure_table("txt", 8, {"extractor": "text", "architecture": "test", "pretrained": "test"})
    fs.write("txt", ids, np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32))
    fs.ensure_table("partial", 8, {"extractor": "text", "architecture": "test", "pretrained": "test"})
    fs.write("partial", ids[:5], np.ones((5, 8), np.float32))
    (root / "partial.yaml").write_text(f"dataset: {ds_root}\nstore: {root / 'store'}\nregistry: {root / 'registry'}\n"
                                       "models:\n  - name: m\n    features: [partial]\n")
    (root / "typo.yaml").write_text(f"dataset: {ds_root}\nmodels:\n  - name: m\n    featurs: [txt]\n")
    (root / "registry").mkdir()
    (root / "afile.txt").write_text("not a folder\n")
    dup = root / "dup-data"
    shutil.copytree(ds_root, dup)
    train = dup / "subj01" / "training_split" / "training_images"
    first = sorted(train.iterdir())[0]
    nsd = first.name.split("_", 1)[1]  # nsd-NNNNN.png
    shutil.copy(first, train / f"train-9999_{nsd}")  # a second file with the same stimulus id
    (root / "ids.csv").write_text("stimulus_id,path,modality,caption\n00012,,text,a cat\n00007,,text,a dog\n")
    specs = {  # fit specs a user gets wrong in the ways that matter
        "method.yaml": "models:\n  - name: m\n    features: [txt]\n    method: lasso\n",
        "notable.yaml": "models:\n  - name: m\n    features: [txt, nosuchtable]\n",
        "gammas.yaml": "models:\n  - name: m\n    features: [txt, partial]\n    method: banded\n"
                       "    banded: {gammas: [[0.7, 0.7]]}\n",
        "onebanded.yaml": "models:\n  - name: m\n    features: [txt]\n    method: banded\n",
        "badyaml.yaml": "models: [name: m\n",
    }
    for name, body in specs.items():
        (root / name).write_text(f"dataset: {ds_root}\nstore: {root / 'store'}\nregistry: {root / 'registry'}\n" + body)
    nan = root / "nan-data"  # a dataset whose responses hold a NaN
    shutil.copytree(ds_root, nan)
    f = nan / "subj01" / "training_split" / "training_fmri" / "rh_training_fmri.npy"
    y = np.load(f)
    y[3, 11] = np.nan
    np.save(f, y)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime_ns) — any write shows up."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns if p.is_file() else 0)
    return out


def _run(root: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "BRAINSTORE_HOME": str(root / "home"), "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    args = [a.replace("{root}", str(root)) for a in args]
    return subprocess.run([sys.executable, "-m", "brainstore.cluster.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=root)


# (id, argv, exit code, words the message must contain)
CASES = [
    # extractor specs and options: refused before Ray starts
    ("spec-empty-value", ["extract", "-e", "clip:arch=", "--dataset", "{root}/data"], 2, ["'arch'", "empty value"]),
    ("spec-double-comma", ["extract", "-e", "clip:arch=ViT-B-32,,pretrained=none", "--dataset", "{root}/data"], 2,
     ["empty item"]),
    ("spec-unknown-key", ["extract", "-e", "text:nosuch=1", "--dataset", "{root}/data"], 2, ["nosuch"]),
    ("spec-unknown-extractor", ["extract", "-e", "nosuchnet", "--dataset", "{root}/data"], 2, ["nosuchnet"]),
    ("spec-unbalanced", ["extract", "-e", "video:image=[clip", "--dataset", "{root}/data"], 2, ["unbalanced"]),
    ("batch-size-0", ["extract", "-e", "text", "--dataset", "{root}/data", "--batch-size", "0"], 2, ["--batch-size"]),
    ("limit-negative", ["extract", "-e", "text", "--dataset", "{root}/data", "--limit", "-3"], 2, ["--limit"]),
    ("concurrency-0", ["extract", "-e", "text", "--dataset", "{root}/data", "--concurrency", "0"], 2,
     ["--concurrency"]),
    ("storage-dtype", ["extract", "-e", "text", "--dataset", "{root}/data", "--storage-dtype", "float64"], 2,
     ["--storage-dtype", "float64", "float16"]),
    ("compute-dtype", ["extract", "-e", "text", "--dataset", "{root}/data", "--dtype", "int8"], 2, ["--dtype", "int8"]),
    ("missing-weights", ["extract", "-e", "clip:arch=ViT-B-32,pretrained=openai", "--dataset", "{root}/data"], 2,
     ["not available offline", "To fix"]),
    ("missing-checkpoint", ["extract", "-e", "clip:arch=ViT-B-32,checkpoint={root}/nosuch.pt", "--dataset",
                            "{root}/data"], 2, ["nosuch.pt"]),
    # paths
    ("extract-no-dataset", ["extract", "-e", "text", "--dataset", "{root}/nosuch"], 2, ["dataset", "does not exist"]),
    ("extract-dataset-is-file", ["extract", "-e", "text", "--dataset", "{root}/afile.txt"], 2,
     ["is not a folder", "--manifest"]),
    ("extract-no-manifest", ["extract", "-e", "text", "--manifest", "{root}/nosuch.csv"], 2,
     ["manifest", "does not exist"]),
    ("extract-both-sources", ["extract", "-e", "text", "--dataset", "{root}/data", "--manifest", "{root}/ids.csv"], 2,
     ["exactly one"]),
    ("extract-store-is-file", ["extract", "-e", "text", "--dataset", "{root}/data", "--store", "{root}/afile.txt"], 2,
     ["afile.txt", "is a file", "--store"]),
    ("extract-store-under-file", ["extract", "-e", "text", "--dataset", "{root}/data", "--store",
                                  "{root}/afile.txt/store"], 2, ["afile.txt", "is a file"]),
    ("extract-duplicate-ids", ["extract", "-e", "text", "--dataset", "{root}/dup-data", "--store", "{root}/store"], 2,
     ["train-9999_nsd-", "share the stimulus id"]),
    ("features-no-store", ["features", "--store", "{root}/nosuch-store"], 2, ["nosuch-store", "does not exist"]),
    ("features-store-is-file", ["features", "--store", "{root}/afile.txt"], 2, ["is a file"]),
    ("features-pca-no-table", ["features", "--store", "{root}/store", "--pca", "nosuch"], 2, ["nosuch", "txt"]),
    ("models-no-registry", ["models", "--registry", "{root}/nosuch-reg"], 2, ["nosuch-reg", "does not exist"]),
    ("models-registry-is-file", ["models", "--registry", "{root}/afile.txt"], 2, ["is a file"]),
    ("info-missing", ["info", "{root}/nosuch"], 2, ["nosuch", "does not exist"]),
    ("fit-nothing", ["fit"], 2, ["--config", "--dataset"]),
    ("fit-no-config", ["fit", "--config", "{root}/nosuch.yaml"], 2, ["nosuch.yaml", "does not exist"]),
    ("fit-no-dataset", ["fit", "--dataset", "{root}/nosuch"], 2, ["nosuch", "does not exist"]),
    ("fit-spec-typo", ["fit", "--config", "{root}/typo.yaml", "--store", "{root}/store", "--registry",
                       "{root}/registry"], 2, ["featurs"]),
    ("fit-table-lacks-ids", ["fit", "--config", "{root}/partial.yaml"], 2,
     ["missing from feature table 'partial'", "brainstore extract"]),
    ("fit-registry-is-file", ["fit", "--dataset", "{root}/data", "--store", "{root}/store", "--registry",
                              "{root}/afile.txt"], 2, ["afile.txt", "is a file", "--registry"]),
    ("fit-out-is-file", ["fit", "--dataset", "{root}/data", "--store", "{root}/store", "--registry", "{root}/registry",
                         "--out", "{root}/afile.txt"], 2, ["afile.txt", "is a file", "--out"]),
    ("evaluate-no-registry", ["evaluate", "--dataset", "{root}/data", "--registry", "{root}/nosuch-reg"], 2,
     ["nosuch-reg", "does not exist"]),
    ("evaluate-unknown-model", ["evaluate", "--dataset", "{root}/data", "--registry", "{root}/registry", "--models",
                                "nosuch"], 2, ["'nosuch'", "models there"]),
    ("evaluate-bad-rois", ["evaluate", "--dataset", "{root}/data", "--registry", "{root}/registry", "--rois", "all"], 2,
     ["--rois"]),
    ("predict-out-is-file", ["predict", "--dataset", "{root}/data", "--registry", "{root}/registry", "--out",
                             "{root}/afile.txt"], 2, ["afile.txt", "is a file"]),
    # the ones a demanding user tries next
    ("fit-unknown-method", ["fit", "--config", "{root}/method.yaml"], 2, ["method.yaml", "lasso", "banded"]),
    ("fit-unknown-table", ["fit", "--config", "{root}/notable.yaml"], 2, ["nosuchtable", "txt"]),
    ("fit-gammas-off-simplex", ["fit", "--config", "{root}/gammas.yaml"], 2, ["sum to 1"]),
    ("fit-banded-one-table", ["fit", "--config", "{root}/onebanded.yaml"], 2, ["banded needs two or more"]),
    ("fit-bad-yaml", ["fit", "--config", "{root}/badyaml.yaml"], 2, ["badyaml.yaml", "not valid YAML"]),
    ("fit-nan-responses", ["fit", "--dataset", "{root}/nan-data", "--store", "{root}/store", "--registry",
                           "{root}/registry"], 2, ["rh_training_fmri.npy", "NaN first at row 3, vertex 11"]),
    ("fit-duplicate-ids", ["fit", "--dataset", "{root}/dup-data", "--store", "{root}/store", "--registry",
                           "{root}/registry"], 2, ["train-9999_nsd-", "share the stimulus id"]),
    # decoders
    ("decode-unknown-table", ["fit", "--dataset", "{root}/data", "--decode", "nosuch", "--store", "{root}/store",
                              "--registry", "{root}/registry"], 2, ["'nosuch' is not in store", "txt"]),
    ("decode-unknown-roi", ["fit", "--dataset", "{root}/data", "--decode", "txt", "--rois", "FFA-9", "--store",
                            "{root}/store", "--registry", "{root}/registry"], 2, ["FFA-9", "FFA-1"]),
    ("decode-table-lacks-ids", ["fit", "--dataset", "{root}/data", "--decode", "partial", "--store", "{root}/store",
                                "--registry", "{root}/registry"], 2, ["missing from feature table 'partial'"]),
    ("decode-nan-responses", ["fit", "--dataset", "{root}/nan-data", "--decode", "txt", "--store", "{root}/store",
                              "--registry", "{root}/registry"], 2, ["rh_training_fmri.npy", "NaN first at row 3"]),
    ("decode-unknown-method", ["fit", "--dataset", "{root}/data", "--decode", "txt", "--method", "lasso"], 2,
     ["--method", "lasso", "adaptor"]),
    ("rois-without-decode", ["fit", "--dataset", "{root}/data", "--rois", "V1v"], 2, ["--rois goes with --decode"]),
    ("evaluate-no-dataset", ["evaluate", "--dataset", "{root}/nosuch", "--registry", "{root}/registry"], 2,
     ["nosuch", "does not exist"]),
    ("predict-unknown-model", ["predict", "--dataset", "{root}/data", "--registry", "{root}/registry", "--model",
                               "nosuchmodel", "--out", "{root}/preds"], 2, ["nosuchmodel"]),
    ("info-not-a-dataset", ["info", "{root}/registry"], 2, ["registry"]),
    ("make-dataset-over-file", ["make-dataset", "{root}/afile.txt"], 2, ["afile.txt"]),
    ("make-dataset-no-subjects", ["make-dataset", "{root}/newdata", "--subjects", "0"], 2, ["subjects"]),
    ("extract-layer-on-text", ["extract", "-e", "text", "--dataset", "{root}/data", "--layer", "3"], 2,
     ["'text' has no 'layer' option", "clip"]),
    ("extract-bad-layer", ["extract", "-e", "clip:arch=ViT-B-32,pretrained=none", "--dataset", "{root}/data",
                           "--layer", "abc"], 2, ["abc"]),
    ("pca-zero-components", ["features", "--store", "{root}/store", "--pca", "txt", "--components", "0"], 2,
     ["--components"]),
    ("pca-too-many-components", ["features", "--store", "{root}/store", "--pca", "txt", "--components", "500"], 2,
     ["500", "dimension 8"]),
    ("index-unknown-kind", ["features", "--store", "{root}/store", "--index", "txt", "--index-kind", "kdtree"], 2,
     ["kdtree", "ivf_pq"]),
    ("extract-bad-version-name", ["extract", "-e", "text", "--dataset", "{root}/data", "--store", "{root}/store",
                                  "--version", "a/b"], 2, ["a/b"]),
]


@pytest.mark.parametrize("argv,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(world, argv, code, words):
    before = _snapshot(world)
    r = _run(world, *argv)
    out = r.stdout + r.stderr
    assert r.returncode == code, out
    assert "Traceback" not in out and "ray.exceptions" not in out, out
    flat = " ".join(out.split())  # the console wraps long lines
    for w in words:
        assert w.replace("{root}", str(world)) in flat, f"{w!r} not in: {out}"
    after = _snapshot(world)
    assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"


def test_manifest_ids_keep_leading_zeros(world):
    table = read_manifest(world / "ids.csv")
    assert table.column("stimulus_id").to_pylist() == ["00012", "00007"]


def test_info_on_manifest_prints_a_table(world):
    r = _run(world, "info", "{root}/ids.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "manifest" in r.stdout and "text" in r.stdout and "{" not in r.stdout
    j = _run(world, "info", "{root}/ids.csv", "--json")
    assert j.returncode == 0 and '"rows": 2' in j.stdout


def test_verbose_prints_the_traceback(world):
    r = _run(world, "--verbose", "models", "--registry", "{root}/nosuch-reg")
    assert r.returncode == 2
    assert "Traceback" in r.stdout + r.stderr and "does not exist" in r.stdout


def test_ray_task_errors_reach_the_user_as_their_cause(ray_local):
    """An error raised inside a Ray task is shown as its own message and the task's name, not Ray's wrapper."""
    import ray

    from brainstore.cluster._errors import describe
    from brainstore.features import MissingStimuliError

    @ray.remote(max_retries=0)
    def load_rows():
        raise MissingStimuliError("clip-x", ["nsd-00001"])

    @ray.remote(max_retries=0)
    def divide():
        return 1 / 0

    with pytest.raises(Exception) as ei:
        ray.get(load_rows.remote())
    text = describe(ei.value)
    assert text.startswith("1 stimulus id(s) missing from feature table 'clip-x': nsd-00001")
    assert "(in Ray task load_rows)" in text and "Traceback" not in text
    with pytest.raises(Exception) as ei:
        ray.get(divide.remote())
    assert describe(ei.value) == "ZeroDivisionError: division by zero (in Ray task divide)"


def test_a_normal_extract_is_quiet(world, tmp_path):
    """A good run prints our progress and summary, not Ray's per-run notices or warnings."""
    r = _run(world, "extract", "-e", "text", "--manifest", "{root}/ids.csv", "--store", str(tmp_path / "s"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "2 written" in out
    for noise in ("core_worker", "max_restarts", "WARNING", "Warning", "token", "fork", "progress bar",
                  "Loading weights"):
        assert noise not in out, f"{noise!r} in: {out}"
    # what is hidden is there without the filter: --verbose shows Ray's notice (ray#53727)
    v = _run(world, "--verbose", "extract", "-e", "text", "--manifest", "{root}/ids.csv", "--store",
             str(tmp_path / "v"))
    assert v.returncode == 0 and "max_restarts" in v.stdout + v.stderr


def test_a_normal_fit_is_quiet(world, tmp_path):
    """The default fit prints its progress, notes and the comparison table: no warnings, no Ray noise."""
    r = _run(world, "fit", "--dataset", "{root}/data", "--store", "{root}/store", "--registry", str(tmp_path / "reg"),
             timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "registered" in out and "left out feature table 'partial'" in out
    for noise in ("core_worker", "max_restarts", "WARNING", "Warning", "token", "fork", "progress bar", "Traceback"):
        assert noise not in out, f"{noise!r} in: {out}"

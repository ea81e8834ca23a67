"""The ``go`` script's benchmark listing (runs before any set-up, so it never touches a venv)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _go(*args, tmp_path):
    # a venv path that does not exist and a Python that fails: reaching set-up would exit 1
    env = {"PATH": "/usr/bin:/bin", "BRAINSTORE_VENV": str(tmp_path / "no-venv"), "PYTHON": "false"}
    return subprocess.run(["bash", str(ROOT / "go"), "bench", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_go_bench_without_a_name_lists_the_benchmarks(tmp_path):
    r = _go(tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
    lines = [ln.split(None, 1) for ln in r.stdout.splitlines()[1:]]
    assert [ln[0] for ln in lines] == names
    assert dict(lines)["extract"].startswith("Feature extraction")  # the docstring's first line
    assert not (tmp_path / "no-venv").exists()


def test_go_bench_unknown_name_says_so_and_lists_them(tmp_path):
    r = _go("no-such-bench", tmp_path=tmp_path)
    assert r.returncode == 2 and "no benchmark named 'no-such-bench'" in r.stderr and "extract" in r.stderr
    assert not (tmp_path / "no-venv").exists()

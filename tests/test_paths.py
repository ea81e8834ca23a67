"""Folder checks made before any work: files, files on the way, missing and non-writable folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from brainstore._paths import check_folder

REPO = Path(__file__).resolve().parents[1]


def test_a_file_or_a_path_under_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"{f} is a file, not a folder; pass a folder with --store"):
        check_folder(f, "feature store", "--store", create=True)
    with pytest.raises(ValueError, match=f"cannot create model registry {f}/reg: {f} is a file"):
        check_folder(f / "reg", "model registry", "--registry", create=True)
    assert f.read_text() == "x"


def test_missing_folder_made_only_when_asked(tmp_path):
    target = tmp_path / "a" / "b"
    with pytest.raises(KeyError, match="does not exist; run extract first \\(or pass the right --store\\)"):
        check_folder(target, "feature store", "--store", create=False, error=KeyError,
                     missing_hint="run extract first")
    assert check_folder(target, "run folder", "--out", create=True, make=False) == target
    assert not (tmp_path / "a").exists()  # checked, not made
    assert check_folder(target, "run folder", "--out", create=True) == target
    assert target.is_dir()


_PROBE = """
import sys
from brainstore._paths import check_folder
for path in sys.argv[1:]:
    try:
        check_folder(path, "model registry", "--registry", create=True)
    except ValueError as e:
        print(e)
    else:
        print("accepted", path)
"""


def _as_nobody() -> list[str] | None:
    """A command prefix running as an unprivileged user, or None (not root and no setpriv: run directly)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_a_folder_that_cannot_be_written_is_refused():
    """Real permissions: a read-only folder, and a missing folder under it, as an unprivileged user.

    Root writes anywhere, so under root the probe runs as ``nobody`` (uid 65534) through setpriv.
    """
    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("running as root without setpriv: no unprivileged user to test permissions with")
    base = Path(tempfile.mkdtemp(prefix="bs-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        ro = base / "readonly"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        ok = base / "writable"
        ok.mkdir()
        ok.chmod(0o777)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run([*prefix, sys.executable, "-c", _PROBE, str(ro), str(ro / "new"), str(ok / "new")],
                           capture_output=True, text=True, env=env, timeout=60, cwd="/")
        if r.returncode != 0 and ("ModuleNotFoundError" in r.stderr or "Permission denied" in r.stderr):
            pytest.skip(f"the unprivileged user cannot read this checkout or its Python: {r.stderr[-300:]}")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"model registry {ro} is not writable; pass a folder you can write with --registry"
        assert lines[1] == (f"cannot create model registry {ro / 'new'}: {ro} is not writable; pass a folder you "
                            "can write with --registry")
        assert lines[2] == f"accepted {ok / 'new'}"  # the control: the same probe may write elsewhere
        assert not (ro / "new").exists()
    finally:
        (base / "readonly").chmod(0o755)
        shutil.rmtree(base)


def test_a_place_that_takes_no_new_folder_is_refused_even_when_permissions_allow_it(tmp_path):
    """/proc passes root's permission checks but refuses mkdir: the check makes (and removes) a folder
    there instead of trusting the permission bits, so the command stops before its work."""
    with pytest.raises(ValueError, match=r"cannot create output folder /proc/nope: /proc does not take new folders|"
                                         r"cannot create output folder /proc/nope: /proc is not writable"):
        check_folder("/proc/nope", "output folder", "--out", create=True, make=False)
    with pytest.raises(ValueError, match=r"output folder /proc is not writable"):
        check_folder("/proc", "output folder", "--out", create=True, make=False)
    assert check_folder(tmp_path / "new", "output folder", "--out", create=True, make=False) == tmp_path / "new"
    assert list(tmp_path.iterdir()) == []  # the probe left nothing behind

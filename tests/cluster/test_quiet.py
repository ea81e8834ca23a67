"""The stderr filter: Ray's per-run notices dropped, the raylet's disk-full line said once in our words."""

from __future__ import annotations

import subprocess
import sys
import textwrap

RAW_DISK = ("\x1b[33m(raylet)\x1b[0m [2026-12-07 13:32:17,702 E 23011 23023] (raylet) file_system_monitor.cc:116: "
            "/tmp/ray/session_2026-12-07_13-31-36_237134_22924 is over 95% full, available space: 11.5227 GB; "
            "capacity: 251.972 GB. Object creation will fail if spilling is required.")


def _filtered(lines: list[str]) -> str:
    """stderr of a process that writes ``lines`` to fd 2 (each write one line) inside the filter."""
    code = textwrap.dedent(f"""
        import os
        from brainstore.cluster._quiet import drop_stderr_lines
        with drop_stderr_lines():
            for line in {lines!r}:
                os.write(2, (line + "\\n").encode())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_ray_notice_dropped_other_lines_kept_in_order():
    notice = "[core_worker] actor has constructor arguments in the object store and max_restarts > 0."
    assert _filtered(["one", notice, "two", "50%|#####     | 5/10"]) == "one\ntwo\n50%|#####     | 5/10\n"


def test_disk_full_said_once_translated():
    err = _filtered(["before", RAW_DISK, RAW_DISK, "after", RAW_DISK])
    lines = err.splitlines()
    assert lines[0] == "before" and lines[-1] == "after" and len(lines) == 3, err
    said = lines[1]
    assert "file_system_monitor" not in err and "(raylet)" not in err
    assert said.startswith("brainstore: warning: the disk holding /tmp/ray is over 95% full (11.5 GB free of 252 GB)")
    assert "RAY_TMPDIR" in said

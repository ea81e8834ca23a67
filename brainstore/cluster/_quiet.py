"""Keep known, harmless lines of Ray's C++ core out of a command's output.

Ray Data always hands its map workers their arguments through the object store and lets them be
restarted, and Ray's core worker then writes, at error level and straight to the driver's file
descriptor 2, that such an actor's restart could fail (ray#53727). It is printed on every
extraction, it is not an error of the run, and no log level hides it without hiding real errors.
:func:`drop_stderr_lines` filters exactly those lines out of fd 2 while a command runs; every
other byte passes through at once (progress bars included). ``brainstore --verbose`` keeps them.

One line of Ray's is news rather than noise but comes raw and every ten seconds: the raylet's
disk monitor saying the disk under its session folder is over 95% full. It is said once, in our
words, with what it means and what to do (:func:`disk_full_notice`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

__all__ = ["drop_stderr_lines", "RAY_NOISE"]

#: Lines of Ray's C++ core that are printed on every normal run (see the module docstring).
RAY_NOISE = (b"has constructor arguments in the object store and max_restarts > 0",
             # Ray Train v2's placement-group cleaner polls the state API, absent without the dashboard
             b"Failed to query Ray Train Controller actor state")
#: Ray Serve's notices on every start of an app with fixed-size deployments (stderr) and on every shutdown
#: (the raylet's "graceful_shutdown failed ... killed by ray.kill", relayed on stdout).
SERVE_NOISE = (b"Cannot deregister autoscaling state", b"ServeController.graceful_shutdown failed")


#: The raylet's disk monitor (file_system_monitor.cc), repeated every ten seconds while the disk stays full.
DISK_FULL = b"file_system_monitor.cc"
_DISK_FULL_RE = re.compile(rb"(\S+) is over (\d+)% full, available space: ([\d.]+) GB; capacity: ([\d.]+) GB")


def disk_full_notice(line: bytes) -> bytes:
    """Ray's disk-monitor line, said once in brainstore's words: where, how full, what breaks, what to do."""
    m = _DISK_FULL_RE.search(line)
    where, pct, free, cap = (m.group(1).decode(errors="replace"), m.group(2).decode(), float(m.group(3)),
                             float(m.group(4))) if m else ("Ray's session folder", "95", float("nan"), float("nan"))
    folder = where.split("/session_")[0] if "/session_" in where else where
    return (f"brainstore: warning: the disk holding {folder} is over {pct}% full ({free:.1f} GB free of "
            f"{cap:.0f} GB); Ray will fail to store objects once it must spill to disk. Free space there, or put Ray's "
            f"temp dir on a larger disk (RAY_TMPDIR, or 'ray start --temp-dir').\n").encode()


#: The Serve controller's warning, on every start behind HAProxy, that a loopback host keeps HAProxy on *other*
#: machines out: true of a cluster spread over machines, empty for an embedded one (all of it on this machine).
HAPROXY_LOOPBACK = b"won't accept connections from HAProxy on other nodes"


@contextlib.contextmanager
def quiet_serve(enabled: bool = True) -> Iterator[None]:
    """Within the block, drop Ray's per-run lines (:data:`RAY_NOISE`, :data:`SERVE_NOISE`, and
    :data:`HAPROXY_LOOPBACK` when this process's cluster is an embedded one behind HAProxy) from stderr and stdout."""
    from .._ray import embedded_haproxy

    serve_noise = SERVE_NOISE + ((HAPROXY_LOOPBACK,) if embedded_haproxy() else ())
    with drop_stderr_lines(RAY_NOISE + serve_noise, enabled=enabled), \
            drop_stderr_lines(serve_noise, enabled=enabled, fd=1):
        yield


@contextlib.contextmanager
def drop_stderr_lines(needles: tuple[bytes, ...] = RAY_NOISE, *, enabled: bool = True, fd: int = 2) -> Iterator[None]:
    """Within the block, drop lines of file descriptor ``fd`` (2: stderr; 1: stdout, where Ray relays
    raylet messages) that contain any of ``needles``.

    Start it after Ray is connected: processes spawned inside the block would inherit the pipe.
    """
    if not enabled:
        yield
        return
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        orig = os.dup(fd)
    except OSError:  # nothing to filter
        yield
        return
    r, w = os.pipe()
    stream.flush()
    os.dup2(w, fd)
    os.close(w)

    said = []  # the disk-full notice, once per block

    def keep(line: bytes) -> bytes:
        if any(n in line for n in needles):
            return b""
        if DISK_FULL in line:
            if said:
                return b""
            said.append(True)
            return disk_full_notice(line)
        return line

    watch = needles + (DISK_FULL,)

    def pump() -> None:
        eat_newline = False  # a dropped line whose newline comes in the next write (print's two writes)
        while True:
            try:
                data = os.read(r, 1 << 16)
            except OSError:
                return
            if not data:
                return
            if eat_newline and data[:1] == b"\n":
                data = data[1:]
            eat_newline = False
            if any(n in data for n in watch):
                lines = data.splitlines(keepends=True)
                eat_newline = any(n in lines[-1] for n in watch) and not lines[-1].endswith(b"\n")
                data = b"".join(keep(line) for line in lines)
            if data:
                os.write(orig, data)

    thread = threading.Thread(target=pump, name="brainstore-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stream.flush()
        os.dup2(orig, fd)  # fd no longer holds the pipe: the pump reads to its end, then stops
        thread.join(timeout=5)
        os.close(r)
        os.close(orig)

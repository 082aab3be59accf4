"""Child processes of a benchmark run, and what /proc says about their CPU time and memory.

Every child gets a process group of its own (so a child's children end with it) and SIGTERM
when the run dies, and :class:`Children` ends every group it started when it closes, errors or
not: a benchmark must never leave a storm or an observer running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the run is killed outright, its children
    # still end instead of storming on unobserved.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Children:
    """Starts children in their own process groups and ends all of them on close."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def spawn(self, command: list[str], **popen) -> subprocess.Popen:
        popen.setdefault("cwd", REPO)
        popen.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(
            command, start_new_session=True, preexec_fn=_die_with_parent, **popen
        )
        self._running.append(process)
        return process

    def end(self, process: subprocess.Popen, grace: float = 5.0) -> int:
        """SIGTERM to the child's group, SIGKILL after ``grace`` seconds; its exit status."""
        with contextlib.suppress(OSError):
            if process.stdin:
                process.stdin.close()  # a child waiting on stdin ends by itself
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        # Stragglers the child left in its group.
        _signal_group(process.pid, signal.SIGKILL)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
        if process in self._running:
            self._running.remove(process)
        return process.returncode

    def close(self) -> None:
        for process in reversed(list(self._running)):
            self.end(process, grace=3.0)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, proc(5)).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now (``rss``) and at its peak (``peak``), in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values["rss" if key == "VmRSS" else "peak"] = int(rest.split()[0]) / 1024
    return values

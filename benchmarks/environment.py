"""The machine a run measured: kernel, CPUs, versions, date, and how busy it was."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass

from benchmarks.children import REPO


@dataclass
class CpuTimes:
    busy: int
    steal: int
    total: int


def cpu_times() -> CpuTimes:
    """Machine-wide CPU time so far, in clock ticks (the ``cpu`` line of /proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return CpuTimes(busy=sum(values[:8]) - idle - values[7], steal=values[7], total=sum(values[:8]))


def _command(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=REPO)
    except OSError:
        return "?"
    return done.stdout.strip() or "?"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


def describe() -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("kernel", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("CPUs", f"{os.cpu_count()} x {_cpu_model()}"),
        ("memory", f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"),
        (
            "Python",
            f"{platform.python_implementation()} {platform.python_version()} "
            "(observer and Python targets)",
        ),
        (
            "bcc",
            _command("dpkg-query", "-W", "-f", "${Version}", "python3-bpfcc")
            + " (Debian python3-bpfcc; bpfcc-tools "
            + _command("dpkg-query", "-W", "-f", "${Version}", "bpfcc-tools")
            + ")",
        ),
        ("bpftool", _command("bpftool", "version").splitlines()[0]),
        ("gcc", _command("gcc", "-dumpfullversion")),
        ("observer", "git " + _command("git", "describe", "--always", "--dirty")),
    ]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"

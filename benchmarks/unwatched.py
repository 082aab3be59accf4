"""7. What a process the observer does not watch pays in uprobe programs.

An unwatched storm (``storm.c``: getaddrinfo("localhost") calls and thread create+join pairs)
runs next to an observer that watches a ``sleep``, once per way of naming targets. The kernel's
run counters (kernel.bpf_stats_enabled=1, read with bpftool) of the observer's uprobe programs
before and after give their runs per 100,000 calls of the unwatched process. Every process on
the machine counts in that window, as the programs run for any process that hits the probes.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import storm
from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.storm import bpf_statistics
from thread_observer.bpf_backend import UPROBE_PROGRAMS

# (row, observer arguments with {pid} for the watched sleep)
MODES = (
    ("`--pid`, `--no-children`", ["--pid", "idle={pid}", "--no-children"]),
    ("`--pid` (children followed)", ["--pid", "idle={pid}"]),
    ("`--target`", ["--target", "idle=^sleep 3601$"]),
)


def uprobe_runs(observer_pid: int) -> dict[str, tuple[int, int]]:
    """Runs and nanoseconds of the observer's uprobe programs, by program name."""
    stats = storm.program_stats(observer_pid)
    return {name: stats[name] for name in UPROBE_PROGRAMS if name in stats}


def storm_once(children: Children, binary: Path, calls: int, threads: int) -> dict:
    process = children.spawn(
        [str(binary), str(calls), str(threads), "1", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        json.loads(process.stdout.readline())
        process.stdin.write("go\n")
        process.stdin.flush()
        return json.loads(process.stdout.readline())
    finally:
        children.end(process)


def measure(children: Children, settings: Settings) -> Section:
    calls = max(20_000, settings.storm_calls // 10)
    threads = max(2_000, settings.storm_threads // 10)
    section = Section("7. Uprobe programs run for a process the observer does not watch")
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="unwatched-") as folder:
        binary = storm.build(Path(folder))
        idle = children.spawn(["sleep", "3601"])
        for label, args in MODES:
            observer = Observer(
                children, [a.replace("{pid}", str(idle.pid)) for a in args] + ["--allow-non-python"]
            )
            with observer:
                observer.wait_ready()
                time.sleep(0.5)
                with bpf_statistics():
                    before = uprobe_runs(observer.pid)
                    done = storm_once(children, binary, calls, threads)
                    after = uprobe_runs(observer.pid)
            added = {name: after[name][0] - before.get(name, (0, 0))[0] for name in after}
            ns = sum(after[n][1] - before.get(n, (0, 0))[1] for n in after)
            per_call = (
                100_000
                * sum(v for n, v in added.items() if n.startswith(("getaddrinfo", "resolver")))
                / done["getaddrinfo_calls"]
            )
            per_thread = 100_000 * added.get("pthread_create_entry", 0) / done["threads_created"]
            figures[label] = per_call
            rows.append(
                [
                    label,
                    f"{done['getaddrinfo_calls']:,}",
                    f"{per_call:,.0f}",
                    f"{done['threads_created']:,}",
                    f"{per_thread:,.0f}",
                    f"{ns / 1e6:.1f}",
                ]
            )
        children.end(idle)
    section.text(
        f"An unwatched storm of {calls:,} getaddrinfo calls and {threads:,} thread create+join "
        "pairs next to an observer watching a `sleep`, once per way of naming the target. Runs "
        "of the observer's uprobe programs (getaddrinfo entry and return, resolver functions; "
        "pthread_create) by the kernel's counters, per 100,000 events of the unwatched process "
        "(any other process on the machine that calls them meanwhile counts too)."
    )
    section.table(
        [
            "targets",
            "calls",
            "getaddrinfo/resolver runs per 100,000 calls",
            "threads",
            "pthread_create runs per 100,000 threads",
            "ms of BPF time",
        ],
        rows,
    )
    section.text(
        "With `--pid` and `--no-children` the uprobes are the watched processes' own (links "
        "with their pid): the kernel plants no breakpoint in any other process. Following "
        "children, or with `--target`, a process must be counted from its first instruction, "
        "before user space could attach anything for it, so the uprobes sit on the library file "
        "for every process. getaddrinfo's and the resolvers' programs are uprobe sessions "
        "(Linux 6.13+): the entry returns after one lookup and declines the return, so an "
        "unwatched process runs one program per call and takes no trap at the return; "
        "pthread_create has an entry probe only. Where a session cannot be attached (an older "
        "kernel, or another tool's uprobe on the function), an entry and a return run per call. "
        "With `--target` a process that starts a program is watched (pending) from its first "
        "instruction until the observer has read its command line and found it matches no "
        "target: its first calls run the return too."
    )
    pid_only = figures[MODES[0][0]]
    section.goals.append(
        Goal(
            "unwatched process, uprobe runs per 100,000 calls, `--pid`",
            "0",
            f"{pid_only:,.0f}",
            pid_only == 0,
        )
    )
    target = figures[MODES[2][0]]
    section.goals.append(
        Goal(
            "unwatched process, uprobe runs per 100,000 calls, `--target`",
            "as close to 0 as the design allows: one entry run per call (a session)",
            f"{target:,.0f}",
            target < 1.5 * 100_000,
            "a uprobe that must see a new process's first call sits on the library for every "
            "process; without a session its return runs too",
        )
    )
    return section

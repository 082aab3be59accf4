"""6. What the DNS probe's syscall tracepoints cost a process the observer does not watch.

The DNS probe follows the sends (``write``, ``writev``, ``sendto``, ``sendmsg``, ``sendmmsg``)
of every process on the host, entry and exit, and returns after one hash lookup for a process it
does not watch; ``socket``, ``connect`` and ``close`` run none of its programs. A small C
program (``syscalls.c``), not watched, times one-byte ``write``s to /dev/null, UDP ``sendto``s
to a closed loopback port and ``socket`` + ``close`` pairs, with an observer running (watching
another process), with one that leaves the DNS probe out (``--no-dns-queries``), with one that
attaches no syscall tracepoint at all (``--no-host-names --no-dns-queries --no-epoll-mark``)
and without, the order rotating. One more run with the kernel's BPF statistics gives each
program's runs and time.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import bpftool
from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median, number, ratio, times
from benchmarks.storm import bpf_statistics
from observer.bpf_backend import DNS_SYSCALLS

SOURCE = Path(__file__).with_name("syscalls.c")
OPERATIONS = ("write", "sendto", "socket_close")
GOAL = 0.97  # the same bar as the overhead on a watched process


def build(folder: Path) -> Path:
    binary = folder / "syscalls"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return binary


def timed(binary: Path, count: int) -> dict[str, float]:
    done = subprocess.run(
        [str(binary), str(count)], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(done.stdout)


# Side -> the observer's flags beyond --pid (None: no observer).
LEAN = ["--no-host-names", "--no-dns-queries", "--no-epoll-mark"]
SIDES = {"without": None, "with": [], "no dns queries": ["--no-dns-queries"], "lean": LEAN}
# How the table's columns name each observed side.
COLUMNS = {
    "with": "with",
    "no dns queries": "with `--no-dns-queries`",
    "lean": "with `" + " ".join(LEAN) + "`",
}


def running_observer(
    children: Children, idle: subprocess.Popen, flags: list[str] | None = None
) -> Observer:
    args = ["--pid", f"idle={idle.pid}", "--allow-non-python", *(flags or [])]
    observer = Observer(children, args)
    observer.wait_ready()
    time.sleep(0.5)  # let the compile's aftermath pass
    return observer


def program_runs(observer_pid: int) -> dict[str, tuple[int, int]]:
    """Runs and nanoseconds of the DNS probe's programs, by syscall tracepoint."""
    tracepoints = {
        entry["prog_id"]: entry.get("tracepoint", "")
        for entry in bpftool.attachments()
        if entry.get("pid") == observer_pid
    }
    runs: dict[str, tuple[int, int]] = {}
    for prog_id, tracepoint in tracepoints.items():
        name = tracepoint.removeprefix("sys_enter_").removeprefix("sys_exit_")
        if not tracepoint.startswith("sys_") or name not in DNS_SYSCALLS:
            continue
        info = bpftool.program(prog_id)
        runs[tracepoint] = (info.get("run_cnt", 0), info.get("run_time_ns", 0))
    return runs


def measure(children: Children, settings: Settings) -> Section:
    count = max(20_000, settings.storm_calls // 10)
    rounds = max(3, settings.overhead_rounds // 2)
    section = Section("6. The DNS probe's syscall tracepoints on an unwatched process")
    with tempfile.TemporaryDirectory(prefix="syscalls-") as folder:
        binary = build(Path(folder))
        idle = children.spawn(["sleep", "3600"])
        observed = [side for side, flags in SIDES.items() if flags is not None]
        ratios = {(side, op): [] for side in observed for op in OPERATIONS}
        per_op: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
        order = list(SIDES)
        for index in range(rounds):
            figures = {}
            for side in order[index % len(order) :] + order[: index % len(order)]:
                if SIDES[side] is None:
                    figures[side] = timed(binary, count)
                else:
                    with running_observer(children, idle, SIDES[side]):
                        figures[side] = timed(binary, count)
                for op in OPERATIONS:
                    per_op[side].setdefault(op, []).append(figures[side][op])
            for side in observed:
                for op in OPERATIONS:
                    # Throughput ratio: with / without, as for the watched process's overhead.
                    ratios[side, op].append(ratio(figures["without"][op], figures[side][op]))
        with running_observer(children, idle) as observer, bpf_statistics():
            before = program_runs(observer.pid)
            timed(binary, count)
            after = program_runs(observer.pid)
        children.end(idle)
    rows = [
        [
            op,
            number(median(per_op["without"][op])),
            *(
                cell
                for side in observed
                for cell in (
                    number(median(per_op[side][op])),
                    f"{times(median(ratios[side, op]))} ({times(min(ratios[side, op]))} to "
                    f"{times(max(ratios[side, op]))})",
                )
            ),
        ]
        for op in OPERATIONS
    ]
    section.text(
        f"{rounds} rounds, each timing {count:,} of each operation without an observer, with "
        "one running (watching a `sleep`), with one running with `--no-dns-queries`, and with "
        f"one running with `{' '.join(LEAN)}` (no syscall tracepoint at all), the order "
        "rotating. Throughput ratio against without: 1.0 means no cost (median, and range "
        "over the rounds)."
    )
    header = ["operation", "ns without"]
    for side in observed:
        header += [f"ns {COLUMNS[side]}", "ratio"]
    section.table(header, rows)
    program_rows = []
    for tracepoint in sorted(after):
        runs = after[tracepoint][0] - before.get(tracepoint, (0, 0))[0]
        ns = after[tracepoint][1] - before.get(tracepoint, (0, 0))[1]
        program_rows.append([f"`{tracepoint}`", f"{runs:,}", number(ns / runs, 1) if runs else "-"])
    section.text(
        "The kernel's BPF statistics during one more run with the observer (every process on "
        "the machine counts, not only the timed one):"
    )
    section.table(["program on", "runs", "ns per run"], program_rows)
    worst = min(median(ratios["with", op]) for op in OPERATIONS)
    no_dns = min(median(ratios["no dns queries", op]) for op in OPERATIONS)
    lean = min(median(ratios["lean", op]) for op in OPERATIONS)
    section.goals.append(
        Goal(
            "unwatched process, DNS probe's syscalls",
            f">= {GOAL} of the speed without",
            f"{times(worst)} (worst median)",
            worst >= GOAL,
            "every write and send of every process on the host runs two programs "
            "(entry and exit), each through the syscall tracepoint's perf path, which copies the "
            "arguments into a record before the program runs; each program returns after one "
            "hash lookup (see its ns per run): the cost is per syscall, so it is largest on the "
            "cheapest ones (a one-byte write to /dev/null)",
        )
    )
    section.text(
        "With `--no-dns-queries` no program runs at a write or send; what is left is the "
        "slower syscall path every task on the host takes while any syscall tracepoint is on "
        "(the observer keeps the ones on the epoll waits), a few tens of ns on every syscall, "
        "which shows most on the cheapest. With `--no-epoll-mark` as well the observer "
        "attaches no syscall tracepoint: every syscall takes the kernel's fast path again."
    )
    section.goals.append(
        Goal.reported(
            "unwatched process, syscalls with `--no-dns-queries`", f"{times(no_dns)} (worst median)"
        )
    )
    section.goals.append(
        Goal(
            f"unwatched process, syscalls with `{' '.join(LEAN)}`",
            f">= {GOAL} of the speed without",
            f"{times(lean)} (worst median)",
            lean >= GOAL,
            "no syscall tracepoint is attached on this side: what is left is the rounds' noise "
            "(see the range of each ratio), or another tool's syscall tracepoint on the machine",
        )
    )
    return section

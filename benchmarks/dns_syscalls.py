"""6. What the epoll mark and the DNS probe cost a process the observer does not watch.

Both run for every process on the host. Where the kernel allows (x86-64, Linux 5.15+ with BTF,
and the socket layer's tracepoints), the observer attaches no syscall tracepoint: the epoll
mark is a raw tracepoint on ``sched_switch`` (every context switch of every task), the DNS
probe raw tracepoints after every socket send (``sock_send_length``) and before a TCP send
(``tcp_sendmsg_locked``); a write to a file or pipe runs nothing. Elsewhere both are the
syscalls' own tracepoints: the epoll waits' entries, and the entry and exit of ``write``,
``writev``, ``sendto``, ``sendmsg`` and ``sendmmsg``; while any is attached, every syscall of
every task takes the kernel's slower path. Either way a program returns after one hash lookup
for a process the observer does not watch, and ``socket``, ``connect`` and ``close`` run none.

A small C program (``syscalls.c``), not watched, times one-byte ``write``s to /dev/null, UDP
``sendto``s to a closed loopback port, ``socket`` + ``close`` pairs and one-byte round trips
over two pipes between two processes on one CPU (two context switches each), without an
observer, with one running (watching another process) as it is on this kernel, with one forced
onto the syscall tracepoints (``tests/with_syscall_tracepoints.py``), with one that leaves the
DNS probe out (``--no-dns-queries``) and with one without the DNS probe, the epoll mark or host
names (``--no-host-names --no-dns-queries --no-epoll-mark``), the order rotating. One more run
under each of the first two observers with the kernel's BPF statistics gives each program's
runs and time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.children import Children
from benchmarks.hooks import (
    DNS_PROGRAMS,
    EPOLL_PROGRAMS,
    SYSCALL_TRACEPOINTS,
    default_hooks,
    describe,
    has_syscall_tracepoints,
    hooks_of,
)
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median, number, ratio, times
from benchmarks.storm import bpf_statistics, program_stats
from thread_observer.bpf_backend import SWITCH_PROGRAM, SYSCALL_HOOKS

SOURCE = Path(__file__).with_name("syscalls.c")
OPERATIONS = ("write", "sendto", "socket_close", "pipe_round_trip")
OPERATION_LABELS = {
    "write": "`write` (1 byte, /dev/null)",
    "sendto": "`sendto` (UDP, 1 byte)",
    "socket_close": "`socket` + `close`",
    "pipe_round_trip": "pipe round trip (2 context switches)",
}
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


# Side -> the observer's arguments beyond --pid (None: no observer).
LEAN = ["--no-host-names", "--no-dns-queries", "--no-epoll-mark"]
SIDES = {
    "without": None,
    "default": [],
    "syscall tracepoints": [SYSCALL_TRACEPOINTS],
    "no dns queries": ["--no-dns-queries"],
    "lean": LEAN,
}
# The observers watch an idle Python process, whose frames they read: the epoll mark is not
# attached. This side watches a `sleep` instead, whose frames cannot be read: the mark is.
NATIVE_TARGET = "no dns queries"
# The sides whose programs the statistics run shows.
PROFILED = ("default", "syscall tracepoints")


def side_label(side: str) -> str:
    """How the table names a side, with the hooks its observer uses."""
    if side == "without":
        return "without an observer"
    hooks = hooks_of(SIDES[side])
    at = "raw tracepoints" if hooks != SYSCALL_HOOKS else "syscall tracepoints"
    if side == "default":
        return f"observer, default ({at})"
    if side == "syscall tracepoints":
        return "observer, syscall tracepoints (`tests/with_syscall_tracepoints.py`)"
    if side == NATIVE_TARGET:
        mark = "sched_switch" if hooks.epoll_at_switch else "epoll syscall tracepoints"
        return f"observer, `--no-dns-queries`, watching a `sleep` (the epoll mark at {mark})"
    return f"observer, `{' '.join(LEAN)}`"


def running_observer(
    children: Children, idle: subprocess.Popen, flags: list[str] | None = None
) -> Observer:
    args = ["--pid", f"idle={idle.pid}", "--allow-non-python", *(flags or [])]
    if idle.args[0] != "sleep":
        # A Python process: the observer reads its frames before it is timed.
        args.remove("--allow-non-python")
    observer = Observer(children, args)
    observer.wait_ready()  # which also checks the hooks the observer chose
    time.sleep(0.5)  # let the compile's aftermath pass
    return observer


def program_runs(observer_pid: int) -> dict[str, tuple[int, int]]:
    """Runs and nanoseconds of the epoll mark's and the DNS probe's programs, by name."""
    stats = program_stats(observer_pid)
    return {name: stats[name] for name in (*EPOLL_PROGRAMS, *DNS_PROGRAMS) if name in stats}


def measure(children: Children, settings: Settings) -> Section:
    count = max(20_000, settings.storm_calls // 10)
    rounds = max(3, settings.overhead_rounds // 2)
    with tempfile.TemporaryDirectory(prefix="syscalls-") as folder:
        binary = build(Path(folder))
        idle = children.spawn([sys.executable, "-c", "import time; time.sleep(3600)"])
        native = children.spawn(["sleep", "3600"])
        observed = [side for side, flags in SIDES.items() if flags is not None]
        ratios = {(side, op): [] for side in observed for op in OPERATIONS}
        per_op: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
        switches: list[float] = []
        order = list(SIDES)
        for index in range(rounds):
            figures = {}
            for side in order[index % len(order) :] + order[: index % len(order)]:
                if SIDES[side] is None:
                    figures[side] = timed(binary, count)
                    switches.append(figures[side]["switches_per_round_trip"])
                else:
                    target = native if side == NATIVE_TARGET else idle
                    with running_observer(children, target, SIDES[side]):
                        figures[side] = timed(binary, count)
                for op in OPERATIONS:
                    per_op[side].setdefault(op, []).append(figures[side][op])
            for side in observed:
                for op in OPERATIONS:
                    # Throughput ratio: with / without, as for the watched process's overhead.
                    ratios[side, op].append(ratio(figures["without"][op], figures[side][op]))
        programs = {}
        for side in PROFILED:
            with running_observer(children, idle, SIDES[side]) as observer, bpf_statistics():
                before = program_runs(observer.pid)
                timed(binary, count)
                after = program_runs(observer.pid)
            programs[side] = {
                name: (runs - before.get(name, (0, 0))[0], ns - before.get(name, (0, 0))[1])
                for name, (runs, ns) in after.items()
            }
        children.end(idle)
        children.end(native)
    return _section(count, rounds, per_op, ratios, programs, median(switches))


def _section(
    count: int,
    rounds: int,
    per_op: dict[str, dict[str, list[float]]],
    ratios: dict[tuple[str, str], list[float]],
    programs: dict[str, dict[str, tuple[int, int]]],
    switches: float,
) -> Section:
    section = Section(
        "6. What the epoll mark and the DNS probe cost a process the observer does not watch"
    )
    hooks = default_hooks()
    section.text(
        f"On this kernel the observer puts {describe(hooks)}"
        + (
            "; no syscall tracepoint."
            if not has_syscall_tracepoints(hooks)
            else "; while a syscall tracepoint is attached, every syscall of every task on "
            "the host takes the kernel's slower path."
        )
        + " The other side forces both onto the syscalls' tracepoints (as on a kernel before "
        "5.15, without BTF, not x86-64, or without sock_send_length and tcp_sendmsg_locked)."
    )
    section.text(
        f"{rounds} rounds, each timing {count:,} of each operation in a process no observer "
        "watches, without an observer and with each of the observers below running (watching "
        "an idle Python process, whose frames it reads: no epoll mark; one side a `sleep`, "
        "whose frames it cannot read: the epoll mark attached), the order rotating. The pipe "
        "round trip is one byte each way between two "
        f"processes on one CPU ({switches:.2f} context switches per round trip). Throughput "
        "ratio against without: 1.0 means no cost (median, and range over the rounds)."
    )
    header = ["side"]
    for op in OPERATIONS:
        header += [f"{OPERATION_LABELS[op]}, ns", "ratio"]
    rows = []
    for side in SIDES:
        row = [side_label(side)]
        for op in OPERATIONS:
            row.append(number(median(per_op[side][op])))
            if side == "without":
                row.append("-")
            else:
                values = ratios[side, op]
                row.append(
                    f"**{times(median(values))}** ({times(min(values))} to {times(max(values))})"
                )
        rows.append(row)
    section.table(header, rows)
    program_rows, idle_programs = [], []
    for side in PROFILED:
        for name in sorted(programs[side]):
            runs, ns = programs[side][name]
            if runs:
                program_rows.append(
                    [side_label(side), f"`{name}`", f"{runs:,}", number(ns / runs, 1)]
                )
            else:
                idle_programs.append(f"`{name}`")
    section.text(
        "The kernel's BPF statistics during one more run under each of the first two "
        "observers (every process on the machine counts, not only the timed one; the "
        "statistics add two clock reads to each run)."
        + (f" Loaded but not run: {', '.join(idle_programs)}." if idle_programs else "")
        + " `count_tcp_send` is tail-called: its runs and time would count in its caller's."
    )
    section.table(["observer", "program", "runs", "ns per run"], program_rows)

    def worst(side: str) -> float:
        return min(median(ratios[side, op]) for op in OPERATIONS)

    section.goals.append(
        Goal(
            "unwatched process, syscalls and context switches with an observer (default)",
            f">= {GOAL} of the speed without",
            f"{times(worst('default'))} (worst median)",
            worst("default") >= GOAL,
            _why_default(hooks, programs["default"], per_op["without"]),
        )
    )
    section.goals.append(
        Goal.reported(
            "unwatched process, syscalls and context switches with an observer on the syscall "
            "tracepoints",
            f"{times(worst('syscall tracepoints'))} (worst median)",
        )
    )
    section.goals.append(
        Goal.reported(
            "unwatched process, syscalls and context switches with `--no-dns-queries`",
            f"{times(worst('no dns queries'))} (worst median)",
        )
    )
    section.goals.append(
        Goal(
            f"unwatched process, syscalls and context switches with `{' '.join(LEAN)}`",
            f">= {GOAL} of the speed without",
            f"{times(worst('lean'))} (worst median)",
            worst("lean") >= GOAL,
            "no syscall tracepoint and no program at a send or a switch on this side: what is "
            "left is the rounds' noise (see the range of each ratio), or another tool's "
            "syscall tracepoint on the machine",
        )
    )
    section.text(
        "On the syscall tracepoints every write and send of every process runs two programs "
        "(entry and exit), each through the syscall tracepoint's perf path, which copies the "
        "arguments into a record before the program runs; and every syscall of every task, "
        "`socket` and `close` and the pipe's `read` too, takes the kernel's slower path while "
        "any syscall tracepoint is attached (with `--no-dns-queries` too where the epoll "
        "mark is attached: the epoll waits' remain). "
        "The cost is per syscall, so it shows most on the cheapest (a one-byte write to "
        "/dev/null). On the raw tracepoints a write to a file or pipe runs no program; a "
        "socket's send runs one (a TCP send two); a context switch runs none, unless the "
        "epoll mark is attached (a watched process whose frames cannot be read): then the "
        "mark's, which returns at once for a task that did not choose to sleep, else after "
        "reading the task's syscall number from its saved registers."
    )
    return section


def _why_default(hooks, ran: dict[str, tuple[int, int]], without: dict[str, list[float]]) -> str:
    def per_run(name: str) -> float:
        runs, ns = ran.get(name, (0, 0))
        return ns / runs if runs else float("nan")

    if has_syscall_tracepoints(hooks):
        listed = ", ".join(
            f"`{name}` {ns / runs:.0f} ns" for name, (runs, ns) in sorted(ran.items()) if runs
        )
        return (
            "on this kernel the epoll mark and the DNS probe are at syscall tracepoints: every "
            "write and send runs two programs through the tracepoints' perf path, and every "
            "syscall of every task takes the kernel's slower path"
            + (f" (per run: {listed})" if listed else "")
        )
    switch, send = SWITCH_PROGRAM, "raw_tracepoint__sock_send_length"
    switches = (
        f"a context switch runs `{switch}`, {per_run(switch):.0f} ns per run with the "
        "statistics' clock reads, twice per pipe round trip of "
        f"{median(without['pipe_round_trip']):,.0f} ns"
        if ran.get(switch, (0, 0))[0]
        else "a context switch runs no program (the epoll mark is attached only while a "
        "watched process's frames cannot be read)"
    )
    return (
        "no syscall tracepoint is attached: a write to /dev/null and `socket` + `close` run no "
        "program (their ratios' distance from 1 is the rounds' noise, see the ranges); "
        f"{switches}; a UDP send runs `{send}`, "
        f"{per_run(send):.0f} ns per run, once per `sendto` of "
        f"{median(without['sendto']):,.0f} ns"
    )

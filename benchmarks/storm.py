"""2. What the observer itself costs during a storm, next to bcc's per-event tools.

A small C program (``storm.c``) makes getaddrinfo("localhost") calls and pthread_create/join
pairs as fast as it can. Each run watches the same storm with one tool: nothing, the observer
(``--pid --allow-non-python``), ``gethostlatency-bpfcc -p PID`` or ``threadsnoop-bpfcc`` (which
has no ``-p``), their output to /dev/null. A tool's cost is its CPU time from the storm's start
until it has handled the last event; the probes' in-kernel work is charged to the storm itself,
so the storm's own CPU time is reported too. One more observer run with the kernel's BPF
statistics on splits the in-kernel cost per program.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import bpftool
from benchmarks.children import Children, cpu_seconds, memory_mib
from benchmarks.hooks import program_name
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median, number, ratio

SOURCE = Path(__file__).with_name("storm.c")
MIN_CALL_RATE = 50_000
MIN_THREAD_RATE = 5_000
GOAL_FACTOR = 10
ATTACH_TIMEOUT = 120.0
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
LOST = re.compile(r"[Ll]ost (\d+) samples")


def build(folder: Path) -> Path:
    binary = folder / "storm"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return binary


@dataclass
class StormCounts:
    calls: int
    call_seconds: float
    threads: int
    thread_seconds: float
    failures: int

    @property
    def events(self) -> int:
        return self.calls + self.threads


@dataclass
class Run:
    tool: str
    storm: StormCounts
    storm_cpu: float
    tool_cpu: float | None = None
    memory: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    observed: tuple[int, int] | None = None  # the observer's (calls, threads)
    programs: dict[str, tuple[int, int]] = field(default_factory=dict)  # (runs, ns)


class Watcher:
    """A tool that watches the storm; this base class watches nothing (the bare storm)."""

    name = "none"
    handles = ()  # which storm events it handles: "calls", "threads"
    pid: int | None = None

    def start(self, children: Children, storm_pid: int) -> None:
        pass

    def finish(self, run: Run) -> None:
        pass

    def stop(self) -> None:
        pass


class ObserverWatcher(Watcher):
    name = "thread-observer"
    handles = ("calls", "threads")

    def start(self, children: Children, storm_pid: int) -> None:
        self.observer = Observer(children, ["--pid", f"storm={storm_pid}", "--allow-non-python"])
        self.observer.wait_ready(ATTACH_TIMEOUT)
        self.pid = self.observer.pid

    def finish(self, run: Run) -> None:
        # The scrape that reads the counts is part of the observer's cost.
        metrics = self.observer.scrape()
        run.observed = (
            int(metrics.value("thread_observer_getaddrinfo_calls_total", target="storm")),
            int(metrics.value("thread_observer_threads_created_total", target="storm")),
        )

    def stop(self) -> None:
        self.observer.stop()


class BccToolWatcher(Watcher):
    def __init__(
        self, name: str, handles: tuple[str, ...], attach_points: int, per_pid: bool
    ) -> None:
        self.name, self.handles = name, handles
        self.attach_points, self.per_pid = attach_points, per_pid

    def start(self, children: Children, storm_pid: int) -> None:
        # Where bcc says how many events it lost; stop() closes it.
        self.errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        command = [self.name, *(["-p", str(storm_pid)] if self.per_pid else [])]
        self.process = children.spawn(command, stdout=subprocess.DEVNULL, stderr=self.errors)
        self.pid, self.children = self.process.pid, children
        # They print nothing to say they are ready: ask the kernel for their attach points.
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while bpftool.attach_points_of(self.pid) < self.attach_points:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not attach ({self.process.poll()})")
            time.sleep(0.1)

    def finish(self, run: Run) -> None:
        self.errors.seek(0)
        run.lost = sum(int(n) for n in LOST.findall(self.errors.read()))

    def stop(self) -> None:
        self.children.end(self.process)
        self.errors.close()


def watchers() -> list[Watcher]:
    return [
        Watcher(),
        ObserverWatcher(),
        # getaddrinfo, gethostbyname, gethostbyname2: an entry and a return probe each.
        BccToolWatcher("gethostlatency-bpfcc", ("calls",), attach_points=6, per_pid=True),
        BccToolWatcher("threadsnoop-bpfcc", ("threads",), attach_points=1, per_pid=False),
    ]


# What gives programs' (runs, ns) by name, read at the moment it is called.
ProgramStats = Callable[[], dict[str, tuple[int, int]]]


def spawn_storm(children: Children, binary: Path, calls: int, threads: int):
    """A storm process, ready and waiting for its go, and its pid."""
    storm = children.spawn(
        [str(binary), str(calls), str(threads), "1", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return storm, json.loads(storm.stdout.readline())["pid"]


def ran_between(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Each program's (runs, ns) from one reading of the kernel's statistics to the next."""
    return {
        name: (runs - before.get(name, (0, 0))[0], ns - before.get(name, (0, 0))[1])
        for name, (runs, ns) in after.items()
    }


@contextlib.contextmanager
def watched_storm(children: Children, binary: Path, watcher: Watcher, settings: Settings):
    """A storm process, ready and waiting, with the watcher started on it; both ended after."""
    storm, storm_pid = spawn_storm(children, binary, settings.storm_calls, settings.storm_threads)
    try:
        watcher.start(children, storm_pid)
        try:
            yield storm
        finally:
            if watcher.pid is not None:
                watcher.stop()
    finally:
        children.end(storm)


def storm_run(children: Children, binary: Path, watcher: Watcher, settings: Settings) -> Run:
    with watched_storm(children, binary, watcher, settings) as storm:
        return _storm(storm, watcher)


def go(storm: subprocess.Popen) -> dict:
    """Starts a ready storm and waits for its own counts."""
    storm.stdin.write("go\n")
    storm.stdin.flush()
    line = storm.stdout.readline()
    if not line:
        raise RuntimeError(f"the storm exited with status {storm.wait()}")
    return json.loads(line)


def run_storm(
    children: Children,
    binary: Path,
    calls: int,
    threads: int,
    attach: Callable[[int], contextlib.AbstractContextManager[ProgramStats]],
    statistics: bool,
) -> tuple[dict, dict[str, tuple[int, int]]]:
    """One storm under what ``attach(pid)`` attaches to it: the storm's own counts and, with
    ``statistics``, each program's (runs, ns) over it, the kernel's BPF statistics on around the
    storm only (they add clock reads to every run)."""
    storm, pid = spawn_storm(children, binary, calls, threads)
    try:
        with attach(pid) as programs:
            with bpf_statistics() if statistics else contextlib.nullcontext():
                before = programs() if statistics else {}
                done = go(storm)
                after = programs() if statistics else {}
    finally:
        children.end(storm)
    return done, ran_between(before, after)


def _storm(storm: subprocess.Popen, watcher: Watcher) -> Run:
    tool_cpu = cpu_seconds(watcher.pid) if watcher.pid else None
    done = go(storm)
    counts = StormCounts(
        done["getaddrinfo_calls"],
        done["getaddrinfo_seconds"],
        done["threads_created"],
        done["threads_seconds"],
        done["failures"],
    )
    run = Run(watcher.name, counts, cpu_seconds(storm.pid))
    watcher.finish(run)
    if watcher.pid:
        _wait_until_idle(watcher.pid)
        run.tool_cpu = cpu_seconds(watcher.pid) - tool_cpu
        run.memory = memory_mib(watcher.pid)
    return run


def _wait_until_idle(pid: int, timeout: float = 60.0) -> None:
    """Until a per-event tool has drained its buffers: its CPU time stops growing."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


@contextlib.contextmanager
def bpf_statistics():
    """The kernel's per-program run time and count, on for the duration only."""
    before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(before)


def program_stats(pid: int) -> dict[str, tuple[int, int]]:
    stats: dict[str, tuple[int, int]] = {}
    for info in bpftool.programs_of(pid):
        name = program_name(info)
        runs, ns = stats.get(name, (0, 0))
        stats[name] = (runs + info.get("run_cnt", 0), ns + info.get("run_time_ns", 0))
    return stats


def profiled_run(children: Children, binary: Path, settings: Settings) -> Run:
    """The observer on the storm with BPF statistics: run count and time of each program."""
    watcher = ObserverWatcher()
    with watched_storm(children, binary, watcher, settings) as storm, bpf_statistics():
        before = program_stats(watcher.pid)
        run = _storm(storm, watcher)
        after = program_stats(watcher.pid)
    run.programs = ran_between(before, after)
    return run


def measure(children: Children, settings: Settings) -> Section:
    with tempfile.TemporaryDirectory(prefix="storm-") as folder:
        binary = build(Path(folder))
        runs: list[Run] = []
        tools = watchers()
        for repeat in range(settings.storm_repeats):
            shift = repeat % len(tools)  # each repeat starts with another tool
            for watcher in tools[shift:] + tools[:shift]:
                runs.append(storm_run(children, binary, watcher, settings))
        profiled = profiled_run(children, binary, settings)
    return _section(runs, profiled, settings)


# The report
@dataclass
class ToolSummary:
    name: str
    handled: int  # events of the kinds it handles, per run
    cpu: float  # median CPU seconds per run
    per_million: float
    peak_mib: float
    rss_mib: float
    lost: int
    call_rate: float
    thread_rate: float
    storm_cpu: float


def _summary(name: str, runs: list[Run], handles: tuple[str, ...]) -> ToolSummary:
    mine = [r for r in runs if r.tool == name]
    handled = [sum(getattr(r.storm, kind) for kind in handles) for r in mine]
    cpu = [r.tool_cpu or 0.0 for r in mine]
    return ToolSummary(
        name,
        int(median(handled)) if handles else 0,
        median(cpu),
        median([ratio(c, h) * 1e6 for c, h in zip(cpu, handled, strict=True)])
        if handles
        else float("nan"),
        max((r.memory.get("peak", 0) for r in mine), default=0),
        median([r.memory.get("rss", 0) for r in mine]),
        max(r.lost for r in mine),
        median([r.storm.calls / r.storm.call_seconds for r in mine]),
        median([r.storm.threads / r.storm.thread_seconds for r in mine]),
        median([r.storm_cpu for r in mine]),
    )


def _section(runs: list[Run], profiled: Run, settings: Settings) -> Section:
    section = Section("2. Cost of the observer during a storm")
    tools = {w.name: w for w in watchers()}
    summaries = {name: _summary(name, runs, w.handles) for name, w in tools.items()}
    base = summaries["none"]
    section.text(
        f'Storm: {settings.storm_calls:,} `getaddrinfo("localhost")` calls on one thread and '
        f"{settings.storm_threads:,} `pthread_create`+`pthread_join` pairs on another, in one C "
        f"process; {settings.storm_repeats} run(s) per tool, tools in rotating order, medians. "
        "*CPU per million* counts the events the tool handles (both kinds for the observer). "
        "*storm CPU added per event* is what the probes cost inside the storm process."
    )
    rows = []
    for s in summaries.values():
        added = _added_per_event(s, base, settings)
        rows.append(
            [
                s.name,
                f"{number(s.call_rate)} / {number(s.thread_rate)}",
                "-" if s.name == "none" else f"{s.cpu:.2f} s",
                "-" if s.name == "none" else f"**{s.per_million:.3f} s**",
                "-" if s.name == "none" else f"{s.peak_mib:.0f} / {s.rss_mib:.0f} MiB",
                f"{s.storm_cpu:.2f} s",
                "-" if s.name == "none" else f"{added:+.2f} µs",
                "-" if s.name == "none" or not s.lost else f"{s.lost:,}",
            ]
        )
    section.table(
        [
            "tool",
            "storm rate (calls/s / threads/s)",
            "tool CPU",
            "CPU per million",
            "peak / final RSS",
            "storm CPU",
            "storm CPU added per event",
            "lost events",
        ],
        rows,
    )
    _ratios(section, summaries)
    _exactness(section, runs)
    _rates(section, summaries["thread-observer"])
    _programs(section, profiled, _added_per_event(summaries["thread-observer"], base, settings))
    return section


def _added_per_event(summary: ToolSummary, base: ToolSummary, settings: Settings) -> float:
    events = settings.storm_calls + settings.storm_threads
    return (summary.storm_cpu - base.storm_cpu) / events * 1e6


def _ratios(section: Section, summaries: dict[str, ToolSummary]) -> None:
    ours = summaries["thread-observer"]
    host, snoop = summaries["gethostlatency-bpfcc"], summaries["threadsnoop-bpfcc"]
    both = ratio(host.cpu + snoop.cpu, host.handled + snoop.handled) * 1e6
    lines = []
    for name, per_million in (
        (host.name, host.per_million),
        (snoop.name, snoop.per_million),
        ("both bcc tools (one storm each)", both),
    ):
        factor = ratio(per_million, ours.per_million)
        lines.append(
            f"- {name}: {per_million:.3f} s per million events, "
            f"**{factor:.0f} times** the observer's {ours.per_million:.3f} s"
        )
        section.goals.append(
            Goal(
                f"storm: observer CPU per event vs {name}",
                f">= {GOAL_FACTOR}x less",
                f"{factor:.0f}x less",
                factor >= GOAL_FACTOR,
                ""
                if factor >= GOAL_FACTOR
                else f"the observer used {ours.per_million:.3f} CPU s per million events "
                f"({ours.cpu:.2f} s a run), against {per_million:.3f} s.",
            )
        )
    section.lines += [
        "CPU per million events, per-event tools against the observer:",
        "",
        *lines,
        "",
    ]


def _exactness(section: Section, runs: list[Run]) -> None:
    ours = [r for r in runs if r.observed is not None]
    exact = all(r.observed == (r.storm.calls, r.storm.threads) for r in ours)
    worst = max(
        ours,
        key=lambda r: abs(r.observed[0] - r.storm.calls) + abs(r.observed[1] - r.storm.threads),
    )
    section.text(
        f"Counts: in {len(ours)} observer run(s) the observer counted "
        f"{worst.observed[0]:,} getaddrinfo calls and {worst.observed[1]:,} threads created "
        f"where the storm made {worst.storm.calls:,} and {worst.storm.threads:,} "
        f"({'exact in every run' if exact else 'NOT exact'}; the storm's threads include its "
        "two workers). The per-event tools' *lost events* are what bcc reported as lost "
        "from its perf buffers."
    )
    measured = (
        "exact"
        if exact
        else (
            f"{worst.observed[0]:,}/{worst.storm.calls:,} calls, "
            f"{worst.observed[1]:,}/{worst.storm.threads:,} threads"
        )
    )
    section.goals.append(
        Goal(
            "storm: exact counts",
            "observer = storm's own counts",
            measured,
            exact,
            "" if exact else "see the counts under the storm section.",
        )
    )


def _rates(section: Section, ours: ToolSummary) -> None:
    reached = ours.call_rate >= MIN_CALL_RATE and ours.thread_rate >= MIN_THREAD_RATE
    section.text(
        f"Storm rate under the observer: {ours.call_rate:,.0f} calls/s and "
        f"{ours.thread_rate:,.0f} threads/s (wanted at least {MIN_CALL_RATE:,} and "
        f"{MIN_THREAD_RATE:,}): {'reached' if reached else '**not reached**'}."
    )


def _programs(section: Section, run: Run, added_us: float) -> None:
    if not run.programs:
        return
    rows = []
    for name, (runs, ns) in sorted(run.programs.items(), key=lambda item: -item[1][1]):
        rows.append([f"`{name}`", f"{runs:,}", f"{ratio(ns, runs):.0f} ns", f"{ns / 1e9:.3f} s"])
    total_ns = sum(ns for _, ns in run.programs.values())
    lookup_ns = sum(ns for name, (_, ns) in run.programs.items() if "getaddrinfo" in name)
    per_event = total_ns / run.storm.events / 1000
    section.text(
        "In the kernel: one more observer run on the same storm with "
        "`kernel.bpf_stats_enabled=1` (on for that run only) gives each program's runs and "
        "time (tracepoint programs also run for every other process on the machine, and "
        "return after one map lookup). The BPF programs take "
        f"{lookup_ns / max(run.storm.calls, 1):.0f} ns per getaddrinfo call "
        f"(entry + return) and {per_event:.2f} µs per storm event overall, of the "
        f"{added_us:.2f} µs of storm CPU the observer adds per event: the other "
        f"{max(added_us - per_event, 0):.2f} µs is the probe mechanism itself (the uprobe "
        "trap, and the uretprobe's return-address hijack and second trap)."
    )
    section.table(["program", "runs", "time per run", "total"], rows)

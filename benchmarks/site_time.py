"""11. BPF time that Python call sites add per event, by the kernel's own accounting.

A Python process (``benchmarks.target``) makes ``socket.getaddrinfo('localhost', 80)`` calls,
then ``threading.Thread`` start+join pairs, each for a while, watched by the observer with
sites and with ``--no-sites`` in turn (the same process, so both read the same frames), with
kernel.bpf_stats_enabled=1: each program's run time over a loop, divided by the loop's own
count. With sites, the probes also read the calling thread's Python frames to name its site.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks import storm
from benchmarks.bpf_time import CALL_PROGRAMS, CREATE_PROGRAMS
from benchmarks.children import PYTHON, Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median

GOAL_NS = 1000  # what sites may add per event
# All programs per event with the default configuration (sites, host names, the DNS probe)
DEFAULT_GOALS_NS = {"call_ns": 700, "create_ns": 600}
SITES_TIMEOUT = 60.0  # for the observer to find the target's interpreter
MODES = {"sites": [], "no sites": ["--no-sites"]}


@dataclass
class Figures:
    call_ns: float  # per getaddrinfo call
    create_ns: float  # per thread created


@contextmanager
def python_target(children: Children):
    process = children.spawn(
        [PYTHON, "-m", "benchmarks.target", "--label", "site-time"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        json.loads(process.stdout.readline())
        yield process
    finally:
        children.end(process)


def command(process: subprocess.Popen, **request) -> dict:
    process.stdin.write(json.dumps(request) + "\n")
    process.stdin.flush()
    reply = json.loads(process.stdout.readline())
    if "error" in reply:
        raise RuntimeError(f"the target failed: {reply['error']}")
    return reply


def wait_for_sites(observer: Observer, process: subprocess.Popen) -> None:
    """Until the probes read the target's frames: its interpreter is found in user space."""
    deadline = time.monotonic() + SITES_TIMEOUT
    while True:
        command(process, op="getaddrinfo", seconds=0.05)
        metrics = observer.scrape()
        if metrics.value("thread_observer_getaddrinfo_calls_by_site_total", target="py"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no call sites after {SITES_TIMEOUT:.0f}s")
        time.sleep(0.2)


def ns_in(observer_pid: int, programs: tuple[str, ...], work) -> tuple[float, int]:
    """BPF ns of ``programs`` while ``work()`` runs, and the events it reports."""
    before = storm.program_stats(observer_pid)
    events = work()
    after = storm.program_stats(observer_pid)
    ns = sum(after.get(p, (0, 0))[1] - before.get(p, (0, 0))[1] for p in programs)
    return ns, events


def measure_once(
    children: Children, process: subprocess.Popen, args: list[str], seconds: float
) -> Figures:
    pid = process.pid
    with Observer(children, ["--pid", f"py={pid}", *args]) as observer:
        observer.wait_ready(storm.ATTACH_TIMEOUT)
        if not args:
            wait_for_sites(observer, process)
        else:
            command(process, op="getaddrinfo", seconds=0.05)
        with storm.bpf_statistics():
            # The warm operation of each loop counts too.
            calls, call_count = ns_in(
                observer.pid,
                CALL_PROGRAMS,
                lambda: command(process, op="getaddrinfo", seconds=seconds)["ops"] + 1,
            )
            creates, thread_count = ns_in(
                observer.pid,
                CREATE_PROGRAMS,
                lambda: command(process, op="threads", seconds=seconds)["ops"] + 1,
            )
    return Figures(calls / call_count, creates / thread_count)


def measure(children: Children, settings: Settings) -> Section:
    repeats = 3 if settings.name == "full" else 2
    seconds = 2.0 if settings.name == "full" else 1.0
    figures: dict[str, list[Figures]] = {mode: [] for mode in MODES}
    with python_target(children) as process:
        for repeat in range(repeats):
            order = list(MODES) if repeat % 2 == 0 else list(reversed(MODES))
            for mode in order:
                figures[mode].append(measure_once(children, process, MODES[mode], seconds))
    return _section(figures, repeats, seconds)


def _section(figures: dict[str, list[Figures]], repeats: int, seconds: float) -> Section:
    section = Section("11. BPF time of Python call sites")
    section.text(
        f"A Python process ({PYTHON}) makes `socket.getaddrinfo('localhost', 80)` calls for "
        f"{seconds:g} s, then `threading.Thread` start+join pairs for {seconds:g} s, watched with "
        f"`--pid` with sites and with `--no-sites`, {repeats} times each, alternating; the "
        "kernel's run time of the programs (kernel.bpf_stats_enabled=1) divided by the "
        "process's own counts. With sites, each event also reads the Python frames that name "
        "its site."
    )
    rows, goals = [], []
    for what, attribute, programs in (
        ("getaddrinfo call", "call_ns", CALL_PROGRAMS),
        ("thread created", "create_ns", CREATE_PROGRAMS),
    ):
        with_sites = [getattr(f, attribute) for f in figures["sites"]]
        without = [getattr(f, attribute) for f in figures["no sites"]]
        added = median(with_sites) - median(without)
        rows.append(
            [
                what,
                ", ".join(f"`{p}`" for p in programs),
                f"{median(without):.0f} ({min(without):.0f} to {max(without):.0f})",
                f"{median(with_sites):.0f} ({min(with_sites):.0f} to {max(with_sites):.0f})",
                f"{added:+.0f}",
            ]
        )
        goals.append(
            Goal(
                f"BPF time sites add per {what}",
                f"<= {GOAL_NS} ns",
                f"{added:.0f} ns",
                added <= GOAL_NS,
                "each bpf_probe_read_user costs about 75 ns here, whatever its size: the "
                "thread state (one read, one for its list link, one for its cframe on "
                "3.11-3.12) and the data stack (one window of frames), then the stack's lookup "
                "in the by-site map; a thread's creation reads its stack at the clone",
            )
        )
        goals.append(_default_goal(what, attribute, median(with_sites)))
    section.table(
        ["event", "programs", "ns without sites (range)", "ns with sites (range)", "added ns"],
        rows,
    )
    section.goals += goals
    return section


def _default_goal(what: str, attribute: str, measured: float) -> Goal:
    limit = DEFAULT_GOALS_NS[attribute]
    return Goal(
        f"BPF time per {what}, default configuration (sites, host names, the DNS probe)",
        f"<= {limit} ns",
        f"{measured:.0f} ns",
        measured <= limit,
        "the frame walk that names the site is most of it (the row above); the lean figures, "
        "without sites, are in sections 8 and 11",
    )

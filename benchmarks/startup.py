"""5. Start-up: from the observer's launch to /healthz answering (by then its probes are compiled
and attached: the CLI attaches before it serves) and to the first event counted in /metrics.

The target is already running and busy (a lookup and a thread every 10 ms), watched by ``--pid``
and by ``--target`` in alternation.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median, seconds
from benchmarks.target_process import TargetProcess

STEADY_INTERVAL = 0.01
# The observer's own account of its compile (thread_observer/bpf_backend.py compile_probes).
COMPILED = re.compile(r"compiled the probes in ([\d.]+) s \(RSS (\d+) MiB, (\d+) MiB once")
# The daemon's account of the child that compiled and loaded them (probe_loader.py).
CHILD = re.compile(r"by a child process \(pid \d+, exit status \d+, peak RSS (\d+) MiB\)")
READY_GOAL = 1.5  # s, median, to /healthz
PEAK_GOAL = 256.0  # MiB, the observer's and its compile child's peaks
STEADY_GOAL = 64.0  # MiB
FIRST_EVENT_TIMEOUT = 30.0


@dataclass
class Launch:
    mode: str
    ready: float
    first_event: float
    cpu_at_ready: float
    peak_mib: float
    compile_seconds: float
    rss_compiled: float  # MiB right after the compile
    rss_returned: float  # MiB once LLVM's freed memory is given back
    child_peak: float = 0.0  # MiB, the compile child's peak
    steady: float = 0.0  # MiB, the observer's RSS once it counts


def _first_event(observer: Observer) -> float:
    deadline = time.monotonic() + FIRST_EVENT_TIMEOUT
    while time.monotonic() < deadline:
        metrics = observer.scrape()
        if metrics.value("thread_observer_getaddrinfo_calls_total") or metrics.value(
            "thread_observer_threads_created_total"
        ):
            return time.monotonic() - observer.launched
    raise RuntimeError(f"no event counted within {FIRST_EVENT_TIMEOUT:.0f} s")


def _launch(children: Children, mode: str, args: list[str]) -> Launch:
    with Observer(children, args) as observer:
        ready = observer.wait_ready()
        cpu = observer.cpu_seconds()
        first = _first_event(observer)
        log = observer.log_path.read_text(errors="replace")
        found = COMPILED.search(log)
        compiled = [float(g) for g in found.groups()] if found else [0.0, 0.0, 0.0]
        child = CHILD.search(log)
        memory = observer.memory_mib()
        return Launch(
            mode,
            ready,
            first,
            cpu,
            memory.get("peak", 0),
            *compiled,
            child_peak=float(child.group(1)) if child else 0.0,
            steady=memory.get("rss", 0),
        )


def measure(children: Children, settings: Settings) -> Section:
    label = f"startup{os.getpid()}"
    target = TargetProcess(children, label=label)
    target.call("steady", interval=STEADY_INTERVAL)
    modes = {
        "`--pid`": ["--pid", f"startup={target.pid}"],
        "`--target`": ["--target", rf"startup=benchmarks\.target --label {label}$"],
    }
    launches = [
        _launch(children, mode, args)
        for _ in range(settings.startup_samples)
        for mode, args in modes.items()
    ]
    return _section(launches, list(modes))


def _section(launches: list[Launch], modes: list[str]) -> Section:
    section = Section("5. Start-up")
    section.text(
        "From launching `python -m thread_observer run` to /healthz answering (the CLI compiles "
        "the probes with bcc and attaches them before it serves, so this is *probes attached*) "
        "and to the first event counted in /metrics, with the target already running and "
        f"making a lookup and a thread every {STEADY_INTERVAL * 1000:.0f} ms. Most of it is "
        "bcc compiling the probes' C with clang, in a child process that loads every program "
        "and map, hands their file descriptors to the observer and exits: all probes are one "
        "translation unit compiled once; the compile's RSS columns are the child's, and LLVM "
        "is never in the observer's own memory (its peak and steady RSS)."
    )
    rows = []
    for mode in modes:
        mine = [launch for launch in launches if launch.mode == mode]
        rows.append(
            [
                mode,
                str(len(mine)),
                f"{seconds(median([m.ready for m in mine]))} / "
                f"{seconds(max(m.ready for m in mine))}",
                f"{seconds(median([m.first_event for m in mine]))} / "
                f"{seconds(max(m.first_event for m in mine))}",
                seconds(median([m.cpu_at_ready for m in mine])),
                seconds(median([m.compile_seconds for m in mine])),
                f"{median([m.rss_compiled for m in mine]):.0f} MiB / "
                f"{median([m.rss_returned for m in mine]):.0f} MiB",
                f"{max(m.child_peak for m in mine):.0f} MiB",
                f"{max(m.peak_mib for m in mine):.0f} MiB / "
                f"{median([m.steady for m in mine]):.0f} MiB",
            ]
        )
    section.table(
        [
            "mode",
            "launches",
            "to /healthz (median / max)",
            "to first event counted (median / max)",
            "CPU used by /healthz",
            "of which bcc's compile (wall)",
            "the child's RSS after the compile / once LLVM's freed memory is returned",
            "the child's peak RSS",
            "the observer's peak / steady RSS",
        ],
        rows,
    )
    section.goals += _goals(launches)
    return section


def _goals(launches: list[Launch]) -> list[Goal]:
    ready = median([launch.ready for launch in launches])
    compile_seconds = median([launch.compile_seconds for launch in launches])
    peak = max(launch.peak_mib + launch.child_peak for launch in launches)
    steady = max(launch.steady for launch in launches)
    return [
        Goal(
            "start-up to /healthz (median)",
            f"<= {READY_GOAL} s",
            seconds(ready),
            ready <= READY_GOAL,
            f"bcc's compile of the probes' C with clang takes {seconds(compile_seconds)} of it "
            "(median), then the verifier loads each program in each form it may be attached",
        ),
        Goal(
            "peak RSS at start-up, the observer's and its compile child's",
            f"<= {PEAK_GOAL:.0f} MiB",
            f"{peak:.0f} MiB",
            peak <= PEAK_GOAL,
        ),
        Goal(
            "steady RSS of the observer next to one busy target",
            f"<= {STEADY_GOAL:.0f} MiB",
            f"{steady:.0f} MiB",
            steady <= STEADY_GOAL,
        ),
    ]

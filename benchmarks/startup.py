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
from benchmarks.report import Section
from benchmarks.settings import Settings
from benchmarks.stats import median, seconds
from benchmarks.target_process import TargetProcess

STEADY_INTERVAL = 0.01
# The observer's own account of its compile (thread_observer/bpf_backend.py compile_probes).
COMPILED = re.compile(r"compiled the probes in ([\d.]+) s \(RSS (\d+) MiB, (\d+) MiB once")
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
        found = COMPILED.search(observer.log_path.read_text(errors="replace"))
        compiled = [float(g) for g in found.groups()] if found else [0.0, 0.0, 0.0]
        return Launch(mode, ready, first, cpu, observer.memory_mib().get("peak", 0), *compiled)


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
        "bcc compiling the probes' C with clang, in the observer's process: all probes are "
        "one translation unit compiled once, and the memory LLVM frees is returned to the "
        "system right after (`malloc_trim`), as the RSS columns show."
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
                f"{max(m.peak_mib for m in mine):.0f} MiB",
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
            "RSS after the compile / once LLVM's freed memory is returned",
            "peak RSS",
        ],
        rows,
    )
    return section

"""8. BPF program time per event of a watched process, by the kernel's own accounting.

A storm (``storm.c``) watched with ``--pid`` and ``--no-sites`` (a C program has no Python
frames to read anyway), with kernel.bpf_stats_enabled=1: each program's run time over the
storm, divided by the storm's own counts. Repeated, alternating nothing (the figure is the
kernel's, not a wall-clock one), and the spread reported.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks import storm
from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median
from observer.bpf_backend import GETADDRINFO_PROBE

CALL_PROGRAMS = (GETADDRINFO_PROBE.session, GETADDRINFO_PROBE.entry, GETADDRINFO_PROBE.on_return)
CREATE_PROGRAMS = ("pthread_create_entry", "tracepoint__task__task_newtask")
EXIT_PROGRAMS = ("tracepoint__sched__sched_process_exit",)
CALL_GOAL_NS = 400
THREAD_GOAL_NS = 300


class NoSitesWatcher(storm.ObserverWatcher):
    def start(self, children: Children, storm_pid: int) -> None:
        self.observer = Observer(
            children, ["--pid", f"storm={storm_pid}", "--allow-non-python", "--no-sites"]
        )
        self.observer.wait_ready(storm.ATTACH_TIMEOUT)
        self.pid = self.observer.pid


def ns_per(run, programs: tuple[str, ...], events: int) -> float:
    return sum(run.programs.get(name, (0, 0))[1] for name in programs) / max(events, 1)


def measure(children: Children, settings: Settings) -> Section:
    settings = replace(
        settings,
        storm_calls=max(30_000, settings.storm_calls // 10),
        storm_threads=max(3_000, settings.storm_threads // 10),
    )
    repeats = 3
    figures: dict[str, list[float]] = {"call": [], "create": [], "exit": []}
    with tempfile.TemporaryDirectory(prefix="bpf-time-") as folder:
        binary = storm.build(Path(folder))
        for _ in range(repeats):
            watcher = NoSitesWatcher()
            with (
                storm.watched_storm(children, binary, watcher, settings) as process,
                storm.bpf_statistics(),
            ):
                before = storm.program_stats(watcher.pid)
                run = storm._storm(process, watcher)
                after = storm.program_stats(watcher.pid)
            run.programs = {
                name: (runs - before.get(name, (0, 0))[0], ns - before.get(name, (0, 0))[1])
                for name, (runs, ns) in after.items()
            }
            figures["call"].append(ns_per(run, CALL_PROGRAMS, run.storm.calls))
            figures["create"].append(ns_per(run, CREATE_PROGRAMS, run.storm.threads))
            figures["exit"].append(ns_per(run, EXIT_PROGRAMS, run.storm.threads))
    section = Section("8. BPF time per event of a watched process")
    section.text(
        f"{repeats} storms of {settings.storm_calls:,} getaddrinfo calls and "
        f"{settings.storm_threads:,} thread create+join pairs, watched with `--pid` and "
        "`--no-sites`; the kernel's run time of each program (kernel.bpf_stats_enabled=1) "
        "divided by the storm's own counts."
    )
    rows = [
        [
            what,
            ", ".join(f"`{p}`" for p in programs),
            f"{median(figures[key]):.0f}",
            f"{min(figures[key]):.0f} to {max(figures[key]):.0f}",
        ]
        for what, key, programs in (
            ("getaddrinfo call", "call", CALL_PROGRAMS),
            ("thread created", "create", CREATE_PROGRAMS),
            ("thread ended", "exit", EXIT_PROGRAMS),
        )
    ]
    section.table(["event", "programs", "ns (median)", "range"], rows)
    call, create = median(figures["call"]), median(figures["create"])
    section.goals.append(
        Goal(
            "BPF time per watched getaddrinfo call, without sites",
            f"<= {CALL_GOAL_NS} ns",
            f"{call:.0f} ns",
            call <= CALL_GOAL_NS,
            "a call is two runs of about 50 ns each before doing anything (the statistics' "
            "clock reads included); the entry's share is about two thirds: reading the host "
            "name from the caller's memory (bpf_probe_read_user_str, about 125 ns in a "
            "separate measurement with the read left out), the process lookup (about 45 "
            "ns), the thread's state and the per-host count; the return adds to the "
            "process's totals, after a libc call that has left the caches cold",
        )
    )
    section.goals.append(
        Goal(
            "BPF time per thread created",
            f"<= {THREAD_GOAL_NS} ns",
            f"{create:.0f} ns",
            create <= THREAD_GOAL_NS,
            "pthread_create_entry stores the start routine in the creating thread's state "
            "(it looks the process up only for a thread's first); task_newtask looks the "
            "process up and adds to the creators' map (a 24-byte key), and each run costs "
            "about 50 ns before doing anything",
        )
    )
    return section

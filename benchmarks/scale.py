"""4. How far it scales: one ``--target`` regex matching 100 small Python processes.

Measured: how soon a process started later is attached (from its exec to the observer counting
it among its processes, and to its first thread counted), /metrics scrape duration over
sequential scrapes, the observer's CPU when idle and per scrape, its memory, and the entries in
the kernel maps it reads (``bpftool map dump``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

from benchmarks import bpftool
from benchmarks.children import PYTHON, Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median, percentile, seconds

MEMBER_PERIOD = 2.0
IDLE_SECONDS = 5.0
SCRAPE_GOAL = 0.050
ATTACH_GOAL = 1.0
MAP_PREFIXES = ("watched_tgids", "process_totals", "threads_created", "getaddrinfo_")


def _target_command(marker: str, role: str, index: int) -> list[str]:
    return [
        PYTHON,
        "-m",
        "benchmarks.scale_target",
        "--run",
        marker,
        f"--{role}",
        str(index),
        "--period",
        str(MEMBER_PERIOD),
    ]


def _regex(marker: str, role: str, index: int | None = None) -> str:
    suffix = f" {index} " if index is not None else " "
    return rf"benchmarks\.scale_target --run {marker} --{role}{suffix}"


def _wait(condition, timeout: float, what: str, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


@dataclass
class Attach:
    to_attached: float  # exec to the observer's processes including it
    to_counted: float  # exec to its first thread counted in /metrics
    thread_to_counted: float  # that thread's creation to the count


def _attach_one(children: Children, observer: Observer, marker: str, index: int) -> Attach:
    before = observer.health()["processes"]
    launched = time.monotonic()
    newcomer = children.spawn(
        _target_command(marker, "newcomer", index), stdout=subprocess.PIPE, text=True
    )
    try:
        _wait(lambda: observer.health()["processes"] > before, 30, "the newcomer's attach")
        attached = time.monotonic()
        first_thread = json.loads(newcomer.stdout.readline())["first_thread"]
        _wait(
            lambda: (
                observer.scrape().value(
                    "thread_observer_threads_created_total", target=f"newcomer{index}"
                )
                >= 1
            ),
            30,
            "the newcomer's first thread",
            step=0,
        )
        counted = time.monotonic()
    finally:
        children.end(newcomer)
    _wait(lambda: observer.health()["processes"] == before, 30, "the newcomer's detach")
    return Attach(attached - launched, counted - launched, counted - first_thread)


@dataclass
class Scale:
    processes: int
    ready: float
    all_attached: float
    idle_cpu: float  # share of one CPU
    scrapes: list[float]
    scrape_cpu: float  # CPU seconds per scrape
    self_reported: float
    memory: dict[str, float]
    maps: list[bpftool.MapEntries]
    attaches: list[Attach]
    anatomy: dict[str, float | None] | None = None


def measure(children: Children, settings: Settings) -> Section:
    marker = f"bench{os.getpid()}x{int(time.time())}"
    for index in range(settings.scale_processes):
        children.spawn(_target_command(marker, "member", index))
    newcomers = [
        f"newcomer{k}={_regex(marker, 'newcomer', k)}" for k in range(settings.attach_samples)
    ]
    args = ["--target", f"scale={_regex(marker, 'member')}"]
    for newcomer in newcomers:
        args += ["--target", newcomer]
    with Observer(children, args) as observer:
        scale = _measure(children, observer, marker, settings)
    scale.anatomy = _anatomy(children, marker, settings.scale_processes)
    return _section(scale, settings)


def _anatomy(children: Children, marker: str, count: int) -> dict[str, float | None] | None:
    """The scrape path timed piece by piece (benchmarks.scrape_anatomy), None if it failed."""
    child = children.spawn(
        [
            PYTHON,
            "-m",
            "benchmarks.scrape_anatomy",
            "--target",
            f"scale={_regex(marker, 'member')}",
            "--processes",
            str(count),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = child.communicate(timeout=180)
        return json.loads(out.strip().splitlines()[-1]) if child.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    finally:
        children.end(child)


def _measure(children: Children, observer: Observer, marker: str, settings: Settings) -> Scale:
    ready = observer.wait_ready()
    count = settings.scale_processes
    _wait(lambda: observer.health()["processes"] >= count, 60, f"{count} processes attached")
    all_attached = time.monotonic() - observer.launched
    time.sleep(MEMBER_PERIOD)  # every member has made threads and calls: the maps are full
    cpu = observer.cpu_seconds()
    time.sleep(IDLE_SECONDS)
    idle_cpu = (observer.cpu_seconds() - cpu) / IDLE_SECONDS
    scrapes, scrape_cpu = _scrapes(observer, settings.scrapes)
    metrics = observer.scrape()
    if metrics.value("thread_observer_processes", target="scale") != count:
        raise RuntimeError("the observer lost some of the scale processes")
    return Scale(
        count,
        ready,
        all_attached,
        idle_cpu,
        scrapes,
        max(scrape_cpu - idle_cpu * sum(scrapes), 0) / len(scrapes),
        metrics.value("thread_observer_scrape_duration_seconds"),
        observer.memory_mib(),
        bpftool.maps_of(observer.pid, MAP_PREFIXES),
        [_attach_one(children, observer, marker, k) for k in range(settings.attach_samples)],
    )


def _scrapes(observer: Observer, count: int) -> tuple[list[float], float]:
    """Sequential scrapes, like Prometheus: each one's duration, and the CPU they used."""
    durations = []
    cpu = observer.cpu_seconds()
    for _ in range(count):
        started = time.perf_counter()
        observer.get("/metrics")
        durations.append(time.perf_counter() - started)
    return durations, observer.cpu_seconds() - cpu


def _section(scale: Scale, settings: Settings) -> Section:
    section = Section(f"4. Scale: {scale.processes} target processes")
    section.text(
        f"{scale.processes} Python processes matched by one `--target` regex, each starting "
        f"2 threads that call `getaddrinfo('localhost', 80)` every {MEMBER_PERIOD:g} s; "
        f"{settings.attach_samples} more started one at a time while they run, each matched by "
        "a `--target` of its own. *attached* is from the new process's exec to the observer "
        "counting it (its /healthz `processes`, the same list the `processes` gauge counts); "
        "*first thread counted* is until a /metrics scrape shows that process's first thread. "
        "The kernel's report of the exec wakes the observer when the new program may be a "
        "target's; forks and exits are read every `--interval` (0.25 s by default)."
    )
    p50, p99 = percentile(scale.scrapes, 0.50), percentile(scale.scrapes, 0.99)
    attached = [a.to_attached for a in scale.attaches]
    counted = [a.to_counted for a in scale.attaches]
    section.table(
        ["measure", "value"],
        [
            ["observer launch to /healthz", seconds(scale.ready)],
            [f"observer launch to all {scale.processes} attached", seconds(scale.all_attached)],
            [
                "new process: exec to attached (median / max)",
                f"{seconds(median(attached))} / **{seconds(max(attached))}**",
            ],
            [
                "new process: exec to first thread counted (median / max)",
                f"{seconds(median(counted))} / **{seconds(max(counted))}**",
            ],
            [
                "new process: first thread created to counted (median)",
                seconds(median([a.thread_to_counted for a in scale.attaches])),
            ],
            [
                f"/metrics scrape, {len(scale.scrapes)} sequential (p50 / p99 / max)",
                f"{seconds(p50)} / **{seconds(p99)}** / {seconds(max(scale.scrapes))}",
            ],
            [
                "observer's own `scrape_duration_seconds` (last scrape)",
                seconds(scale.self_reported),
            ],
            ["observer CPU per scrape (beyond idle)", seconds(scale.scrape_cpu)],
            ["observer CPU when idle (no scrapes)", f"{100 * scale.idle_cpu:.1f} % of one CPU"],
            [
                "observer RSS now / peak",
                f"{scale.memory.get('rss', 0):.0f} / {scale.memory.get('peak', 0):.0f} MiB",
            ],
        ],
    )
    _anatomy_table(section, scale)
    section.text(
        "Kernel maps of the observer (`bpftool map dump`; the kernel keeps 15 "
        "characters of a name, so both `getaddrinfo_duration_*` maps show as "
        "`getaddrinfo_dur`):"
    )
    section.table(
        ["map", "type", "key bytes", "entries", "max entries"],
        [
            [f"`{m.name}`", m.kind, str(m.key_bytes), f"{m.entries:,}", f"{m.max_entries:,}"]
            for m in scale.maps
        ],
    )
    section.goals += [
        _goal("scale: /metrics scrape p99", SCRAPE_GOAL, p99, _scrape_why(scale)),
        _goal("scale: exec to attached (max)", ATTACH_GOAL, max(attached)),
        _goal("scale: exec to first thread counted (max)", ATTACH_GOAL, max(counted)),
    ]
    return section


def _goal(what: str, limit: float, value: float, why: str = "") -> Goal:
    return Goal(
        what,
        f"< {seconds(limit)}",
        seconds(value),
        value < limit,
        "" if value < limit else why or "see the scale section.",
    )


ANATOMY_ROWS = (
    ("scrape", "whole scrape (collect + exposition, as /metrics writes it), no HTTP"),
    ("snapshot", "of which the observer's snapshot"),
    ("series_text", "of which its series and their text, from a snapshot taken once"),
    ("scrape_client_python", "the same scrape through client_python's `generate_latest`"),
    ("counter_maps_items", "reading the counter maps with bcc `items()` (two bpf() calls a key)"),
    (
        "counter_maps_batch",
        "the same maps as the observer reads them (batch lookups into buffers kept between reads)",
    ),
    ("map_entries", "`map_entries()`: every map read (batch lookups) for the entry-count metric"),
    (
        "threads_status",
        "live threads of each process, as the observer reads them (a stat() of /proc/PID/task)",
    ),
    ("threads_stat", "the same from `/proc/PID/stat` (field 20)"),
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _anatomy_table(section: Section, scale: Scale) -> None:
    if scale.anatomy is None:
        section.text("(The scrape anatomy could not be measured with this observer.)")
        return
    section.text(
        f"Where a scrape's time goes, at {scale.processes} processes: a second observer built "
        "as the CLI builds it, in one process (`benchmarks.scrape_anatomy`), each piece timed "
        "over 20 calls, next to a cheaper way to read the same data:"
    )
    section.table(
        ["piece", "per scrape"],
        [[label, _ms(scale.anatomy.get(key))] for key, label in ANATOMY_ROWS],
    )


def _scrape_why(scale: Scale) -> str:
    why = (
        f"each scrape costs the observer {seconds(scale.scrape_cpu)} of CPU at "
        f"{scale.processes} processes, and on 2 shared cores the slowest scrapes also wait "
        "for a CPU."
    )
    part = scale.anatomy or {}
    if part.get("counter_maps_items") is not None and part.get("scrape") is not None:
        why += (
            f" Of an in-process scrape of {_ms(part['scrape'])}, reading the counter maps key "
            f"by key takes {_ms(part['counter_maps_items'])} "
            f"({_ms(part.get('counter_maps_batch'))} with batch lookups), reading every map "
            f"for `map_entries` {_ms(part.get('map_entries'))}, and reading each "
            f"process's live threads {_ms(part.get('threads_status'))} "
            f"({_ms(part.get('threads_stat'))} from /proc/PID/stat)."
        )
    return why

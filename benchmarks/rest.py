"""10. The observer at rest next to idle targets, and its scrapes, at 100, 1,000 and 5,000
targets.

Idle Python processes (``time.sleep``) matched by one ``--target`` regex; once all are
attached, the observer's CPU over a quiet window (no scrapes, no events), then sequential
scrapes: CPU per scrape beyond the quiet rate, and the scrapes' p50 and p99. Then, next to the
100 targets, new matching processes started one at a time: from exec to the observer counting
it among its processes.
"""

from __future__ import annotations

import sys
import time
import uuid

from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings

QUIET_SECONDS = 10.0
SCRAPES = 50
COUNTS = (100, 1000, 5000)
REST_GOAL = 0.5  # % of one CPU at 100 targets
SCRAPE_CPU_GOAL = 5.0  # ms
SCRAPE_P99_GOAL = 20.0  # ms
ATTACH_SAMPLES = 20  # new processes started one at a time, at 100 targets
ATTACH_GOAL = 50.0  # ms, exec to attached, p99
RSS_GOAL = 64.0  # MiB, steady, next to 100 targets (a sidecar's or a small node's)


def _idle(children: Children, tag: str):
    return children.spawn(
        [sys.executable, "-S", "-c", "import time; time.sleep(3600)", f"rest{tag}"]
    )


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.002)


def attach_times(children: Children, observer: Observer, tag: str, count: int) -> list[float]:
    """Exec to attached (the observer's /healthz counting it), in ms, of new processes started
    one at a time next to ``count`` attached ones (Popen returns once the exec is done)."""
    times = []
    for _ in range(ATTACH_SAMPLES):
        started = time.monotonic()
        newcomer = _idle(children, tag)
        try:
            _until(lambda: observer.health()["processes"] > count, 10, "a newcomer's attach")
            times.append(1000 * (time.monotonic() - started))
        finally:
            children.end(newcomer, grace=1.0)
        _until(lambda: observer.health()["processes"] == count, 10, "a newcomer's detach")
    return sorted(times)


def at_rest(children: Children, count: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    targets = [_idle(children, tag) for _ in range(count)]
    try:
        observer = Observer(children, ["--target", f"rest=python.*rest{tag}"])
        with observer:
            observer.wait_ready(300)
            deadline = time.monotonic() + 300
            while observer.health()["processes"] < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"only {observer.health()['processes']} of {count} targets attached"
                    )
                time.sleep(0.5)
            time.sleep(3)  # the sites' first reads are done
            cpu, started = observer.cpu_seconds(), time.monotonic()
            time.sleep(QUIET_SECONDS)
            quiet = (observer.cpu_seconds() - cpu) / (time.monotonic() - started)
            cpu, started, durations = observer.cpu_seconds(), time.monotonic(), []
            for _ in range(SCRAPES):
                begun = time.monotonic()
                observer.scrape()
                durations.append(time.monotonic() - begun)
            spent = observer.cpu_seconds() - cpu - quiet * (time.monotonic() - started)
            durations.sort()
            figures = {
                "quiet": 100 * quiet,
                "scrape_cpu": 1000 * spent / SCRAPES,
                "p50": 1000 * durations[SCRAPES // 2],
                "p99": 1000 * durations[int(SCRAPES * 0.99) - 1],
                "rss": observer.memory_mib().get("rss", 0.0),
            }
            if count == min(COUNTS):
                attaches = attach_times(children, observer, tag, count)
                figures["attach_p50"] = attaches[len(attaches) // 2]
                figures["attach_p99"] = attaches[-1]  # of 20: the slowest
            return figures
    finally:
        for target in targets:
            children.end(target, grace=1.0)


def measure(children: Children, settings: Settings) -> Section:
    figures = {count: at_rest(children, count) for count in COUNTS}
    section = Section("10. At rest next to idle targets, and scrapes")
    section.text(
        f"Idle Python processes matched by one `--target`; the observer's CPU over "
        f"{QUIET_SECONDS:.0f} s without scrapes, then {SCRAPES} sequential scrapes."
    )
    section.table(
        [
            "targets",
            "CPU at rest (% of one CPU)",
            "CPU per scrape",
            "scrape p50",
            "scrape p99",
            "RSS",
        ],
        [
            [
                f"{count:,}",
                f"{f['quiet']:.2f}",
                f"{f['scrape_cpu']:.1f} ms",
                f"{f['p50']:.1f} ms",
                f"{f['p99']:.1f} ms",
                f"{f['rss']:.0f} MiB",
            ]
            for count, f in figures.items()
        ],
    )
    hundred = figures[100]
    section.text(
        f"Next to the 100 targets, {ATTACH_SAMPLES} new matching processes started one at a "
        f"time, from exec to the observer counting it (its /healthz): p50 "
        f"{hundred['attach_p50']:.1f} ms, p99 (the slowest) {hundred['attach_p99']:.1f} ms."
    )
    section.goals += [
        Goal(
            "at rest next to 100 idle targets",
            f"<= {REST_GOAL} % of one CPU",
            f"{hundred['quiet']:.2f} %",
            hundred["quiet"] <= REST_GOAL,
            "every --interval (0.25 s) the poll reads the watched set; once a second every map "
            "is read (batch syscalls) to sweep counters and count entries; other programs' "
            "execs on the machine are classified at each poll",
        ),
        Goal(
            "CPU per scrape at 100 targets",
            f"<= {SCRAPE_CPU_GOAL:.0f} ms",
            f"{hundred['scrape_cpu']:.1f} ms",
            hundred["scrape_cpu"] <= SCRAPE_CPU_GOAL,
            "each scrape reads every counter map and each process's live threads from /proc "
            "(a stat() of /proc/PID/task)",
        ),
        Goal(
            "exec to attached p99 at 100 targets",
            f"<= {ATTACH_GOAL:.0f} ms",
            f"{hundred['attach_p99']:.1f} ms",
            hundred["attach_p99"] <= ATTACH_GOAL,
            "the exec reports' ring buffer wakes the poll; /proc is read to attach",
        ),
        Goal(
            "scrape p99 at 100 targets",
            f"<= {SCRAPE_P99_GOAL:.0f} ms",
            f"{hundred['p99']:.1f} ms",
            hundred["p99"] <= SCRAPE_P99_GOAL,
            "the p99 follows the machine's other load (2 shared cores)",
        ),
        *_thousand_goals(figures[1000]),
        Goal(
            "steady RSS next to 100 idle targets",
            f"<= {RSS_GOAL:.0f} MiB",
            f"{hundred['rss']:.0f} MiB",
            hundred["rss"] <= RSS_GOAL,
            "Python, aiohttp, prometheus_client, pyelftools and each process's state",
        ),
        Goal.reported(
            "5,000 idle targets: CPU per scrape, scrape p99, RSS",
            f"{figures[5000]['scrape_cpu']:.1f} ms, {figures[5000]['p99']:.1f} ms, "
            f"{figures[5000]['rss']:.0f} MiB",
        ),
    ]
    return section


def _thousand_goals(thousand: dict) -> list[Goal]:
    return [
        Goal(
            "CPU per scrape at 1,000 targets",
            f"<= {SCRAPE_CPU_GOAL:.0f} ms",
            f"{thousand['scrape_cpu']:.1f} ms",
            thousand["scrape_cpu"] <= SCRAPE_CPU_GOAL,
            "each scrape reads every counter map in batches and, for each process whose "
            "threads changed, its live threads from /proc (a stat() of /proc/PID/task)",
        ),
        Goal(
            "scrape p99 at 1,000 targets",
            f"<= {SCRAPE_P99_GOAL:.0f} ms",
            f"{thousand['p99']:.1f} ms",
            thousand["p99"] <= SCRAPE_P99_GOAL,
            "the p99 follows the machine's other load (2 shared cores)",
        ),
    ]

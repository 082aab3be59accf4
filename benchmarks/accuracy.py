"""3. Can the numbers be trusted: threads created according to the observer, to the process's
own count, and to a /proc poller at 1 s (what process-exporter and other pollers can see).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.target_process import TargetProcess

POLL_INTERVAL = 1.0
LONG_SPACING = 0.25
SHORT_SPACING = 0.002
TARGET = "accuracy"


class TaskPoller(threading.Thread):
    """Thread ids seen in /proc/PID/task, polled every second, as a /proc exporter would."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.seen: set[int] = set()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.seen.update(int(tid) for tid in os.listdir(f"/proc/{self.pid}/task"))
            except OSError:
                return
            self._stopped.wait(POLL_INTERVAL)

    def new_threads(self) -> int:
        """Distinct threads seen besides the main thread."""
        self._stopped.set()
        self.join()
        return len(self.seen - {self.pid})


@dataclass
class Phase:
    kind: str
    truth: int
    observed_created: int
    observed_exited: int
    polled: int
    detail: str


def _observed(observer: Observer) -> tuple[int, int]:
    metrics = observer.scrape()
    return (
        int(metrics.value("thread_observer_threads_created_total", target=TARGET)),
        int(metrics.value("thread_observer_threads_exited_total", target=TARGET)),
    )


def _phase(observer: Observer, target: TargetProcess, kind: str, op: str, **params) -> Phase:
    created, exited = _observed(observer)
    poller = TaskPoller(target.pid)
    poller.start()
    reply = target.call(op, **params)
    polled = poller.new_threads()
    created_after, exited_after = _observed(observer)
    detail = (
        f"start to join: median {reply['median'] * 1000:.2f} ms, longest "
        f"{reply['longest'] * 1000:.2f} ms"
        if "longest" in reply
        else f"each lived {params['lifetime']:g} s"
    )
    return Phase(
        kind, reply["started"], created_after - created, exited_after - exited, polled, detail
    )


def measure(children: Children, settings: Settings) -> Section:
    target = TargetProcess(children)
    with Observer(children, ["--pid", f"{TARGET}={target.pid}"]) as observer:
        observer.wait_ready()
        phases = [
            _phase(
                observer,
                target,
                "long-lived (seconds)",
                "long_threads",
                count=settings.long_threads,
                lifetime=settings.long_lifetime,
                spacing=LONG_SPACING,
            ),
            _phase(
                observer,
                target,
                "short-lived (< 1 ms)",
                "short_threads",
                count=settings.short_threads,
                spacing=SHORT_SPACING,
            ),
        ]
    return _section(phases)


def _section(phases: list[Phase]) -> Section:
    section = Section("3. Accuracy: threads created")
    section.text(
        "One Python process creates threads (`threading.Thread`), counting them itself; the "
        "observer watches it (`--pid`), and a poller lists `/proc/PID/task` every second and "
        "counts the distinct thread ids it has seen, which is all a /proc-based exporter "
        "(process-exporter, for one) can know."
    )
    rows = [
        [
            p.kind,
            f"{p.truth:,}",
            f"**{p.observed_created:,}** (exited {p.observed_exited:,})",
            f"{p.polled:,} ({100 * p.polled / p.truth:.0f} %)",
            p.detail,
        ]
        for p in phases
    ]
    section.table(
        ["threads", "created (ground truth)", "observer", "/proc poller at 1 s", "lifetime"], rows
    )
    exact = all(p.observed_created == p.truth == p.observed_exited for p in phases)
    measured = (
        "exact" if exact else "; ".join(f"{p.kind}: {p.observed_created}/{p.truth}" for p in phases)
    )
    section.goals.append(
        Goal(
            "accuracy: threads created and exited",
            "= ground truth",
            measured,
            exact,
            "" if exact else "see the accuracy section's table.",
        )
    )
    return section

"""Whether the observer works: the poll loop's record, and what /healthz (alive) and /readyz
(ready) answer from it. Plain values and functions, so the answers are testable without a
server, root, or waiting: the clocks are injected."""

from __future__ import annotations

import time
from collections.abc import Callable

# The poll loop counts as stuck after this many intervals without a completed poll, and never
# sooner than STUCK_MIN_SECONDS: a poll that attaches a fork storm's children, or waits for a
# long scrape to release the lock, may take several intervals, and a liveness probe that
# fails on that would restart a working observer.
STUCK_INTERVALS = 20
STUCK_MIN_SECONDS = 30.0


def stuck_after(interval: float) -> float:
    """Seconds without a completed poll after which the poll loop is stuck."""
    return max(STUCK_MIN_SECONDS, STUCK_INTERVALS * interval)


class PollRecord:
    """What the poll loop has done: written by its thread, read by the HTTP handlers and the
    scrape. ``monotonic`` measures ages, ``wall`` stamps the completed polls for Prometheus."""

    def __init__(
        self,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self._monotonic = monotonic
        self._wall = wall
        self._since = monotonic()  # the last completed poll, or when the record began
        self.completed = 0
        self.errors = 0
        self.last_completed_at: float | None = None  # unix time

    def poll_completed(self) -> None:
        self._since = self._monotonic()
        self.last_completed_at = self._wall()
        self.completed += 1

    def poll_failed(self) -> None:
        self.errors += 1

    def age(self) -> float:
        """Seconds since the last completed poll, or since polling began if none has."""
        return self._monotonic() - self._since


def liveness_problem(record: PollRecord) -> str | None:
    """Why the observer is not alive (its poll loop is stuck), or None."""
    age, limit = record.age(), stuck_after(record.interval)
    if age <= limit:
        return None
    return (
        f"no poll completed for {age:.0f} s (the limit is {limit:.0f} s): the poll loop is "
        f"stuck, or every poll fails ({record.errors} failed since start; see the log)"
    )


def readiness_problem(record: PollRecord, fallback_reason: str | None) -> str | None:
    """Why the observer is not ready, or None. ``fallback_reason``: why ``--backend auto``
    runs on /proc, None where the backend is the one asked for."""
    if fallback_reason is not None:
        return f"the bpf backend cannot work here, running on /proc: {fallback_reason}"
    problem = liveness_problem(record)
    if problem is not None:
        return problem
    if record.completed == 0:
        return "starting: the first poll has not completed (targets not attached yet)"
    return None


def health_report(
    problem: str | None, backend: str, processes: int, record: PollRecord
) -> dict[str, object]:
    """The JSON body of /healthz and /readyz: ``status`` first, as it always was."""
    return {
        "status": "ok" if problem is None else "failing",
        "backend": backend,
        "processes": processes,
        "last_poll_age_seconds": round(record.age(), 3),
        "poll_errors": record.errors,
        "reason": problem,
    }

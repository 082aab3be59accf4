"""How long the counts of processes that ended are kept: the life of a series.

Prometheus takes a counter that goes down for a restart of its exporter. So a series never
loses the counts of its processes that ended while it is exported: a named target's series
(``--target NAME=...``, ``--pid NAME=...``) for the observer's life, however short-lived its
processes; a series that comes and goes with processes (a name template's value, a pod's
container in node mode, a pid with ``--label-pid``) for a grace period after its last process
ended, so that scrapes see its last counts, and then not at all, so that the number of series
stays bounded on a node where pods come and go.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from thread_observer.model import Counts, SeriesKey

# Seconds a series that comes and goes with processes stays after its last one ended: several
# scrapes at the usual intervals (15 s to 1 min).
DEFAULT_GRACE_SECONDS = 300.0


class RetiredCounts:
    """Final counts of exited processes by series, and when each idle series goes."""

    def __init__(
        self,
        grace: float,
        permanent: Callable[[SeriesKey], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self._permanent = permanent
        self._clock = clock
        self.counts: dict[SeriesKey, Counts] = {}
        self._idle_since: dict[SeriesKey, float] = {}  # series with no live process

    def add(self, key: SeriesKey, counts: Counts) -> None:
        self.counts.setdefault(key, Counts()).add(counts)

    def live(self, key: SeriesKey) -> None:
        """A process of the series is attached: it stays while that process lives."""
        self._idle_since.pop(key, None)

    def idle(self, key: SeriesKey) -> None:
        """The series has no live process any more (its last one ended just now, or one that
        ended unseen was folded in): its grace period starts again."""
        if not self._permanent(key):
            self._idle_since[key] = self._clock()

    def expire(self) -> list[SeriesKey]:
        """Drops the series whose grace period has passed; returns them."""
        now = self._clock()
        gone = [key for key, since in self._idle_since.items() if now - since >= self.grace]
        for key in gone:
            del self._idle_since[key]
            self.counts.pop(key, None)
        return gone

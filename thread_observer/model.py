"""What a backend reports at a scrape: plain data, so the collector is testable without root."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple


@dataclass
class Counts:
    """Counters of one process (or the folded counters of exited ones)."""

    threads_created: Counter[str] = field(default_factory=Counter)  # by creator
    threads_exited: int = 0
    getaddrinfo_calls: Counter[str] = field(default_factory=Counter)  # by caller
    getaddrinfo_failures: Counter[str] = field(default_factory=Counter)  # by EAI_* name
    duration_slots: Counter[int] = field(default_factory=Counter)  # log2 ns slot -> calls
    duration_sum_ns: int = 0
    hosts: Counter[str] = field(default_factory=Counter)  # getaddrinfo calls by host label
    dns_queries: Counter[str] = field(default_factory=Counter)  # by transport
    # libc resolver calls other than getaddrinfo, by (function, caller)
    resolver_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    # By Python call site; None where the process's frames cannot be read (sites unavailable)
    threads_by_site: Counter[str] | None = None
    calls_by_site: Counter[tuple[str, str]] | None = None  # (site, caller) -> calls
    site_stacks_dropped: int = 0  # events counted as <other> because a stack map was full

    def add(self, other: Counts) -> None:
        # Empty counters are skipped: most processes count nothing between two scrapes (and a
        # scrape adds up every process of a target, thousands of them).
        counters = counter_fields(other)
        if any(counters):
            for name, counter in zip(COUNTERS, counters, strict=True):
                if counter:
                    getattr(self, name).update(counter)
        self.threads_exited += other.threads_exited
        self.duration_sum_ns += other.duration_sum_ns
        if other.threads_by_site:
            self.threads_by_site = (self.threads_by_site or Counter()) + other.threads_by_site
        elif other.threads_by_site is not None and self.threads_by_site is None:
            self.threads_by_site = Counter()
        if other.calls_by_site:
            self.calls_by_site = (self.calls_by_site or Counter()) + other.calls_by_site
        elif other.calls_by_site is not None and self.calls_by_site is None:
            self.calls_by_site = Counter()
        self.site_stacks_dropped += other.site_stacks_dropped


# The Counter fields of Counts that add up key by key
COUNTERS = (
    "threads_created",
    "getaddrinfo_calls",
    "getaddrinfo_failures",
    "duration_slots",
    "hosts",
    "dns_queries",
    "resolver_calls",
)
counter_fields = attrgetter(*COUNTERS)  # a Counts' COUNTERS, in one call


# default: a loop's default executor; thread_pool: any other ThreadPoolExecutor; anyio:
# AnyIO's worker threads.
POOLS = ("default", "thread_pool", "anyio")


@dataclass(frozen=True)
class Executor:
    """One pool of one process, as read now."""

    pool: str  # default, thread_pool or anyio
    name: str  # its thread-name prefix ("asyncio" for asyncio's default executors)
    threads: int
    busy: int
    max_workers: int | None  # None: not read (AnyIO's workers have none)
    queued: int | None

    @property
    def saturation(self) -> float | None:
        """Busy threads over the cap, never above 1 (a thread between two items still counts)."""
        if not self.max_workers:
            return None
        return min(1.0, self.busy / self.max_workers)


@dataclass
class ProcessRow:
    target: str
    pid: int
    threads: int  # live now
    counts: Counts | None  # None: the backend cannot count (proc)
    executor_max_workers: int | None = None
    container_id: str = ""
    pod_uid: str = ""
    executors: list[Executor] | None = None  # read from the process now; None: unknown
    sites_unavailable: str | None = None  # why Python frames cannot be read, when they cannot


class SeriesKey(NamedTuple):
    """What tells one series of exited processes' counts from another: the target, and the
    container, pod and pid where the observer keeps them apart (else empty, and 0)."""

    target: str
    container_id: str = ""
    pod_uid: str = ""
    pid: int = 0


@dataclass
class Snapshot:
    backend: str
    rows: list[ProcessRow] = field(default_factory=list)
    # Final counts of exited processes, by series, kept while their series lives (see
    # observer.retired) so that its counters never go down.
    retired: dict[SeriesKey, Counts] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # configured target names
    probes_attached: dict[str, int] = field(default_factory=dict)
    attach_errors: dict[str, int] = field(default_factory=dict)
    bpf_available: bool = False
    map_entries: dict[str, int] = field(default_factory=dict)
    # What could not be watched or named as asked, by self metric (see collector.LOSSES).
    losses: dict[str, int] = field(default_factory=dict)
    # Whether DNS messages on the wire are followed (not with --no-dns-queries): without,
    # dns_queries_total has no series rather than zeros.
    dns_queries: bool = True

"""The Prometheus collector: fresh metric families from a backend snapshot on every scrape."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from thread_observer import __version__, kubernetes
from thread_observer.constants import EAI_NAMES, Transport
from thread_observer.constants import metric_name as _name
from thread_observer.histogram import cumulative_counts, log2_to_buckets
from thread_observer.kubernetes import PodNames
from thread_observer.model import POOLS, Counts, Executor, ProcessRow, SeriesKey, Snapshot
from thread_observer.text_format import LineCache, TextFamilies

# Self counters of what the observer could not see or name as asked (never a silent zero).
LOSSES = {
    "children_not_watched_total": "Children of watched processes the kernel could not watch "
    "(its watched set was full): their threads and calls are not counted",
    "exec_reports_lost_total": "Command lines of new programs lost (the ring buffer was "
    "full): those processes were matched on /proc's command line only",
    "target_names_overflowed_total": "Processes put under the target <other> because their "
    "name template had reached its cap of distinct names",
    "dns_unknown_socket_sends_total": "Writes to TCP streams to port 53 opened and written "
    "before their process was watched (no known message boundary): not counted in "
    "dns_queries_total",
}

# POSIX's getaddrinfo errors (codes -1 to -12).
COMMON_EAI_ERRORS = tuple(name for code, name in EAI_NAMES.items() if code >= -12)
# The histogram's bucket bounds as label values: the same every scrape.
BUCKET_BOUNDS = tuple(floatToGoString(bound) for bound, _ in log2_to_buckets({}))


class Families(Protocol):
    """Makes the families a scrape fills: client_python objects (MetricFamilies) for a
    registry, or text written as samples come (text_format.TextFamilies) for /metrics."""

    def gauge(
        self, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
    ): ...

    def counter(
        self, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
    ): ...

    def histogram(self, name: str, documentation: str, labels: Sequence[str]): ...


class MetricFamilies:
    """The families as client_python's *MetricFamily objects."""

    def gauge(
        self, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
    ) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, value=value, labels=_names(labels))

    def counter(
        self, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
    ) -> CounterMetricFamily:
        return CounterMetricFamily(name, documentation, value=value, labels=_names(labels))

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str]
    ) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, documentation, labels=list(labels))


def _names(labels: Sequence[str]) -> list[str] | None:
    return list(labels) if labels else None


class Series:
    """The values of one label set (a target, or a target and a pid)."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.processes = 0
        self.threads = 0
        self.counts: Counts | None = None
        self.executor_max_workers: int | None = None
        self.executors: list[Executor] | None = None  # of every process whose frames are read
        self.unnamed = 0  # node mode: its processes in a pod whose names were not found

    def add_row(self, row: ProcessRow) -> None:
        self.processes += 1
        self.threads += row.threads
        if row.executors is not None:
            # Extended in place: a target's processes are many, and a copy each is quadratic.
            if self.executors is None:
                self.executors = []
            self.executors.extend(row.executors)
        if row.executor_max_workers is not None:
            self.executor_max_workers = max(
                self.executor_max_workers or 0, row.executor_max_workers
            )
        if row.counts is not None:
            self.add_counts(row.counts)

    def add_counts(self, counts: Counts) -> None:
        if self.counts is None:
            self.counts = Counts()
        self.counts.add(counts)


def _series(series: dict[tuple[str, ...], Series], key: tuple[str, ...]) -> Series:
    """The series of that key, made when first seen (not one per row: a target may have
    thousands of processes)."""
    group = series.get(key)
    if group is None:
        group = series[key] = Series(list(key))
    return group


class ObserverCollector(Collector):
    """Per-target series, by pid with ``label_pid``, and by pod with ``pod_names`` (node mode)."""

    def __init__(
        self,
        read_snapshot: Callable[[], Snapshot],
        label_pid: bool = False,
        pod_names: PodNames | None = None,
    ) -> None:
        self._read_snapshot = read_snapshot
        self._label_pid = label_pid
        self._pod_names = pod_names
        self._lines = LineCache()

    def collect(self) -> Iterator[Metric]:
        yield from self._build(MetricFamilies())

    def text(self, openmetrics: bool = False) -> str:
        """The families of ``collect()`` in the Prometheus text format (or OpenMetrics'),
        byte for byte as client_python writes them, at a fraction of the cost (see
        text_format)."""
        built = self._build(TextFamilies(self._lines))
        text = "".join(family.text(openmetrics) for family in built)
        self._lines.rotate()
        return text

    def _build(self, families: Families) -> list:
        # Every family is built before the duration is taken, so that it is this scrape's.
        started = time.perf_counter()
        snapshot = self._read_snapshot()
        groups = self._group(snapshot)
        built = [
            *self._target_metrics(snapshot, groups, families),
            *self._self_metrics(snapshot, groups, families),
        ]
        built.append(
            families.gauge(
                _name("scrape_duration_seconds"),
                "Time this scrape took to read the probes and /proc and build its series",
                value=time.perf_counter() - started,
            )
        )
        return built

    def describe(self) -> list[Metric]:
        return []  # dynamic families: do not collect at registration

    # Per target
    def _labels(self) -> list[str]:
        labels = ["target"]
        if self._pod_names is not None:
            labels += kubernetes.LABELS
        return [*labels, "pid"] if self._label_pid else labels

    def _key(self, target: str, container_id: str, pod_uid: str, pid: int) -> tuple[str, ...]:
        if self._pod_names is not None:
            key = (target, *self._pod_names.name(container_id, pod_uid).labels())
        else:
            key = (target,)
        return (*key, str(pid)) if self._label_pid else key

    def _group(self, snapshot: Snapshot) -> list[Series]:
        series: dict[tuple[str, ...], Series] = {}
        for row in snapshot.rows:
            key = self._key(row.target, row.container_id, row.pod_uid, row.pid)
            group = _series(series, key)
            group.add_row(row)
            # In a pod (its cgroup says so) that the kubelet's directories do not name.
            if self._pod_names is not None and row.pod_uid and not key[3]:
                group.unnamed += 1
        # Exited processes' counts, kept by the observer while their series lives: they join
        # their live processes' series, or make one of their own (no process left: 0).
        for retired, counts in snapshot.retired.items():
            _series(series, self._key(*retired)).add_counts(counts)
        if not self._label_pid:
            self._add_named_targets(snapshot, series)
        if self._pod_names is not None:
            live = {(row.container_id, row.pod_uid) for row in snapshot.rows}
            live |= {(key.container_id, key.pod_uid) for key in snapshot.retired}
            self._pod_names.forget(live)
        return list(series.values())

    def _add_named_targets(self, snapshot: Snapshot, series: dict[tuple[str, ...], Series]):
        """A named target is exported from the start, with no process yet: 0 processes, and
        counters at 0 where the backend counts, so that rate() sees their first rise."""
        present = {key[0] for key in series}
        for target in snapshot.targets:
            if target not in present:
                group = _series(series, self._key(*SeriesKey(target)))
                if snapshot.bpf_available:
                    group.add_counts(Counts())

    def _target_metrics(
        self, snapshot: Snapshot, groups: list[Series], families: Families
    ) -> Iterator:
        labels = self._labels()
        yield from _gauges(groups, labels, families)
        yield _target_info(snapshot, self._pod_names, self._label_pid, families)
        # The proc backend cannot count: its series are absent, never zeros passed off as
        # measurements.
        counted = [g for g in groups if g.counts is not None]
        if counted:
            yield from _thread_counters(counted, labels, families)
            yield from _getaddrinfo_metrics(counted, labels, families)
            yield from _resolution_metrics(counted, labels, families, snapshot.dns_queries)
            yield from _site_metrics(counted, labels, families)

    def _self_metrics(
        self, snapshot: Snapshot, groups: list[Series], families: Families
    ) -> Iterator:
        info = families.gauge(
            _name("build_info"),
            "thread-observer version and the backend in use",
            labels=["version", "backend"],
        )
        info.add_metric([__version__, snapshot.backend], 1)
        yield info
        yield families.gauge(
            _name("bpf_available"),
            "1 when the eBPF backend is working",
            value=int(snapshot.bpf_available),
        )
        attached = families.gauge(
            _name("probes_attached"), "Attach points of each probe attached now", labels=["probe"]
        )
        for probe, count in sorted(snapshot.probes_attached.items()):
            attached.add_metric([probe], count)
        yield attached
        errors = families.counter(_name("attach_errors"), "Probe attach failures", labels=["probe"])
        for probe, count in sorted(snapshot.attach_errors.items()):
            errors.add_metric([probe], count)
        yield errors
        entries = families.gauge(
            _name("bpf_map_entries"),
            "Entries in each BPF map: they must stay bounded",
            labels=["map"],
        )
        for name, count in sorted(snapshot.map_entries.items()):
            entries.add_metric([name], count)
        yield entries
        for name, count in sorted(snapshot.losses.items()):
            yield families.counter(_name(name.removesuffix("_total")), LOSSES[name], value=count)
        yield from _site_self_metrics(snapshot, families)
        if self._pod_names is not None:
            yield families.gauge(
                _name("unnamed_pod_processes"),
                "Attached processes in a pod whose pod or container name the kubelet's log "
                "directories do not give (their namespace, pod or container label is empty)",
                value=sum(g.unnamed for g in groups),
            )


def _gauges(groups: list[Series], labels: list[str], families: Families) -> Iterator:
    processes = families.gauge(
        _name("processes"), "Processes of the target attached now", labels=labels
    )
    threads = families.gauge(
        _name("threads"), "Live threads in the target's processes now", labels=labels
    )
    cap = families.gauge(
        _name("executor_default_max_workers"),
        "Default ThreadPoolExecutor max_workers for the target's interpreter and CPUs",
        labels=labels,
    )
    for group in groups:
        processes.add_metric(group.labels, group.processes)
        threads.add_metric(group.labels, group.threads)
        if group.executor_max_workers is not None:
            cap.add_metric(group.labels, group.executor_max_workers)
    yield from (processes, threads, cap)


def _thread_counters(groups: list[Series], labels: list[str], families: Families) -> Iterator:
    created = families.counter(
        _name("threads_created"),
        "Threads created, by the code that holds the start routine",
        labels=[*labels, "creator"],
    )
    exited = families.counter(_name("threads_exited"), "Threads that ended", labels=labels)
    for group in groups:
        for creator, count in sorted(group.counts.threads_created.items()):
            created.add_metric([*group.labels, creator], count)
        exited.add_metric(group.labels, group.counts.threads_exited)
    yield from (created, exited)


def _getaddrinfo_metrics(groups: list[Series], labels: list[str], families: Families) -> Iterator:
    calls = families.counter(
        _name("getaddrinfo_calls"),
        "getaddrinfo calls; caller=event_loop when made on an event-loop thread",
        labels=[*labels, "caller"],
    )
    failures = families.counter(
        _name("getaddrinfo_failures"),
        "Failed getaddrinfo calls by EAI_* error",
        labels=[*labels, "error"],
    )
    duration = families.histogram(
        _name("getaddrinfo_duration_seconds"), "getaddrinfo call latency", labels=labels
    )
    hosts = families.counter(
        _name("getaddrinfo_host_calls"),
        "getaddrinfo calls by the name asked for (the first names of a target; the rest <other>)",
        labels=[*labels, "host"],
    )
    for group in groups:
        counts = group.counts
        for caller in ("event_loop", "other"):
            calls.add_metric([*group.labels, caller], counts.getaddrinfo_calls.get(caller, 0))
        for error, count in _with_usual_errors(counts.getaddrinfo_failures):
            failures.add_metric([*group.labels, error], count)
        buckets = list(zip(BUCKET_BOUNDS, cumulative_counts(counts.duration_slots), strict=True))
        duration.add_metric(group.labels, buckets, counts.duration_sum_ns / 1e9)
        for host, count in sorted(counts.hosts.items()):
            hosts.add_metric([*group.labels, host], count)
    yield from (calls, failures, duration, hosts)


def _with_usual_errors(failures: Counter[str]) -> list[tuple[str, int]]:
    """Failures by error, sorted: the usual errors exist from the start at 0, so that rate()
    sees their first rise (counts not above 0 read 0, as a Counter sum keeps them)."""
    counted = {error: count for error, count in failures.items() if count > 0}
    return sorted({**dict.fromkeys(COMMON_EAI_ERRORS, 0), **counted}.items())


def _resolution_metrics(
    groups: list[Series], labels: list[str], families: Families, dns_queries: bool = True
) -> Iterator:
    queries = families.counter(
        _name("dns_queries"),
        "DNS queries the target's processes sent to port 53, whoever sent them",
        labels=[*labels, "transport"],
    )
    calls = families.counter(
        _name("resolver_calls"),
        "libc resolver calls by entry point and caller",
        labels=[*labels, "function", "caller"],
    )
    for group in groups:
        counts = group.counts
        for transport in Transport if dns_queries else ():
            queries.add_metric(
                [*group.labels, transport.label], counts.dns_queries.get(transport.label, 0)
            )
        # getaddrinfo has its own probe; the other functions appear once called.
        by_function = Counter(
            {
                ("getaddrinfo", caller): counts.getaddrinfo_calls.get(caller, 0)
                for caller in ("event_loop", "other")
            }
        )
        by_function.update(counts.resolver_calls)
        for (function, caller), count in sorted(by_function.items()):
            calls.add_metric([*group.labels, function, caller], count)
    yield from (queries, calls)


def _site_metrics(groups: list[Series], labels: list[str], families: Families) -> Iterator:
    """By Python call site, and executor threads: only where the frames can be read."""
    threads = families.counter(
        _name("threads_created_by_site"),
        "Threads created, by the Python code that started them (<native>: no Python frame)",
        labels=[*labels, "site"],
    )
    calls = families.counter(
        _name("getaddrinfo_calls_by_site"),
        "getaddrinfo calls, by the Python code that made them and whether a coroutine was "
        "running (caller=event_loop)",
        labels=[*labels, "site", "caller"],
    )
    for group in groups:
        counts = group.counts
        for site, count in sorted((counts.threads_by_site or {}).items()):
            threads.add_metric([*group.labels, site], count)
        for (site, caller), count in sorted((counts.calls_by_site or {}).items()):
            calls.add_metric([*group.labels, site, caller], count)
    yield from (threads, calls)
    yield from _executor_metrics(groups, labels, families)


EXECUTOR_GAUGES = {
    "executor_threads": "Live threads of thread pools: the loop's default executor, other "
    "ThreadPoolExecutors, AnyIO's workers",
    "executor_busy_threads": "Threads of the pools running a work item now",
    "executor_max_workers": "The pools' max_workers, summed (AnyIO's workers have none)",
    "executor_queued_work": "Work items waiting in the pools' queues for a thread",
    "executor_saturation_ratio": "Busy threads over max_workers of the fullest executor of "
    "that name, in the target's fullest process (never above 1)",
}
CAPPED_POOLS = ("default", "thread_pool")  # AnyIO's workers have no max_workers of their own
# The executor label of a pool's zeros while it has no executor: the name its executors get
# when nobody names them (asyncio's default executors, ThreadPoolExecutor's own prefix), so
# that the first executor of the pool usually continues the series.
EMPTY_POOL_NAMES = dict(zip(POOLS, ("asyncio", "ThreadPoolExecutor", "anyio"), strict=True))
# Executor names are the targets' own strings (thread-name prefixes): per target and pool,
# the executors with most threads keep theirs, the rest are summed under OTHER_EXECUTORS.
EXECUTOR_NAMES_PER_POOL = 8
OTHER_EXECUTORS = "<other>"
UNNAMED_EXECUTOR = "<unknown>"  # its thread-name prefix could not be read


def _executor_metrics(groups: list[Series], labels: list[str], families: Families) -> Iterator:
    """The executors read from the processes, by pool and executor name: sums, and the fullest
    one's ratio."""
    gauges = {
        name: families.gauge(_name(name), text, labels=[*labels, "pool", "executor"])
        for name, text in EXECUTOR_GAUGES.items()
    }
    for group in groups:
        if group.executors is None:
            continue
        for (pool, executor), values in sorted(executor_values(group.executors).items()):
            for name, value in values.items():
                gauges[name].add_metric([*group.labels, pool, executor], value)
    yield from gauges.values()


def executor_values(executors: list[Executor]) -> dict[tuple[str, str], dict[str, float]]:
    """By pool and executor name: threads, busy threads, caps and queued items summed over
    the executors whose value was read, and the highest saturation. A pool with no executor
    now reads 0 in each of its gauges."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    for executor, name in bounded_names(executors):
        key = values.setdefault(
            (executor.pool, name), {"executor_threads": 0, "executor_busy_threads": 0}
        )
        key["executor_threads"] += executor.threads
        key["executor_busy_threads"] += executor.busy
        for gauge, value in (
            ("executor_max_workers", executor.max_workers),
            ("executor_queued_work", executor.queued),
        ):
            if value is not None:
                key[gauge] = key.get(gauge, 0) + value
        if executor.saturation is not None:
            key["executor_saturation_ratio"] = max(
                key.get("executor_saturation_ratio", 0.0), executor.saturation
            )
    for pool, name in EMPTY_POOL_NAMES.items():
        if not any(seen == pool for seen, _ in values):
            capped = pool in CAPPED_POOLS
            values[(pool, name)] = {
                **dict.fromkeys(EXECUTOR_GAUGES if capped else ["executor_threads"], 0),
                **({"executor_saturation_ratio": 0.0} if capped else {}),
            }
    return values


def bounded_names(executors: list[Executor]) -> list[tuple[Executor, str]]:
    """Each executor with its label: its name, unless its pool has more names than
    EXECUTOR_NAMES_PER_POOL (the names with fewest threads, then last in order, give way)."""
    named = [(executor, executor.name or UNNAMED_EXECUTOR) for executor in executors]
    threads: dict[tuple[str, str], int] = {}
    for executor, name in named:
        threads[executor.pool, name] = threads.get((executor.pool, name), 0) + executor.threads
    kept: dict[str, list[str]] = {}
    for pool, name in sorted(threads, key=lambda key: (-threads[key], key)):
        kept.setdefault(pool, [])
        if len(kept[pool]) < EXECUTOR_NAMES_PER_POOL:
            kept[pool].append(name)
    return [(e, name if name in kept[e.pool] else OTHER_EXECUTORS) for e, name in named]


def _site_self_metrics(snapshot: Snapshot, families: Families) -> Iterator:
    unavailable = families.gauge(
        _name("sites_unavailable"),
        "Attached processes whose Python frames cannot be read, by reason (their sites and "
        "executor threads are absent; caller falls back to the epoll mark)",
        labels=["reason"],
    )
    reasons = Counter(row.sites_unavailable for row in snapshot.rows if row.sites_unavailable)
    for reason, count in sorted(reasons.items()):
        unavailable.add_metric([reason], count)
    yield unavailable
    counted = [row.counts for row in snapshot.rows if row.counts is not None]
    counted += list(snapshot.retired.values())
    if counted:
        yield families.counter(
            _name("site_stacks_dropped"),
            'Events counted under site="<other>" because a by-site map was full',
            value=sum(counts.site_stacks_dropped for counts in counted),
        )


def _target_info(
    snapshot: Snapshot, pod_names: PodNames | None, label_pid: bool, families: Families
):
    # In node mode it names the pod too: honoured labels must not leave the observer's own.
    # No pid unless asked for: a pid label makes a new series for every process a target
    # starts (recycled workers, cron runs).
    names = list(kubernetes.LABELS) if pod_names is not None else []
    pid = ["pid"] if label_pid else []
    info = families.gauge(
        _name("target_info"),
        "The containers and pods a target's attached processes run in",
        labels=["target", *pid, "container_id", "pod_uid", *names],
    )
    seen = set()
    for row in snapshot.rows:
        labels = [row.target, *([str(row.pid)] if label_pid else []), row.container_id, row.pod_uid]
        if pod_names is not None:
            labels += pod_names.name(row.container_id, row.pod_uid).labels()
        if tuple(labels) not in seen:
            seen.add(tuple(labels))
            info.add_metric(labels, 1)
    return info

"""``thread-observer top``'s samples: the metrics parsed from the exposition text (an
observer's /metrics, or the collector of one started in this process), by target, and the
session that keeps every series' counters (see :mod:`thread_observer.top`)."""

from __future__ import annotations

import copy
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from thread_observer import collector
from thread_observer.constants import METRIC_PREFIX, metric_name
from thread_observer.histogram import quantile as histogram_quantile

NO_VALUE = "—"
# An observer of this process is read this often between frames: a process seen alive once is
# counted whole, up to its exit (its series is read before the observer forgets it).
OWN_OBSERVER_PERIOD = 0.1
# The executor gauges, by pool and executor: shown as they are now (not counters); the ratio
# is not shown (busy / max is).
EXECUTOR_GAUGES = tuple(name for name in collector.EXECUTOR_GAUGES if "ratio" not in name)


@dataclass
class TargetSample:
    """One target's series at one instant (summed over its processes)."""

    processes: float = 0
    threads: float = 0
    created: dict[str, float] = field(default_factory=dict)  # by creator
    exited: float = 0
    calls: dict[str, float] = field(default_factory=dict)  # by caller
    failures: dict[str, float] = field(default_factory=dict)  # by EAI_* name
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative
    thread_sites: dict[str, float] = field(default_factory=dict)  # threads created by site
    call_sites: dict[str, float] = field(default_factory=dict)  # getaddrinfo calls by site
    # pool -> executor gauge (threads, busy_threads, max_workers, queued_work) -> value
    executors: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # by pool
    # and executor name
    counted: bool = False  # the backend counts (bpf): the counters exist


@dataclass
class Sample:
    time: float  # time.monotonic() when taken
    targets: dict[str, TargetSample] = field(default_factory=dict)
    series: dict[tuple[str, str], TargetSample] = field(default_factory=dict)  # (target, pid)
    backend: str = ""
    source: str = ""
    error: str = ""  # why this sample is empty (the observer did not answer)


def _add(values: dict[str, float], key: str, value: float) -> None:
    values[key] = values.get(key, 0.0) + value


def parse_sample(text: str, taken: float, source: str = "") -> Sample:
    """A sample from /metrics text; series with a ``pid`` label are summed by target."""
    sample = Sample(taken, source=source)
    targets: dict[str, TargetSample] = defaultdict(TargetSample)
    series: dict[tuple[str, str], TargetSample] = defaultdict(TargetSample)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric_name("build_info"):
                sample.backend = s.labels.get("backend", "")
            elif "target" in s.labels:
                _add_target_sample(targets[s.labels["target"]], s.name, s.labels, s.value)
                key = (s.labels["target"], s.labels.get("pid", ""))
                _add_target_sample(series[key], s.name, s.labels, s.value)
    sample.targets = dict(sorted(targets.items()))
    sample.series = dict(series)
    return sample


def _add_target_sample(target: TargetSample, name: str, labels: dict, value: float) -> None:
    name = name.removeprefix(METRIC_PREFIX + "_")
    if name == "processes":
        target.processes += value
    elif name == "threads":
        target.threads += value
    elif name == "threads_created_total":
        target.counted = True
        _add(target.created, labels["creator"], value)
    elif name == "threads_exited_total":
        target.exited += value
    elif name == "getaddrinfo_calls_total":
        _add(target.calls, labels["caller"], value)
    elif name == "getaddrinfo_failures_total":
        _add(target.failures, labels["error"], value)
    elif name == "threads_created_by_site_total":
        _add(target.thread_sites, labels["site"], value)
    elif name == "getaddrinfo_calls_by_site_total":
        _add(target.call_sites, labels["site"], value)
    elif name in EXECUTOR_GAUGES:
        key = (labels["pool"], labels.get("executor", ""))
        _add(target.executors.setdefault(key, {}), name, value)
    elif name == "getaddrinfo_duration_seconds_bucket":
        bound = float(labels["le"])
        target.buckets[bound] = target.buckets.get(bound, 0.0) + value


# The session: every series' increases, summed by target
COUNTER_MAPS = ("created", "calls", "failures", "buckets", "thread_sites", "call_sites")


class Session:
    """What the processes seen since top started did, gone ones included, by target.

    Each series (a target, or a target and a pid) adds its increase between two samples; one
    that went down was reset. A series that disappears keeps what it added.
    """

    def __init__(self) -> None:
        self.totals: dict[str, TargetSample] = {}
        self._last: dict[tuple[str, str], TargetSample] = {}

    def update(self, sample: Sample) -> None:
        if sample.error:
            return
        for key, series in sample.series.items():
            total = self.totals.setdefault(key[0], TargetSample())
            _accumulate(total, series, self._last.get(key))
        self._last = sample.series

    def view(self, sample: Sample) -> Sample:
        """``sample`` with the session's counters, and the targets gone since listed too."""
        targets = {}
        for name in sorted(set(self.totals) | set(sample.targets)):
            now = sample.targets.get(name, TargetSample())
            total = copy.deepcopy(self.totals.get(name, now))
            total.processes, total.threads = now.processes, now.threads
            targets[name] = total
        return Sample(
            sample.time, targets, sample.series, sample.backend, sample.source, sample.error
        )


def _accumulate(total: TargetSample, current: TargetSample, last: TargetSample | None) -> None:
    total.counted = total.counted or current.counted
    total.exited += increase(current.exited, last.exited if last else None)
    for name in COUNTER_MAPS:
        added, old = getattr(total, name), getattr(last, name) if last else {}
        for key, value in getattr(current, name).items():
            added[key] = added.get(key, 0.0) + increase(value, old.get(key))


# Between two samples
def increase(current: float, previous: float | None) -> float:
    """A counter's increase; a counter that went down was reset (its process restarted)."""
    if previous is None:
        return current
    return current - previous if current >= previous else current


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Like PromQL's histogram_quantile, over ``{upper bound: cumulative count}``."""
    return histogram_quantile(q, sorted(buckets.items()))


def bucket_increase(current: TargetSample, previous: TargetSample | None) -> dict[float, float]:
    old = previous.buckets if previous else {}
    return {bound: increase(count, old.get(bound)) for bound, count in current.buckets.items()}


# Where samples come from
class UrlSource:
    period: float | None = None  # read once a frame

    def __init__(self, url: str) -> None:
        self.url = url

    def sample(self) -> Sample:
        taken = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                text = response.read().decode()
        except OSError as err:
            return Sample(taken, source=self.url, error=f"cannot scrape {self.url}: {err}")
        return parse_sample(text, taken, self.url)

    def close(self) -> None:
        pass


class ObserverSource:
    """An observer in this process, read through the same collector /metrics uses."""

    period = OWN_OBSERVER_PERIOD

    def __init__(self, observer) -> None:
        from prometheus_client import CollectorRegistry

        from thread_observer.collector import ObserverCollector

        self.observer = observer
        self.registry = CollectorRegistry(auto_describe=False)
        # By target, as /metrics: the observer keeps the counts of a target's processes that
        # ended in its series (observer.retired), so they never go down.
        self.registry.register(ObserverCollector(observer.snapshot))

    def sample(self) -> Sample:
        from prometheus_client import generate_latest

        # Read before the poll, which detaches the processes that exited.
        taken = time.monotonic()
        text = generate_latest(self.registry).decode()
        self.observer.poll()
        return parse_sample(text, taken)

    def close(self) -> None:
        self.observer.close()

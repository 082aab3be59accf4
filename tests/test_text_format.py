"""The collector's own text exposition against client_python's, byte for byte, and its line
cache: fed plain snapshots, no root, no BPF."""

import re
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, PlatformCollector, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.test_collector import bpf_snapshot, counts
from thread_observer.collector import ObserverCollector
from thread_observer.model import Counts, Executor, ProcessRow, SeriesKey, Snapshot
from thread_observer.text_format import LineCache, format_of, write_text

DURATION = re.compile(rb"^(thread_observer_scrape_duration_seconds) \S+$", re.MULTILINE)


def same_duration(text: bytes) -> bytes:
    """The one sample that differs from one scrape to the next."""
    return DURATION.sub(rb"\1 0.0", text)


def client_python(collector: ObserverCollector, openmetrics: bool = False) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    write = generate_openmetrics if openmetrics else generate_latest
    return same_duration(write(registry))


def own(collector: ObserverCollector, openmetrics: bool = False) -> bytes:
    return same_duration(write_text([collector], openmetrics))


def rich_snapshot() -> Snapshot:
    """Every family: hosts, resolver calls, DNS queries, sites, executors, losses, hostile
    label values."""
    snapshot = bpf_snapshot()
    busy = Executor("default", "asyncio", threads=4, busy=3, max_workers=6, queued=2)
    anyio = Executor("anyio", 'odd"name\\x\n', threads=1, busy=0, max_workers=None, queued=None)
    hostile = Counts(
        threads_created=Counter({'lib"quote\\back\nnewline\ufffd\u00e9.so': 2}),
        getaddrinfo_calls=Counter({"event_loop": 2}),
        getaddrinfo_failures=Counter({"EAI_AGAIN": 1, "EAI_ODD": 3}),
        duration_slots=Counter({3: 1, 12: 1, 40: 2}),
        duration_sum_ns=123_456_789_012,
        hosts=Counter({"db.internal": 2, "<other>": 1}),
        dns_queries=Counter({"udp": 5}),
        resolver_calls=Counter({("gethostbyname_r", "other"): 2}),
        threads_by_site=Counter({"a.py:f": 2}),
        calls_by_site=Counter({("a.py:g", "event_loop"): 2}),
        site_stacks_dropped=1,
    )
    snapshot.rows.append(
        ProcessRow(
            "web",
            20,
            threads=7,
            counts=hostile,
            executor_max_workers=12,
            pod_uid="p1",
            executors=[busy, anyio],
            sites_unavailable=None,
        )
    )
    snapshot.rows.append(
        ProcessRow("web", 21, threads=1, counts=counts(), sites_unavailable="pid_namespace")
    )
    snapshot.map_entries = {"watched_tgids": 3}
    snapshot.losses = {"exec_reports_lost_total": 2}
    return snapshot


SNAPSHOTS = {
    "bpf": bpf_snapshot,
    "rich": rich_snapshot,
    "proc": lambda: Snapshot(
        backend="proc", rows=[ProcessRow("api", 10, threads=4, counts=None)], targets=["api"]
    ),
    "empty": lambda: Snapshot(backend="bpf", bpf_available=True),
}


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize("label_pid", [False, True], ids=["by_target", "by_pid"])
@pytest.mark.parametrize("name", list(SNAPSHOTS))
def test_own_text_is_client_pythons_byte_for_byte(name, label_pid, openmetrics):
    snapshot = SNAPSHOTS[name]()
    collector = ObserverCollector(lambda: snapshot, label_pid=label_pid)
    expected = client_python(collector, openmetrics)
    assert own(collector, openmetrics) == expected
    # Again, from the lines kept from the first scrape.
    assert own(collector, openmetrics) == expected


def test_a_changed_value_shows_in_the_next_scrape():
    snapshot = bpf_snapshot()
    collector = ObserverCollector(lambda: snapshot)
    before = own(collector)
    assert b'thread_observer_threads{target="worker"} 1.0\n' in before
    snapshot.rows[2] = ProcessRow("worker", 12, threads=5, counts=counts(calls={"other": 4}))
    after = own(collector)
    assert b'thread_observer_threads{target="worker"} 5.0\n' in after
    assert b'thread_observer_threads{target="worker"} 1.0\n' not in after
    assert b'caller="other",target="worker"} 4.0\n' in after
    assert after == client_python(collector)


def test_a_gone_process_series_goes():
    snapshot = bpf_snapshot()
    collector = ObserverCollector(lambda: snapshot, label_pid=True)
    assert b'pid="12"' in own(collector)
    snapshot.rows = [row for row in snapshot.rows if row.pid != 12]
    after = own(collector)
    assert b'pid="12"' not in after
    assert after == client_python(collector)


def test_a_retired_series_going_takes_its_lines():
    snapshot = bpf_snapshot()
    collector = ObserverCollector(lambda: snapshot)
    assert b'target="gone"' in own(collector)
    del snapshot.retired[SeriesKey("gone")]
    assert b'target="gone"' not in own(collector)


def test_line_cache_keeps_the_last_scrapes_lines_only():
    cache = LineCache()
    assert cache.get(("a",)) is None
    cache.put(("a",), "a line")
    assert cache.get(("a",)) is None  # made this scrape: the family holds it already
    cache.rotate()
    assert cache.get(("a",)) == "a line"
    cache.put(("b",), "b line")
    cache.rotate()
    assert (cache.get(("a",)), cache.get(("b",))) == ("a line", "b line")
    cache.rotate()
    cache.rotate()  # a scrape that asked for neither
    assert (cache.get(("a",)), cache.get(("b",))) == (None, None)


def test_collectors_without_text_are_written_by_client_python():
    snapshot = bpf_snapshot()
    observer = ObserverCollector(lambda: snapshot)
    platform = PlatformCollector(registry=None)
    registry = CollectorRegistry(auto_describe=False)
    for collector in (observer, platform):
        registry.register(collector)
    assert same_duration(write_text([observer, platform])) == same_duration(
        generate_latest(registry)
    )
    assert same_duration(write_text([observer, platform], openmetrics=True)) == same_duration(
        generate_openmetrics(registry)
    )


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "text"),
        ("text/plain;version=0.0.4", "text"),
        # Prometheus 2's Accept header.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "openmetrics",
        ),
        ("application/openmetrics-text", "openmetrics"),
        ("text/plain;version=1.0.0;escaping=underscores", "text"),
        ("text/plain;version=1.0.0;escaping=dots", None),
        ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8", None),
        ("application/openmetrics-text;version=2.0.0", None),
    ],
)
def test_format_of_each_encoder(accept, expected):
    encoder, _ = choose_encoder(accept)
    assert format_of(encoder) == expected


class Names:
    def __init__(self, namespace: str, pod: str, container: str) -> None:
        self._labels = [namespace, pod, container]

    def labels(self) -> list[str]:
        return self._labels


class FakePodNames:
    """What the collector asks of kubernetes.PodNames: each container's names."""

    def name(self, container_id: str, pod_uid: str) -> Names:
        if not pod_uid:
            return Names("", "", "")
        return Names("shop", f"pod-{pod_uid}", f"c-{container_id[:4]}")

    def forget(self, live) -> None:
        pass


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_node_mode_text_is_client_pythons_byte_for_byte(openmetrics):
    snapshot = rich_snapshot()
    snapshot.rows[0].pod_uid = "u1"
    collector = ObserverCollector(lambda: snapshot, pod_names=FakePodNames())
    assert own(collector, openmetrics) == client_python(collector, openmetrics)

"""The collector fed plain snapshots: no root, no BPF."""

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from thread_observer import __version__
from thread_observer.collector import ObserverCollector
from thread_observer.model import Counts, ProcessRow, SeriesKey, Snapshot


def counts(created=None, exited=0, calls=None, failures=None, slots=None, sum_ns=0):
    return Counts(
        threads_created=Counter(created or {}),
        threads_exited=exited,
        getaddrinfo_calls=Counter(calls or {}),
        getaddrinfo_failures=Counter(failures or {}),
        duration_slots=Counter(slots or {}),
        duration_sum_ns=sum_ns,
    )


def registry_for(snapshot: Snapshot, label_pid=False) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObserverCollector(lambda: snapshot, label_pid=label_pid))
    return registry


def bpf_snapshot() -> Snapshot:
    return Snapshot(
        backend="bpf",
        rows=[
            ProcessRow(
                "api",
                10,
                threads=5,
                executor_max_workers=6,
                container_id="c" * 64,
                counts=counts(
                    {"python": 4, "unknown": 1},
                    2,
                    {"event_loop": 3, "other": 7},
                    {"EAI_NONAME": 2},
                    {14: 9, 20: 1},
                    sum_ns=2_000_000,
                ),
            ),
            ProcessRow(
                "api",
                11,
                threads=3,
                counts=counts({"python": 1}, calls={"other": 1}, slots={15: 1}, sum_ns=30_000),
            ),
            ProcessRow("worker", 12, threads=1, counts=counts()),
        ],
        retired={
            SeriesKey("api"): counts({"python": 10}, exited=10, calls={"other": 5}, slots={14: 5}),
            SeriesKey("gone"): counts({"python": 99}),
        },
        targets=["api", "worker", "idle"],
        probes_attached={"getaddrinfo": 1, "pthread_create": 1},
        attach_errors={"libc": 1},
        bpf_available=True,
    )


def test_per_target_sums_processes_and_exited_ones():
    registry = registry_for(bpf_snapshot())
    value = registry.get_sample_value
    assert value("thread_observer_processes", {"target": "api"}) == 2
    assert value("thread_observer_threads", {"target": "api"}) == 8
    assert (
        value("thread_observer_threads_created_total", {"target": "api", "creator": "python"}) == 15
    )
    assert (
        value("thread_observer_threads_created_total", {"target": "api", "creator": "unknown"}) == 1
    )
    assert value("thread_observer_threads_exited_total", {"target": "api"}) == 12
    assert (
        value("thread_observer_getaddrinfo_calls_total", {"target": "api", "caller": "event_loop"})
        == 3
    )
    assert (
        value("thread_observer_getaddrinfo_calls_total", {"target": "api", "caller": "other"}) == 13
    )
    assert (
        value(
            "thread_observer_getaddrinfo_failures_total", {"target": "api", "error": "EAI_NONAME"}
        )
        == 2
    )
    assert value("thread_observer_getaddrinfo_duration_seconds_count", {"target": "api"}) == 16
    assert value(
        "thread_observer_getaddrinfo_duration_seconds_sum", {"target": "api"}
    ) == pytest.approx(0.00203)
    assert value("thread_observer_executor_default_max_workers", {"target": "api"}) == 6


def test_histogram_buckets_are_cumulative_in_seconds():
    value = registry_for(bpf_snapshot()).get_sample_value
    bucket = "thread_observer_getaddrinfo_duration_seconds_bucket"
    assert value(bucket, {"target": "api", "le": "1.6384e-05"}) == 14  # slot 14 = 16.384 µs
    assert value(bucket, {"target": "api", "le": "3.2768e-05"}) == 15
    assert value(bucket, {"target": "api", "le": "+Inf"}) == 16


def test_a_named_target_without_processes_is_exported_at_zero():
    value = registry_for(bpf_snapshot()).get_sample_value
    assert value("thread_observer_processes", {"target": "idle"}) == 0
    assert value("thread_observer_threads", {"target": "idle"}) == 0
    for caller in ("event_loop", "other"):
        labels = {"target": "idle", "caller": caller}
        assert value("thread_observer_getaddrinfo_calls_total", labels) == 0
    assert value("thread_observer_threads_exited_total", {"target": "idle"}) == 0
    assert value("thread_observer_getaddrinfo_duration_seconds_count", {"target": "idle"}) == 0
    # No creator is known before a thread is made: no series to show at 0.
    assert value("thread_observer_threads_created_total", {"target": "idle"}) is None


def test_exited_processes_counts_stay_when_none_is_left():
    """The observer decides how long a series of ended processes lives (see
    observer.retired): while it hands over their counts, they are exported, with 0 processes
    and threads."""
    value = registry_for(bpf_snapshot()).get_sample_value
    assert value("thread_observer_processes", {"target": "gone"}) == 0
    assert value("thread_observer_threads", {"target": "gone"}) == 0
    created = {"target": "gone", "creator": "python"}
    assert value("thread_observer_threads_created_total", created) == 99
    # No live interpreter: no executor cap to show.
    assert value("thread_observer_executor_default_max_workers", {"target": "gone"}) is None


def test_proc_backend_named_target_without_processes_has_gauges_only():
    snapshot = Snapshot(backend="proc", targets=["idle"])
    registry = registry_for(snapshot)
    assert registry.get_sample_value("thread_observer_processes", {"target": "idle"}) == 0
    assert registry.get_sample_value("thread_observer_threads", {"target": "idle"}) == 0
    assert "_total{" not in generate_latest(registry).decode()


def test_target_info_has_no_pid_unless_asked_for():
    snapshot = Snapshot(
        backend="bpf",
        rows=[
            ProcessRow("api", 10, threads=1, counts=counts(), container_id="c" * 64),
            ProcessRow("api", 11, threads=1, counts=counts(), container_id="c" * 64),
            ProcessRow("api", 12, threads=1, counts=counts(), container_id="d" * 64),
        ],
        bpf_available=True,
    )

    def info(label_pid: bool) -> dict[tuple, float]:
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in registry_for(snapshot, label_pid).collect()
            for s in family.samples
            if s.name == "thread_observer_target_info"
        }

    no_pid = {("container_id", "c" * 64), ("pod_uid", ""), ("target", "api")}
    assert info(False) == {
        tuple(sorted(no_pid)): 1,
        tuple(sorted({("container_id", "d" * 64), ("pod_uid", ""), ("target", "api")})): 1,
    }
    assert sorted(dict(labels)["pid"] for labels in info(True)) == ["10", "11", "12"]


def test_label_pid_splits_series_and_keeps_exited_processes_apart():
    snapshot = bpf_snapshot()
    snapshot.retired = {SeriesKey("api", pid=9): counts({"python": 10}, exited=10)}
    value = registry_for(snapshot, label_pid=True).get_sample_value
    # The process that ended keeps its own series (while the observer keeps it).
    assert value("thread_observer_processes", {"target": "api", "pid": "9"}) == 0
    assert (
        value(
            "thread_observer_threads_created_total",
            {"target": "api", "pid": "9", "creator": "python"},
        )
        == 10
    )
    # No series without a pid: a named target's zeros are not split by process.
    assert value("thread_observer_processes", {"target": "idle"}) is None
    assert (
        value(
            "thread_observer_threads_created_total",
            {"target": "api", "pid": "10", "creator": "python"},
        )
        == 4
    )
    assert (
        value(
            "thread_observer_threads_created_total",
            {"target": "api", "pid": "11", "creator": "python"},
        )
        == 1
    )
    assert value("thread_observer_threads", {"target": "api", "pid": "11"}) == 3


def test_proc_backend_has_no_counters_at_all():
    snapshot = Snapshot(
        backend="proc", rows=[ProcessRow("api", 10, threads=4, counts=None)], targets=["api"]
    )
    registry = registry_for(snapshot)
    text = generate_latest(registry).decode()
    assert registry.get_sample_value("thread_observer_threads", {"target": "api"}) == 4
    assert (
        registry.get_sample_value(
            "thread_observer_build_info", {"backend": "proc", "version": __version__}
        )
        == 1
    )
    for absent in (
        "threads_created_total",
        "getaddrinfo_calls_total",
        "threads_exited_total",
        "getaddrinfo_duration_seconds",
    ):
        assert f"thread_observer_{absent}" not in text


def test_self_metrics_have_no_target_label():
    value = registry_for(bpf_snapshot()).get_sample_value
    assert value("thread_observer_probes_attached", {"probe": "getaddrinfo"}) == 1
    assert value("thread_observer_attach_errors_total", {"probe": "libc"}) == 1
    assert value("thread_observer_bpf_available") == 1
    assert value("thread_observer_scrape_duration_seconds") is not None


def test_hostile_label_values_stay_valid_exposition():
    # What /proc gives is decoded with errors="replace": U+FFFD, never a lone surrogate.
    hostile = 'lib"quote\\back\nnewline\ufffd\u00e9.so'
    snapshot = Snapshot(
        backend="bpf",
        rows=[ProcessRow("api", 1, threads=1, counts=counts({hostile: 2}), container_id='x"y')],
    )
    text = generate_latest(registry_for(snapshot)).decode()
    parsed = {
        s.labels.get("creator"): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "thread_observer_threads_created_total"
    }
    assert parsed == {hostile: 2}


def test_openmetrics_output_parses():
    text = generate_openmetrics(registry_for(bpf_snapshot())).decode()
    names = {f.name for f in parse_om(text)}
    assert "thread_observer_threads_created" in names
    assert text.rstrip().endswith("# EOF")


def test_usual_errors_start_at_zero_so_rate_sees_the_first_failure():
    value = registry_for(bpf_snapshot()).get_sample_value
    assert (
        value(
            "thread_observer_getaddrinfo_failures_total", {"target": "worker", "error": "EAI_AGAIN"}
        )
        == 0
    )
    assert (
        value(
            "thread_observer_getaddrinfo_failures_total", {"target": "api", "error": "EAI_NONAME"}
        )
        == 2
    )
    assert (
        value(
            "thread_observer_getaddrinfo_failures_total", {"target": "api", "error": "EAI_CANCELED"}
        )
        is None
    )  # not usual: when seen


def test_dns_queries_and_resolver_calls_add_up_per_target():
    first = counts(calls={"event_loop": 2, "other": 1})
    first.dns_queries.update({"udp": 6})
    first.resolver_calls.update({("gethostbyname_r", "other"): 3})
    second = counts(calls={"other": 4})
    second.dns_queries.update({"udp": 1, "tcp": 2})
    second.resolver_calls.update(
        {("gethostbyname_r", "other"): 1, ("getnameinfo", "event_loop"): 5}
    )
    snapshot = Snapshot(
        backend="bpf",
        rows=[ProcessRow("api", 1, 1, first), ProcessRow("api", 2, 1, second)],
        losses={"dns_unknown_socket_sends_total": 4},
    )
    value = registry_for(snapshot).get_sample_value
    assert value("thread_observer_dns_queries_total", {"target": "api", "transport": "udp"}) == 7
    assert value("thread_observer_dns_queries_total", {"target": "api", "transport": "tcp"}) == 2
    calls = {
        (f, c): value(
            "thread_observer_resolver_calls_total", {"target": "api", "function": f, "caller": c}
        )
        for f, c in [
            ("getaddrinfo", "event_loop"),
            ("getaddrinfo", "other"),
            ("gethostbyname_r", "other"),
            ("getnameinfo", "event_loop"),
        ]
    }
    # getaddrinfo's come from its own probe, the same counts as getaddrinfo_calls_total.
    assert calls == {
        ("getaddrinfo", "event_loop"): 2,
        ("getaddrinfo", "other"): 5,
        ("gethostbyname_r", "other"): 4,
        ("getnameinfo", "event_loop"): 5,
    }
    assert value("thread_observer_dns_unknown_socket_sends_total") == 4


def test_dns_series_start_at_zero_and_are_absent_with_the_proc_backend():
    snapshot = Snapshot(backend="bpf", rows=[ProcessRow("idle", 1, 1, counts())])
    value = registry_for(snapshot).get_sample_value
    assert value("thread_observer_dns_queries_total", {"target": "idle", "transport": "udp"}) == 0
    assert value("thread_observer_dns_queries_total", {"target": "idle", "transport": "tcp"}) == 0
    proc = Snapshot(backend="proc", rows=[ProcessRow("idle", 1, 1, None)])
    text = generate_latest(registry_for(proc)).decode()
    assert "dns_queries_total" not in text and "resolver_calls_total" not in text
    assert "dns_unknown_socket_sends" not in text


def test_what_could_not_be_watched_or_named_is_said_in_self_counters():
    snapshot = Snapshot(
        backend="bpf",
        bpf_available=True,
        losses={
            "children_not_watched_total": 2,
            "exec_reports_lost_total": 0,
            "target_names_overflowed_total": 900,
        },
    )
    registry = registry_for(snapshot)
    assert registry.get_sample_value("thread_observer_children_not_watched_total") == 2
    assert registry.get_sample_value("thread_observer_exec_reports_lost_total") == 0
    assert registry.get_sample_value("thread_observer_target_names_overflowed_total") == 900


def test_adding_counts_with_nothing_counted_keeps_site_counters_apart_from_none():
    total = Counts()
    total.add(Counts(threads_by_site=Counter(), calls_by_site=Counter()))
    assert (total.threads_by_site, total.calls_by_site) == (Counter(), Counter())
    total.add(Counts(threads_created=Counter(python=2), threads_by_site=Counter({"a.py:f": 2})))
    total.add(Counts(threads_created=Counter(python=1), threads_exited=3))
    assert total.threads_created == Counter(python=3)
    assert total.threads_exited == 3
    assert total.threads_by_site == Counter({"a.py:f": 2})
    assert Counts().threads_by_site is None
    alone = Counts()
    alone.add(Counts())
    assert alone.threads_by_site is None and alone.calls_by_site is None

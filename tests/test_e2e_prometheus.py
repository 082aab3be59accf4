"""End to end: a real Prometheus scrapes the observer while the scenarios run; every dashboard
query returns data and the alert rules fire where they should, and only there.

Two targets resolve through private responders (workloads.private_dns: a network namespace
with only loopback), one of them answering UDP truncated: no query leaves the machine, and the
responders' counts are the ground truth of the queries on the wire.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness import REPO, observer, wait_until, workload
from tests.promtools import PROMETHEUS, alert_rules, dashboard_queries, start_prometheus
from workloads.private_dns import PrivateDns
from workloads.scenarios import SCENARIOS as SCENARIO_BY_NAME
from workloads.scenarios import start_scenario
from workloads.servers import local_servers

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (make setup)"),
]

DASHBOARD = REPO / "deploy" / "grafana" / "thread-observer.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# target name -> (scenario, extra arguments). Enough lookups for the rules' floors (more than
# 15 on the loop in 5 minutes, more than 60 calls in 10 minutes for a failure ratio), so that
# the alerts fire: "mixed" blocks its loop 18 times and fails 6 of 68 calls.
SCENARIOS = {
    "blocking": ("blocking_dns", ["--requests", "20"]),
    "unix": ("redis_unix", []),
    "burst": ("semaphore_burst", []),
    "mixed": ("mixed", ["--loop-calls", "50", "--blocking-calls", "12", "--failures", "6"]),
    # Its pool threads wait in a selectors epoll, and make every lookup off any event loop.
    "gthread": ("gunicorn_gthread", []),
}
# target name -> (name the responder answers, getaddrinfo calls, truncate UDP answers)
RESOLVERS = {
    "resolving": ("service.test", 5, False),
    "truncated": ("large.test", 3, True),
}
NAME_RESOLUTION_PANELS = (
    "DNS queries on the wire by transport",
    "DNS queries on the wire per libc lookup",
    "Resolver calls by function and caller",
)


# Thread pools held full (workloads.executors): the cap alert's one target.
POOLS_PATTERN = "workloads\\.executors( |$)"


def resolver_target(name: str, host: str) -> list[str]:
    return ["--target", f"{name}=tests\\.targets\\.dns_client getaddrinfo \\d+ {host}"]


def start_resolvers(stack: ExitStack, tmp: Path) -> dict:
    """Each resolving target in its own private namespace, waiting: {name: (target, dns)}."""
    started = {}
    for name, (host, calls, truncate) in RESOLVERS.items():
        folder = tmp / name
        folder.mkdir()
        dns = stack.enter_context(PrivateDns(folder, {host: "127.0.0.2"}, truncate_udp=truncate))
        argv = [sys.executable, "-m", "tests.targets.dns_client", "getaddrinfo", str(calls), host]
        started[name] = (stack.enter_context(workload(dns.command(argv), native=True)), dns)
    return started


def command_pattern(scenario: str) -> str:
    """What the scenario's command line is matched by."""
    found = SCENARIO_BY_NAME[scenario]
    module = found.module.replace(".", "\\.")
    stack = [arg for arg in found.default_args if arg.startswith("gunicorn_")]
    return f"{module} --stack {stack[0]}" if stack else f"{module}( |$)"


@pytest.fixture(scope="module")
def running_prometheus(tmp_path_factory):
    """Observer, scenarios (lingering after their work) and Prometheus, all for real."""
    tmp = tmp_path_factory.mktemp("e2e")
    targets = [
        arg
        for name, (scenario, _) in SCENARIOS.items()
        for arg in ("--target", f"{name}={command_pattern(scenario)}")
    ]
    for name, (host, _, _) in RESOLVERS.items():
        targets += resolver_target(name, host)
    targets += ["--target", f"pools={POOLS_PATTERN}"]
    with ExitStack() as stack:
        servers = stack.enter_context(local_servers(http=True, redis=True))
        running = stack.enter_context(observer(targets, Path(tmp)))
        prometheus = stack.enter_context(
            start_prometheus(
                [f"127.0.0.1:{running.port}"], scrape_interval="1s", rule_files=[ALERTS]
            )
        )
        children = [
            stack.enter_context(
                start_scenario(scenario, servers=servers, extra_args=[*extra, "--linger", "600"])
            )
            for scenario, extra in SCENARIOS.values()
        ]
        resolvers = start_resolvers(stack, Path(tmp))
        children += [target for target, _ in resolvers.values()]
        pools = stack.enter_context(workload(["-m", "workloads.executors"]))
        # Scraped at zero before the work: rate() sees the counters rise.
        prometheus.wait_for_scrapes(3, timeout=60)
        for child in children:
            child.go()
        for child in children:
            child.truth()
        pools.go()
        pools._line()  # its executors' numbers: the default one full, work queued behind it
        prometheus.wait_for_scrapes(8, timeout=60)
        prometheus.responders = {name: dns for name, (_, dns) in resolvers.items()}
        prometheus.work_done = time.time()
        yield prometheus


@pytest.mark.parametrize(
    ("title", "expr"), dashboard_queries(DASHBOARD), ids=lambda value: value[:40]
)
def test_every_dashboard_query_returns_data(running_prometheus, title, expr):
    assert running_prometheus.query(expr), f"{title!r}: no data for {expr}"


def firing_targets(prometheus, alertname: str) -> set[str]:
    expr = dict(alert_rules(ALERTS))[alertname]
    return {series["metric"].get("target", "") for series in prometheus.query(expr)}


def test_blocking_dns_fires_the_event_loop_alert(running_prometheus):
    # Only where a coroutine made a blocking lookup: not gunicorn's gthread workers.
    assert firing_targets(running_prometheus, "GetaddrinfoOnEventLoop") == {"blocking", "mixed"}
    active = {
        (a["labels"]["alertname"], a["labels"].get("target")) for a in running_prometheus.alerts()
    }
    assert ("GetaddrinfoOnEventLoop", "blocking") in active  # pending or firing in Prometheus


def test_a_full_default_executor_with_work_queued_fires_the_cap_alert(running_prometheus):
    # Its default executor runs max_workers items with 2 more queued; the scenarios' executors
    # are idle by now, however many threads they grew.
    assert firing_targets(running_prometheus, "PythonThreadsNearExecutorCap") == {"pools"}


def test_failures_fire_the_failure_ratio_alert(running_prometheus):
    assert firing_targets(running_prometheus, "GetaddrinfoFailing") == {"mixed"}


def test_the_unix_socket_scenario_fires_nothing(running_prometheus):
    for alertname, _ in alert_rules(ALERTS):
        assert "unix" not in firing_targets(running_prometheus, alertname), alertname
    assert not [a for a in running_prometheus.alerts() if a["labels"].get("target") == "unix"]


def queries_by_transport(prometheus, target: str) -> dict[str, int]:
    expr = f'sum by (transport) (thread_observer_dns_queries_total{{target="{target}"}})'
    return {s["metric"]["transport"]: int(float(s["value"][1])) for s in prometheus.query(expr)}


def test_queries_on_the_wire_are_what_the_responders_received(running_prometheus):
    for name, dns in running_prometheus.responders.items():
        received = dns.received()
        seen = []

        def equal(name=name, received=received, seen=seen):
            seen[:] = [queries_by_transport(running_prometheus, name)]
            return seen[0] == received

        try:
            wait_until(equal, 10, f"{name}'s queries in Prometheus")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}: responder {received}, Prometheus {seen}") from None
    expr = (
        "sum by (target, function) "
        '(thread_observer_resolver_calls_total{target=~"resolving|truncated"})'
    )
    calls = {
        (s["metric"]["target"], s["metric"]["function"], float(s["value"][1]))
        for s in running_prometheus.query(expr)
    }
    assert calls == {(name, "getaddrinfo", n) for name, (_, n, _) in RESOLVERS.items()}


def test_name_resolution_panels_show_the_resolving_target(running_prometheus):
    """At the end of the work, each panel has a line of the resolving target above 0 (udp
    queries, getaddrinfo calls), and two queries (A and AAAA in one sendmmsg) per getaddrinfo."""
    queries = {
        title: expr
        for title, expr in dashboard_queries(DASHBOARD)
        if title in NAME_RESOLUTION_PANELS
    }
    assert set(queries) == set(NAME_RESOLUTION_PANELS)
    for title, expr in queries.items():
        values = [
            float(s["value"][1])
            for s in running_prometheus.query(expr, at=running_prometheus.work_done)
            if s["metric"].get("target") == "resolving"
        ]
        assert values and max(values) > 0, (title, values)
    (ratio,) = [
        float(s["value"][1])
        for s in running_prometheus.query(
            queries["DNS queries on the wire per libc lookup"], at=running_prometheus.work_done
        )
        if s["metric"]["target"] == "resolving"
    ]
    assert ratio == pytest.approx(2)


def test_truncated_answers_fire_the_tcp_fallback_alert(running_prometheus):
    assert firing_targets(running_prometheus, "DNSFallingBackToTCP") == {"truncated"}


def test_the_resolving_target_fires_nothing(running_prometheus):
    # Not GetaddrinfoSlow: on a loaded machine a lookup of the 5 may well take half a second.
    for alertname, _ in alert_rules(ALERTS):
        if alertname != "GetaddrinfoSlow":
            assert "resolving" not in firing_targets(running_prometheus, alertname), alertname

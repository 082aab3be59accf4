"""End to end: a real Prometheus scrapes the observer while the scenarios run; every dashboard
query returns data and the alert rules fire where they should, and only there."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness import REPO, observer
from tests.promtools import PROMETHEUS, alert_rules, dashboard_queries, start_prometheus
from workloads.scenarios import SCENARIOS as SCENARIO_BY_NAME
from workloads.scenarios import start_scenario
from workloads.servers import local_servers

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (make setup)"),
]

DASHBOARD = REPO / "deploy" / "grafana" / "thread-observer.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# target name -> (scenario, extra arguments)
SCENARIOS = {
    "blocking": ("blocking_dns", []),
    "unix": ("redis_unix", []),
    "burst": ("semaphore_burst", []),
    "mixed": ("mixed", ["--failures", "6"]),
    # Its pool threads wait in a selectors epoll, and make every lookup off any event loop.
    "gthread": ("gunicorn_gthread", []),
}


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
    targets = [arg for name, (scenario, _) in SCENARIOS.items()
               for arg in ("--target", f"{name}={command_pattern(scenario)}")]
    with ExitStack() as stack:
        servers = stack.enter_context(local_servers(http=True, redis=True))
        running = stack.enter_context(observer(targets, Path(tmp)))
        prometheus = stack.enter_context(start_prometheus(
            [f"127.0.0.1:{running.port}"], scrape_interval="1s", rule_files=[ALERTS]))
        children = [
            stack.enter_context(start_scenario(
                scenario, servers=servers, extra_args=[*extra, "--linger", "600"]))
            for scenario, extra in SCENARIOS.values()
        ]
        # Scraped at zero before the work: rate() sees the counters rise.
        prometheus.wait_for_scrapes(3, timeout=60)
        for child in children:
            child.go()
        for child in children:
            child.truth()
        prometheus.wait_for_scrapes(8, timeout=60)
        yield prometheus


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(DASHBOARD),
                         ids=lambda value: value[:40])
def test_every_dashboard_query_returns_data(running_prometheus, title, expr):
    assert running_prometheus.query(expr), f"{title!r}: no data for {expr}"


def firing_targets(prometheus, alertname: str) -> set[str]:
    expr = dict(alert_rules(ALERTS))[alertname]
    return {series["metric"].get("target", "") for series in prometheus.query(expr)}


def test_blocking_dns_fires_the_event_loop_alert(running_prometheus):
    # Only where a coroutine made a blocking lookup: not gunicorn's gthread workers.
    assert firing_targets(running_prometheus, "GetaddrinfoOnEventLoop") == {"blocking", "mixed"}
    active = {(a["labels"]["alertname"], a["labels"].get("target")) for a in
              running_prometheus.alerts()}
    assert ("GetaddrinfoOnEventLoop", "blocking") in active  # pending or firing in Prometheus


def test_failures_fire_the_failure_ratio_alert(running_prometheus):
    assert firing_targets(running_prometheus, "GetaddrinfoFailing") == {"mixed"}


def test_the_unix_socket_scenario_fires_nothing(running_prometheus):
    for alertname, _ in alert_rules(ALERTS):
        assert "unix" not in firing_targets(running_prometheus, alertname), alertname
    assert not [a for a in running_prometheus.alerts() if a["labels"].get("target") == "unix"]

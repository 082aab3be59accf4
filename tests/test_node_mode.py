"""Node mode end to end: the DaemonSet's own arguments, real target processes in pod cgroups laid
out as the kubelet's systemd driver makes them, and the kubelet's log directories. Every pod's
series name it, with the exact counts of its processes."""

from __future__ import annotations

import uuid
from collections import Counter
from contextlib import ExitStack

import pytest
import yaml

from tests.harness import REPO, observer, wait_until, workload
from tests.kubelet import Pod, kubelet_logs, move, pod_cgroups, writable_hierarchies
from tests.promtools import PROMETHEUS, alert_rules, dashboard_queries, start_prometheus

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(not writable_hierarchies(), reason="no cgroup hierarchy mounted"),
]

DAEMONSET = REPO / "deploy" / "kubernetes" / "base" / "daemonset.yaml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "thread-observer.json"
MIXED = ["-m", "workloads.mixed", "--threads", "5", "--loop-calls", "7",
         "--blocking-calls", "3", "--failures", "2", "--linger", "60"]
# Settings of the manifest that only make sense in a cluster, replaced here.
OVERRIDDEN = ("--listen", "--kubelet-log-dir", "--target")


def daemonset_arguments(tag: str, log_dir) -> list[str]:
    """The DaemonSet container's args, with its target narrowed to this test's processes and
    the kubelet's log directory moved to a temporary one."""
    (daemonset,) = [d for d in yaml.safe_load_all(DAEMONSET.read_text())
                    if d and d["kind"] == "DaemonSet"]
    (container,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "thread-observer"]
    args = container["args"]
    assert args[0] == "run"
    (target,) = [a.split("=", 1)[1] for a in args if a.startswith("--target=")]
    name, regex = target.split("=", 1)
    assert regex.startswith("^")
    # The manifest's own regex still decides; the lookahead keeps other Python processes out.
    narrowed = f"{name}=^(?=.*-X tag={tag})" + regex[1:]
    kept = [a for a in args[1:] if not a.startswith(OVERRIDDEN)]
    assert "--pod-labels" in kept
    return [*kept, f"--kubelet-log-dir={log_dir}", f"--target={narrowed}"]


def per_pod(metrics, name: str, **match: str) -> Counter:
    found = Counter()
    for sample in metrics.samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
            labels = sample.labels
            found[(labels["namespace"], labels["pod"], labels["container"])] += sample.value
    return found


def test_series_name_each_pod_with_exact_counts(tmp_path):
    tag = uuid.uuid4().hex[:12]
    checkout = Pod.new("shop", "checkout-7d4f9-abcde", "app")
    nightly = Pod.new("jobs", "nightly-29123-x2k8p", "worker")
    log_dir = kubelet_logs(tmp_path / "log", [checkout, nightly])
    # Two processes in the checkout pod's container, one in the nightly pod, one outside any.
    placement = [checkout, checkout, nightly, None]
    with ExitStack() as stack:
        cgroups = stack.enter_context(pod_cgroups([checkout, nightly]))
        targets = [stack.enter_context(workload(["-X", f"tag={tag}", *MIXED]))
                   for _ in placement]
        for target, pod in zip(targets, placement, strict=True):
            if pod is not None:
                move(target.pid, cgroups[pod])
        running = stack.enter_context(
            observer(daemonset_arguments(tag, log_dir), tmp_path))
        wait_until(lambda: running.scrape().value("thread_observer_processes",
                                                  target="python") == 4,
                   10, "every process to be attached")
        prometheus = None
        if PROMETHEUS is not None:
            prometheus = stack.enter_context(start_prometheus(
                [f"127.0.0.1:{running.port}"], rule_files=[ALERTS]))
            # Scraped at zero before the work: rate() sees the counters rise.
            prometheus.wait_for_scrapes(3, timeout=60)
        for target in targets:
            target.go()
        truths = [target.truth() for target in targets]

        expected = {"threads": Counter(), "calls": Counter(), "on_loop": Counter(),
                    "processes": Counter()}
        for truth, pod in zip(truths, placement, strict=True):
            key = (pod.namespace, pod.name, pod.container) if pod else ("", "", "")
            expected["threads"][key] += truth["threads_started"]
            expected["calls"][key] += truth["getaddrinfo_calls"]
            expected["on_loop"][key] += truth["getaddrinfo_on_loop"]
            expected["processes"][key] += 1

        def settled():
            metrics = running.scrape()
            exited = per_pod(metrics, "thread_observer_threads_exited_total", target="python")
            return metrics if exited == expected["threads"] else None

        metrics = wait_until(settled, 10, "every thread's exit to be counted")
        assert per_pod(metrics, "thread_observer_processes", target="python") == \
            expected["processes"]
        assert per_pod(metrics, "thread_observer_threads_created_total", target="python",
                       creator="python") == expected["threads"]
        assert per_pod(metrics, "thread_observer_getaddrinfo_duration_seconds_count",
                       target="python") == expected["calls"]
        assert per_pod(metrics, "thread_observer_getaddrinfo_calls_total", target="python",
                       caller="event_loop") == expected["on_loop"]
        # One series per container, whatever its processes: no pid label.
        threads = [s for s in metrics.samples if s.name == "thread_observer_threads"]
        assert len(threads) == 3
        assert all("pid" not in s.labels for s in threads)
        assert metrics.value("thread_observer_unnamed_pod_processes") == 0

        # One of the checkout processes exits: its pod's counters stay where they were.
        targets[0].stop()
        key = (checkout.namespace, checkout.name, checkout.container)

        def dropped():
            metrics = running.scrape()
            processes = per_pod(metrics, "thread_observer_processes", target="python")
            return metrics if processes[key] == 1 else None

        after = wait_until(dropped, 10, "the exited process to be dropped")
        assert per_pod(after, "thread_observer_threads_created_total", target="python") == \
            expected["threads"]

        if prometheus is not None:
            prometheus.wait_for_scrapes(8, timeout=60)
            assert_alerts_name_each_pod(prometheus, set(expected["processes"]))


def assert_alerts_name_each_pod(prometheus, pods: set[tuple[str, str, str]]) -> None:
    """Every workload blocks its loop with getaddrinfo and fails 2 of 12 lookups: the rules
    fire once per pod (and once for the process outside any), each naming its pod."""
    rules = dict(alert_rules(ALERTS))
    for alertname in ("GetaddrinfoOnEventLoop", "GetaddrinfoFailing"):
        found = [tuple(s["metric"].get(k, "") for k in ("namespace", "pod", "container"))
                 for s in prometheus.query(rules[alertname])]
        assert sorted(found) == sorted(pods), alertname
    pending = {tuple(a["labels"].get(k, "") for k in ("namespace", "pod", "container"))
               for a in prometheus.alerts() if a["labels"]["alertname"] == "GetaddrinfoOnEventLoop"}
    assert pending == pods
    empty = [(title, expr) for title, expr in dashboard_queries(DASHBOARD)
             if not prometheus.query(expr)]
    assert empty == []

"""Node mode end to end: the DaemonSet's own arguments, real target processes in pod cgroups laid
out as the kubelet's systemd driver makes them, and the kubelet's log directories. Every pod's
series name it, with the exact counts of its processes. A process in each pod resolves through a
private responder (workloads.private_dns): its queries on the wire are the responder's count."""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from contextlib import ExitStack

import pytest
import yaml

from tests.harness import REPO, observer, wait_until, workload
from tests.kubelet import Pod, kubelet_logs, move, pod_cgroups, writable_hierarchies
from tests.promtools import PROMETHEUS, alert_rules, dashboard_queries, start_prometheus
from workloads.private_dns import PrivateDns

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(not writable_hierarchies(), reason="no cgroup hierarchy mounted"),
]

DAEMONSET = REPO / "deploy" / "kubernetes" / "base" / "daemonset.yaml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "thread-observer.json"
# Enough lookups for the rules' floors in each pod (more than 15 on the loop in 5 minutes,
# more than 60 calls in 10 minutes for a failure ratio): 19 on the loop, 5 of 69 failed.
MIXED = [
    "-m",
    "workloads.mixed",
    "--threads",
    "5",
    "--loop-calls",
    "50",
    "--blocking-calls",
    "14",
    "--failures",
    "5",
    "--linger",
    "60",
]
# A pod's resolving process: getaddrinfo of a name only its private responder answers.
RESOLVER_CALLS = 4
RESOLVING = ["-m", "tests.targets.dns_client", "getaddrinfo", str(RESOLVER_CALLS), "service.test"]
# Settings of the manifest that only make sense in a cluster, replaced here.
OVERRIDDEN = ("--listen", "--kubelet-log-dir", "--target")


def daemonset_arguments(tag: str, log_dir) -> list[str]:
    """The DaemonSet container's args, with its target narrowed to this test's processes and
    the kubelet's log directory moved to a temporary one."""
    (daemonset,) = [
        d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d and d["kind"] == "DaemonSet"
    ]
    (container,) = [
        c
        for c in daemonset["spec"]["template"]["spec"]["containers"]
        if c["name"] == "thread-observer"
    ]
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


def start_resolving(stack: ExitStack, tmp_path, tag: str, cgroups: dict, pods: list) -> dict:
    """A resolving process in each pod, each with a responder of its own: {pod: (process,
    responder)}."""
    started = {}
    for pod in pods:
        folder = tmp_path / f"dns-{pod.name}"
        folder.mkdir()
        dns = stack.enter_context(PrivateDns(folder, {"service.test": "127.0.0.2"}))
        argv = [sys.executable, "-X", f"tag={tag}", *RESOLVING]
        client = stack.enter_context(workload(dns.command(argv), native=True))
        move(client.pid, cgroups[pod])
        started[pod] = (client, dns)
    return started


def test_series_name_each_pod_with_exact_counts(tmp_path):
    tag = uuid.uuid4().hex[:12]
    checkout = Pod.new("shop", "checkout-7d4f9-abcde", "app")
    nightly = Pod.new("jobs", "nightly-29123-x2k8p", "worker")
    log_dir = kubelet_logs(tmp_path / "log", [checkout, nightly])
    # Two processes in the checkout pod's container, one in the nightly pod, one outside any;
    # each in a PID namespace of its own, as a pod's process is seen from a hostPID DaemonSet.
    placement = [checkout, checkout, nightly, None]
    with ExitStack() as stack:
        cgroups = stack.enter_context(pod_cgroups([checkout, nightly]))
        targets = [
            stack.enter_context(workload(["-X", f"tag={tag}", *MIXED], own_pid_namespace=True))
            for _ in placement
        ]
        for target, pod in zip(targets, placement, strict=True):
            if pod is not None:
                move(target.pid, cgroups[pod])
        resolving = start_resolving(stack, tmp_path, tag, cgroups, [checkout, nightly])
        running = stack.enter_context(observer(daemonset_arguments(tag, log_dir), tmp_path))
        wait_until(
            lambda: running.scrape().value("thread_observer_processes", target="python") == 6,
            10,
            "every process to be attached",
        )
        prometheus = None
        if PROMETHEUS is not None:
            prometheus = stack.enter_context(
                start_prometheus([f"127.0.0.1:{running.port}"], rule_files=[ALERTS])
            )
            # Scraped at zero before the work: rate() sees the counters rise.
            prometheus.wait_for_scrapes(3, timeout=60)
        clients = [client for client, _ in resolving.values()]
        for target in [*targets, *clients]:
            target.go()
        truths = [target.truth() for target in targets]
        for client in clients:
            client.truth()

        expected = {
            "threads": Counter(),
            "calls": Counter(),
            "on_loop": Counter(),
            "processes": Counter(),
            "executor": Counter(),
            "plain": Counter(),
        }
        for truth, pod in zip(truths, placement, strict=True):
            key = (pod.namespace, pod.name, pod.container) if pod else ("", "", "")
            expected["threads"][key] += truth["threads_started"]
            expected["executor"][key] += truth["executor_threads"]
            expected["plain"][key] += truth["threads_requested"]
            expected["calls"][key] += truth["getaddrinfo_calls"]
            expected["on_loop"][key] += truth["getaddrinfo_on_loop"]
            expected["processes"][key] += 1
        for pod in resolving:
            key = (pod.namespace, pod.name, pod.container)
            expected["processes"][key] += 1
            expected["calls"][key] += RESOLVER_CALLS

        def settled():
            metrics = running.scrape()
            exited = per_pod(metrics, "thread_observer_threads_exited_total", target="python")
            return metrics if exited == expected["threads"] else None

        metrics = wait_until(settled, 10, "every thread's exit to be counted")
        assert (
            per_pod(metrics, "thread_observer_processes", target="python") == expected["processes"]
        )
        assert (
            per_pod(
                metrics, "thread_observer_threads_created_total", target="python", creator="python"
            )
            == expected["threads"]
        )
        assert (
            per_pod(metrics, "thread_observer_getaddrinfo_duration_seconds_count", target="python")
            == expected["calls"]
        )
        assert (
            per_pod(
                metrics,
                "thread_observer_getaddrinfo_calls_total",
                target="python",
                caller="event_loop",
            )
            == expected["on_loop"]
        )
        # One series per container, whatever its processes: no pid label.
        threads = [s for s in metrics.samples if s.name == "thread_observer_threads"]
        assert len(threads) == 3
        assert all("pid" not in s.labels for s in threads)
        assert metrics.value("thread_observer_unnamed_pod_processes") == 0

        # Python frames are read in each pod's own PID namespace: every thread is named after
        # the code that started it, the default executor's after the lookup that grew it
        # (asyncio.run has shut that executor down by now: no live executor_threads to show).
        def by_site(function: str) -> Counter:
            return per_pod(
                metrics,
                "thread_observer_threads_created_by_site_total",
                target="python",
                site=f"{REPO}/workloads/mixed.py:{function}",
            )

        assert by_site("look_up") == expected["executor"]
        assert by_site("start_and_join_threads") == expected["plain"]
        assert metrics.value("thread_observer_sites_unavailable") is None
        assert metrics.value("thread_observer_sites_unavailable") is None

        # One of the checkout processes exits: its pod's counters stay where they were.
        targets[0].stop()
        key = (checkout.namespace, checkout.name, checkout.container)

        def dropped():
            metrics = running.scrape()
            processes = per_pod(metrics, "thread_observer_processes", target="python")
            return metrics if processes[key] == 2 else None

        after = wait_until(dropped, 10, "the exited process to be dropped")
        assert (
            per_pod(after, "thread_observer_threads_created_total", target="python")
            == expected["threads"]
        )

        if prometheus is not None:
            prometheus.wait_for_scrapes(8, timeout=60)
            assert_queries_name_each_pod(prometheus, resolving)
            assert_alerts_name_each_pod(prometheus, set(expected["processes"]))


def assert_queries_name_each_pod(prometheus, resolving: dict) -> None:
    """Each pod's queries on the wire, in Prometheus, are what its responder received."""
    expr = 'sum by (namespace, pod, transport) (thread_observer_dns_queries_total{target="python"})'

    def per_pod() -> dict:
        found = {}
        for sample in prometheus.query(expr):
            labels = sample["metric"]
            key = (labels.get("namespace", ""), labels.get("pod", ""))  # empty: not kept
            found.setdefault(key, {})[labels["transport"]] = int(float(sample["value"][1]))
        return found

    received = {(pod.namespace, pod.name): dns.received() for pod, (_, dns) in resolving.items()}
    received[("", "")] = {"udp": 0, "tcp": 0}  # the process outside any pod resolves nothing
    seen = []

    def equal():
        seen[:] = [per_pod()]
        return seen[0] == received

    try:
        wait_until(equal, 10, "each pod's queries in Prometheus")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: responders {received}, Prometheus {seen}") from None
    # Not a comparison of zeros: glibc asks A and AAAA (one sendmmsg) for each lookup.
    assert [received[pod.namespace, pod.name] for pod in resolving] == [
        {"udp": 2 * RESOLVER_CALLS, "tcp": 0}
    ] * len(resolving)


def assert_alerts_name_each_pod(prometheus, pods: set[tuple[str, str, str]]) -> None:
    """Every mixed workload blocks its loop with getaddrinfo 19 times and fails 5 of its 69
    lookups (with a pod's resolving process, still more than 5 % of the pod's): the rules fire
    once per pod (and once for the process outside any), each naming its pod."""
    rules = dict(alert_rules(ALERTS))
    for alertname in ("GetaddrinfoOnEventLoop", "GetaddrinfoFailing"):
        found = [
            tuple(s["metric"].get(k, "") for k in ("namespace", "pod", "container"))
            for s in prometheus.query(rules[alertname])
        ]
        assert sorted(found) == sorted(pods), alertname
    pending = {
        tuple(a["labels"].get(k, "") for k in ("namespace", "pod", "container"))
        for a in prometheus.alerts()
        if a["labels"]["alertname"] == "GetaddrinfoOnEventLoop"
    }
    assert pending == pods
    empty = [
        (title, expr) for title, expr in dashboard_queries(DASHBOARD) if not prometheus.query(expr)
    ]
    assert empty == []


@pytest.mark.parametrize(
    "choice, watched",
    [
        (["--namespace", "shop"], {"shop"}),  # and no process outside a pod
        (["--exclude-namespace", "jobs"], {"shop", ""}),  # "": the process outside any pod
    ],
    ids=["namespace", "exclude-namespace"],
)
def test_namespaces_choose_the_pods_watched_and_those_shown_without_host_names(
    choice, watched, tmp_path
):
    tag = uuid.uuid4().hex[:12]
    checkout = Pod.new("shop", "checkout-7d4f9-abcde", "app")
    nightly = Pod.new("jobs", "nightly-29123-x2k8p", "worker")
    log_dir = kubelet_logs(tmp_path / "log", [checkout, nightly])
    placement = [checkout, nightly, None]
    args = [
        "--pod-labels",
        f"--kubelet-log-dir={log_dir}",
        f"--target=python=python.*-X tag={tag}",
        *choice,
        "--no-hosts-namespace=shop",
    ]
    with ExitStack() as stack:
        cgroups = stack.enter_context(pod_cgroups([checkout, nightly]))
        targets = [stack.enter_context(workload(["-X", f"tag={tag}", *MIXED])) for _ in placement]
        # In their pods before the observer looks at them: it decides when it attaches.
        for target, pod in zip(targets, placement, strict=True):
            if pod is not None:
                move(target.pid, cgroups[pod])
        running = stack.enter_context(observer(args, tmp_path))
        for target in targets:
            target.go()
        truths = {
            (pod.namespace, pod.name, pod.container) if pod else ("", "", ""): target.truth()
            for target, pod in zip(targets, placement, strict=True)
        }
        expected = {key: truth for key, truth in truths.items() if key[0] in watched}
        threads = Counter({key: truth["threads_started"] for key, truth in expected.items()})

        def settled():
            metrics = running.scrape()
            exited = per_pod(metrics, "thread_observer_threads_exited_total", target="python")
            return metrics if exited == threads else None

        metrics = wait_until(settled, 10, "every watched thread's exit to be counted")
        target_series = {
            (s.labels["namespace"], s.labels["pod"], s.labels["container"])
            for s in metrics.samples
            if s.labels.get("target") == "python"
        }
        assert target_series == set(expected)  # not a series, not a zero, of the others
        assert per_pod(metrics, "thread_observer_processes", target="python") == Counter(
            dict.fromkeys(expected, 1)
        )
        assert (
            per_pod(
                metrics, "thread_observer_threads_created_total", target="python", creator="python"
            )
            == threads
        )
        calls = Counter({key: truth["getaddrinfo_calls"] for key, truth in expected.items()})
        assert per_pod(metrics, "thread_observer_getaddrinfo_calls_total", target="python") == calls
        assert (
            per_pod(metrics, "thread_observer_getaddrinfo_duration_seconds_count", target="python")
            == calls
        )
        on_loop = Counter({key: truth["getaddrinfo_on_loop"] for key, truth in expected.items()})
        assert (
            per_pod(
                metrics,
                "thread_observer_getaddrinfo_calls_total",
                target="python",
                caller="event_loop",
            )
            == on_loop
        )
        # Host names: none from the shop's pod, every call of the process outside any pod.
        host_calls = [
            s for s in metrics.samples if s.name == "thread_observer_getaddrinfo_host_calls_total"
        ]
        assert {s.labels["namespace"] for s in host_calls} == watched - {"shop"}
        assert per_pod(metrics, "thread_observer_getaddrinfo_host_calls_total") == Counter(
            {key: n for key, n in calls.items() if key[0] != "shop"}
        )

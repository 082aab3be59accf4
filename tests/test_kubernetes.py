"""Pod names in node mode: cgroup paths of every runtime and driver, the kubelet's log
directories, and the series the collector makes of them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.kubelet import Pod
from tests.kubelet import kubelet_logs as write_kubelet_logs
from thread_observer import procfs
from thread_observer.collector import ObserverCollector
from thread_observer.errors import UsageError
from thread_observer.kubernetes import (
    OUTSIDE,
    NamespacePolicy,
    PodContainer,
    PodNames,
    add_pod_arguments,
    namespace_policy,
    parse_container_log,
    parse_pod_dir,
)
from thread_observer.model import Counts, ProcessRow, SeriesKey, Snapshot

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
SYSTEMD_UID = UID.replace("-", "_")
CID = "a" * 63 + "1"
OTHER_UID = "6f1c1c4e-0000-4000-8000-00000000abcd"
OTHER_CID = "b" * 63 + "2"
GONE_UID = "6f1c1c4e-0000-4000-8000-000000000000"
GONE_CID = "c" * 64

# What /proc/PID/cgroup says for a container's process, by cgroup version, driver and runtime.
CGROUPS = {
    "v2 systemd containerd": f"0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope\n",
    "v2 systemd cri-o": f"0::/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{SYSTEMD_UID}.slice/crio-{CID}.scope\n",
    "v2 systemd docker (guaranteed)": f"0::/kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice/"
    f"docker-{CID}.scope\n",
    "v2 cgroupfs containerd": f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    "v2 seen from a cgroup namespace": f"0::/../../kubepods-burstable-pod{SYSTEMD_UID}.slice/"
    f"cri-containerd-{CID}.scope\n",
    "v1 cgroupfs docker": "".join(
        f"{i}:{c}:/kubepods/besteffort/pod{UID}/{CID}\n"
        for i, c in enumerate(["pids", "memory", "cpu,cpuacct"], start=2)
    )
    + f"1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n",
    "v1 systemd containerd (hybrid)": "".join(
        f"{i}:{c}:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}"
        f".slice/cri-containerd-{CID}.scope\n"
        for i, c in enumerate(["pids", "memory", "name=systemd"], start=1)
    )
    + f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}"
    f".slice/cri-containerd-{CID}.scope\n",
}


@pytest.mark.parametrize("layout", CGROUPS)
def test_every_runtime_and_driver_gives_the_pod_uid_and_container_id(layout):
    assert procfs.parse_cgroup_identity(CGROUPS[layout]) == (CID, UID)


def test_processes_outside_kubernetes():
    assert procfs.parse_cgroup_identity("0::/system.slice/cron.service\n") == ("", "")
    assert procfs.parse_cgroup_identity(f"0::/system.slice/docker-{CID}.scope\n") == (CID, "")


@pytest.mark.parametrize(
    "name,parsed",
    [
        (f"shop_checkout-7d4f9-abcde_{UID}", (UID, "shop", "checkout-7d4f9-abcde")),
        (
            f"kube-system_coredns-5d78c9869d-x2k8p_{UID}",
            (UID, "kube-system", "coredns-5d78c9869d-x2k8p"),
        ),
        (f"a.b_pod.with.dots_{UID}", (UID, "a.b", "pod.with.dots")),
        ("shop_checkout_not-a-uid", None),
        (f"Shop_checkout_{UID}", None),
        (f"shop_check_out_{UID}", None),
        ("", None),
    ],
)
def test_pod_directory_names(name, parsed):
    assert parse_pod_dir(name) == parsed


@pytest.mark.parametrize(
    "name,parsed",
    [
        (
            f"checkout-7d4f9-abcde_shop_app-{CID}.log",
            (CID, PodContainer("shop", "checkout-7d4f9-abcde", "app")),
        ),
        (
            f"checkout-7d4f9-abcde_shop_thread-observer-{CID}.log",
            (CID, PodContainer("shop", "checkout-7d4f9-abcde", "thread-observer")),
        ),
        (f"checkout_shop_app-{CID[:12]}.log", None),
        (f"checkout_shop_app-{CID}.txt", None),
        (f"checkout_shop-{CID}.log", None),
    ],
)
def test_container_log_names(name, parsed):
    assert parse_container_log(name) == parsed


def kubelet_logs(root: Path, pods: list[tuple[str, str, str, dict[str, str]]]) -> Path:
    for namespace, pod, uid, containers in pods:
        for container, container_id in containers.items():
            write_kubelet_logs(root, [Pod(namespace, pod, container, uid, container_id)])
    return root


def test_names_from_the_kubelet_log_directories(tmp_path, caplog):
    root = kubelet_logs(tmp_path, [("shop", "checkout-0", UID, {"app": CID})])
    clock = [0.0]
    names = PodNames(root, clock=lambda: clock[0])
    assert names.name(CID, UID) == PodContainer("shop", "checkout-0", "app")
    assert names.name("", "") is OUTSIDE
    # A Docker container outside Kubernetes has no pod: no label, no complaint.
    assert names.name(OTHER_CID, "") is OUTSIDE
    assert not caplog.records
    # A pod the directories do not know yet: empty names, said once, found as soon as the
    # kubelet writes its directories (read again at most once a second).
    assert names.name(OTHER_CID, OTHER_UID) is OUTSIDE
    assert names.name(OTHER_CID, OTHER_UID) is OUTSIDE
    assert len([r for r in caplog.records if OTHER_UID in r.getMessage()]) == 1
    kubelet_logs(tmp_path, [("jobs", "nightly-x", OTHER_UID, {"worker": OTHER_CID})])
    assert names.name(OTHER_CID, OTHER_UID) is OUTSIDE  # not read again within the second
    clock[0] += 1.5
    assert names.name(OTHER_CID, OTHER_UID) == PodContainer("jobs", "nightly-x", "worker")


def test_a_pod_without_its_container_link_is_named_without_the_container(tmp_path):
    (tmp_path / "pods" / f"shop_checkout-0_{UID}" / "app").mkdir(parents=True)
    names = PodNames(tmp_path)
    assert names.name(CID, UID) == PodContainer("shop", "checkout-0", "")


def test_missing_directories_name_nothing(tmp_path):
    names = PodNames(tmp_path / "absent")
    assert names.name(CID, UID) is OUTSIDE


def test_forgets_containers_no_process_is_in(tmp_path):
    root = kubelet_logs(
        tmp_path,
        [
            ("shop", "checkout-0", UID, {"app": CID}),
            ("jobs", "nightly-x", OTHER_UID, {"worker": OTHER_CID}),
        ],
    )
    names = PodNames(root)
    names.name(CID, UID)
    names.forget({(CID, UID)})
    assert names._containers == {CID: PodContainer("shop", "checkout-0", "app")}
    assert set(names._pods) == {UID}


def counts(created: int, calls: int) -> Counts:
    result = Counts(threads_exited=created, duration_slots={14: calls})
    result.threads_created["python"] = created
    result.getaddrinfo_calls["other"] = calls
    return result


def test_node_mode_series_name_each_pod_and_aggregate_its_processes(tmp_path):
    root = kubelet_logs(
        tmp_path,
        [
            ("shop", "checkout-0", UID, {"app": CID}),
            ("jobs", "nightly-x", OTHER_UID, {"worker": OTHER_CID}),
            ("jobs", "batch-0", GONE_UID, {"step": GONE_CID}),
        ],
    )
    snapshot = Snapshot(
        backend="bpf",
        rows=[
            ProcessRow("python", 10, threads=3, counts=counts(2, 5), container_id=CID, pod_uid=UID),
            ProcessRow("python", 11, threads=4, counts=counts(1, 1), container_id=CID, pod_uid=UID),
            ProcessRow(
                "python",
                12,
                threads=2,
                counts=counts(7, 0),
                container_id=OTHER_CID,
                pod_uid=OTHER_UID,
            ),
            ProcessRow("python", 13, threads=1, counts=counts(0, 9)),
            # A pod the kubelet's directories do not name: empty labels, counted as unnamed.
            ProcessRow(
                "python",
                14,
                threads=1,
                counts=counts(0, 0),
                container_id="d" * 64,
                pod_uid="6f1c1c4e-0000-4000-8000-00000000ffff",
            ),
        ],
        # An exited process of the checkout pod, and one of a pod with no process left (in its
        # grace period: the observer keeps it).
        retired={
            SeriesKey("python", CID, UID): counts(10, 10),
            SeriesKey("python", GONE_CID, GONE_UID): counts(99, 99),
        },
        targets=["python", "idle"],
        bpf_available=True,
    )
    registry = CollectorRegistry()
    registry.register(ObserverCollector(lambda: snapshot, pod_names=PodNames(root)))

    def series(name: str) -> dict[tuple[str, str, str, str], float]:
        return {
            (
                s.labels["target"],
                s.labels["namespace"],
                s.labels["pod"],
                s.labels["container"],
            ): s.value
            for family in registry.collect()
            for s in family.samples
            if s.name == name
        }

    checkout = ("python", "shop", "checkout-0", "app")
    nightly = ("python", "jobs", "nightly-x", "worker")
    host = ("python", "", "", "")
    batch = ("python", "jobs", "batch-0", "step")
    idle = ("idle", "", "", "")
    assert series("thread_observer_processes") == {
        checkout: 2,
        nightly: 1,
        host: 2,
        batch: 0,
        idle: 0,
    }
    assert series("thread_observer_threads") == {
        checkout: 7,
        nightly: 2,
        host: 2,
        batch: 0,
        idle: 0,
    }
    assert series("thread_observer_threads_created_total") == {
        checkout: 13,
        nightly: 7,
        host: 0,
        batch: 99,
    }
    assert series("thread_observer_getaddrinfo_duration_seconds_count") == {
        checkout: 16,
        nightly: 0,
        host: 9,
        batch: 99,
        idle: 0,
    }
    assert registry.get_sample_value("thread_observer_unnamed_pod_processes") == 1
    assert (
        registry.get_sample_value(
            "thread_observer_target_info",
            {
                "target": "python",
                "container_id": OTHER_CID,
                "pod_uid": OTHER_UID,
                "namespace": "jobs",
                "pod": "nightly-x",
                "container": "worker",
            },
        )
        == 1
    )
    assert registry.get_sample_value("thread_observer_scrape_duration_seconds") > 0


def test_without_pod_labels_no_pod_label_and_no_unnamed_metric():
    snapshot = Snapshot(
        backend="bpf",
        rows=[
            ProcessRow("python", 10, threads=3, counts=counts(2, 5), container_id=CID, pod_uid=UID)
        ],
    )
    registry = CollectorRegistry()
    registry.register(ObserverCollector(lambda: snapshot))
    labels = {
        tuple(s.labels)
        for family in registry.collect()
        for s in family.samples
        if s.name == "thread_observer_threads"
    }
    assert labels == {("target",)}
    assert registry.get_sample_value("thread_observer_unnamed_pod_processes") is None


def policy(root: Path, include=(), exclude=(), no_hosts=(), clock=time.monotonic):
    return NamespacePolicy(
        PodNames(root, clock=clock), frozenset(include), frozenset(exclude), frozenset(no_hosts)
    )


SHOP_AND_JOBS = [
    ("shop", "checkout-0", UID, {"app": CID}),
    ("jobs", "nightly-x", OTHER_UID, {"worker": OTHER_CID}),
]


def test_namespace_policy_watches_the_namespaces_asked_for(tmp_path):
    root = kubelet_logs(tmp_path, SHOP_AND_JOBS)
    shop, jobs, outside = (CID, UID), (OTHER_CID, OTHER_UID), ("", "")
    docker = (GONE_CID, "")  # a container outside Kubernetes: no pod, no namespace
    only_shop = policy(root, include={"shop"})
    assert [only_shop.watches(*p) for p in (shop, jobs, outside, docker)] == [
        True,
        False,
        False,
        False,
    ]
    not_jobs = policy(root, exclude={"jobs"})
    assert [not_jobs.watches(*p) for p in (shop, jobs, outside, docker)] == [
        True,
        False,
        True,
        True,
    ]
    no_shop_hosts = policy(root, no_hosts={"shop"})
    assert [no_shop_hosts.watches(*p) for p in (shop, jobs, outside)] == [True, True, True]
    assert [no_shop_hosts.shows_hosts(*p) for p in (shop, jobs, outside)] == [False, True, True]


def test_a_pod_the_kubelet_wrote_just_now_is_decided_by_its_namespace(tmp_path):
    """Whether to watch a process is decided once: a pod written after the last read of the
    directories is looked for at once, not taken for a process outside any pod."""
    root = kubelet_logs(tmp_path, SHOP_AND_JOBS[:1])
    clock = [0.0]
    only_jobs = policy(root, include={"jobs"}, clock=lambda: clock[0])
    not_jobs = policy(root, exclude={"jobs"}, clock=lambda: clock[0])
    assert not only_jobs.watches(CID, UID)  # the directories are read now
    assert not_jobs.watches(CID, UID)
    kubelet_logs(tmp_path, SHOP_AND_JOBS[1:])  # within the second
    assert only_jobs.watches(OTHER_CID, OTHER_UID)
    assert not not_jobs.watches(OTHER_CID, OTHER_UID)


def test_a_pod_the_directories_never_name_is_in_no_namespace(tmp_path):
    root = kubelet_logs(tmp_path, SHOP_AND_JOBS[:1])
    assert not policy(root, include={"jobs"}).watches(OTHER_CID, OTHER_UID)
    assert policy(root, exclude={"jobs"}).watches(OTHER_CID, OTHER_UID)


def namespace_args(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pod_arguments(parser)
    return parser.parse_args(list(args))


def test_namespace_policy_from_the_command_line(tmp_path):
    names = PodNames(tmp_path)
    assert namespace_policy(namespace_args("--pod-labels"), names) is None
    chosen = namespace_policy(
        namespace_args(
            *("--namespace", "shop", "--namespace", "web", "--exclude-namespace", "jobs"),
            *("--no-hosts-namespace", "shop"),
        ),
        names,
    )
    assert chosen == NamespacePolicy(
        names, frozenset({"shop", "web"}), frozenset({"jobs"}), frozenset({"shop"})
    )
    with pytest.raises(UsageError, match="--namespace and --exclude-namespace both name shop"):
        namespace_policy(namespace_args("--namespace=shop", "--exclude-namespace=shop"), names)

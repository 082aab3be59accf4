"""Reliability: hostile input, churn, restarts, concurrent scrapes, every CPython, other libcs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from tests.harness import (
    LEAST_CAPABILITIES,
    PYENV_ROOT,
    REPO,
    Metrics,
    assert_exact,
    capabilities_prefix,
    exits_settled,
    manifest_capabilities,
    observer,
    pyenv_pythons,
    wait_until,
    workload,
)
from thread_observer.capabilities import perf_event_paranoid

pytestmark = pytest.mark.bpf

MIXED = [
    "-m",
    "workloads.mixed",
    "--threads",
    "19",
    "--loop-calls",
    "23",
    "--blocking-calls",
    "7",
    "--failures",
    "3",
]
NATIVE_SOURCE = Path(__file__).parent / "targets" / "native_target.c"


def settled(running, target: str, threads: int) -> Metrics:
    """The first scrape in which every thread's exit has been counted."""
    return exits_settled(running, threads, timeout=15, target=target)


# Hostile input
@pytest.fixture
def files_only_resolver(tmp_path):
    """A command prefix that runs a program in its own mount namespace where host names are
    looked up in /etc/hosts only: lookups of unknown names fail at once, with no query sent."""
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("hosts: files\n")
    return [
        "unshare",
        "--mount",
        "sh",
        "-c",
        f'mount --bind {nsswitch} /etc/nsswitch.conf && exec "$@"',
        "files-only",
    ]


def test_hostile_host_names_keep_metrics_valid_and_bounded(files_only_resolver, tmp_path):
    command = [*files_only_resolver, sys.executable, "-m", "tests.targets.hostile_names", "1000"]
    with (
        workload(command, native=True) as target,
        observer(["--pid", f"hostile={target.pid}"], tmp_path) as running,
    ):
        target.go()
        truth = target.truth()
        assert truth["getaddrinfo_errors"] == {"EAI_NONAME": 1000}
        metrics = wait_until(
            lambda: (
                (m := running.scrape()).value(
                    "thread_observer_getaddrinfo_calls_total", target="hostile"
                )
                == 1000
                and m
            ),
            10,
            "all 1000 calls to be counted",
        )
        assert metrics.nonzero(
            "thread_observer_getaddrinfo_failures_total", "error", target="hostile"
        ) == {"EAI_NONAME": 1000}
        hosts = metrics.labels(
            "thread_observer_getaddrinfo_host_calls_total", "host", target="hostile"
        )
        assert len(hosts) == 21  # 20 names of their own, the rest as <other>
        assert hosts["<other>"] == 980
        assert sum(hosts.values()) == 1000
        assert all(len(host) <= 128 and "\n" not in host for host in hosts)
        text, _ = running.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
        assert any(f.name == "thread_observer_getaddrinfo_host_calls" for f in parse_om(text))


# Churn and map sizes
@pytest.fixture(scope="module")
def native_target(tmp_path_factory):
    binary = tmp_path_factory.mktemp("churn") / "churn-target"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(NATIVE_SOURCE)], check=True)
    return binary


COUNTER_MAPS = (
    "threads_created_total",
    "process_totals",
    "getaddrinfo_host_calls_total",
    "watched_tgids",
)


def test_churning_1000_target_processes_loses_nothing_and_maps_stay_flat(native_target, tmp_path):
    regex = f"churn={native_target}"
    with (
        observer(["--target", regex, "--allow-non-python"], tmp_path) as running,
        workload([str(native_target), "3", "2"], native=True) as keeper,
    ):
        wait_until(lambda: processes(running) == 1, 5, "the long-lived target")
        keeper.go()
        keeper_truth = keeper.truth()
        sizes = []
        for _batch in range(20):
            churn_batch(running, native_target, 50)
            sizes.append(map_sizes(running))
        metrics = running.scrape()
        expected = keeper_truth["threads_started"] + 1000 * 2
        assert metrics.value("thread_observer_threads_created_total", target="churn") == expected
        assert (
            metrics.value("thread_observer_getaddrinfo_calls_total", target="churn")
            == keeper_truth["getaddrinfo_calls"] + 1000 * 3
        )
    assert sizes[0] == sizes[-1], f"maps grew: {sizes[0]} -> {sizes[-1]}"


def churn_batch(running, binary: Path, size: int) -> None:
    targets = [
        subprocess.Popen(
            [str(binary), "2", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(size)
    ]
    try:
        for target in targets:
            assert '"ready": true' in target.stdout.readline()
        wait_until(lambda: processes(running) == size + 1, 10, "the batch to be attached")
        for target in targets:
            target.stdin.write("\n")
            target.stdin.flush()
        for target in targets:
            assert '"threads_started": 2' in target.stdout.readline()
    finally:
        for target in targets:
            target.stdin.close()
            target.wait()
            target.stdout.close()
    wait_until(lambda: processes(running) == 1, 10, "the batch to be dropped")


def processes(running) -> float | None:
    return running.scrape().value("thread_observer_processes", target="churn")


def map_sizes(running) -> dict[str, float]:
    """Map sizes once other processes' exec (pending until the next poll) have settled."""

    def quiet():
        entries = running.scrape().labels("thread_observer_bpf_map_entries", "map")
        return entries if entries["watched_tgids"] == 1 else None

    entries = wait_until(quiet, 10, "only the long-lived target in watched_tgids")
    return {name: entries[name] for name in COUNTER_MAPS}


# Restarts
def test_after_sigkill_a_new_observer_counts_correctly(tmp_path):
    with workload([*MIXED, "--linger", "60"]) as target:
        first = observer(["--pid", f"mixed={target.pid}"], tmp_path)
        killed = first.__enter__()
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait()
        first.__exit__(None, None, None)
        with observer(["--pid", f"mixed={target.pid}"], tmp_path) as running:
            target.go()
            truth = target.truth()
            assert_exact(settled(running, "mixed", truth["threads_started"]), "mixed", truth)


# Load
def test_eight_scrapers_at_ten_per_second_during_a_storm(tmp_path):
    storm = [
        "-m",
        "workloads.mixed",
        "--threads",
        "400",
        "--loop-calls",
        "4000",
        "--blocking-calls",
        "4000",
        "--failures",
        "30",
        "--linger",
        "60",
    ]
    errors: list[str] = []
    stop = threading.Event()
    with workload(storm) as target, observer(["--pid", f"storm={target.pid}"], tmp_path) as running:
        scrapers = [
            threading.Thread(target=scrape_until, args=(running.url, stop, errors))
            for _ in range(8)
        ]
        for scraper in scrapers:
            scraper.start()
        try:
            target.go()
            truth = target.truth()
        finally:
            stop.set()
            for scraper in scrapers:
                scraper.join()
        assert errors == []
        assert_exact(settled(running, "storm", truth["threads_started"]), "storm", truth)


def scrape_until(url: str, stop: threading.Event, errors: list[str]) -> None:
    while not stop.wait(0.1):  # 10 scrapes a second
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                Metrics(response.read().decode())
        except Exception as error:  # any failure is what this test looks for
            errors.append(repr(error))


# Interpreters
PYENV_PYTHONS = pyenv_pythons()


@pytest.mark.parametrize(
    "python", PYENV_PYTHONS or ["none"], ids=lambda p: p.split("/")[-3] if "/" in p else p
)
def test_every_cpython_counted_exactly_with_python_as_creator(python, tmp_path, monkeypatch):
    if python == "none":
        pytest.skip(f"no pyenv interpreters under {PYENV_ROOT}/versions")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with (
        workload([*MIXED, "--linger", "60"], python=python) as target,
        observer(["--pid", f"py={target.pid}"], tmp_path) as running,
    ):
        target.go()
        truth = target.truth()
        assert truth["python"].split(".")[:2] == python.split("/")[-3].split(".")[:2]
        assert_exact(settled(running, "py", truth["threads_started"]), "py", truth)


# Another libc
def test_libc_at_another_path_and_inode_is_found_through_proc_root(tmp_path):
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists(libc):
        pytest.skip(f"{libc} is not this machine's libc")
    copy = tmp_path / "libc.so.6"
    shutil.copy2(libc, copy)
    wrapper = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        f'mount --bind {copy} {libc} && exec "$@"',
        "own-libc",
        sys.executable,
    ]
    with (
        workload([*wrapper, *MIXED, "--linger", "60", "--wait-stdin"], native=True) as target,
        observer(["--pid", f"copy={target.pid}"], tmp_path) as running,
    ):
        assert os.stat(f"/proc/{target.pid}/root{libc}").st_ino != os.stat(libc).st_ino
        target.go()
        truth = target.truth()
        assert_exact(settled(running, "copy", truth["threads_started"]), "copy", truth)
        assert f"/proc/{target.pid}/root" in running.log()


# Privileges
def counted_with_only(capabilities, no_new_privs: bool, tmp_path, monkeypatch) -> None:
    """uid 0 with only ``capabilities`` (as in a container) counts exactly."""
    prefix = capabilities_prefix(capabilities, no_new_privs)
    monkeypatch.setattr("tests.harness.OBSERVER_PREFIX", prefix)
    with (
        workload([*MIXED, "--linger", "60"]) as target,
        observer(["--pid", f"caps={target.pid}", "--backend", "bpf"], tmp_path) as running,
    ):
        status = Path(f"/proc/{running.process.pid}/status").read_text()
        effective = int(
            next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16
        )
        assert effective == sum(1 << CAPABILITY_BITS[c] for c in capabilities)
        target.go()
        truth = target.truth()
        assert_exact(settled(running, "caps", truth["threads_started"]), "caps", truth)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_the_sidecar_capabilities_are_enough_for_exact_counts(tmp_path, monkeypatch):
    counted_with_only(manifest_capabilities(), False, tmp_path, monkeypatch)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
@pytest.mark.skipif(
    (perf_event_paranoid() or 0) > 2,
    reason="kernel.perf_event_paranoid is above 2: perf_event_open needs CAP_SYS_ADMIN here",
)
def test_bpf_perfmon_and_ptrace_are_enough_where_paranoid_allows(tmp_path, monkeypatch):
    # What README offers for nodes at paranoid 2 or less: no SYS_ADMIN, no_new_privs.
    counted_with_only(LEAST_CAPABILITIES, True, tmp_path, monkeypatch)


CAPABILITY_BITS = {"SYS_PTRACE": 19, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39}

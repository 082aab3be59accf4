"""The demo: every scenario's figures from the observer equal its own ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import REPO, find_python
from thread_observer.demo import run_one
from thread_observer.observers import BpfObserver
from workloads.scenarios import SCENARIOS
from workloads.servers import local_servers

pytestmark = pytest.mark.bpf
PY36 = find_python("3.6")


def run_demo(*args: str) -> dict[str, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "thread_observer", "demo", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["scenario"]: row for row in rows}


@pytest.fixture(scope="module")
def demo_rows():
    return run_demo()


def test_every_scenario_is_exact(demo_rows):
    assert set(demo_rows) == set(SCENARIOS)
    for name, row in demo_rows.items():
        assert row["exact"], row
        assert row["getaddrinfo_calls"] == row["getaddrinfo_truth"], name
        assert row["event_loop_calls"] == row["event_loop_truth"], name
        assert row["threads_created"] == row["threads_truth"], name
        assert row["threads_created"] == sum(row["native_threads_created"].values()), name


def test_unix_socket_and_ip_literal_resolve_nothing_and_start_no_thread(demo_rows):
    for name in ("redis_unix", "ip_literal"):
        row = demo_rows[name]
        assert row["getaddrinfo_calls"] == 0
        assert row["native_threads_created"] == {}
        assert row["python_threads_peak"] == 1


def test_uvloop_shows_native_threads_while_python_sees_one(demo_rows):
    for name in ("semaphore_burst_uvloop", "aiohttp_client_uvloop"):
        row = demo_rows[name]
        assert row["python_threads_peak"] == 1
        creators = row["native_threads_created"]
        assert "python" not in creators
        assert list(creators.values()) == [4]  # libuv's default pool
        assert next(iter(creators)).startswith("loop.cpython-")


def test_aiohttp_with_aiodns_makes_no_libc_lookup_but_queries_on_the_wire(demo_rows):
    row = demo_rows["aiohttp_aiodns"]
    assert row["getaddrinfo_calls"] == row["getaddrinfo_truth"] == 0
    assert row["dns_queries"] == row["dns_truth"] > 0  # the private responder's count
    # Names from /etc/hosts: lookups, and not one packet.
    assert demo_rows["aiohttp_client"]["dns_queries"] == 0
    assert demo_rows["aiohttp_client"]["getaddrinfo_calls"] > 0


def test_blocking_dns_is_on_the_event_loop(demo_rows):
    row = demo_rows["blocking_dns"]
    assert row["event_loop_calls"] == row["getaddrinfo_calls"] == 10
    assert row["native_threads_created"] == {}


def test_burst_stops_at_the_executor_cap_on_this_interpreter():
    cap = min(32, (os.cpu_count() or 1) + 4)
    observer = BpfObserver([], [])
    observer.start()
    try:
        with local_servers(http=True, redis=False) as servers:
            row = run_one(
                observer,
                SCENARIOS["semaphore_burst"],
                sys.executable,
                servers,
                ["--requests", str(3 * cap), "--concurrency", str(cap + 4)],
            )
    finally:
        observer.close()
    assert row.native_threads_created == {"python": cap}
    assert row.python_threads_peak == cap + 1
    assert row.exact


@pytest.mark.skipif(PY36 is None, reason="no CPython 3.6 here (pyenv or PATH)")
def test_burst_on_python_36_grows_to_its_cap_of_five_per_cpu():
    row = run_demo("--python", PY36, "--scenario", "semaphore_burst")["semaphore_burst"]
    cap = (os.cpu_count() or 1) * 5
    assert row["python"].startswith("3.6")
    assert row["native_threads_created"] == {"python": cap}
    assert row["exact"]

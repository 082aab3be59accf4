"""The scenarios' own ground truth: exact counts, run as the observer would see them run.

No root needed. Servers are private children on loopback; only ``localhost`` (from /etc/hosts)
and IP literals are resolved, so no DNS query leaves the machine. The stdlib scenarios also run
under every CPython 3.6-3.13 found in pyenv, each skipped with the reason when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import threading
import traceback

import psutil
import pytest

from tests.harness import PYENV_ROOT, find_python
from workloads.loops import gather_limited, libuv_pool_size, run_event_loop, uvloop_calls_libc
from workloads.scenarios import SCENARIOS, run_scenario, start_scenario
from workloads.servers import PRIVATE_PORTS_FROM, free_port, local_servers
from workloads.truth import GroundTruth, eai_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHONS = ["3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


@pytest.fixture(scope="module")
def servers():
    with local_servers(redis=shutil.which("redis-server") is not None) as running:
        yield running


@pytest.fixture
def redis_servers(servers):
    if servers.redis is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    return servers


def interpreter(version: str) -> str:
    """A CPython of that version: pyenv's, else one on PATH; the test is skipped without one."""
    python = find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} here (looked in {PYENV_ROOT}/versions and PATH)")
    return python


def executor_cap(python_version: str) -> int:
    """ThreadPoolExecutor's default max_workers, computed here independently of the child."""
    major, minor = (int(part) for part in python_version.split(".")[:2])
    cpus = os.cpu_count() or 1
    if (major, minor) >= (3, 13):  # os.process_cpu_count(): the CPUs this process may use
        cpus = len(os.sched_getaffinity(0))
    return cpus * 5 if (major, minor) < (3, 8) else min(32, cpus + 4)


def run(name, servers, *args, python=sys.executable) -> dict:
    truth = run_scenario(name, python=python, servers=servers, extra_args=args)
    assert truth["scenario"] == SCENARIOS[name].module.rsplit(".", 1)[1]
    return truth


def assert_threads_are_the_executors(truth):
    assert truth["threads_started"] == truth["executor_threads"]
    assert truth["python_threads_peak"] == 1 + truth["executor_threads"]


def test_aiohttp_client_resolves_once_per_request_in_executor_threads(servers):
    truth = run("aiohttp_client", servers, "--requests", "8", "--concurrency", "3")
    assert truth["responses_ok"] == 8
    assert truth["getaddrinfo_calls"] == 8
    assert truth["getaddrinfo_on_loop"] == 0
    assert truth["getaddrinfo_failures"] == 0
    assert truth["libuv_threads"] == 0
    assert_threads_are_the_executors(truth)


def localhost_addresses(port) -> list:
    infos = socket.getaddrinfo(
        "localhost", port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
    )
    return [info[4][0] for info in infos]


def test_aiohttp_client_on_uvloop_makes_two_libc_calls_per_request_and_no_python_thread(servers):
    if localhost_addresses(servers.http_port) != ["127.0.0.1"]:
        pytest.skip(
            "localhost has more addresses than 127.0.0.1 here: the count of connect "
            "attempts per request would depend on the happy-eyeballs order"
        )
    truth = run("aiohttp_client_uvloop", servers, "--requests", "8", "--concurrency", "3")
    assert truth["responses_ok"] == 8
    # One lookup of "localhost", then one more of "127.0.0.1" in uvloop's sock_connect.
    assert truth["getaddrinfo_calls"] == 2 * 8
    assert truth["getaddrinfo_on_loop"] == 0
    assert truth["threads_started"] == 0
    assert truth["python_threads_peak"] == 1
    assert truth["libuv_threads"] == libuv_pool_size()


def test_redis_over_a_unix_socket_resolves_nothing_and_starts_no_thread(redis_servers):
    truth = run("redis_unix", redis_servers, "--requests", "30", "--concurrency", "3")
    assert truth["final_value"] == 30
    assert truth["connections"] == 3
    assert truth["getaddrinfo_calls"] == 0
    assert truth["threads_started"] == 0
    assert truth["python_threads_peak"] == 1


def test_redis_over_tcp_resolves_once_per_connection_not_per_command(redis_servers):
    truth = run("redis_tcp", redis_servers, "--requests", "30", "--concurrency", "3")
    assert truth["final_value"] == 30
    assert truth["connections"] == 3
    assert truth["getaddrinfo_calls"] == 3
    assert truth["getaddrinfo_on_loop"] == 0
    assert_threads_are_the_executors(truth)


def test_redis_over_tcp_on_uvloop_resolves_in_libuv(redis_servers):
    truth = run(
        "redis_tcp", redis_servers, "--requests", "30", "--concurrency", "3", "--loop", "uvloop"
    )
    assert truth["final_value"] == 30
    assert truth["connections"] == 3
    assert truth["getaddrinfo_calls"] == 3
    assert truth["threads_started"] == 0
    assert truth["libuv_threads"] == libuv_pool_size()


@pytest.mark.parametrize("version", PYTHONS)
def test_semaphore_burst_grows_the_executor_to_its_cap(servers, version):
    python = interpreter(version)
    cap = executor_cap(version)
    requests = max(30, cap + 3)
    # From 3.8 an idle worker is reused, so the pool only reaches its cap with that many
    # lookups in flight; before 3.8 every lookup starts a worker until the cap.
    concurrency = 3 if version in ("3.6", "3.7") else requests
    truth = run(
        "semaphore_burst",
        servers,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        python=python,
    )
    assert truth["python"].startswith(version + ".")
    assert truth["responses_ok"] == requests
    assert truth["getaddrinfo_calls"] == requests
    assert truth["getaddrinfo_on_loop"] == 0
    assert truth["executor_max_workers"] == cap
    assert truth["executor_threads"] == cap
    assert truth["python_threads_peak"] == 1 + cap
    assert truth["threads_started"] == cap


def test_semaphore_burst_seed_on_this_interpreter(servers):
    truth = run("semaphore_burst", servers)
    assert truth["requests"] == 30 and truth["concurrency"] == 3
    assert truth["getaddrinfo_calls"] == 30
    assert_threads_are_the_executors(truth)


def test_semaphore_burst_on_uvloop_shows_one_python_thread(servers):
    truth = run("semaphore_burst_uvloop", servers)
    assert truth["responses_ok"] == 30
    assert truth["getaddrinfo_calls"] == 30
    assert truth["getaddrinfo_on_loop"] == 0
    assert truth["threads_started"] == 0
    assert truth["python_threads_peak"] == 1
    assert truth["libuv_threads"] == libuv_pool_size()


@pytest.mark.parametrize("version", PYTHONS)
def test_ip_literal_resolves_nothing_and_starts_no_thread(servers, version):
    truth = run("ip_literal", servers, "--requests", "12", python=interpreter(version))
    assert truth["responses_ok"] == 12
    assert truth["getaddrinfo_calls"] == 0
    assert truth["threads_started"] == 0
    assert truth["python_threads_peak"] == 1


def test_ip_literal_on_uvloop_resolves_nothing_either(servers):
    truth = run("ip_literal", servers, "--requests", "12", "--loop", "uvloop")
    assert truth["responses_ok"] == 12
    assert truth["getaddrinfo_calls"] == 0
    assert truth["threads_started"] == 0
    assert truth["libuv_threads"] == 0


@pytest.mark.parametrize("version", PYTHONS)
def test_blocking_dns_records_every_call_as_on_the_loop(servers, version):
    truth = run("blocking_dns", servers, "--requests", "7", python=interpreter(version))
    assert truth["responses_ok"] == 7
    assert truth["getaddrinfo_calls"] == 7
    assert truth["getaddrinfo_on_loop"] == 7
    assert truth["threads_started"] == 0
    assert truth["python_threads_peak"] == 1


@pytest.mark.parametrize("version", PYTHONS)
def test_to_thread_grows_the_executor_without_any_lookup(servers, version):
    cap = executor_cap(version)
    jobs = str(cap + 2)
    truth = run(
        "to_thread", servers, "--requests", jobs, "--concurrency", jobs, python=interpreter(version)
    )
    assert truth["jobs_done"] == cap + 2
    assert truth["getaddrinfo_calls"] == 0
    assert truth["executor_threads"] == cap
    assert_threads_are_the_executors(truth)


@pytest.mark.parametrize("version", PYTHONS)
def test_mixed_counts_threads_lookups_and_local_failures(servers, version):
    truth = run(
        "mixed",
        servers,
        "--threads",
        "7",
        "--loop-calls",
        "4",
        "--blocking-calls",
        "2",
        "--failures",
        "5",
        python=interpreter(version),
    )
    errors = {"EAI_SERVICE": 2, "EAI_BADFLAGS": 2, "EAI_NONAME": 1}
    assert truth["getaddrinfo_calls"] == 4 + 2 + 5
    assert truth["getaddrinfo_on_loop"] == 2 + 5
    assert truth["getaddrinfo_failures"] == 5
    assert truth["getaddrinfo_errors"] == errors
    assert truth["failures_by_error"] == errors
    assert (truth["short_threads"], truth["long_threads"]) == (4, 3)
    assert truth["threads_started"] == 7 + truth["executor_threads"]
    if version in ("3.6", "3.7"):  # no idle-worker reuse: one worker per lookup, to the cap
        assert truth["executor_threads"] == 4


def test_mixed_on_uvloop_counts_the_lookups_libuv_makes(servers):
    truth = run(
        "mixed",
        servers,
        "--threads",
        "3",
        "--loop-calls",
        "6",
        "--blocking-calls",
        "1",
        "--failures",
        "3",
        "--loop",
        "uvloop",
    )
    assert truth["getaddrinfo_calls"] == 6 + 1 + 3
    assert truth["getaddrinfo_on_loop"] == 1 + 3
    assert truth["getaddrinfo_errors"] == {"EAI_BADFLAGS": 1, "EAI_NONAME": 1, "EAI_SERVICE": 1}
    assert truth["threads_started"] == 3
    assert truth["executor_threads"] == 0
    assert truth["libuv_threads"] == libuv_pool_size()


def test_the_pid_is_known_before_the_work_and_the_truth_before_the_exit(servers):
    with start_scenario("mixed", servers=servers, extra_args=["--linger", "30"]) as child:
        waiting = psutil.Process(child.pid)
        assert waiting.num_threads() == 1
        truth = child.truth()
        assert truth["pid"] == child.pid
        assert child.child.poll() is None, "the child should still linger"
    assert child.child.returncode is not None


def test_servers_leave_nothing_running():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with local_servers(redis=shutil.which("redis-server") is not None) as running:
        started = {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert len(started) == (2 if running.redis else 1)
        if running.redis:
            assert os.path.exists(running.redis.socket)
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not started & after
    if running.redis:
        assert not os.path.exists(os.path.dirname(running.redis.socket))


def test_a_free_port_is_never_one_the_kernel_hands_to_a_bind_to_port_0():
    # A server told its port must still find it free when it binds, whatever other servers
    # and clients started meanwhile: those draw from the ephemeral range, this never does.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    if low > PRIVATE_PORTS_FROM:
        assert all(PRIVATE_PORTS_FROM <= port < low for port in ports)
    taken = []
    for port in ports[:50]:
        server = socket.socket()
        server.bind(("127.0.0.1", port))  # still free
        taken.append(server)
    for server in taken:
        server.close()


def test_every_scenario_is_registered_with_a_runnable_module():
    for name, scenario in SCENARIOS.items():
        assert scenario.name == name and scenario.teaches and scenario.description
        assert scenario.runs_on(sys.version_info), name
        if not scenario.requires:
            assert scenario.runs_on((3, 6)), name
        path = os.path.join(REPO, *scenario.module.split(".")) + ".py"
        assert os.path.exists(path), name


# (host, port, family, type, proto) lookups on uvloop: which go to libc and which uvloop
# answers by itself is checked against uvloop itself below.
UVLOOP_LOOKUPS = [
    ("127.0.0.1", 80, 0, 0, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_DGRAM, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_RAW, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, socket.IPPROTO_SCTP),
    ("127.0.0.1", "http", 0, socket.SOCK_STREAM, 0),
    ("127.0.0.1", "no-such-service-name", 0, socket.SOCK_STREAM, 0),
    ("127.0.0.1", None, 0, socket.SOCK_STREAM, 0),
    (b"127.0.0.1", "80", 0, socket.SOCK_STREAM, 0),
    ("::1", 80, 0, socket.SOCK_STREAM, 0),
    ("::1", 80, socket.AF_INET, socket.SOCK_STREAM, 0),
    ("fe80::1%lo", 80, 0, socket.SOCK_STREAM, 0),
    ("127.1", 80, 0, socket.SOCK_STREAM, 0),
    ("localhost", 80, 0, socket.SOCK_STREAM, 0),
    (None, 80, 0, socket.SOCK_STREAM, 0),
]


@pytest.mark.parametrize("lookup", UVLOOP_LOOKUPS, ids=repr)
def test_uvloop_libc_rule_matches_uvloop(lookup):
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        assert uvloop_calls_libc(*lookup) == suspends_for_libuv(loop, *lookup)
    finally:
        loop.close()


def suspends_for_libuv(loop, host, port, family, kind, proto) -> bool:
    """uvloop answers a lookup itself without suspending; it suspends only to wait for libuv."""
    lookup = loop.getaddrinfo(host, port, family=family, type=kind, proto=proto)
    try:
        pending = lookup.send(None)
    except (StopIteration, socket.gaierror):
        return False
    with contextlib.suppress(socket.gaierror):
        loop.run_until_complete(pending)
    lookup.close()
    return True


def test_ground_truth_counts_failures_by_eai_name():
    truth = GroundTruth().install()
    try:
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("localhost", "no-such-service-name", type=socket.SOCK_STREAM)
        truth.count_native_getaddrinfo(calls=2, failures=1, error="EAI_NONAME")
    finally:
        truth.uninstall()
    data = truth.as_dict()
    assert (data["getaddrinfo_calls"], data["getaddrinfo_failures"]) == (3, 2)
    assert data["getaddrinfo_errors"] == {"EAI_NONAME": 1, "EAI_SERVICE": 1}
    assert data["pid"] == os.getpid()
    assert eai_name(socket.EAI_BADFLAGS) == "EAI_BADFLAGS"
    assert eai_name(12345) == "EAI_12345"


def test_ground_truth_tells_the_loop_thread_from_others():
    # Threads an earlier test of this process left running count in the peak too.
    already = threading.active_count()
    truth = GroundTruth().install()

    async def on_and_off_the_loop():
        socket.getaddrinfo("127.0.0.1", 80)
        await asyncio.get_running_loop().run_in_executor(None, socket.getaddrinfo, "::1", 80)

    try:
        run_event_loop(on_and_off_the_loop, "asyncio", truth)
    finally:
        truth.uninstall()
    data = truth.as_dict()
    assert (data["getaddrinfo_calls"], data["getaddrinfo_on_loop"]) == (2, 1)
    assert (data["threads_started"], data["python_threads_peak"] - already) == (1, 1)


def test_gather_limited_keeps_the_order_and_never_runs_more_than_the_limit_at_once():
    started, in_flight, peaks = [], [0], []

    async def job():
        index = len(started)
        started.append(index)
        in_flight[0] += 1
        peaks.append(in_flight[0])
        await asyncio.sleep(0)
        in_flight[0] -= 1
        return index

    results, _ = run_event_loop(lambda: gather_limited(job, 10, 3))
    assert results == list(range(10))
    assert max(peaks) == 3


@pytest.mark.parametrize(
    "environ, size",
    [
        ({}, 4),
        ({"UV_THREADPOOL_SIZE": "2"}, 2),
        ({"UV_THREADPOOL_SIZE": "0"}, 1),
        ({"UV_THREADPOOL_SIZE": "5000"}, 1024),
    ],
)
def test_libuv_pool_size_follows_libuv(environ, size):
    assert libuv_pool_size(environ) == size


def test_ground_truth_is_no_frame_at_the_calls_it_counts():
    """The observer names the first frame outside the plumbing: the truth's own code must not
    be on the stack at the C calls, or it would be named instead of the workload's."""
    stacks = []

    def at_c_calls(frame, event, arg):
        starters = ("getaddrinfo", "start_new_thread", "start_joinable_thread")
        if event == "c_call" and getattr(arg, "__name__", "") in starters:
            stacks.append([f.f_code.co_filename for f, _ in traceback.walk_stack(frame)])

    truth = GroundTruth().install()
    sys.setprofile(at_c_calls)
    try:
        socket.getaddrinfo("127.0.0.1", 80)
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
    finally:
        sys.setprofile(None)
        truth.uninstall()
    assert len(stacks) == 2
    assert not [name for stack in stacks for name in stack if name.endswith("truth.py")]
    assert (truth.getaddrinfo_calls, truth.threads_started) == (1, 1)

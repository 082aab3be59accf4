"""Python call sites read from outside, exact against the stacks the workload records itself
at the same C calls (its profiler hook), on every interpreter the observer reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import debian_python, harness
from tests.harness import observer, wait_until, workload
from thread_observer.constants import SiteLimit
from thread_observer.pyruntime import CodeInfo
from thread_observer.sites import MAX_SITE_LENGTH, NATIVE, site_label, under_asyncio_loop
from workloads.call_sites import ANYIO_WORKERS
from workloads.servers import http_server

pytestmark = pytest.mark.bpf

PYENV = Path("/root/.pyenv/versions")
PYTHONS = {
    "debian-3.11": "/usr/bin/python3.11",
    **{
        f"pyenv-{v}": str(PYENV / v / "bin" / "python")
        for v in ("3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0")
    },
}
# Interpreters unpacked from Debian's archive into a root of their own (tests/debian_python.py).
DEBIAN_PYTHONS = {"debian-sid-3.14": ("3.14", "sid")}
UNSUPPORTED = {f"pyenv-{v}": str(PYENV / v / "bin" / "python") for v in ("3.6.15", "3.7.16")}
WORKLOAD = ["-m", "workloads.call_sites", "--linger", "60"]
# Grows a ThreadPoolExecutor to POOL_WORKERS threads that wait, prints their tids, and at the
# next line lets them go and shuts the pool down.
POOL_WORKERS = 12
POOL = f"""
import concurrent.futures, json, os, sys, threading
print(json.dumps({{"ready": True, "pid": os.getpid()}}), flush=True)
sys.stdin.readline()
started, release, lock, tids = threading.Semaphore(0), threading.Event(), threading.Lock(), []
def wait():
    with lock:
        tids.append(threading.get_native_id())
    started.release()
    release.wait()
pool = concurrent.futures.ThreadPoolExecutor(max_workers={POOL_WORKERS})
for _ in range({POOL_WORKERS}):
    pool.submit(wait)
    started.acquire()  # each submit finds no idle worker: a new thread
print(json.dumps({{"tids": tids}}), flush=True)
sys.stdin.readline()
release.set()
pool.shutdown(wait=True)
print(json.dumps({{"shut down": True}}), flush=True)
sys.stdin.readline()
"""
TESTS = Path(__file__).resolve().parent
# Where the kernel keeps per-thread state (thread_state.h): the observer's command prefix.
THREAD_STATES = {
    "task storage": [],
    "map": [sys.executable, str(TESTS / "without_task_storage.py")],
}
# Where the observer sees epoll waits: the observer's command prefix for each.
EPOLL_HOOKS = {
    "sched_switch": [],
    "syscall tracepoints": harness.SYSCALL_TRACEPOINTS,
}


def use_epoll_hooks(hooks: str, monkeypatch) -> None:
    if hooks == "sched_switch":
        harness.skip_unless_raw_tracepoints("epoll_at_switch")
    monkeypatch.setattr(harness, "OBSERVER_PREFIX", EPOLL_HOOKS[hooks])


def frames_of(event) -> list[CodeInfo]:
    return [CodeInfo(filename, qualname, flags) for filename, qualname, flags in event["frames"]]


def expected_threads(truth) -> Counter:
    sites = Counter(
        site_label(frames_of(e), thread=True) for e in truth["events"] if e["event"] == "thread"
    )
    return sites


def expected_caller(event) -> str:
    """The workload's own answer (a loop was running on the thread), where the frames can
    tell: a coroutine on the stack, or asyncio's loop frames under a plain callback. A plain
    callback of uvloop, whose loop is C code, has neither: other (README)."""
    frames = frames_of(event)
    coroutine = any(code.flags & SiteLimit.CO_COROUTINE_FLAGS for code in frames)
    if event["on_loop"] and (coroutine or under_asyncio_loop(frames)):
        return "event_loop"
    return "other"


def expected_calls(truth) -> Counter:
    calls = Counter(
        (site_label(frames_of(e)), expected_caller(e))
        for e in truth["events"]
        if e["event"] == "getaddrinfo"
    )
    if truth["native_getaddrinfo_calls"]:
        calls[(NATIVE, "other")] += truth["native_getaddrinfo_calls"]
    return calls


def settled(running, target, truth):
    calls = (
        sum(e["event"] == "getaddrinfo" for e in truth["events"])
        + truth["native_getaddrinfo_calls"]
    )

    def done():
        metrics = running.scrape()
        seen = metrics.value("thread_observer_getaddrinfo_calls_by_site_total", target=target)
        return metrics if seen == calls else None

    try:
        return wait_until(done, 10, "every lookup to be counted by site")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}\n{running.log()}") from None


def site_series(metrics, target):
    threads = Counter(
        metrics.labels("thread_observer_threads_created_by_site_total", "site", target=target)
    )
    calls = Counter(
        {
            (s.labels["site"], s.labels["caller"]): s.value
            for s in metrics.samples
            if s.name == "thread_observer_getaddrinfo_calls_by_site_total"
            and s.labels["target"] == target
        }
    )
    return threads, calls


@contextmanager
def watched_run(
    args: list[str],
    target: str,
    tmp_path,
    python: str = sys.executable,
    observer_args: tuple = (),
    own_pid_namespace: bool = False,
):
    """The workload run to its end under an observer: (observer, ground truth)."""
    if not os.path.exists(python):
        pytest.skip(f"{python} is not installed")
    with (
        workload(args, python=python, own_pid_namespace=own_pid_namespace) as running_workload,
        observer(
            ["--pid", f"{target}={running_workload.pid}", *observer_args], tmp_path
        ) as running,
    ):
        running_workload.go()
        yield running, running_workload.truth()


def threads_counted(running, target, truth):
    """The scrape once every thread has been counted (by-site or not)."""
    return wait_until(
        lambda: (
            (m := running.scrape()).value("thread_observer_threads_created_total", target=target)
            == truth["threads_started"]
            and m
        ),
        10,
        "the threads to be counted",
    )


def here(qualname: str) -> str:
    return f"{Path(__file__).resolve().parent.parent}/workloads/call_sites.py:{qualname}"


def interpreter(name: str) -> str:
    """The command of an interpreter by its test id."""
    if name in DEBIAN_PYTHONS:
        return str(debian_python.fetch(*DEBIAN_PYTHONS[name]).command)
    return PYTHONS[name]


@pytest.mark.parametrize("python", sorted(PYTHONS) + sorted(DEBIAN_PYTHONS))
def test_sites_equal_the_stacks_the_workload_records(python, tmp_path):
    with watched_run(WORKLOAD, "sites", tmp_path, interpreter(python)) as (running, truth):
        metrics = settled(running, "sites", truth)
        threads, calls = site_series(metrics, "sites")
        assert threads == expected_threads(truth)
        assert calls == expected_calls(truth)
        # The known answers, spelled out.
        assert threads[here("spawn_plain_threads")] == 5
        assert threads[here("main")] == 1  # the selecting thread
        assert threads[here("keep_idle_threads")] == 8
        assert threads[here("grow_default_executor")] == truth["executor_threads"]["default"]
        assert threads[here("use_named_pool")] == 3
        assert threads[here("block_in_anyio_worker")] == truth["executor_threads"]["anyio"]
        assert calls[(here("blocking_lookup_in_coroutine"), "event_loop")] == 3
        assert calls[(here("lookups_in_callback"), "event_loop")] == 2
        assert calls[(here("sync_lookups_after_asyncio_run"), "other")] == 4
        assert calls[(here("lookups_between_selects"), "other")] == 3
        # Before 3.11 code objects have no qualname: the function's name stands in.
        version = tuple(int(part) for part in truth["python"].split(".")[:2])
        work_item = "_WorkItem.run" if version >= (3, 11) else "run"
        assert calls[(f"concurrent/futures/thread.py:{work_item}", "other")] == 6
        # The caller split of the plain counter follows the frames too.
        assert metrics.labels(
            "thread_observer_getaddrinfo_calls_total", "caller", target="sites"
        ) == {"event_loop": 3 + 2, "other": 13}
        pools = metrics.labels("thread_observer_executor_threads", "pool", target="sites")
        assert pools == truth["executor_threads"]
        # Its workers wait for work by now: none busy (tests/test_executors.py fills one).
        assert (
            metrics.value(
                "thread_observer_executor_saturation_ratio", target="sites", pool="default"
            )
            == 0.0
        )
        assert (
            metrics.value("thread_observer_executor_max_workers", target="sites", pool="default")
            == (truth["executor_max_workers"])
        )
        assert metrics.value("thread_observer_sites_unavailable") is None


@pytest.mark.parametrize(
    "python", ["debian-3.11", "pyenv-3.9.18", "pyenv-3.13.0", "debian-sid-3.14"]
)
def test_a_target_in_its_own_pid_namespace_has_its_sites_read(python, tmp_path):
    # Its thread states hold the ids of its namespace (the main thread's is 1), not the
    # observer's: the probes ask the kernel for the calling thread's id there. 3.9 reads the
    # tid in glibc's struct pthread, 3.13 and 3.14 their published offsets.
    with watched_run(WORKLOAD, "ns", tmp_path, interpreter(python), own_pid_namespace=True) as (
        running,
        truth,
    ):
        assert truth["pid"] == 1
        metrics = settled(running, "ns", truth)
        threads, calls = site_series(metrics, "ns")
        assert threads == expected_threads(truth)
        assert calls == expected_calls(truth)
        assert threads[here("spawn_plain_threads")] == 5
        assert metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target="ns") == {
            "event_loop": 3 + 2,
            "other": 13,
        }
        pools = metrics.labels("thread_observer_executor_threads", "pool", target="ns")
        assert pools == truth["executor_threads"]
        assert metrics.value("thread_observer_sites_unavailable") is None


def test_uvloop_libuv_threads_are_native_and_a_blocking_coroutine_is_on_the_loop(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("UV_THREADPOOL_SIZE", "4")
    with watched_run([*WORKLOAD, "--loop", "uvloop"], "uv", tmp_path) as (running, truth):
        metrics = settled(running, "uv", truth)
        threads, calls = site_series(metrics, "uv")
        assert threads == expected_threads(truth) + Counter({NATIVE: 4})
        assert calls == expected_calls(truth)
        assert calls[(here("blocking_lookup_in_coroutine"), "event_loop")] == 3
        # uvloop runs a plain callback from C: no coroutine, no loop frame to tell by.
        assert calls[(here("lookups_in_callback"), "other")] == 2
        assert calls[(NATIVE, "other")] == 3
        # AnyIO's workers (installed with this interpreter), told apart by their stack.
        assert truth["executor_threads"]["anyio"] == ANYIO_WORKERS
        assert threads[here("block_in_anyio_worker")] == ANYIO_WORKERS
        pools = metrics.labels("thread_observer_executor_threads", "pool", target="uv")
        # uvloop's run_in_executor is C code, no frame, but its loop's struct names the
        # default executor (thread_observer/executors.py).
        assert pools == truth["executor_threads"]


def test_hostile_stacks_stay_bounded_and_exact(tmp_path):
    with watched_run([*WORKLOAD, "--hostile"], "hostile", tmp_path, PYTHONS["pyenv-3.12.1"]) as (
        running,
        truth,
    ):
        metrics = settled(running, "hostile", truth)
        threads, calls = site_series(metrics, "hostile")
        assert sum(threads.values()) == truth["threads_started"]
        assert threads[here("recurse")] == 1
        assert threads[here("q" * 300)[: MAX_SITE_LENGTH - 3] + "..."] == 1, threads
        assert all(len(site) <= MAX_SITE_LENGTH for site in threads)
        assert all(len(site) <= MAX_SITE_LENGTH for site, _ in calls)
        # Under 1,000 frames no coroutine is found within reach: the epoll mark decides, and
        # that thread never waited in epoll.
        assert calls[(here("recurse"), "other")] == 1
        weird = [site for site in threads if "na\u00efve" in site]
        assert weird == [here('na\u00efve_\u2603_\\x0a"\\_\\x7f')]


@pytest.mark.parametrize("python", sorted(UNSUPPORTED))
def test_unsupported_interpreters_say_so(python, tmp_path):
    with watched_run(WORKLOAD, "old", tmp_path, UNSUPPORTED[python]) as (running, truth):
        metrics = threads_counted(running, "old", truth)
        assert metrics.labels("thread_observer_sites_unavailable", "reason") == {
            "unsupported_version": 1
        }
        assert metrics.value("thread_observer_threads_created_by_site_total", target="old") is None
        assert metrics.value("thread_observer_executor_threads", target="old") is None
        assert "Python call sites unavailable (unsupported_version)" in running.log()


# Without frames, caller comes from the epoll mark alone. At the syscall tracepoints a thread
# is marked by any epoll wait; at sched_switch, by one it slept in. The workload's main thread
# waits in asyncio's epoll without sleeping (each of its loops has work ready: 4 lookups after
# asyncio.run, 3 in a coroutine, 2 in a callback), its selecting thread polls one with a zero
# timeout (3 lookups), and its executor threads never wait in one (6).
NO_SITES_CALLERS = {
    "sched_switch": {"event_loop": 0, "other": 4 + 3 + 3 + 2 + 6},
    "syscall tracepoints": {"event_loop": 4 + 3 + 3 + 2, "other": 6},
}


@pytest.mark.parametrize("hooks", list(EPOLL_HOOKS))
def test_no_sites_flag_reads_no_frames(hooks, tmp_path, monkeypatch):
    use_epoll_hooks(hooks, monkeypatch)
    with watched_run(WORKLOAD, "plain", tmp_path, observer_args=("--no-sites",)) as (
        running,
        truth,
    ):
        metrics = threads_counted(running, "plain", truth)
        assert metrics.value("thread_observer_threads_created_by_site_total") is None
        assert metrics.labels("thread_observer_sites_unavailable", "reason") == {"disabled": 1}
        assert (
            metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target="plain")
            == NO_SITES_CALLERS[hooks]
        )


# An event loop that has slept in epoll_wait, then blocks in LOOP lookups; a thread that polls
# an epoll with a zero timeout before each of its POLL lookups, as a gunicorn gthread worker
# does between requests, and runs no event loop.
LOOP, POLL = 5, 3
EPOLL_WAITERS = f"""
import asyncio, json, os, selectors, socket, sys, threading
print(json.dumps({{"ready": True, "pid": os.getpid()}}), flush=True)
sys.stdin.readline()
def polling():
    selector = selectors.DefaultSelector()
    for _ in range({POLL}):
        selector.select(timeout=0)
        socket.getaddrinfo("localhost", 80)
async def blocking():
    await asyncio.sleep(0.05)
    for _ in range({LOOP}):
        socket.getaddrinfo("localhost", 80)
thread = threading.Thread(target=polling)
thread.start()
thread.join()
asyncio.run(blocking())
print(json.dumps({{"calls": {LOOP + POLL}}}), flush=True)
sys.stdin.readline()
"""


# The syscall tracepoints see the poll too: they mark any thread that waits at all.
WAITERS_CALLERS = {
    "sched_switch": {"event_loop": LOOP, "other": POLL},
    "syscall tracepoints": {"event_loop": LOOP + POLL, "other": 0},
}


@pytest.mark.parametrize("hooks", list(EPOLL_HOOKS))
def test_the_epoll_mark_tells_a_sleeping_event_loop_from_a_polling_thread(
    hooks, tmp_path, monkeypatch
):
    use_epoll_hooks(hooks, monkeypatch)
    with (
        workload(["-c", EPOLL_WAITERS]) as waiters,
        observer(["--pid", f"waiters={waiters.pid}", "--no-sites"], tmp_path) as running,
    ):
        waiters.go()
        assert json.loads(waiters._line()) == {"calls": LOOP + POLL}
        metrics = harness.settled(
            running, {"thread_observer_getaddrinfo_calls_total": LOOP + POLL}, target="waiters"
        )
        callers = metrics.labels("thread_observer_getaddrinfo_calls_total", "caller")
    assert callers == WAITERS_CALLERS[hooks]


def test_aiohttp_executor_threads_and_lookups_are_read_through_its_stack(tmp_path):
    args = ["-m", "workloads.aiohttp_client", "--requests", "8", "--concurrency", "3"]
    with (
        http_server() as port,
        watched_run([*args, "--port", str(port), "--linger", "60"], "aio", tmp_path) as (
            running,
            truth,
        ),
    ):
        metrics = threads_counted(running, "aio", truth)
        threads, calls = site_series(metrics, "aio")
        # The workload counts its own threads and lookups with a trace function, which is no
        # frame of the stack at the call: the site that grew the executor is aiohttp's
        # resolver, and the lookups ran in the executor's workers. The loop never blocked.
        resolver = "aiohttp/resolver.py:ThreadedResolver.resolve"
        assert threads == {resolver: truth["executor_threads"]}
        assert calls == {
            ("concurrent/futures/thread.py:_WorkItem.run", "other"): truth["getaddrinfo_calls"]
        }


@pytest.mark.parametrize("states", sorted(THREAD_STATES))
def test_pool_threads_are_counted_while_they_live(states, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "OBSERVER_PREFIX", THREAD_STATES[states])
    with (
        workload(["-c", POOL]) as pool,
        observer(["--pid", f"pool={pool.pid}"], tmp_path) as running,
    ):
        pool.go()
        tids = json.loads(pool._line())["tids"]
        assert len(set(tids)) == POOL_WORKERS
        metrics = harness.settled(
            running, {"thread_observer_executor_threads": POOL_WORKERS}, pool="thread_pool"
        )
        assert metrics.labels("thread_observer_executor_threads", "pool", target="pool") == {
            "default": 0,
            "thread_pool": POOL_WORKERS,
            "anyio": 0,
        }
        pool.go()
        assert json.loads(pool._line()) == {"shut down": True}
        harness.settled(running, {"thread_observer_executor_threads": 0}, pool="thread_pool")


# Python asks a native thread of an extension's for lookups (grpcio's resolver threads sleep in
# epoll between their polls): the library is built here, its thread made in C.
NATIVE_POLLER = """
import ctypes, json, os, sys
library = ctypes.CDLL(sys.argv[1])
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
sys.stdin.readline()
print(json.dumps({"lookups": library.resolve_on_native_thread(int(sys.argv[2]))}), flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("hooks", sorted(EPOLL_HOOKS))
def test_a_native_thread_that_sleeps_in_epoll_is_never_on_an_event_loop(
    hooks, tmp_path, monkeypatch
):
    use_epoll_hooks(hooks, monkeypatch)
    library = tmp_path / "libepoll_resolver.so"
    source = TESTS / "targets" / "epoll_resolver.c"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-pthread", "-o", str(library), str(source)], check=True
    )
    with (
        workload(["-c", NATIVE_POLLER, str(library), "9"], wait=False) as poller,
        observer(["--pid", f"poller={poller.pid}"], tmp_path) as running,
    ):
        assert json.loads(poller._line())["ready"]
        wait_until(lambda: harness.sites_read(running, poller.pid), 10, "frames read")
        poller.go()
        assert json.loads(poller._line()) == {"lookups": 9}
        metrics = harness.settled(running, {"thread_observer_getaddrinfo_calls_total": 9})
        calls = metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target="poller")
        assert calls == {"event_loop": 0, "other": 9}
        created = metrics.labels(
            "thread_observer_threads_created_total", "creator", target="poller"
        )
        assert created == {"libepoll_resolver.so": 1}


# A loop run to its end, then lookups at once: all of it in the process's first milliseconds,
# before user space can have found its interpreter. The thread waited in epoll while the loop
# ran: only its frames tell that the lookups after it are not the loop's.
EARLY_LOOKUPS = """
import asyncio, socket
async def main():
    socket.getaddrinfo("localhost", 80)  # blocks the running loop
asyncio.run(main())
for _ in range(5):
    socket.getaddrinfo("localhost", 80)
"""
WAITING = "import sys; print('{\"ready\": true}', flush=True); sys.stdin.readline()"
EARLY_RUNS = 20


# Debian's python3.11 has the interpreter linked into the executable (placed at the exec);
# pyenv's are built with --enable-shared (libpython, placed as the interpreter starts).
KNOWN_OBJECTS = ("debian-3.11", "pyenv-3.11.7", "pyenv-3.12.1", "pyenv-3.13.0")


@pytest.mark.parametrize("python", KNOWN_OBJECTS)
def test_a_new_process_of_a_known_interpreter_has_its_frames_read_from_its_start(python, tmp_path):
    command = interpreter(python)
    if not os.path.exists(command):
        pytest.skip(f"{command} is not installed")
    tag = f"tag={os.getpid()}-{tmp_path.name}"
    with observer(["--target", f"early=python.*-X {tag}"], tmp_path) as running:
        # One process of this interpreter read first: its object becomes known.
        with workload(["-X", tag, "-c", WAITING], python=command, wait=False) as first:
            assert json.loads(first._line())["ready"]
            wait_until(lambda: harness.sites_read(running, first.pid), 30, "frames read")
            wait_until(lambda: "known: processes that map it" in running.log(), 10, "known")
            first.go()
        for _ in range(EARLY_RUNS):
            subprocess.run([command, "-X", tag, "-c", EARLY_LOOKUPS], check=True)
        calls = {"thread_observer_getaddrinfo_calls_total": EARLY_RUNS * 6}
        metrics = harness.settled(running, calls, target="early")
        by_caller = metrics.labels(
            "thread_observer_getaddrinfo_calls_total", "caller", target="early"
        )
        assert by_caller == {"event_loop": EARLY_RUNS, "other": EARLY_RUNS * 5}


# grpcio's native resolver looks names up in grpc's own threads, which have no Python thread
# state (they sleep in epoll between their jobs). Ground truth from an LD_PRELOAD counter of
# every getaddrinfo call the process makes (tests/targets/count_getaddrinfo.c).
GRPC_NATIVE = """
import ctypes, json, os, sys
from concurrent import futures
import grpc
counted = ctypes.CDLL(None).getaddrinfo_calls
counted.restype = ctypes.c_ulong
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
sys.stdin.readline()
echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
handler = grpc.method_handlers_generic_handler("Echo", {"Call": echo})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
for _ in range(int(sys.argv[1])):
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        assert channel.unary_unary("/Echo/Call")(b"ping", timeout=10) == b"ping"
server.stop(None)
print(json.dumps({"getaddrinfo_calls": counted()}), flush=True)
sys.stdin.readline()
"""
GRPC_CHANNELS = 10


def test_grpc_native_resolver_lookups_are_never_on_an_event_loop(tmp_path):
    pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio)")
    counter = tmp_path / "libcount_getaddrinfo.so"
    source = TESTS / "targets" / "count_getaddrinfo.c"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(counter), str(source), "-ldl"], check=True
    )
    command = [
        "env",
        "GRPC_DNS_RESOLVER=native",
        f"LD_PRELOAD={counter}",
        sys.executable,
        "-c",
        GRPC_NATIVE,
        str(GRPC_CHANNELS),
    ]
    with (
        workload(command, native=True) as client,
        observer(["--pid", f"grpc={client.pid}"], tmp_path) as running,
    ):
        wait_until(lambda: harness.sites_read(running, client.pid), 10, "frames read")
        client.go()
        calls = json.loads(client._line())["getaddrinfo_calls"]
        assert calls >= GRPC_CHANNELS  # one per channel, and the server's own address
        metrics = harness.settled(
            running, {"thread_observer_getaddrinfo_calls_total": calls}, target="grpc"
        )
        callers = metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target="grpc")
        assert callers == {"event_loop": 0, "other": calls}

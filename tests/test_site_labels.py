"""Stacks to site labels, the by-site and executor metrics, fed plain data: no root, no BPF."""

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from thread_observer.collector import ObserverCollector
from thread_observer.constants import StackFlag
from thread_observer.labels import HostLabels
from thread_observer.model import Counts, Executor, ProcessRow, Snapshot
from thread_observer.pyruntime import CodeInfo
from thread_observer.sites import (
    MAX_SITE_LENGTH,
    NATIVE,
    UNKNOWN_FRAME,
    ProcessSites,
    short_path,
    site_label,
    under_asyncio_loop,
)

STDLIB = "/usr/lib/python3.11/"
PYENV_STDLIB = "/root/.pyenv/versions/3.12.1/lib/python3.12/"
PACKAGES = "/srv/app/.venv/lib/python3.11/site-packages/"


def code(path: str, qualname: str, flags: int = 0) -> CodeInfo:
    return CodeInfo(path, qualname, flags)


THREAD_START = code(STDLIB + "threading.py", "Thread.start")
ADJUST = code(STDLIB + "concurrent/futures/thread.py", "ThreadPoolExecutor._adjust_thread_count")
SUBMIT = code(STDLIB + "concurrent/futures/thread.py", "ThreadPoolExecutor.submit")
RUN_IN_EXECUTOR = code(STDLIB + "asyncio/base_events.py", "BaseEventLoop.run_in_executor")
LOOP_GETADDRINFO = code(STDLIB + "asyncio/base_events.py", "BaseEventLoop.getaddrinfo", 0x80)
RESOLVER = code(PACKAGES + "aiohttp/resolver.py", "ThreadedResolver.resolve", 0x80)
SOCKET = code(STDLIB + "socket.py", "getaddrinfo")
WORK_ITEM = code(STDLIB + "concurrent/futures/thread.py", "_WorkItem.run")
WORKER = code(STDLIB + "concurrent/futures/thread.py", "_worker")
WORKER_CONTEXT = code(STDLIB + "concurrent/futures/thread.py", "WorkerContext.run")
THREAD_RUN = code(STDLIB + "threading.py", "Thread.run")
ANYIO = code(PACKAGES + "anyio/_backends/_asyncio.py", "run_sync_in_worker_thread", 0x80)
ANYIO_API = code(PACKAGES + "anyio/to_thread.py", "run_sync", 0x80)
ENDPOINT = code(PACKAGES + "fastapi/routing.py", "run_endpoint_function", 0x80)


@pytest.mark.parametrize(
    "filename, expected",
    [
        (STDLIB + "threading.py", "threading.py"),
        (PYENV_STDLIB + "asyncio/events.py", "asyncio/events.py"),
        (PACKAGES + "aiohttp/resolver.py", "aiohttp/resolver.py"),
        ("/usr/lib/python3/dist-packages/redis/connection.py", "redis/connection.py"),
        ("/srv/app/server.py", "/srv/app/server.py"),
        ("<frozen runpy>", "<frozen runpy>"),
    ],
)
def test_short_path(filename, expected):
    assert short_path(filename) == expected


@pytest.mark.parametrize(
    "frames, thread, expected",
    [
        ([], False, NATIVE),
        (
            [SOCKET, RESOLVER, LOOP_GETADDRINFO],
            False,
            "aiohttp/resolver.py:ThreadedResolver.resolve",
        ),
        # An executor worker's own lookup: only plumbing, named after the work item.
        (
            [SOCKET, WORK_ITEM, WORKER, THREAD_RUN],
            False,
            "concurrent/futures/thread.py:_WorkItem.run",
        ),
        # The same since 3.14, where the work item calls through the executor's context.
        (
            [SOCKET, WORKER_CONTEXT, WORK_ITEM, WORKER, THREAD_RUN],
            False,
            "concurrent/futures/thread.py:_WorkItem.run",
        ),
        (
            [THREAD_START, ADJUST, SUBMIT, RUN_IN_EXECUTOR, LOOP_GETADDRINFO, RESOLVER],
            True,
            "aiohttp/resolver.py:ThreadedResolver.resolve",
        ),
        (
            [THREAD_START, ANYIO, ANYIO_API, ENDPOINT],
            True,
            "fastapi/routing.py:run_endpoint_function",
        ),
        ([None, SOCKET], False, UNKNOWN_FRAME),
        ([SOCKET, code("/app/x.py", "f\n\x00\u2603")], False, "/app/x.py:f\\x0a\\x00\u2603"),
    ],
)
def test_site_label(frames, thread, expected):
    assert site_label(frames, thread) == expected


def test_site_labels_are_bounded():
    label = site_label([code("/app/" + "d/" * 200 + "x.py", "q" * 300)])
    assert len(label) == MAX_SITE_LENGTH and label.endswith("...")


def test_process_sites_decode_each_stack_once():
    codes = {
        1: THREAD_START,
        2: ADJUST,
        3: SUBMIT,
        4: RUN_IN_EXECUTOR,
        5: RESOLVER,
        6: code("/app/x.py", "use_pool"),
        7: SOCKET,
    }
    reads = Counter()

    def read(address):
        reads[address] += 1
        return codes.get(address)

    sites = ProcessSites(read)
    default, named = (1, 2, 3, 4, 5), (1, 2, 3, 6)
    assert sites.threads_by_site(Counter({(1, default): 3, (1, named): 2, (0, ()): 4})) == {
        "aiohttp/resolver.py:ThreadedResolver.resolve": 3,
        "/app/x.py:use_pool": 2,
        NATIVE: 4,
    }
    assert sites.calls_by_site(Counter({(1 | 8, (7, 5)): 2, (1, (7, 5)): 1}), 8) == {
        ("aiohttp/resolver.py:ThreadedResolver.resolve", "event_loop"): 2,
        ("aiohttp/resolver.py:ThreadedResolver.resolve", "other"): 1,
    }
    assert max(reads.values()) == 2  # once as a thread's stack, once as a lookup's


def test_call_sites_bounded_per_site_whatever_the_caller():
    labels = HostLabels(limit=2)
    calls = Counter(
        {("a", "other"): 5, ("a", "event_loop"): 1, ("b", "other"): 4, ("c", "other"): 1}
    )
    assert labels.relabel_calls(calls) == {
        ("a", "other"): 5,
        ("a", "event_loop"): 1,
        ("b", "other"): 4,
        ("<other>", "other"): 1,
    }


def test_plain_asyncio_callbacks_are_on_the_loop():
    """The kernel finds coroutines; asyncio's loop frames under a plain callback are found
    here, and the calls they hold move from other to event_loop."""
    callback = code("/srv/app/jobs.py", "refresh")
    frames = {
        1: callback,
        2: code(STDLIB + "asyncio/events.py", "Handle._run"),
        3: code(STDLIB + "asyncio/base_events.py", "BaseEventLoop._run_once"),
        4: code("/srv/app/main.py", "main"),
        5: code("/srv/app/sync.py", "fetch"),
    }
    sites = ProcessSites(frames.get)
    event_loop = StackFlag.EVENT_LOOP
    read = StackFlag.FRAMES_READ
    stacks = Counter(
        {
            (read, (1, 2, 3, 4)): 2,
            (read, (5, 4)): 3,
            (read | StackFlag.COROUTINE | event_loop, (5, 4)): 4,
        }
    )
    assert sites.calls_by_site(stacks, event_loop) == {
        ("/srv/app/jobs.py:refresh", "event_loop"): 2,
        ("/srv/app/sync.py:fetch", "other"): 3,
        ("/srv/app/sync.py:fetch", "event_loop"): 4,
    }
    assert sites.callbacks_on_loop(stacks, event_loop) == 2
    # A callback whose loop frames are past the 16 kept, or run by uvloop's C loop: other.
    assert not under_asyncio_loop([callback, frames[4]])


def row(pid, default, cap, target="api", unavailable=None):
    """A process whose default executor runs ``default`` items, all its threads busy."""
    executors = [Executor("default", "asyncio", default, default, cap, 0)] if default else []
    counts = Counts(
        threads_by_site=None if unavailable else Counter({"a.py:f": default}),
        calls_by_site=None if unavailable else Counter({("a.py:g", "other"): 1}),
    )
    return ProcessRow(
        target,
        pid,
        threads=default + 1,
        counts=counts,
        executor_max_workers=cap,
        executors=None if unavailable else executors,
        sites_unavailable=unavailable,
    )


def test_saturation_is_the_fullest_process_never_an_average():
    snapshot = Snapshot(
        backend="bpf",
        rows=[
            row(1, 9, 10),
            row(2, 0, 10),
            row(3, 0, 10),
            row(4, 0, 5, unavailable="unsupported_version"),
        ],
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObserverCollector(lambda: snapshot))
    value = registry.get_sample_value
    assert (
        value(
            "thread_observer_executor_saturation_ratio",
            {"target": "api", "pool": "default", "executor": "asyncio"},
        )
        == 0.9
    )
    threads = {"target": "api", "pool": "default", "executor": "asyncio"}
    assert value("thread_observer_executor_threads", threads) == 9
    assert (
        value("thread_observer_threads_created_by_site_total", {"target": "api", "site": "a.py:f"})
        == 9
    )
    assert (
        value(
            "thread_observer_getaddrinfo_calls_by_site_total",
            {"target": "api", "site": "a.py:g", "caller": "other"},
        )
        == 3
    )
    assert value("thread_observer_sites_unavailable", {"reason": "unsupported_version"}) == 1
    text = generate_latest(registry).decode()
    assert list(text_string_to_metric_families(text))  # valid exposition


def test_no_site_series_where_no_process_can_be_read():
    snapshot = Snapshot(backend="bpf", rows=[row(4, 0, 5, unavailable="pid_namespace")])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObserverCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    assert "executor_threads{" not in text
    assert "saturation_ratio{" not in text
    assert "by_site_total{" not in text

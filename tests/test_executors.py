"""Thread pools read as objects from outside: threads, busy threads, caps and queued work of each
executor exact against the executor's own numbers, for executors that filled before the
observer started (a restart, a rollout, --pid on an old service), on every interpreter the
observer reads, with a running loop, a stopped one and uvloop."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import pytest

from tests import harness
from tests.harness import bpf_skip_reason, observer, wait_until, workload
from tests.test_sites import DEBIAN_PYTHONS, PYTHONS, interpreter
from thread_observer.collector import EXECUTOR_NAMES_PER_POOL, OTHER_EXECUTORS, executor_values
from thread_observer.executors import ExecutorReader
from thread_observer.model import Executor

BPF_SKIP = bpf_skip_reason()
needs_bpf = pytest.mark.skipif(BPF_SKIP is not None, reason=BPF_SKIP or "")
GAUGES = (
    "executor_threads",
    "executor_busy_threads",
    "executor_max_workers",
    "executor_queued_work",
)


@contextmanager
def held_pools(python: str, *flags: str):
    """The executors workload, its pools filled and held; yields (workload, its truth)."""
    with workload(["-m", "workloads.executors", *flags], python=python, wait=False) as held:
        assert json.loads(held._line())["ready"]
        truth = json.loads(held._line())
        try:
            yield held, truth
        finally:
            held.go()  # released: its threads end
            assert json.loads(held._line()) == {"released": True}


def expected(truth: dict) -> dict[str, dict[str, float]]:
    """Gauges by pool, from the executors' own numbers."""
    found: dict[str, dict[str, float]] = {}
    for executor in truth["executors"]:
        pool = found.setdefault(executor["pool"], dict.fromkeys(GAUGES, 0))
        pool["executor_threads"] += executor["threads"]
        pool["executor_busy_threads"] += executor["busy"]
        pool["executor_max_workers"] += executor["max_workers"]
        pool["executor_queued_work"] += executor["queued"]
    found["anyio"] = {"executor_threads": 0}
    return found


def read_gauges(metrics, target: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for name in (*GAUGES, "executor_saturation_ratio"):
        combine = max if name == "executor_saturation_ratio" else sum
        labelled = metrics.labels(f"thread_observer_{name}", "pool", combine, target=target)
        for pool, value in labelled.items():
            found.setdefault(pool, {})[name] = value
    return found


def first_scrape_after_read(running, pid: int):
    """The first scrape once the observer has read the process's interpreter."""
    wait_until(lambda: harness.sites_read(running, pid), 30, "the interpreter read")
    return running.scrape()


def assert_pools(metrics, target: str, truth: dict) -> None:
    gauges = read_gauges(metrics, target)
    ratios = {
        pool: values.pop("executor_saturation_ratio", None) for pool, values in gauges.items()
    }
    assert gauges == expected(truth)
    # The default executor runs max_workers items with more queued: full. The explicit pool
    # runs 2 of its 3; the idle one none: the fullest of them is at 2/3.
    assert ratios == {"default": 1.0, "thread_pool": pytest.approx(2 / 3), "anyio": None}


@pytest.mark.bpf
@needs_bpf
@pytest.mark.parametrize("python", sorted(PYTHONS) + sorted(DEBIAN_PYTHONS))
def test_executors_filled_before_the_observer_are_exact_at_its_first_scrape(python, tmp_path):
    with held_pools(interpreter(python)) as (held, truth):
        with observer(["--pid", f"pools={held.pid}"], tmp_path) as running:
            assert_pools(first_scrape_after_read(running, held.pid), "pools", truth)


@pytest.mark.bpf
@needs_bpf
@pytest.mark.parametrize("python", ["debian-3.11", "pyenv-3.8.18", "pyenv-3.13.0"])
def test_the_default_executor_of_a_loop_between_two_runs_is_found(python, tmp_path):
    # run_until_complete has returned: no frame runs the loop, a local variable holds it.
    with held_pools(interpreter(python), "--stopped-loop") as (held, truth):
        with observer(["--pid", f"pools={held.pid}"], tmp_path) as running:
            assert_pools(first_scrape_after_read(running, held.pid), "pools", truth)


@pytest.mark.bpf
@needs_bpf
def test_uvloop_s_default_executor_is_the_default_pool(tmp_path):
    # uvloop keeps it in its C struct: found there by the executors its workers name.
    with held_pools(sys.executable, "--loop", "uvloop") as (held, truth):
        with observer(["--pid", f"uv={held.pid}"], tmp_path) as running:
            assert_pools(first_scrape_after_read(running, held.pid), "uv", truth)


@pytest.mark.bpf
@needs_bpf
def test_an_observer_restarted_under_the_service_reads_the_same(tmp_path):
    with held_pools(PYTHONS["debian-3.11"]) as (held, truth):
        for _ in range(2):  # each log is named by its port
            with observer(["--pid", f"pools={held.pid}"], tmp_path) as running:
                assert_pools(first_scrape_after_read(running, held.pid), "pools", truth)


# AnyIO's getaddrinfo (httpx's, under FastAPI) runs in the loop's default executor: its
# threads are the default pool's, not AnyIO's workers.
ANYIO_LOOKUPS = """
import asyncio, json, os, sys, threading
import anyio
async def main():
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(anyio.getaddrinfo("localhost", 80) for _ in range(5)))
    executor = loop._default_executor
    print(json.dumps({"threads": len(executor._threads), "max_workers": executor._max_workers}),
          flush=True)
    released = asyncio.Event()
    def wait():
        sys.stdin.readline()
        loop.call_soon_threadsafe(released.set)
    threading.Thread(target=wait, daemon=True).start()
    await released.wait()
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
asyncio.run(main())
"""


@pytest.mark.bpf
@needs_bpf
def test_anyio_lookups_count_in_the_default_executor(tmp_path):
    with workload(["-c", ANYIO_LOOKUPS], wait=False) as lookups:
        assert json.loads(lookups._line())["ready"]
        truth = json.loads(lookups._line())
        with observer(["--pid", f"httpx={lookups.pid}"], tmp_path) as running:
            gauges = read_gauges(first_scrape_after_read(running, lookups.pid), "httpx")
    assert truth["threads"] >= 1
    assert gauges["default"] == {
        "executor_threads": truth["threads"],
        "executor_busy_threads": 0,
        "executor_max_workers": truth["max_workers"],
        "executor_queued_work": 0,
        "executor_saturation_ratio": 0.0,
    }
    assert gauges["anyio"] == {"executor_threads": 0}


def test_saturation_is_busy_over_the_cap_of_the_fullest_executor_never_above_one():
    executors = [
        Executor("default", "asyncio", threads=6, busy=6, max_workers=4, queued=9),  # cap lowered
        # Two executors of one name (a prefix given twice): one series, their sums.
        Executor("thread_pool", "jobs", threads=3, busy=1, max_workers=3, queued=None),
        Executor("thread_pool", "jobs", threads=2, busy=0, max_workers=None, queued=0),
        Executor("anyio", "anyio", threads=5, busy=2, max_workers=None, queued=None),
    ]
    values = {pool: gauges for (pool, _), gauges in executor_values(executors).items()}
    assert values["default"] == {
        "executor_threads": 6,
        "executor_busy_threads": 6,
        "executor_max_workers": 4,
        "executor_queued_work": 9,
        "executor_saturation_ratio": 1.0,
    }
    # What was not read is left out of the sums, not counted as 0.
    assert values["thread_pool"] == {
        "executor_threads": 5,
        "executor_busy_threads": 1,
        "executor_max_workers": 3,
        "executor_queued_work": 0,
        "executor_saturation_ratio": pytest.approx(1 / 3),
    }
    assert values["anyio"] == {"executor_threads": 5, "executor_busy_threads": 2}


def test_a_pool_with_no_executor_now_reads_zero_under_the_name_its_executors_would_get():
    nothing = {
        "executor_threads": 0,
        "executor_busy_threads": 0,
        "executor_max_workers": 0,
        "executor_queued_work": 0,
        "executor_saturation_ratio": 0.0,
    }
    assert executor_values([]) == {
        ("default", "asyncio"): nothing,
        ("thread_pool", "ThreadPoolExecutor"): nothing,
        ("anyio", "anyio"): {"executor_threads": 0},
    }


def test_executors_are_told_apart_by_name_and_the_names_stay_bounded():
    named = [Executor("thread_pool", "db", 4, 4, 4, 3), Executor("thread_pool", "db", 2, 0, 2, 0)]
    # A target naming a pool per request (an untrusted string): the names with most threads
    # keep theirs, the others are summed under one.
    many = [Executor("thread_pool", f"request-{i:02}", 1, 1, 1, 0) for i in range(20)]
    values = executor_values([*named, *many, Executor("default", "", 3, 3, 3, 1)])
    assert values[("thread_pool", "db")] == {
        "executor_threads": 6,
        "executor_busy_threads": 4,
        "executor_max_workers": 6,
        "executor_queued_work": 3,
        "executor_saturation_ratio": 1.0,
    }
    kept = {name for pool, name in values if pool == "thread_pool"}
    assert len(kept) == EXECUTOR_NAMES_PER_POOL + 1
    assert {"db", OTHER_EXECUTORS, "request-00"} <= kept
    assert values[("thread_pool", OTHER_EXECUTORS)]["executor_threads"] == 20 - 7
    # A default executor whose prefix could not be read still counts, under a name saying so.
    assert values[("default", "<unknown>")]["executor_queued_work"] == 1
    assert ("default", "asyncio") not in values  # no placeholder beside a read executor


class CountingReader(ExecutorReader):
    """An ExecutorReader whose process reads are counted, not made."""

    def __init__(self) -> None:
        super().__init__(0, None, None)
        self.reads, self.pools = 0, []

    def _read_now(self):
        self.reads += 1
        return list(self.pools)


def test_a_process_without_pools_is_read_again_only_once_it_creates_a_thread():
    reader = CountingReader()
    assert reader.read(threads_created=5) == [] and reader.reads == 1
    assert reader.read(threads_created=5) == [] and reader.reads == 1  # nothing new: not read
    reader.pools = [Executor("default", "asyncio", 1, 1, 6, 0)]
    assert reader.read(threads_created=6) == reader.pools and reader.reads == 2
    assert reader.read(threads_created=6) == reader.pools and reader.reads == 3  # has pools
    assert reader.read(threads_created=None) == reader.pools and reader.reads == 4

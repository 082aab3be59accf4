"""Thread pools of real web stacks, exact against the numbers each worker process reads of its
own executor: FastAPI calling a local server with httpx on uvicorn with two worker processes,
on asyncio's loop and on uvloop (workloads/fastapi_httpx.py). Each worker's default executor
is full, with work queued behind it (on asyncio's loop, httpx's own lookups through AnyIO's
getaddrinfo), before the observer starts: a restart under a loaded service."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests import harness
from tests.harness import bpf_skip_reason, observer, wait_until
from tests.test_executors import read_gauges
from workloads.servers import child_environment, free_port, http_server
from workloads.web_server import stop

BPF_SKIP = bpf_skip_reason()
needs_bpf = pytest.mark.skipif(BPF_SKIP is not None, reason=BPF_SKIP or "")
WORKERS = 2
TARGET = "web"


def stack_environment(backend: int, prefix: str) -> dict:
    env = child_environment()
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)
    env.update(BACKEND_PORT=str(backend), DEFAULT_EXECUTOR_PREFIX=prefix)
    return env


def call(port: int, method: str, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30 * harness.TIME_SCALE) as response:
        return json.loads(response.read())


def answering(port: int) -> bool:
    try:
        return "pid" in call(port, "GET", "/truth")  # served on the loop: no executor thread
    except OSError:
        return False


@contextmanager
def fastapi_on_uvicorn(loop: str, prefix: str, tmp_path: Path):
    """uvicorn --workers 2 serving workloads/fastapi_httpx.py on that loop, its default
    executors' threads named by that prefix, its command line tagged for the observer to
    match; yields (port, the server's process, the tag) once it answers."""
    tag = uuid.uuid4().hex[:12]
    port = free_port()
    command = [
        sys.executable,
        "-X",
        f"tag={tag}",  # multiprocessing passes it on to the workers it spawns
        "-m",
        "uvicorn",
        "--loop",
        loop,
        "--http",
        "h11",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
        "workloads.fastapi_httpx:app",
    ]
    with http_server() as backend:
        server = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=stack_environment(backend, prefix),
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until(lambda: answering(port), 60, "the server to answer")
            yield port, server, tag
        finally:
            stop(server)


def each_worker(port: int, method: str, path: str, server) -> dict[int, dict]:
    """The answer of each worker to that request: requests go to whichever worker accepts the
    connection first, so they are made until every worker has answered at least once (the
    requests of this module change a worker's state once: a second answer is the same)."""
    answers: dict[int, dict] = {}

    def every_worker_answered() -> bool:
        answer = call(port, method, path)
        answers[answer["pid"]] = answer
        return len(answers) == WORKERS

    wait_until(every_worker_answered, 60, f"each of {WORKERS} workers to answer {path}")
    workers = {p.pid for p in psutil.Process(server.pid).children() if p.pid in answers}
    assert workers == set(answers), f"{sorted(answers)} are not all the server's workers"
    return answers


def default_pool(truths: dict[int, dict]) -> dict[str, float]:
    """The default pool's gauges from the workers' own numbers: sums, and the fullest
    executor's busy threads over its cap."""
    workers = truths.values()
    return {
        "executor_threads": sum(t["threads"] for t in workers),
        "executor_busy_threads": sum(t["busy"] for t in workers),
        "executor_max_workers": sum(t["max_workers"] for t in workers),
        "executor_queued_work": sum(t["queued"] for t in workers),
        "executor_saturation_ratio": max(t["busy"] / t["max_workers"] for t in workers),
    }


def assert_pools(gauges: dict, truths: dict[int, dict]) -> None:
    assert gauges["default"] == default_pool(truths)
    # Every endpoint is async def: FastAPI runs none in AnyIO's worker threads, nothing else
    # makes a thread pool.
    assert gauges["anyio"] == {"executor_threads": 0}
    assert gauges["thread_pool"] == dict.fromkeys(default_pool(truths), 0)


def pools_settled(running, truths: dict[int, dict]) -> dict:
    """The first scrape whose pools are the workers' numbers; times out with what it saw."""
    seen: dict = {}

    def matching():
        seen.clear()
        seen.update(read_gauges(running.scrape(), TARGET))
        try:
            assert_pools(seen, truths)
        except (AssertionError, KeyError):
            return None
        return seen

    try:
        return wait_until(matching, 15, "the pools to match the workers' numbers")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: saw {seen}, truth {truths}") from None


@pytest.mark.bpf
@needs_bpf
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
# Named as asyncio names the default executors it makes, or ThreadPoolExecutor's own name (as
# uvloop's own default executor, or one a service sizes without naming it): then only the
# loop that holds it makes it the default pool.
@pytest.mark.parametrize("prefix", ["asyncio", ""], ids=["named-asyncio", "unnamed"])
def test_fastapi_httpx_on_uvicorn_workers_filled_before_the_observer(loop, prefix, tmp_path):
    for module in ("fastapi", "httpx", "uvicorn", *(["uvloop"] if loop == "uvloop" else [])):
        pytest.importorskip(module)
    from workloads.fastapi_httpx import HELD_QUEUED, LOOKUPS

    with fastapi_on_uvicorn(loop, prefix, tmp_path) as (port, server, tag):
        full = each_worker(port, "POST", "/fill", server)
        for truth in full.values():
            assert truth["threads"] == truth["busy"] == truth["max_workers"]
            if loop == "asyncio":
                # httpx's lookups (AnyIO's getaddrinfo) wait in the default executor's queue,
                # behind the held items; none of the requests could go on.
                assert truth["queued"] == HELD_QUEUED + LOOKUPS
                assert truth["requests_done"] == []
            else:
                # uvloop resolves in libuv's pool: the requests were made, the executor's
                # queue holds the held items only.
                assert truth["queued"] == HELD_QUEUED
                assert truth["requests_done"] == [200] * LOOKUPS

        with observer(["--target", f"{TARGET}=python.*-X tag={tag}"], tmp_path) as running:
            wait_until(
                lambda: all(harness.sites_read(running, pid) for pid in full),
                30,
                "both workers' interpreters read",
            )
            metrics = running.scrape()
            gauges = read_gauges(metrics, TARGET)
            try:
                assert_pools(gauges, full)
            except AssertionError:
                print(running.log()[-5000:])
                raise
            # The executor label: the default executors' thread-name prefix, both workers'
            # under one series (ThreadPoolExecutor's own prefix without its counter).
            names = metrics.labels(
                "thread_observer_executor_threads", "executor", target=TARGET, pool="default"
            )
            assert names == {
                prefix or "ThreadPoolExecutor": sum(t["threads"] for t in full.values())
            }
            assert gauges["default"]["executor_saturation_ratio"] == 1.0
            # The workers' numbers stood still while the observer read them.
            assert each_worker(port, "GET", "/truth", server) == full

            released = each_worker(port, "POST", "/release", server)
            for pid, truth in released.items():
                assert truth["busy"] == truth["queued"] == 0
                assert truth["threads"] == full[pid]["threads"]  # idle, not ended
                assert truth["requests_done"] == [200] * LOOKUPS
            gauges = pools_settled(running, released)
            assert gauges["default"]["executor_busy_threads"] == 0
            assert gauges["default"]["executor_saturation_ratio"] == 0.0

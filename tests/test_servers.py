"""Real servers on loopback (uvicorn, gunicorn) watched as one target each: every worker's
threads and getaddrinfo calls, however the workers start, against a ground truth that every
process of the server records itself (workloads/counting/sitecustomize.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import free_port, observer, wait_until
from workloads.servers import http_server
from workloads.web_server import STACKS, counted, get, server_command, server_environment, stop

pytestmark = pytest.mark.bpf

REQUESTS = 40
# Holds the server's command until the observer has attached it, then runs it in the same
# interpreter (same PID, no exec): its workers are children of a watched process whose Python
# frames are read from their first instruction. (An exec'd server is found again at the
# observer's next poll: README, Limits.)
GATE = (
    "import runpy, sys; print('ready', flush=True); sys.stdin.readline(); "
    "i = sys.argv.index('-m'); sys.argv = sys.argv[i + 1:]; "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def kernel_totals(metrics) -> dict:
    return {
        "threads": metrics.value("thread_observer_threads_created_total", target="web"),
        "getaddrinfo": metrics.value("thread_observer_getaddrinfo_calls_total", target="web"),
    }


def answering(port: int) -> bool:
    try:
        return get(port) == 200
    except OSError:
        return False


@contextmanager
def served(stack: str, tmp_path: Path):
    """Runs a stack of workloads/web_server.py as the target ``web``, matched by the server's
    own command line; yields (observer, port, counts folder) once the server answers."""
    for module in ("flask", "requests") if "gunicorn" in stack else ():
        pytest.importorskip(module)
    pytest.importorskip(STACKS[stack][0])
    tag = uuid.uuid4().hex[:12]
    counts = tmp_path / "counts"
    counts.mkdir()
    port = free_port()
    with (
        http_server() as backend,
        observer(["--target", f"web=python.*-X tag={tag}"], tmp_path) as running,
    ):
        server_args = server_command(stack, port, tmp_path)[1:]
        command = [
            sys.executable,
            "-X",
            f"tag={tag}",
            "-c",
            GATE,
            sys.executable,
            "-X",
            f"tag={tag}",
            *server_args,
        ]
        server = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tmp_path,
            env=server_environment(str(counts), backend),
            text=True,
            start_new_session=True,
        )
        try:
            assert server.stdout.readline() == "ready\n"
            wait_until(
                lambda: running.scrape().value("thread_observer_processes", target="web") == 1,
                10,
                "the gate",
            )
            server.stdin.write("go\n")
            server.stdin.flush()
            wait_until(lambda: answering(port), 30, "the server to answer")
            yield running, port, counts
        finally:
            stop(server)


def assert_exact(running, port: int, counts: Path, processes: int) -> dict:
    """Makes REQUESTS requests; the target's counts must equal the processes' own."""
    for _ in range(REQUESTS):
        assert get(port) == 200
    seen = []

    def equal():
        truth = counted(counts)
        found = kernel_totals(running.scrape())
        seen[:] = [truth, found]
        return truth if found == {k: truth[k] for k in found} else None

    try:
        truth = wait_until(equal, 15, "the target's counts to match the processes' own")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: {seen}\n{running.log()[-3000:]}") from None
    # One lookup per request: these and the one answering() got through.
    assert truth["getaddrinfo"] == REQUESTS + 1
    # Whether each lookup blocked an event loop, read from the frames at the call.
    callers = running.scrape().labels(
        "thread_observer_getaddrinfo_calls_total", "caller", target="web"
    )
    assert callers == {
        "event_loop": truth["getaddrinfo_on_loop"],
        "other": truth["getaddrinfo"] - truth["getaddrinfo_on_loop"],
    }
    # A worker recycled by the last requests is replaced within a poll or two.
    wait_until(
        lambda: running.scrape().value("thread_observer_processes", target="web") == processes,
        10,
        f"{processes} processes in the target",
    )
    return truth


def test_uvicorn_with_two_spawned_workers(tmp_path):
    with served("uvicorn_workers", tmp_path) as (running, port, counts):
        # The supervisor, its 2 workers and multiprocessing's resource tracker.
        assert_exact(running, port, counts, processes=4)


def test_uvicorn_reload(tmp_path):
    with served("uvicorn_reload", tmp_path) as (running, port, counts):
        # The reloader, its worker and multiprocessing's resource tracker.
        assert_exact(running, port, counts, processes=3)


@pytest.mark.parametrize("stack", ["gunicorn_sync", "gunicorn_gthread"])
def test_gunicorn_recycling_workers_with_max_requests(tmp_path, stack):
    with served(stack, tmp_path) as (running, port, counts):
        truth = assert_exact(running, port, counts, processes=3)
        # Workers were recycled: more processes counted themselves than run now.
        assert truth["processes"] > 3
        # No lookup of a sync or gthread worker (whose main thread waits in a selectors
        # epoll) is made on an event loop: assert_exact found every one "other".
        assert truth["getaddrinfo_on_loop"] == 0


def test_gunicorn_with_uvicorn_workers(tmp_path):
    with served("gunicorn_uvicorn", tmp_path) as (running, port, counts):
        assert_exact(running, port, counts, processes=3)

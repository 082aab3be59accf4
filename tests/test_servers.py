"""Real servers on loopback (uvicorn, gunicorn) watched as one target each: every worker's
threads and getaddrinfo calls, however the workers start, against a ground truth that every
process of the server records itself (tests/counting/sitecustomize.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import REPO, free_port, observer, wait_until
from workloads.servers import child_environment, http_server

pytestmark = pytest.mark.bpf

COUNTING = Path(__file__).parent / "counting"
REQUESTS = 40
# Holds the server's command until the observer has attached it, then becomes it (same PID):
# its workers are then children of a watched process from their first instruction.
GATE = "import os, sys; print('ready', flush=True); sys.stdin.readline(); " \
       "os.execv(sys.executable, sys.argv[1:])"


def truth_of(folder: Path) -> dict:
    """The sum of what every process of the server counted itself."""
    total = {"threads": 0, "getaddrinfo": 0, "processes": 0}
    for path in folder.glob("*.json"):
        counts = json.loads(path.read_text())
        total["threads"] += counts["threads"]
        total["getaddrinfo"] += counts["getaddrinfo"]
        total["processes"] += 1
    return total


def kernel_totals(metrics) -> dict:
    return {"threads": metrics.value("thread_observer_threads_created_total", target="web"),
            "getaddrinfo": metrics.value("thread_observer_getaddrinfo_calls_total",
                                         target="web")}


def get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        response.read()
        return response.status


def answering(port: int) -> bool:
    try:
        return get(port) == 200
    except OSError:
        return False


@contextmanager
def served(server_args: list[str], tmp_path: Path, env: dict | None = None):
    """Runs ``python -m SERVER_ARGS`` as the target ``web``; yields (observer, port, counts
    folder) once the server answers."""
    pytest.importorskip(server_args[0])
    tag = uuid.uuid4().hex[:12]
    counts = tmp_path / "counts"
    counts.mkdir()
    port = free_port()
    args = [arg.replace("{port}", str(port)) for arg in server_args]
    with http_server() as backend, \
            observer(["--target", f"web=python.*-X tag={tag}"], tmp_path) as running:
        environment = child_environment()
        for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            environment.pop(proxy, None)
        environment.update(env or {}, BACKEND_PORT=str(backend),
                           THREAD_OBSERVER_COUNTS=str(counts),
                           PYTHONPATH=os.pathsep.join([str(COUNTING), str(REPO)]))
        command = [sys.executable, "-X", f"tag={tag}", "-c", GATE,
                   sys.executable, "-X", f"tag={tag}", "-m", *args]
        server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  cwd=tmp_path, env=environment, text=True,
                                  start_new_session=True)
        try:
            assert server.stdout.readline() == "ready\n"
            wait_until(lambda: running.scrape().value("thread_observer_processes",
                                                      target="web") == 1, 10, "the gate")
            server.stdin.write("go\n")
            server.stdin.flush()
            wait_until(lambda: answering(port), 30, "the server to answer")
            yield running, port, counts
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def assert_exact(running, port: int, counts: Path, processes: int) -> dict:
    """Makes REQUESTS requests; the target's counts must equal the processes' own."""
    for _ in range(REQUESTS):
        assert get(port) == 200
    seen = []

    def equal():
        truth = truth_of(counts)
        found = kernel_totals(running.scrape())
        seen[:] = [truth, found]
        return truth if found == {k: truth[k] for k in found} else None

    try:
        truth = wait_until(equal, 15, "the target's counts to match the processes' own")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: {seen}\n{running.log()[-3000:]}") from None
    # One lookup per request: these and the one answering() got through.
    assert truth["getaddrinfo"] == REQUESTS + 1
    assert running.scrape().value("thread_observer_processes", target="web") == processes
    return truth


def test_uvicorn_with_two_spawned_workers(tmp_path):
    with served(["uvicorn", "--loop", "asyncio", "--http", "h11", "--workers", "2",
                 "--host", "127.0.0.1", "--port", "{port}", "workloads.web_apps:asgi_app"],
                tmp_path) as (running, port, counts):
        # The supervisor, its 2 workers and multiprocessing's resource tracker.
        assert_exact(running, port, counts, processes=4)


def test_uvicorn_reload(tmp_path):
    with served(["uvicorn", "--loop", "asyncio", "--http", "h11", "--reload",
                 "--reload-dir", str(tmp_path), "--host", "127.0.0.1", "--port", "{port}",
                 "workloads.web_apps:asgi_app"], tmp_path) as (running, port, counts):
        # The reloader, its worker and multiprocessing's resource tracker.
        assert_exact(running, port, counts, processes=3)


@pytest.mark.parametrize("worker", [
    ["-k", "sync"],
    ["-k", "gthread", "--threads", "4"],
])
def test_gunicorn_recycling_workers_with_max_requests(tmp_path, worker):
    pytest.importorskip("flask")
    with served(["gunicorn", "-w", "2", *worker, "--max-requests", "7", "-b",
                 "127.0.0.1:{port}", "workloads.web_apps:flask_app"],
                tmp_path) as (running, port, counts):
        truth = assert_exact(running, port, counts, processes=3)
        # Workers were recycled: more processes counted themselves than run now.
        assert truth["processes"] > 3


def test_gunicorn_with_uvicorn_workers(tmp_path):
    with served(["gunicorn", "-w", "2", "-k", "workloads.web_apps.AsyncioUvicornWorker",
                 "-b", "127.0.0.1:{port}", "workloads.web_apps:asgi_app"],
                tmp_path) as (running, port, counts):
        assert_exact(running, port, counts, processes=3)

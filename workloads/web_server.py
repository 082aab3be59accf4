"""Web server: a real server (uvicorn, gunicorn) with worker processes, run as this process's
child and sent ``--requests`` requests; each request makes one request by host name
(``localhost``) to a local server, so every lookup and executor thread is in a worker.

The ground truth is the whole tree's: every process of the server counts its own thread starts
and ``socket.getaddrinfo`` calls, and those on an event loop
(``workloads/counting/sitecustomize.py``, loaded through
PYTHONPATH whichever way a worker starts), added to this process's own.

Stacks (``--stack``):
  uvicorn_workers   uvicorn --workers 2 (workers started by multiprocessing's spawn)
  uvicorn_reload    uvicorn --reload (a reloader and its spawned worker)
  gunicorn_sync     gunicorn, 2 sync workers recycled every 7 requests (--max-requests)
  gunicorn_gthread  gunicorn, 2 gthread workers of 4 threads, recycled every 7 requests
  gunicorn_uvicorn  gunicorn with uvicorn's worker class (asyncio loop), 2 workers

With ``--fork``, the server runs in a forked child of this process, without exec (as a process
manager or a test fixture written in Python may start it): the child is this interpreter, so
an observer that reads this process's frames reads the server's from its first instruction.

examples:
  python -m workloads.web_server --stack uvicorn_workers --requests 40
  python -m workloads.web_server --stack gunicorn_gthread --fork
  python -m workloads.web_server --stack gunicorn_gthread --port 8080
"""

import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, scenario_parser
from workloads.servers import child_environment, free_port, http_server
from workloads.truth import GroundTruth, count_into_folder

SCENARIO = "web_server"
COUNTING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "counting")
ASGI_APP = "workloads.web_apps:asgi_app"
WSGI_APP = "workloads.web_apps:flask_app"
UVICORN = ["uvicorn", "--loop", "asyncio", "--http", "h11", "--host", "127.0.0.1"]
# The server's arguments, with {port} and {folder} (a private folder) filled in.
STACKS = {
    "uvicorn_workers": [*UVICORN, "--port", "{port}", "--workers", "2", ASGI_APP],
    "uvicorn_reload": [
        *UVICORN,
        "--port",
        "{port}",
        "--reload",
        "--reload-dir",
        "{folder}",
        ASGI_APP,
    ],
    "gunicorn_sync": [
        "gunicorn",
        "-w",
        "2",
        "-k",
        "sync",
        "--max-requests",
        "7",
        "-b",
        "127.0.0.1:{port}",
        WSGI_APP,
    ],
    "gunicorn_gthread": [
        "gunicorn",
        "-w",
        "2",
        "-k",
        "gthread",
        "--threads",
        "4",
        "--max-requests",
        "7",
        "-b",
        "127.0.0.1:{port}",
        WSGI_APP,
    ],
    "gunicorn_uvicorn": [
        "gunicorn",
        "-w",
        "2",
        "-k",
        "workloads.web_apps.AsyncioUvicornWorker",
        "-b",
        "127.0.0.1:{port}",
        ASGI_APP,
    ],
}
START_TIMEOUT = 30.0


def build_parser():
    parser = scenario_parser(SCENARIO, __doc__)
    parser.add_argument("--stack", choices=sorted(STACKS), default="uvicorn_workers")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument(
        "--port", type=int, help="the local server the app calls (default: start one)"
    )
    parser.add_argument(
        "--fork",
        action="store_true",
        help="run the server in a forked child of this process, without exec",
    )
    add_lifecycle_arguments(parser)
    return parser


def server_environment(counts, backend_port) -> dict:
    """The server's environment: the counting module first on its path, no proxies."""
    env = child_environment()
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)
    env.update(
        BACKEND_PORT=str(backend_port),
        THREAD_OBSERVER_COUNTS=counts,
        PYTHONPATH=os.pathsep.join([COUNTING, env["PYTHONPATH"]]),
    )
    return env


def server_command(stack, port, folder, python=sys.executable) -> list:
    arguments = [a.format(port=port, folder=folder) for a in STACKS[stack]]
    return [python, "-m", *arguments]


def get(port) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        response.read()
        return response.status


def wait_answering(port, server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            get(port)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer on port {port}") from None
            time.sleep(0.1)


def end_with_parent() -> None:
    """In the server's process before it runs: SIGTERM when this workload dies, even killed
    (the server has a session of its own, out of reach of the workload's process group)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ForkedServer:
    """A server run by ``fork_server``, waited for as a ``subprocess.Popen`` is."""

    def __init__(self, pid) -> None:
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return self.returncode


def fork_server(command, folder, env) -> ForkedServer:
    """``python -m MODULE ARGS`` run in a forked child, without exec; as started by Popen
    (own session, cwd, environment, output on stderr, ends with this process)."""
    pid = os.fork()
    if pid:
        return ForkedServer(pid)
    code = 1
    try:
        os.setsid()
        end_with_parent()
        os.chdir(folder)
        os.dup2(2, 1)
        os.environ.clear()
        os.environ.update(env)
        count_into_folder(env["THREAD_OBSERVER_COUNTS"])
        sys.argv = command[2:]
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def start_server(args, port, folder, counts, backend):
    command = server_command(args.stack, port, folder)
    env = server_environment(counts, backend)
    if args.fork:
        return fork_server(command, folder, env)
    return subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        start_new_session=True,
        stdout=sys.stderr,  # the truth's own
        preexec_fn=end_with_parent,
    )


def stop(server) -> None:
    """SIGTERM to the server's process group: its workers end with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def counted(folder) -> dict:
    """What the server's processes counted themselves, summed."""
    total = {"threads": 0, "getaddrinfo": 0, "getaddrinfo_on_loop": 0, "processes": 0}
    for name in os.listdir(folder):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as counts:
                found = json.load(counts)
            total["threads"] += found["threads"]
            total["getaddrinfo"] += found["getaddrinfo"]
            total["getaddrinfo_on_loop"] += found["getaddrinfo_on_loop"]
            total["processes"] += 1
    return total


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    truth = GroundTruth().install()
    with contextlib.ExitStack() as stack:
        backend = args.port or stack.enter_context(http_server())
        counts = stack.enter_context(tempfile.TemporaryDirectory())
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        begin(args, SCENARIO)
        port = free_port()
        server = start_server(args, port, folder, counts, backend)
        try:
            wait_answering(port, server)
            ok = sum(get(port) == 200 for _ in range(args.requests))
        finally:
            stop(server)
        server_counts = counted(counts)
        truth.uninstall()
        own = truth.as_dict()
        finish(
            truth,
            args,
            scenario=SCENARIO,
            stack=args.stack,
            responses_ok=ok,
            threads_started=own["threads_started"] + server_counts["threads"],
            getaddrinfo_calls=own["getaddrinfo_calls"] + server_counts["getaddrinfo"],
            getaddrinfo_on_loop=own["getaddrinfo_on_loop"] + server_counts["getaddrinfo_on_loop"],
            server_processes_counting=server_counts["processes"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The seed scenarios, and a runner that starts one as a child an observer can attach to first.

``start_scenario`` starts ``python -m workloads.<module> --wait-stdin``, reads the child's ready
line and returns while the child waits: attach to ``.pid``, then ``.go()`` and ``.truth()``.
``run_scenario`` does all of it in one call, with an ``on_ready(pid)`` hook for attaching.

    from workloads.scenarios import run_scenario
    truth = run_scenario("semaphore_burst", on_ready=observer.attach)
    truth["getaddrinfo_calls"], truth["threads_started"], truth["python_threads_peak"]
"""

import contextlib
import dataclasses
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time

from workloads.servers import child_environment, http_server, redis_server

READY_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    module: str
    description: str
    teaches: str
    default_args: tuple = ()
    server: str | None = None  # "http", "redis_unix" or "redis_tcp": what it connects to
    min_python: tuple = (3, 6)
    requires: tuple = ()  # third-party modules the child imports
    # Run in a network namespace of its own whose resolv.conf names a private responder
    # (workloads.private_dns), which answers PRIVATE_NAME: its queries never leave the machine.
    private_dns: bool = False

    def runs_on(self, version_info=sys.version_info) -> bool:
        """Whether the scenario supports that interpreter (the modules must be installed too)."""
        return tuple(version_info[:2]) >= self.min_python

    @property
    def pythons(self) -> str:
        needs = f" with {', '.join(self.requires)}" if self.requires else ""
        return f"CPython {self.min_python[0]}.{self.min_python[1]}+{needs}"


def _scenarios(*scenarios):
    return {scenario.name: scenario for scenario in scenarios}


PRIVATE_NAME = "service.test"  # what the private responder answers (127.0.0.1)

SCENARIOS = _scenarios(
    Scenario(
        "aiohttp_client",
        "workloads.aiohttp_client",
        "aiohttp client, a new ClientSession per request, fetching localhost",
        "every new session resolves the name again, in executor threads",
        ("--requests", "10", "--concurrency", "3"),
        server="http",
        min_python=(3, 11),
        requires=("aiohttp",),
    ),
    Scenario(
        "aiohttp_aiodns",
        "workloads.aiohttp_aiodns",
        "aiohttp client with AsyncResolver (aiodns, c-ares), a new ClientSession per request",
        "c-ares resolves on the wire: no executor thread, no libc lookup, yet DNS queries (A "
        "and AAAA) for every new session; only pycares's own threads hint at it",
        ("--requests", "10", "--concurrency", "3", "--host", PRIVATE_NAME),
        min_python=(3, 11),
        requires=("aiohttp", "aiodns", "dnslib"),
        private_dns=True,
    ),
    Scenario(
        "aiohttp_client_uvloop",
        "workloads.aiohttp_client",
        "the same aiohttp client on uvloop",
        "uvloop resolves in libuv's native threads, which Python never sees; two libc calls a "
        "request",
        ("--requests", "10", "--concurrency", "3", "--loop", "uvloop"),
        server="http",
        min_python=(3, 11),
        requires=("aiohttp", "uvloop"),
    ),
    Scenario(
        "redis_unix",
        "workloads.redis_unix",
        "redis.asyncio over a Unix socket",
        "a Unix socket resolves nothing and starts no thread",
        ("--requests", "30", "--concurrency", "3"),
        server="redis_unix",
        min_python=(3, 11),
        requires=("redis",),
    ),
    Scenario(
        "redis_tcp",
        "workloads.redis_tcp",
        "redis.asyncio over TCP to localhost",
        "a pooled client resolves once per connection it opens, not per command",
        ("--requests", "30", "--concurrency", "3"),
        server="redis_tcp",
        min_python=(3, 11),
        requires=("redis",),
    ),
    Scenario(
        "semaphore_burst",
        "workloads.semaphore_burst",
        "30 requests by name, at most 3 in flight (asyncio.Semaphore(3))",
        "the default executor grows a thread per lookup in flight, to its cap before 3.8",
        ("--requests", "30", "--concurrency", "3"),
        server="http",
    ),
    Scenario(
        "semaphore_burst_uvloop",
        "workloads.semaphore_burst",
        "the same burst on uvloop",
        "one Python thread; libuv's 4 native workers do the lookups",
        ("--requests", "30", "--concurrency", "3", "--loop", "uvloop"),
        server="http",
        min_python=(3, 11),
        requires=("uvloop",),
    ),
    Scenario(
        "ip_literal",
        "workloads.ip_literal",
        "the same requests to 127.0.0.1",
        "an IP literal takes asyncio's numeric fast path: no lookup, no thread",
        ("--requests", "30", "--concurrency", "3"),
        server="http",
    ),
    Scenario(
        "blocking_dns",
        "workloads.blocking_dns",
        "socket.getaddrinfo called synchronously inside a coroutine",
        "no thread, but every lookup blocks the event loop",
        ("--requests", "10", "--concurrency", "3"),
        server="http",
    ),
    Scenario(
        "to_thread",
        "workloads.to_thread",
        "blocking work in asyncio.to_thread (run_in_executor before 3.9)",
        "executor threads without any DNS: a thread count alone does not say why",
        ("--requests", "12", "--concurrency", "4"),
    ),
    Scenario(
        "mixed",
        "workloads.mixed",
        "known numbers of threads, loop and blocking lookups and local failures",
        "the ground truth the observer's own tests compare against",
        ("--threads", "6", "--loop-calls", "4", "--blocking-calls", "2", "--failures", "3"),
    ),
    Scenario(
        "prefork_workers",
        "workloads.process_tree",
        "a parent forking 3 workers that each make 10 threads and 7 lookups and end at once",
        "workers that live milliseconds count in their parent's target, from their fork",
        ("--workers", "3", "--threads", "10", "--lookups", "7"),
    ),
    Scenario(
        "recycled_pool",
        "workloads.process_tree",
        "multiprocessing.Pool(maxtasksperchild=1): 20 tasks, a new worker each",
        "a pool that recycles its workers is counted whole, however short they live",
        ("--start", "pool", "--workers", "20", "--threads", "1", "--lookups", "1"),
    ),
    Scenario(
        "uvicorn_workers",
        "workloads.web_server",
        "uvicorn --workers 2 serving 20 requests, each fetching localhost with aiohttp",
        "spawned workers do all the lookups, under command lines that name neither uvicorn "
        "nor the app: they count in the server's target",
        ("--stack", "uvicorn_workers", "--requests", "20"),
        server="http",
        min_python=(3, 11),
        requires=("uvicorn", "aiohttp"),
    ),
    Scenario(
        "gunicorn_sync",
        "workloads.web_server",
        "gunicorn, 2 sync workers recycled every 7 requests, serving 20 requests with Flask",
        "forked workers that are recycled keep their lookups in the target's totals",
        ("--stack", "gunicorn_sync", "--requests", "20"),
        server="http",
        min_python=(3, 11),
        requires=("gunicorn", "flask", "requests"),
    ),
    Scenario(
        "gunicorn_gthread",
        "workloads.web_server",
        "gunicorn, 2 gthread workers of 4 threads recycled every 7 requests, serving 20 "
        "requests with Flask",
        "workers whose main thread waits in a selectors epoll make their lookups from pool "
        "threads, none on an event loop: every one is caller=other",
        ("--stack", "gunicorn_gthread", "--requests", "20", "--fork"),
        server="http",
        min_python=(3, 11),
        requires=("gunicorn", "flask", "requests"),
    ),
)


class ScenarioError(RuntimeError):
    pass


class ScenarioProcess:
    """A scenario child that printed its ready line and waits for ``go()`` to start its work."""

    def __init__(self, scenario, child, stack, errors) -> None:
        self.scenario = scenario
        self.child = child
        self._errors = errors
        self._stack = stack
        self._buffer = b""
        self._started = False
        self.dns = None  # the private responder (workloads.private_dns) it resolves through
        ready = self._read_json_line(time.monotonic() + READY_TIMEOUT)
        if not ready.get("ready"):
            raise ScenarioError(f"{scenario.name}: expected a ready line, got {ready}")
        self.pid = ready["pid"]

    def go(self) -> None:
        """Let the child start its work (the observer is attached by now)."""
        self._started = True
        self.child.stdin.write(b"\n")
        self.child.stdin.close()

    def truth(self, timeout=RUN_TIMEOUT) -> dict:
        """The ground truth, as soon as the child prints it (it may linger on afterwards)."""
        if not self._started:
            self.go()
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_json_line(deadline)
            if "getaddrinfo_calls" in line:
                return line

    def wait(self, timeout=RUN_TIMEOUT) -> int:
        try:
            return self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            raise ScenarioError(f"{self.scenario.name} still running after {timeout}s") from expired

    def close(self) -> None:
        """Stop the child if it still runs, then the servers started for it."""
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        for stream in (self.child.stdin, self.child.stdout):
            if not stream.closed:
                stream.close()
        self._stack.close()

    def __enter__(self) -> "ScenarioProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read_json_line(self, deadline) -> dict:
        line = self._read_line(deadline)
        try:
            return json.loads(line)
        except ValueError as error:
            raise ScenarioError(f"{self.scenario.name}: not a JSON line: {line!r}") from error

    def _read_line(self, deadline) -> bytes:
        with selectors.DefaultSelector() as selector:
            selector.register(self.child.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise ScenarioError(f"{self.scenario.name}: no output in time")
                chunk = os.read(self.child.stdout.fileno(), 65536)
                if not chunk:
                    raise ScenarioError(self._exit_report())
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")

    def _exit_report(self) -> str:
        code = self.child.wait()
        return f"{self.scenario.name} exited with {code} before its ground truth:\n{self.stderr()}"


def start_scenario(name, python=sys.executable, servers=None, extra_args=()) -> ScenarioProcess:
    """Start a scenario and return once it is ready and waiting (its pid is known).

    ``servers`` is a ``workloads.servers.LocalServers``; without one, the servers the scenario
    needs are started here and stopped by ``close()``. ``extra_args`` come after the defaults,
    so they override them.
    """
    scenario = SCENARIOS[name]
    stack = contextlib.ExitStack()
    try:
        command = [python, "-m", scenario.module, *scenario.default_args]
        command += _server_args(scenario, servers, stack)
        command += [*extra_args, "--wait-stdin"]
        dns = _private_dns(scenario, stack)
        if dns is not None:
            command = dns.command(command)
        # A file, not a pipe: a child with much to say on stderr must never block on it.
        errors = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=child_environment(),
        )
        stack.callback(_reap, child)
        process = ScenarioProcess(scenario, child, stack, errors)
        process.dns = dns
        return process
    except BaseException:
        stack.close()
        raise


def run_scenario(
    name, python=sys.executable, servers=None, extra_args=(), on_ready=None, timeout=RUN_TIMEOUT
) -> dict:
    """Run a scenario to the end and return its ground truth (the parsed JSON line).

    ``on_ready(pid)`` is called while the child waits, before it does any work.
    """
    with start_scenario(name, python, servers, extra_args) as process:
        if on_ready is not None:
            on_ready(process.pid)
        truth = process.truth(timeout)
        code = process.wait(timeout)
        if code != 0:
            raise ScenarioError(f"{name} exited with {code}:\n{process.stderr()}")
        return truth


def _private_dns(scenario, stack):
    """The private responder a scenario resolves through, started into ``stack``, or None."""
    if not scenario.private_dns:
        return None
    from workloads.private_dns import PrivateDns  # Python 3.7+, like the scenarios that use it

    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="thread-observer-dns-"))
    return stack.enter_context(PrivateDns(folder, {PRIVATE_NAME: "127.0.0.1"}))


def _server_args(scenario, servers, stack) -> list:
    if scenario.server is None:
        return []
    if scenario.server == "http":
        port = servers.http_port if servers else stack.enter_context(http_server())
        return ["--port", str(port)]
    redis = servers.redis if servers else stack.enter_context(redis_server())
    if scenario.server == "redis_unix":
        return ["--socket", redis.socket]
    return ["--port", str(redis.port)]


def _reap(child) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()

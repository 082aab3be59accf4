"""Private servers for the workloads, on loopback, torn down afterwards: never a system service.

``http_server()`` runs ``python -m workloads.http_server`` as a child; ``redis_server()`` runs
Debian's ``redis-server`` on a Unix socket in a temporary directory and on a free loopback TCP
port, with persistence off. Both are context managers that leave nothing running. This module
runs on every CPython from 3.6 on, because the stdlib scenarios start their own server when
run without ``--port``.
"""

import collections
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

RedisAddress = collections.namedtuple("RedisAddress", "socket port")
LocalServers = collections.namedtuple("LocalServers", "http_port redis")

START_TIMEOUT = 15.0


@contextlib.contextmanager
def http_server(python=sys.executable, impl="auto"):
    """Yield the loopback port of a ``workloads.http_server`` child."""
    command = [python, "-m", "workloads.http_server", "--port", "0", "--impl", impl]
    command.append("--exit-on-stdin-eof")
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_environment(),
        universal_newlines=True,
    )
    try:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"{' '.join(command)} exited with {child.wait()} before listening")
        yield json.loads(line)["port"]
    finally:
        child.stdin.close()  # the server's cue to stop by itself
        _stop(child, grace=5.0)


@contextlib.contextmanager
def redis_server(executable="redis-server"):
    """Yield the RedisAddress (Unix socket path, TCP port) of a private redis-server."""
    if shutil.which(executable) is None:
        raise FileNotFoundError(f"{executable} not found (Debian: apt-get install redis-server)")
    directory = tempfile.mkdtemp(prefix="thread-observer-redis-")
    child = None
    try:
        child, address = _start_redis(executable, directory)
        yield address
    finally:
        if child is not None:
            _stop(child)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def local_servers(http=True, redis=True, python=sys.executable):
    """Both kinds at once, as LocalServers; a kind not asked for is None."""
    with contextlib.ExitStack() as stack:
        http_port = stack.enter_context(http_server(python)) if http else None
        redis_address = stack.enter_context(redis_server()) if redis else None
        yield LocalServers(http_port, redis_address)


# The lowest port handed out: below the kernel's ephemeral range, above most fixed services.
PRIVATE_PORTS_FROM = 20000
# Ports this process has handed out: each one once.
_handed_out = set()


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server that is told its port.

    It is drawn from below the kernel's ephemeral range (net.ipv4.ip_local_port_range), which
    every bind to port 0 and every outgoing connection takes its ports from: another server
    asking the kernel for a port cannot be given this one before ours binds it. Where that
    range leaves no room, the kernel picks (bind to 0)."""
    low = _ephemeral_ports_from()
    for _ in range(100):
        port = random.randrange(PRIVATE_PORTS_FROM, low) if low > PRIVATE_PORTS_FROM else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no free loopback port found")


def _ephemeral_ports_from() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def child_environment(base=None) -> dict:
    """The environment for a child that imports this package, wherever it was imported from."""
    env = dict(os.environ if base is None else base)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _start_redis(executable, directory):
    path = os.path.join(directory, "redis.sock")
    log = os.path.join(directory, "redis.log")
    for _ in range(3):
        port = free_port()
        command = [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            path,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            directory,
            "--logfile",
            log,
        ]
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if _wait_for_redis(child, path, port):
            return child, RedisAddress(path, port)
        _stop(child)
    raise RuntimeError(f"redis-server did not start; its log:\n{_tail(log)}")


def _wait_for_redis(child, path, port) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and child.poll() is None:
        if _pong(socket.AF_UNIX, path) and _pong(socket.AF_INET, ("127.0.0.1", port)):
            return True
        time.sleep(0.02)
    return False


def _pong(family, address) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(address)
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(child, grace=0.0) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


def _tail(path, lines=20) -> str:
    try:
        with open(path) as log:
            return "".join(log.readlines()[-lines:])
    except OSError:
        return "(no log)"

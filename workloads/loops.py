"""Event loops for the workloads: asyncio's or uvloop's, run so the ground truth stays exact.

Works on every CPython from 3.6 on (no asyncio.run there); uvloop is imported only when asked
for, so the stdlib scenarios run on interpreters that do not have it.
"""

import asyncio
import concurrent.futures
import os
import socket

from workloads.truth import eai_name

LOOPS = ("asyncio", "uvloop")


def run_event_loop(main, kind="asyncio", truth=None):
    """Run the coroutine ``main()`` on a fresh loop of ``kind``; return (result, thread facts).

    The default executor is the one asyncio would create, made here so teardown can join its
    workers from this thread: asyncio.run's shutdown_default_executor (3.9+) starts one more
    thread to do that, which would add a thread the scenario never asked for to every count.
    """
    loop = new_event_loop(kind, truth)
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
    loop.set_default_executor(executor)
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        executor.shutdown(wait=True)
        asyncio.set_event_loop(None)
        loop.close()
    return result, thread_facts(executor, loop)


def thread_facts(executor, loop) -> dict:
    """The threads behind the counts: the executor's workers and libuv's native pool."""
    libuv_started = getattr(loop, "libuv_lookups", 0) > 0
    return {
        # A worker never exits before shutdown, so _threads holds every worker ever started.
        "executor_max_workers": executor._max_workers,
        "executor_threads": len(executor._threads),
        # libuv starts its whole pool on the first job, and no Python-level count sees it.
        "libuv_threads": libuv_pool_size() if libuv_started else 0,
    }


def libuv_pool_size(environ=None) -> int:
    """The number of threads libuv starts for its pool (uv__threadpool init_once)."""
    text = (os.environ if environ is None else environ).get("UV_THREADPOOL_SIZE")
    if not text:
        return 4
    try:
        size = int(text)
    except ValueError:
        size = 0
    return min(max(size, 1), 1024)


def new_event_loop(kind="asyncio", truth=None):
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        return _counting_uvloop(truth)
    raise ValueError(f"unknown event loop {kind!r}, expected one of {LOOPS}")


def _counting_uvloop(truth):
    import uvloop

    class CountingLoop(uvloop.Loop):
        # libuv calls libc's getaddrinfo from its own native pool, where GroundTruth's tracer
        # never runs: count here every lookup that will reach libc.
        libuv_lookups = 0

        async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
            in_libc = self._count(host, port, family, type, proto)
            try:
                return await super().getaddrinfo(
                    host, port, family=family, type=type, proto=proto, flags=flags
                )
            except socket.gaierror as error:
                self._count_failure(in_libc, error)
                raise

        async def create_connection(
            self,
            protocol_factory,
            host=None,
            port=None,
            *,
            family=0,
            proto=0,
            local_addr=None,
            **options,
        ):
            # uvloop resolves these through a private path, not the getaddrinfo above.
            in_libc = False
            if host is not None or port is not None:
                in_libc = self._count(host, port, family, socket.SOCK_STREAM, proto)
                if local_addr is not None:
                    host_, port_ = local_addr
                    in_libc |= self._count(host_, port_, family, socket.SOCK_STREAM, proto)
            try:
                return await super().create_connection(
                    protocol_factory,
                    host,
                    port,
                    family=family,
                    proto=proto,
                    local_addr=local_addr,
                    **options,
                )
            except socket.gaierror as error:
                self._count_failure(in_libc, error)
                raise

        def _count(self, host, port, family, type, proto) -> bool:
            if not uvloop_calls_libc(host, port, family, type, proto):
                return False
            self.libuv_lookups += 1
            if truth is not None:
                truth.count_native_getaddrinfo()
            return True

        def _count_failure(self, in_libc, error) -> None:
            if in_libc and truth is not None:
                truth.count_native_getaddrinfo(calls=0, failures=1, error=eai_name(error.errno))

    return CountingLoop()


def uvloop_calls_libc(host, port, family=0, type=0, proto=0) -> bool:
    """Whether uvloop's ``getaddrinfo`` goes to libc, or answers an IP literal by itself.

    Mirrors uvloop's ``__static_getaddrinfo`` (dns.pyx): a literal is answered without libc
    only for a stream or datagram socket type. ``sock_connect`` asks with type 0, so on uvloop
    every connect through it (aiohttp's, via aiohappyeyeballs) is one more libc call.
    ``create_connection`` follows the same rule with a stream type; ``create_server`` (which
    always calls libc) and ``getnameinfo`` are not counted: no workload calls them on uvloop.
    """
    if proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return True
    kind = type & 0xF
    if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        return True
    protocol = "tcp" if kind == socket.SOCK_STREAM else "udp"
    if _port_number(port, protocol) is None:
        return True
    families = (socket.AF_INET, socket.AF_INET6) if family == socket.AF_UNSPEC else (family,)
    return not any(_is_address_literal(host, candidate) for candidate in families)


def _port_number(port, protocol):
    if port is None or port in ("", b""):
        return 0
    try:
        return int(port)
    except (TypeError, ValueError):
        pass
    if isinstance(port, bytes):
        port = port.decode()
    try:
        return socket.getservbyname(port, protocol)
    except (OSError, TypeError):
        return None


def _is_address_literal(host, family) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if family == socket.AF_INET6:
        host = host.split("%", 1)[0]
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return False
    return True


def running_loop():
    # get_running_loop is 3.7+; inside a coroutine get_event_loop returns the running loop.
    getter = getattr(asyncio, "get_running_loop", asyncio.get_event_loop)
    return getter()


async def gather_limited(job, times, concurrency) -> list:
    """Await ``job()`` ``times`` times, at most ``concurrency`` at once; the results, in order."""
    limit = asyncio.Semaphore(concurrency)

    async def limited():
        async with limit:
            return await job()

    return list(await asyncio.gather(*(limited() for _ in range(times))))


async def close_writer(writer) -> None:
    writer.close()
    if hasattr(writer, "wait_closed"):  # 3.7+
        await writer.wait_closed()

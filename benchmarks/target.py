"""The watched process of the benchmarks: runs the measured work on command, and counts it.

usage: python -m benchmarks.target [--label TEXT]   (the label only makes the command line
                                                      unique, for a --target regex)

It prints ``{"pid": N}``, then reads one JSON command a line on stdin and answers each with one
JSON line; it exits when stdin closes. The same process serves every round, with the observer
attached or not, so that rounds differ only by the observer. Its only threads are the ones the
work makes, so its own count of them is the ground truth.

commands:
  {"op": "getaddrinfo", "seconds": 1}      socket.getaddrinfo('localhost', 80) in a loop
  {"op": "threads", "seconds": 1}          threading.Thread start + join in a loop
  {"op": "http", "seconds": 2, "port": P, "concurrency": 4}
                                           aiohttp GETs of http://localhost:P/, a new
                                           connection (and name lookup) per request
  {"op": "long_threads", "count": 8, "lifetime": 2.5, "spacing": 0.25}
  {"op": "short_threads", "count": 1000, "spacing": 0.003}
  {"op": "steady", "interval": 0.01}       from now on, one lookup and one thread per interval
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time

CHECK_EVERY = 50  # operations between clock reads: reading the clock is not free either


def timed_loop(operation, seconds: float) -> dict:
    """Runs ``operation`` for about ``seconds``; wall and CPU time of the whole process."""
    operation()  # warm: first-call costs (imports, caches) belong to no round
    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(CHECK_EVERY):
            operation()
        count += CHECK_EVERY
    wall = time.perf_counter() - started
    return {"ops": count, "wall": wall, "cpu": time.process_time() - cpu}


def lookup_localhost() -> None:
    socket.getaddrinfo("localhost", 80)


def start_and_join() -> None:
    thread = threading.Thread(target=_nothing)
    thread.start()
    thread.join()


def _nothing() -> None:
    pass


def http(seconds: float, port: int, concurrency: int) -> dict:
    cpu = time.process_time()
    started = time.perf_counter()
    ok, failed = asyncio.run(_fetch_until(time.perf_counter() + seconds, port, concurrency))
    wall = time.perf_counter() - started
    return {"ops": ok, "failed": failed, "wall": wall, "cpu": time.process_time() - cpu}


async def fetch_with_new_session(url: str) -> int:
    """One GET on a new connection: a new session has an empty DNS cache, so the name is
    resolved again, by libc in the loop's executor (aiodns, if installed, would bypass libc)."""
    import aiohttp

    connector = aiohttp.TCPConnector(resolver=aiohttp.ThreadedResolver())
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as reply:
        await reply.read()
        return reply.status


async def _fetch_until(deadline: float, port: int, concurrency: int) -> tuple[int, int]:
    url = f"http://localhost:{port}/"
    await fetch_with_new_session(url)  # warm: imports and the executor's first thread
    counts = {"ok": 0, "failed": 0}

    async def client() -> None:
        while time.perf_counter() < deadline:
            try:
                status = await fetch_with_new_session(url)
            except OSError:
                status = None
            counts["ok" if status == 200 else "failed"] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return counts["ok"], counts["failed"]


def long_threads(count: int, lifetime: float, spacing: float) -> dict:
    threads = []
    started = time.perf_counter()
    for _ in range(count):
        thread = threading.Thread(target=time.sleep, args=(lifetime,))
        thread.start()
        threads.append(thread)
        time.sleep(spacing)
    for thread in threads:
        thread.join()
    return {"started": count, "wall": time.perf_counter() - started}


def short_threads(count: int, spacing: float) -> dict:
    """Threads that live microseconds; also how long they lasted, start to join."""
    lifetimes = []
    started = time.perf_counter()
    for _ in range(count):
        began = time.perf_counter()
        start_and_join()
        lifetimes.append(time.perf_counter() - began)
        time.sleep(spacing)
    lifetimes.sort()
    return {
        "started": count,
        "median": lifetimes[len(lifetimes) // 2],
        "longest": lifetimes[-1],
        "wall": time.perf_counter() - started,
    }


def steady(interval: float) -> dict:
    def work() -> None:
        while True:
            lookup_localhost()
            start_and_join()
            time.sleep(interval)

    threading.Thread(target=work, daemon=True).start()
    return {"started": 1}


def run(command: dict) -> dict:
    op = command.pop("op")
    if op == "getaddrinfo":
        return timed_loop(lookup_localhost, command["seconds"])
    if op == "threads":
        return timed_loop(start_and_join, command["seconds"])
    operations = {
        "http": http,
        "long_threads": long_threads,
        "short_threads": short_threads,
        "steady": steady,
    }
    return operations[op](**command)


def main() -> int:
    # argv holds only an optional --label, for the runner's --target regex: nothing to parse.
    print(json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        try:
            reply = run(json.loads(line))
        except Exception as err:  # the runner reports it; this process keeps serving
            reply = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

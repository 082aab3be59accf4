"""What the two redis scenarios share: INCR a key ``--requests`` times, a few at a time.

redis.asyncio keeps a pool: a command takes an idle connection or opens a new one, so
``--concurrency`` commands in flight open that many connections and the rest reuse them. Only
opening a TCP connection by name resolves it; a Unix socket resolves nothing.
"""

import argparse
import asyncio
import os

from workloads.lifecycle import add_lifecycle_arguments, positive_int
from workloads.loops import LOOPS


def build_parser(scenario, doc):
    parser = argparse.ArgumentParser(
        prog=f"python -m workloads.{scenario}",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=positive_int, default=30, help="INCR commands")
    parser.add_argument("--concurrency", type=positive_int, default=3)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    add_lifecycle_arguments(parser)
    return parser


class ConnectionCounter:
    """Its ``on_connect`` is a ``redis_connect_func``: counts each connection the pool opens."""

    def __init__(self) -> None:
        self.opened = 0

    async def on_connect(self, connection) -> None:
        self.opened += 1
        await connection.on_connect()


async def increment(client, requests, concurrency) -> int:
    """INCR a key of this process's own ``requests`` times; returns its final value."""
    key = f"thread-observer:workload:{os.getpid()}"
    limit = asyncio.Semaphore(concurrency)

    async def command():
        async with limit:
            await client.incr(key)

    try:
        await client.delete(key)
        await asyncio.gather(*(command() for _ in range(requests)))
        return int(await client.get(key))
    finally:
        await client.delete(key)
        await client.aclose()

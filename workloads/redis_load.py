"""What the two redis scenarios share: INCR a key ``--requests`` times, a few at a time.

redis.asyncio keeps a pool: a command takes an idle connection or opens a new one, so
``--concurrency`` commands in flight open that many connections and the rest reuse them. Only
opening a TCP connection by name resolves it; a Unix socket resolves nothing.
"""

import os

from workloads.lifecycle import add_lifecycle_arguments, positive_int, run_workload, scenario_parser
from workloads.loops import LOOPS, gather_limited


def build_parser(scenario, doc):
    parser = scenario_parser(scenario, doc)
    parser.add_argument("--requests", type=positive_int, default=30, help="INCR commands")
    parser.add_argument("--concurrency", type=positive_int, default=3)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    add_lifecycle_arguments(parser)
    return parser


def run_redis_scenario(scenario, args, serve, connect, describe) -> int:
    """The ``main()`` of a redis scenario; returns 0.

    ``serve(stack)`` returns the server's address (see ``run_workload``); ``connect(address,
    on_connect)`` the client, with ``on_connect`` as its ``redis_connect_func``;
    ``describe(address)`` how the last line names the server (a dict).
    """

    async def work(address):
        counter = ConnectionCounter()
        client = connect(address, counter.on_connect)
        value = await increment(client, args.requests, args.concurrency)
        return {
            "requests": args.requests,
            "concurrency": args.concurrency,
            **describe(address),
            "connections": counter.opened,
            "final_value": value,
        }

    return run_workload(scenario, args, work, serve)


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
    try:
        await client.delete(key)
        await gather_limited(lambda: client.incr(key), requests, concurrency)
        return int(await client.get(key))
    finally:
        await client.delete(key)
        await client.aclose()

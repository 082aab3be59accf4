"""aiohttp client: fetch a local aiohttp server by host name, with a new ClientSession each time.

A new session means a new connector and an empty DNS cache, so every request resolves the name:
on asyncio in the loop's default executor (Python threads), on uvloop in libuv's native pool
(threads no Python-level tool sees). On uvloop, aiohttp's connect goes through
``loop.sock_connect``, which looks the address up once more in libc even though it is already
an IP: two libc calls per request instead of one.

examples:
  python -m workloads.aiohttp_client --requests 20 --concurrency 4
  python -m workloads.aiohttp_client --loop uvloop --port 8080
"""

import argparse
import asyncio
import contextlib
import sys

import aiohttp

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, positive_int
from workloads.loops import LOOPS, run_event_loop
from workloads.servers import http_server
from workloads.truth import GroundTruth

SCENARIO = "aiohttp_client"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=f"python -m workloads.{SCENARIO}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=positive_int, default=10)
    parser.add_argument("--concurrency", type=positive_int, default=3)
    parser.add_argument("--host", default="localhost", help="name to fetch (default localhost)")
    parser.add_argument("--port", type=int, help="HTTP port on --host (default: start a server)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    add_lifecycle_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    truth = GroundTruth().install()
    with contextlib.ExitStack() as stack:
        port = args.port or stack.enter_context(http_server())
        begin(args, SCENARIO)
        statuses, facts = run_event_loop(lambda: fetch_all(args, port), args.loop, truth)
        finish(
            truth,
            args,
            scenario=SCENARIO,
            loop=args.loop,
            requests=args.requests,
            concurrency=args.concurrency,
            host=args.host,
            responses_ok=statuses.count(200),
            **facts,
        )
    return 0


async def fetch_all(args, port) -> list:
    limit = asyncio.Semaphore(args.concurrency)
    url = f"http://{args.host}:{port}/"

    async def fetch():
        async with limit:
            return await fetch_with_new_session(url)

    return list(await asyncio.gather(*(fetch() for _ in range(args.requests))))


async def fetch_with_new_session(url) -> int:
    # aiohttp would pick its aiodns resolver if aiodns were installed, bypassing libc: pin
    # the resolver the ground truth is about.
    connector = aiohttp.TCPConnector(resolver=aiohttp.ThreadedResolver())
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as reply:
        await reply.read()
        return reply.status


if __name__ == "__main__":
    sys.exit(main())

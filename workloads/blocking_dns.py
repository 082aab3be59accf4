"""Blocking DNS: the mistake of calling socket.getaddrinfo synchronously inside a coroutine.

No executor thread is started, but every lookup stops the event loop for as long as it takes:
the ground truth records each one in ``getaddrinfo_on_loop``, and the time the loop spent
blocked in them in ``loop_blocked_seconds``.

examples:
  python -m workloads.blocking_dns --requests 10
  python -m workloads.blocking_dns --port 8080
"""

import argparse
import asyncio
import contextlib
import socket
import sys
import time

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, positive_int
from workloads.loops import LOOPS, run_event_loop
from workloads.servers import http_server
from workloads.streams import http_get
from workloads.truth import GroundTruth

SCENARIO = "blocking_dns"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=f"python -m workloads.{SCENARIO}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=positive_int, default=10)
    parser.add_argument("--concurrency", type=positive_int, default=3)
    parser.add_argument("--host", default="localhost", help="name to resolve (default localhost)")
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
        (statuses, blocked), facts = run_event_loop(
            lambda: fetch_all(args, port), args.loop, truth
        )
        finish(
            truth,
            args,
            scenario=SCENARIO,
            loop=args.loop,
            requests=args.requests,
            concurrency=args.concurrency,
            host=args.host,
            responses_ok=statuses.count(200),
            loop_blocked_seconds=round(blocked, 6),
            **facts,
        )
    return 0


async def fetch_all(args, port):
    limit = asyncio.Semaphore(args.concurrency)
    blocked = []

    async def fetch():
        async with limit:
            started = time.perf_counter()
            infos = socket.getaddrinfo(args.host, port, socket.AF_INET, socket.SOCK_STREAM)
            blocked.append(time.perf_counter() - started)
            return await http_get(infos[0][4][0], port)

    statuses = await asyncio.gather(*(fetch() for _ in range(args.requests)))
    return list(statuses), sum(blocked)


if __name__ == "__main__":
    sys.exit(main())

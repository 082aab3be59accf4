"""IP literal: connect to 127.0.0.1 directly, so nothing is resolved and no thread is started.

asyncio recognises a numeric host (``_ipaddr_info``) and skips getaddrinfo and the executor;
uvloop does the same in ``create_connection``. Compare with ``semaphore_burst``, which makes the
same requests by name.

examples:
  python -m workloads.ip_literal --requests 20 --concurrency 4
  python -m workloads.ip_literal --loop uvloop --port 8080
"""

import argparse
import asyncio
import contextlib
import sys

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, positive_int
from workloads.loops import LOOPS, run_event_loop
from workloads.servers import http_server
from workloads.streams import http_get
from workloads.truth import GroundTruth

SCENARIO = "ip_literal"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=f"python -m workloads.{SCENARIO}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=positive_int, default=30)
    parser.add_argument("--concurrency", type=positive_int, default=3)
    parser.add_argument("--host", default="127.0.0.1", help="an IP address (default 127.0.0.1)")
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

    async def fetch():
        async with limit:
            return await http_get(args.host, port)

    return list(await asyncio.gather(*(fetch() for _ in range(args.requests))))


if __name__ == "__main__":
    sys.exit(main())

"""to_thread: executor threads that have nothing to do with DNS.

Blocking work handed to ``asyncio.to_thread`` (``run_in_executor`` before 3.9) grows the same
default executor that name lookups use, with no getaddrinfo call at all: a thread count alone
does not say why the threads are there.

examples:
  python -m workloads.to_thread --requests 12 --concurrency 4
  python -m workloads.to_thread --work-seconds 0.1
"""

import argparse
import asyncio
import sys
import time

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, positive_int
from workloads.loops import LOOPS, run_event_loop, running_loop
from workloads.truth import GroundTruth

SCENARIO = "to_thread"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=f"python -m workloads.{SCENARIO}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=positive_int, default=12, help="blocking jobs")
    parser.add_argument("--concurrency", type=positive_int, default=4)
    parser.add_argument(
        "--work-seconds",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="how long each job blocks its thread (default 0.02)",
    )
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    add_lifecycle_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    truth = GroundTruth().install()
    begin(args, SCENARIO)
    done, facts = run_event_loop(lambda: run_jobs(args), args.loop, truth)
    finish(
        truth,
        args,
        scenario=SCENARIO,
        loop=args.loop,
        requests=args.requests,
        concurrency=args.concurrency,
        jobs_done=done,
        **facts,
    )
    return 0


async def run_jobs(args) -> int:
    limit = asyncio.Semaphore(args.concurrency)

    async def job():
        async with limit:
            await to_thread(time.sleep, args.work_seconds)

    await asyncio.gather(*(job() for _ in range(args.requests)))
    return args.requests


async def to_thread(function, *args):
    if hasattr(asyncio, "to_thread"):  # 3.9+
        return await asyncio.to_thread(function, *args)
    return await running_loop().run_in_executor(None, function, *args)


if __name__ == "__main__":
    sys.exit(main())

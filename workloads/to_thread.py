"""to_thread: executor threads that have nothing to do with DNS.

Blocking work handed to ``asyncio.to_thread`` (``run_in_executor`` before 3.9) grows the same
default executor that name lookups use, with no getaddrinfo call at all: a thread count alone
does not say why the threads are there.

examples:
  python -m workloads.to_thread --requests 12 --concurrency 4
  python -m workloads.to_thread --work-seconds 0.1
"""

import asyncio
import sys
import time

from workloads.lifecycle import (
    add_lifecycle_arguments,
    positive_int,
    run_workload,
    scenario_parser,
)
from workloads.loops import LOOPS, gather_limited, running_loop

SCENARIO = "to_thread"


def build_parser():
    parser = scenario_parser(SCENARIO, __doc__)
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
    return run_workload(SCENARIO, args, lambda: run_jobs(args))


async def run_jobs(args) -> dict:
    done = await gather_limited(
        lambda: to_thread(time.sleep, args.work_seconds), args.requests, args.concurrency
    )
    return {"requests": args.requests, "concurrency": args.concurrency, "jobs_done": len(done)}


async def to_thread(function, *args):
    if hasattr(asyncio, "to_thread"):  # 3.9+
        return await asyncio.to_thread(function, *args)
    return await running_loop().run_in_executor(None, function, *args)


if __name__ == "__main__":
    sys.exit(main())

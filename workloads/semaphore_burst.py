"""Semaphore burst: many requests by host name, a few at a time, on the stdlib alone.

Each request resolves ``--host`` with ``loop.getaddrinfo`` and fetches ``/`` from the address
it got. On asyncio every lookup is a job for the default executor, whose pool grows one thread
per lookup in flight, up to its cap (``min(32, cpus + 4)`` from 3.8, ``cpus * 5`` before), and
then reuses them. From 3.8 a worker counts as idle only once it is back waiting, so a lookup
submitted just before that can still start one thread more than the concurrency. Before 3.8 idle
threads are not reused while below the cap, so the pool grows to the cap whatever the
concurrency. On uvloop the lookups go to libuv's native pool instead, which no Python-level view
shows.

``localhost`` answers from /etc/hosts in microseconds, so few lookups would overlap; each one is
held for ``--dns-latency`` seconds after libc returns, the round trip a real name server adds.

examples:
  python -m workloads.semaphore_burst                       # 30 requests, 3 in flight
  python -m workloads.semaphore_burst --concurrency 40      # past the executor's cap
  python -m workloads.semaphore_burst --loop uvloop --port 8080
"""

import socket
import sys
import time

from workloads.http_load import http_scenario_parser, run_http_scenario
from workloads.lifecycle import add_lifecycle_arguments
from workloads.loops import running_loop
from workloads.streams import http_get

SCENARIO = "semaphore_burst"


def build_parser():
    parser = http_scenario_parser(
        SCENARIO, __doc__, requests=30, host="localhost", host_help="name to resolve"
    )
    parser.add_argument(
        "--dns-latency",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="hold each executor lookup this long (default 0.02; no effect on uvloop)",
    )
    add_lifecycle_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _add_dns_latency(args.dns_latency)
    return run_http_scenario(SCENARIO, args, fetch)


async def fetch(args, port) -> int:
    infos = await running_loop().getaddrinfo(
        args.host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    return await http_get(infos[0][4][0], port)


def _add_dns_latency(seconds) -> None:
    if seconds <= 0:
        return
    resolve = socket.getaddrinfo

    def slow_getaddrinfo(*args, **kwargs):
        try:
            return resolve(*args, **kwargs)
        finally:
            time.sleep(seconds)

    # asyncio looks socket.getaddrinfo up at each call, so its executor jobs run this one.
    socket.getaddrinfo = slow_getaddrinfo


if __name__ == "__main__":
    sys.exit(main())

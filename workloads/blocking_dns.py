"""Blocking DNS: the mistake of calling socket.getaddrinfo synchronously inside a coroutine.

No executor thread is started, but every lookup stops the event loop for as long as it takes:
the ground truth records each one in ``getaddrinfo_on_loop``, and the time the loop spent
blocked in them in ``loop_blocked_seconds``.

examples:
  python -m workloads.blocking_dns --requests 10
  python -m workloads.blocking_dns --port 8080
"""

import socket
import sys
import time

from workloads.http_load import http_scenario_parser, run_http_scenario
from workloads.lifecycle import add_lifecycle_arguments
from workloads.streams import http_get

SCENARIO = "blocking_dns"


def build_parser():
    parser = http_scenario_parser(
        SCENARIO, __doc__, requests=10, host="localhost", host_help="name to resolve"
    )
    add_lifecycle_arguments(parser)
    return parser


def main(argv=None) -> int:
    fetch = FetchResolvingOnTheLoop()
    return run_http_scenario(SCENARIO, build_parser().parse_args(argv), fetch, fetch.facts)


class FetchResolvingOnTheLoop:
    """One request whose name is resolved synchronously on the loop, timing how long that takes."""

    def __init__(self) -> None:
        self.blocked = []

    async def __call__(self, args, port) -> int:
        started = time.perf_counter()
        infos = socket.getaddrinfo(args.host, port, socket.AF_INET, socket.SOCK_STREAM)
        self.blocked.append(time.perf_counter() - started)
        return await http_get(infos[0][4][0], port)

    def facts(self) -> dict:
        return {"loop_blocked_seconds": round(sum(self.blocked), 6)}


if __name__ == "__main__":
    sys.exit(main())

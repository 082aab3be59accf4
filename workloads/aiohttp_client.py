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

import sys

import aiohttp

from workloads.http_load import http_scenario_parser, run_http_scenario
from workloads.lifecycle import add_lifecycle_arguments

SCENARIO = "aiohttp_client"


def build_parser():
    parser = http_scenario_parser(
        SCENARIO, __doc__, requests=10, host="localhost", host_help="name to fetch"
    )
    add_lifecycle_arguments(parser)
    return parser


def main(argv=None) -> int:
    return run_http_scenario(SCENARIO, build_parser().parse_args(argv), fetch_with_new_session)


async def fetch_with_new_session(args, port) -> int:
    # aiohttp would pick its aiodns resolver if aiodns were installed, bypassing libc: pin
    # the resolver the ground truth is about.
    connector = aiohttp.TCPConnector(resolver=aiohttp.ThreadedResolver())
    url = f"http://{args.host}:{port}/"
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as reply:
        await reply.read()
        return reply.status


if __name__ == "__main__":
    sys.exit(main())

"""IP literal: connect to 127.0.0.1 directly, so nothing is resolved and no thread is started.

asyncio recognises a numeric host (``_ipaddr_info``) and skips getaddrinfo and the executor;
uvloop does the same in ``create_connection``. Compare with ``semaphore_burst``, which makes the
same requests by name.

examples:
  python -m workloads.ip_literal --requests 20 --concurrency 4
  python -m workloads.ip_literal --loop uvloop --port 8080
"""

import sys

from workloads.http_load import http_scenario_parser, run_http_scenario
from workloads.lifecycle import add_lifecycle_arguments
from workloads.streams import http_get

SCENARIO = "ip_literal"


def build_parser():
    parser = http_scenario_parser(
        SCENARIO, __doc__, requests=30, host="127.0.0.1", host_help="an IP address"
    )
    add_lifecycle_arguments(parser)
    return parser


def main(argv=None) -> int:
    return run_http_scenario(SCENARIO, build_parser().parse_args(argv), fetch)


async def fetch(args, port) -> int:
    return await http_get(args.host, port)


if __name__ == "__main__":
    sys.exit(main())

"""redis over TCP by host name: redis.asyncio resolves the name once per connection it opens.

Each new pool connection is an ``asyncio.open_connection(host, port)``: one getaddrinfo in the
default executor. Commands on a connection already open resolve nothing, so the calls follow the
connections (``--concurrency`` of them), not the commands.

examples:
  python -m workloads.redis_tcp --requests 30 --concurrency 3
  python -m workloads.redis_tcp --host localhost --port 6379
  python -m workloads.redis_tcp --loop uvloop     # the lookups move to libuv's native pool
"""

import sys

import redis.asyncio

from workloads.redis_load import build_parser, run_redis_scenario
from workloads.servers import redis_server

SCENARIO = "redis_tcp"


def main(argv=None) -> int:
    parser = build_parser(SCENARIO, __doc__)
    parser.add_argument("--host", default="localhost", help="name to resolve (default localhost)")
    parser.add_argument("--port", type=int, help="redis-server's TCP port (default: start one)")
    args = parser.parse_args(argv)

    def serve(stack):
        return args.port or stack.enter_context(redis_server()).port

    def connect(port, on_connect):
        return redis.asyncio.Redis(host=args.host, port=port, redis_connect_func=on_connect)

    return run_redis_scenario(SCENARIO, args, serve, connect, lambda port: {"host": args.host})


if __name__ == "__main__":
    sys.exit(main())

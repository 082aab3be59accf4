"""redis over a Unix socket: redis.asyncio (aioredis's successor) with nothing to resolve.

A Unix socket path is not a host name: no getaddrinfo call, no executor thread, however many
commands run. Compare with ``redis_tcp``, the same load by name over TCP.

examples:
  python -m workloads.redis_unix --requests 30 --concurrency 3
  python -m workloads.redis_unix --socket /tmp/redis.sock
"""

import sys

import redis.asyncio

from workloads.redis_load import build_parser, run_redis_scenario
from workloads.servers import redis_server

SCENARIO = "redis_unix"


def main(argv=None) -> int:
    parser = build_parser(SCENARIO, __doc__)
    parser.add_argument("--socket", help="redis-server's Unix socket (default: start a server)")
    args = parser.parse_args(argv)

    def serve(stack):
        return args.socket or stack.enter_context(redis_server()).socket

    def connect(path, on_connect):
        return redis.asyncio.Redis(unix_socket_path=path, redis_connect_func=on_connect)

    return run_redis_scenario(SCENARIO, args, serve, connect, lambda path: {"socket": path})


if __name__ == "__main__":
    sys.exit(main())

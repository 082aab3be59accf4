"""redis over a Unix socket: redis.asyncio (aioredis's successor) with nothing to resolve.

A Unix socket path is not a host name: no getaddrinfo call, no executor thread, however many
commands run. Compare with ``redis_tcp``, the same load by name over TCP.

examples:
  python -m workloads.redis_unix --requests 30 --concurrency 3
  python -m workloads.redis_unix --socket /tmp/redis.sock
"""

import contextlib
import sys

import redis.asyncio

from workloads.lifecycle import begin, finish
from workloads.loops import run_event_loop
from workloads.redis_load import ConnectionCounter, build_parser, increment
from workloads.servers import redis_server
from workloads.truth import GroundTruth

SCENARIO = "redis_unix"


def main(argv=None) -> int:
    parser = build_parser(SCENARIO, __doc__)
    parser.add_argument("--socket", help="redis-server's Unix socket (default: start a server)")
    args = parser.parse_args(argv)
    truth = GroundTruth().install()
    with contextlib.ExitStack() as stack:
        path = args.socket or stack.enter_context(redis_server()).socket
        begin(args, SCENARIO)
        counter = ConnectionCounter()

        async def work():
            client = redis.asyncio.Redis(
                unix_socket_path=path, redis_connect_func=counter.on_connect
            )
            return await increment(client, args.requests, args.concurrency)

        value, facts = run_event_loop(work, args.loop, truth)
        finish(
            truth,
            args,
            scenario=SCENARIO,
            loop=args.loop,
            requests=args.requests,
            concurrency=args.concurrency,
            socket=path,
            connections=counter.opened,
            final_value=value,
            **facts,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

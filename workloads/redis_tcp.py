"""redis over TCP by host name: redis.asyncio resolves the name once per connection it opens.

Each new pool connection is an ``asyncio.open_connection(host, port)``: one getaddrinfo in the
default executor. Commands on a connection already open resolve nothing, so the calls follow the
connections (``--concurrency`` of them), not the commands.

examples:
  python -m workloads.redis_tcp --requests 30 --concurrency 3
  python -m workloads.redis_tcp --host localhost --port 6379
  python -m workloads.redis_tcp --loop uvloop     # the lookups move to libuv's native pool
"""

import contextlib
import sys

import redis.asyncio

from workloads.lifecycle import begin, finish
from workloads.loops import run_event_loop
from workloads.redis_load import ConnectionCounter, build_parser, increment
from workloads.servers import redis_server
from workloads.truth import GroundTruth

SCENARIO = "redis_tcp"


def main(argv=None) -> int:
    parser = build_parser(SCENARIO, __doc__)
    parser.add_argument("--host", default="localhost", help="name to resolve (default localhost)")
    parser.add_argument("--port", type=int, help="redis-server's TCP port (default: start one)")
    args = parser.parse_args(argv)
    truth = GroundTruth().install()
    with contextlib.ExitStack() as stack:
        port = args.port or stack.enter_context(redis_server()).port
        begin(args, SCENARIO)
        counter = ConnectionCounter()

        async def work():
            client = redis.asyncio.Redis(
                host=args.host, port=port, redis_connect_func=counter.on_connect
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
            host=args.host,
            connections=counter.opened,
            final_value=value,
            **facts,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

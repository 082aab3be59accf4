"""What the HTTP scenarios share: ``--requests`` GETs of ``/``, ``--concurrency`` at a time.

Each scenario makes one request its own way (a name resolved in the executor or on the loop, an
IP literal, aiohttp); the burst around it, the private ``workloads.http_server`` started when no
``--port`` is given, and the facts every HTTP scenario reports are here. Like the stdlib
scenarios that use it, it runs on every CPython from 3.6 on.
"""

from workloads.lifecycle import positive_int, run_workload, scenario_parser
from workloads.loops import LOOPS, gather_limited
from workloads.servers import http_server


def http_scenario_parser(scenario, doc, requests, host, host_help):
    """The options every HTTP scenario has; the caller adds its own, then the lifecycle ones."""
    parser = scenario_parser(scenario, doc)
    parser.add_argument("--requests", type=positive_int, default=requests)
    parser.add_argument("--concurrency", type=positive_int, default=3)
    parser.add_argument("--host", default=host, help=f"{host_help} (default {host})")
    parser.add_argument("--port", type=int, help="HTTP port on --host (default: start a server)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    return parser


def run_http_scenario(scenario, args, fetch, more_facts=dict) -> int:
    """The ``main()`` of an HTTP scenario; returns 0.

    The coroutine ``fetch(args, port)`` makes one request and returns its HTTP status.
    ``more_facts()``, called once every request is done, returns what the scenario measured on
    the way (a dict), reported after ``responses_ok``.
    """

    def serve(stack):
        return args.port or stack.enter_context(http_server())

    async def fetch_all(port):
        statuses = await gather_limited(lambda: fetch(args, port), args.requests, args.concurrency)
        return {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "host": args.host,
            "responses_ok": statuses.count(200),
            **more_facts(),
        }

    return run_workload(scenario, args, fetch_all, serve)

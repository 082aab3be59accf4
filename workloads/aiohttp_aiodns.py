"""aiohttp client with aiohttp's AsyncResolver (aiodns, c-ares): a new ClientSession per request.

aiohttp 3.10+ picks AsyncResolver by itself whenever aiodns is installed (aiohttp[speedups]):
c-ares then sends its own DNS queries from the event loop's thread. No executor thread, no libc
call: an observer that only watches getaddrinfo sees nothing, while every new session puts
queries on the wire (A and AAAA).

The name must not reach a name server off the machine: run it with a name from /etc/hosts, or
inside workloads.private_dns's namespace, whose resolv.conf names a private responder (it
refuses any other set-up).

examples:
  python -m workloads.aiohttp_aiodns --host localhost
  (inside a private_dns namespace) python -m workloads.aiohttp_aiodns --host service.test
"""

import ipaddress
import sys

import aiodns
import aiohttp

from workloads.http_load import http_scenario_parser, run_http_scenario
from workloads.lifecycle import add_lifecycle_arguments

SCENARIO = "aiohttp_aiodns"


def build_parser():
    parser = http_scenario_parser(
        SCENARIO, __doc__, requests=10, host="localhost", host_help="name to fetch"
    )
    add_lifecycle_arguments(parser)
    return parser


class CountingChannels:
    """The ground truth of native threads: pycares 5 runs one c-ares event thread per channel
    made without a socket callback, which aiodns records (privately) as ``_event_thread``."""

    event_threads = 0

    @classmethod
    def install(cls) -> None:
        real_init = aiodns.DNSResolver.__init__

        def counting_init(resolver, *args, **kwargs):
            real_init(resolver, *args, **kwargs)
            cls.event_threads += int(bool(getattr(resolver, "_event_thread", False)))

        aiodns.DNSResolver.__init__ = counting_init


class CountingResolver(aiohttp.AsyncResolver):
    """The ground truth: resolutions aiohttp asked of c-ares."""

    resolutions = 0

    async def resolve(self, host, port=0, family=0):
        CountingResolver.resolutions += 1
        return await super().resolve(host, port, family)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = off_machine_risk(args.host)
    if problem:
        print(f"aiohttp_aiodns: {problem}", file=sys.stderr)
        return 2
    CountingChannels.install()
    return run_http_scenario(
        SCENARIO,
        args,
        fetch_with_new_session,
        lambda: {
            "async_resolutions": CountingResolver.resolutions,
            "c_ares_threads": CountingChannels.event_threads,
        },
    )


async def fetch_with_new_session(args, port) -> int:
    connector = aiohttp.TCPConnector(resolver=CountingResolver())
    url = f"http://{args.host}:{port}/"
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as reply:
        await reply.read()
        return reply.status


def off_machine_risk(host, resolv_conf="/etc/resolv.conf", hosts="/etc/hosts"):
    """Why resolving ``host`` here could send a query off the machine, or None."""
    if host in names_in(hosts):
        return None
    servers = [
        line.split()[1]
        for line in read_lines(resolv_conf)
        if line.startswith("nameserver") and len(line.split()) > 1
    ]
    if servers and all(ipaddress.ip_address(s.split("%")[0]).is_loopback for s in servers):
        return None
    return (
        f"{host!r} is not in {hosts} and {resolv_conf} names a name server that may be "
        f"off this machine ({', '.join(servers) or 'none'}): use a name from {hosts}, or "
        "run inside workloads.private_dns's namespace"
    )


def names_in(hosts):
    return {name for line in read_lines(hosts) for name in line.split("#")[0].split()[1:]}


def read_lines(path):
    try:
        with open(path) as lines:
            return [line.strip() for line in lines]
    except OSError:
        return []


if __name__ == "__main__":
    sys.exit(main())

"""Mixed ground truth: a known number of threads, lookups and failures, for the observer's tests.

In this order: ``--threads`` Python threads (even-numbered ones live for microseconds: started
and joined at once; the others sleep ``--thread-seconds`` and are joined together at the end),
then ``--loop-calls`` ``await loop.getaddrinfo('localhost', port)`` one after another (default
executor, or libuv's pool on uvloop), then ``--blocking-calls`` synchronous
``socket.getaddrinfo('localhost', port)`` inside a coroutine (on the event loop thread), then
``--failures`` synchronous lookups on the loop that libc rejects before any query could leave
the machine: a service name that does not exist (EAI_SERVICE), AI_CANONNAME without a host
(EAI_BADFLAGS), AI_NUMERICHOST with a name (EAI_NONAME), in turn.

examples:
  python -m workloads.mixed --threads 6 --loop-calls 4 --blocking-calls 2 --failures 3
  python -m workloads.mixed --wait-stdin --linger 5 --loop uvloop --loop-calls 10
"""

import socket
import sys
import threading
import time

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, scenario_parser
from workloads.loops import LOOPS, run_event_loop, running_loop
from workloads.truth import GroundTruth, eai_name

SCENARIO = "mixed"
HOST = "localhost"

# Each is (host, port, flags): a lookup glibc refuses on its own, with no NSS host query.
FAILING_LOOKUPS = (
    (HOST, "no-such-service-name", 0),
    (None, "80", socket.AI_CANONNAME),
    (HOST, "80", socket.AI_NUMERICHOST),
)


def build_parser():
    parser = scenario_parser(SCENARIO, __doc__)
    parser.add_argument("--threads", type=non_negative_int, default=4)
    parser.add_argument("--thread-seconds", type=float, default=0.05, metavar="SECONDS")
    parser.add_argument("--loop-calls", type=non_negative_int, default=4)
    parser.add_argument("--blocking-calls", type=non_negative_int, default=2)
    parser.add_argument("--failures", type=non_negative_int, default=0)
    parser.add_argument("--port", type=int, default=8080, help="port to look up (no connection)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    add_lifecycle_arguments(parser)
    return parser


def non_negative_int(text) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Not run_workload, which runs all the work on the event loop: the threads come first,
    # started and joined before any loop exists.
    truth = GroundTruth().install()
    begin(args, SCENARIO)
    short, long = start_and_join_threads(args.threads, args.thread_seconds)
    failures, facts = run_event_loop(lambda: look_up(args), args.loop, truth)
    finish(
        truth,
        args,
        scenario=SCENARIO,
        loop=args.loop,
        threads_requested=args.threads,
        short_threads=short,
        long_threads=long,
        loop_calls=args.loop_calls,
        blocking_calls=args.blocking_calls,
        failures=args.failures,
        failures_by_error=failures,
        **facts,
    )
    return 0


def start_and_join_threads(count, seconds):
    sleepers = []
    for index in range(count):
        if index % 2 == 0:
            thread = threading.Thread(target=int, name=f"mixed-short-{index}")
            thread.start()
            thread.join()
        else:
            thread = threading.Thread(target=time.sleep, args=(seconds,), name=f"mixed-{index}")
            thread.start()
            sleepers.append(thread)
    for thread in sleepers:
        thread.join()
    return count - len(sleepers), len(sleepers)


async def look_up(args) -> dict:
    loop = running_loop()
    for _ in range(args.loop_calls):
        await loop.getaddrinfo(HOST, args.port, type=socket.SOCK_STREAM)
    for _ in range(args.blocking_calls):
        socket.getaddrinfo(HOST, args.port, type=socket.SOCK_STREAM)
    return fail(args.failures)


def fail(count) -> dict:
    by_error = {}
    for index in range(count):
        host, port, flags = FAILING_LOOKUPS[index % len(FAILING_LOOKUPS)]
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
        except socket.gaierror as error:
            name = eai_name(error.errno)
            by_error[name] = by_error.get(name, 0) + 1
        else:
            raise RuntimeError(f"getaddrinfo({host!r}, {port!r}, flags={flags}) did not fail")
    return dict(sorted(by_error.items()))


if __name__ == "__main__":
    sys.exit(main())

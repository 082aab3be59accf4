"""What every workload shares: its command line, the start handshake, the run and the last line.

An observer must attach to the PID before the work starts, so with ``--wait-stdin`` a workload
prints a ready line (JSON with its pid) and waits for a line on stdin. The ground truth is always
the last line on stdout, printed before ``--linger`` so a caller can read it while the process
is still alive to be scraped.
"""

import argparse
import contextlib
import json
import os
import sys
import time

from workloads.loops import run_event_loop
from workloads.truth import GroundTruth


def scenario_parser(scenario, doc):
    """The parser of ``python -m workloads.<scenario>``, its help text taken from ``doc``.

    The first paragraph says what the scenario does; the rest (what it teaches, and examples)
    becomes the epilog. The caller adds its own options, then the lifecycle ones.
    """
    return argparse.ArgumentParser(
        prog=f"python -m workloads.{scenario}",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_lifecycle_arguments(parser) -> None:
    group = parser.add_argument_group("lifecycle")
    group.add_argument(
        "--wait-stdin",
        action="store_true",
        help='print {"ready": true, "pid": PID} and wait for a line on stdin before the work',
    )
    group.add_argument(
        "--start-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep this long before the work (default 0)",
    )
    group.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep this long after printing the ground truth, before exiting (default 0)",
    )


def positive_int(text) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def run_workload(scenario, args, work, serve=None) -> int:
    """A scenario's whole run, for its ``main()``: the work runs on ``--loop``, counted; returns 0.

    ``serve(stack)`` returns the address the work connects to, starting a private server into
    ``stack`` when the command line names none; that server stops after the last line and
    ``--linger``. The coroutine ``work(address)`` (``work()`` without ``serve``) returns the
    scenario's own facts as a dict, which the last line gives in their order between
    ``scenario``/``loop`` and the thread facts.
    """
    truth = GroundTruth().install()
    with contextlib.ExitStack() as stack:
        addresses = [serve(stack)] if serve is not None else []
        begin(args, scenario)
        own_facts, thread_facts = run_event_loop(lambda: work(*addresses), args.loop, truth)
        finish(truth, args, scenario=scenario, loop=args.loop, **own_facts, **thread_facts)
    return 0


def begin(args, scenario) -> None:
    """The handshake: call it once servers are up, right before the observed work."""
    if args.wait_stdin:
        print(json.dumps({"ready": True, "pid": os.getpid(), "scenario": scenario}), flush=True)
        sys.stdin.readline()
    if args.start_delay > 0:
        time.sleep(args.start_delay)


def finish(truth, args, **facts) -> None:
    truth.emit(**facts)
    if args.linger > 0:
        time.sleep(args.linger)

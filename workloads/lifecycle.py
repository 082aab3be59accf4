"""What every workload shares: its lifecycle options, the start handshake and the last line.

An observer must attach to the PID before the work starts, so with ``--wait-stdin`` a workload
prints a ready line (JSON with its pid) and waits for a line on stdin. The ground truth is always
the last line on stdout, printed before ``--linger`` so a caller can read it while the process
is still alive to be scraped.
"""

import json
import os
import sys
import time


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

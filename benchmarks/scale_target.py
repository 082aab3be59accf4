"""A small watched process for the scale benchmark: now and then, a few threads that each make
a getaddrinfo('localhost') call.

``--newcomer`` creates its first thread at once and prints ``{"first_thread": T}`` (T on the
machine-wide monotonic clock), so the runner can time how soon the observer counts it.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_target")
    parser.add_argument("--run", required=True, help="makes the command line unique to a run")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--member", type=int, metavar="N")
    role.add_argument("--newcomer", type=int, metavar="N")
    parser.add_argument("--period", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def lookup() -> None:
    socket.getaddrinfo("localhost", 80)


def burst(threads: int) -> None:
    workers = [threading.Thread(target=lookup) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.newcomer is not None:
        first = time.monotonic()
        burst(1)
        print(json.dumps({"first_thread": first}), flush=True)
    else:
        time.sleep(random.uniform(0, args.period))  # members' bursts spread over the period
    while True:
        burst(args.threads)
        time.sleep(args.period)


if __name__ == "__main__":
    sys.exit(main())

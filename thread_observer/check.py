"""``thread-observer check``: each prerequisite of the bpf backend, OK or what to do."""

from __future__ import annotations

import argparse
import logging
import sys

from thread_observer.startup import run_checks


def add_parser(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "check", help="tell what works here and what to fix", parents=list(parents)
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return main()


def main() -> int:
    # The attach lines of the probe check would only repeat what its result says.
    logging.getLogger("thread_observer.bpf_backend").setLevel(logging.WARNING)
    results = run_checks()
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.name:<{width}}  {r.detail}")
    if all(r.ok for r in results):
        print("\nthe bpf backend works here")
        return 0
    print(
        "\nthe bpf backend cannot work here: fix the FAIL lines, or run with --backend proc "
        "(live threads only, no counts)",
        file=sys.stderr,
    )
    return 1

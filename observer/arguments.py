"""Command-line pieces shared by the subcommands."""

from __future__ import annotations

import argparse

LOG_LEVELS = ["debug", "info", "warning", "error"]


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", action="append", default=[], metavar="[NAME=]PID",
                        help="watch this process (repeatable)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=REGEX",
                        help="watch processes whose command line (as started, or as shown now) "
                        "matches REGEX, including ones that start later (repeatable); NAME may "
                        "be a template of the regex's named groups, e.g. '{app}'")
    parser.add_argument("--no-children", action="store_true",
                        help="watch only the matched processes, not their descendants (by "
                        "default a process forked or spawned by a watched one belongs to its "
                        "target)")
    parser.add_argument("--allow-non-python", action="store_true",
                        help="also watch matching processes that are not Python")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value

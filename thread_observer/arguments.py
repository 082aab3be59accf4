"""Command-line pieces shared by the subcommands."""

from __future__ import annotations

import argparse

from thread_observer.errors import UsageError

LOG_LEVELS = ["debug", "info", "warning", "error"]
DEFAULT_BACKEND = "auto"


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand has, given to each as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    add_log_level_argument(common, "info")
    return common


def add_log_level_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pid",
        action="append",
        default=[],
        metavar="[NAME=]PID",
        help="watch this process (repeatable)",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="watch processes whose command line (as started, or as shown now) "
        "matches REGEX, including ones that start later (repeatable); NAME may "
        "be a template of the regex's named groups, e.g. '{app}'",
    )
    parser.add_argument(
        "--no-children",
        action="store_true",
        help="watch only the matched processes, not their descendants (by "
        "default a process forked or spawned by a watched one belongs to its "
        "target)",
    )
    parser.add_argument(
        "--allow-non-python",
        action="store_true",
        help="also watch matching processes that are not Python",
    )


def add_backend_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--backend", choices=[DEFAULT_BACKEND, "bpf", "proc"], default=DEFAULT_BACKEND, help=help
    )


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, and finite: {text!r}")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9097")
    return host.strip("[]") or "0.0.0.0", int(port)

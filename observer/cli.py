"""Command line: ``thread-observer run | check``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from observer import __version__
from observer.arguments import LOG_LEVELS, add_target_arguments, positive_float

log = logging.getLogger("observer")

EPILOG_RUN = """examples:
  thread-observer run --target api='python.*server\\.py'          # every matching process
  thread-observer run --pid 4242 --pid worker=4343 --label-pid      # given processes
  thread-observer run --target api='uvicorn' --listen 0.0.0.0:9097 --backend auto
  thread-observer run --target '{app}=gunicorn: master \\[(?P<app>[^]:]+)'  # a target per app
  curl -s localhost:9097/metrics | grep thread_observer_
"""


class CliError(Exception):
    """A problem to report in one line on stderr, with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thread-observer",
        description="Watch native threads and getaddrinfo calls of Python processes with eBPF, "
        "from outside the interpreter, as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"thread-observer {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_parser = commands.add_parser(
        "run", help="watch targets and serve /metrics", epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
    )
    add_target_arguments(run_parser)
    run_parser.add_argument("--listen", default="0.0.0.0:9097", metavar="HOST:PORT",
                     help="where to serve /metrics and /healthz (default %(default)s)")
    run_parser.add_argument("--backend", choices=["auto", "bpf", "proc"], default="auto",
                     help="bpf: eBPF probes; proc: /proc only (live threads, no counts); "
                     "auto: bpf, or proc when eBPF cannot work here (default)")
    run_parser.add_argument("--label-pid", action="store_true",
                     help="add a pid label to every per-target series")
    run_parser.add_argument("--interval", type=positive_float, default=0.25, metavar="SECONDS",
                     help="how often new and exited processes are handled (default %(default)s)")

    run_parser.set_defaults(func=run)
    check = commands.add_parser("check", help="tell what works here and what to fix",
                                parents=[common])
    check.set_defaults(func=run_check)
    from observer.demo import add_demo_parser

    add_demo_parser(commands)
    commands.choices["demo"].set_defaults(func=demo)
    from observer.timeline import add_timeline_parser
    from observer.top import add_top_parser

    add_timeline_parser(commands, parents=[common])
    add_top_parser(commands, parents=[common])
    return parser


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CliError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9097")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except CliError as err:
        print(f"thread-observer: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_check(args: argparse.Namespace) -> int:
    from observer.check import main as check_main

    return check_main()


def demo(args: argparse.Namespace) -> int:
    from observer.bpf_backend import BpfUnavailable
    from observer.daemon import BpfObserver
    from observer.demo import run_demo

    problem = bpf_problem()
    if problem is None:
        try:
            return run_demo(args, _started(BpfObserver([], [])))
        except BpfUnavailable as err:
            problem = str(err)
    raise CliError(f"the demo needs eBPF, which cannot work here: {problem}. "
                   "Run 'thread-observer check' to see what to fix ('make setup' installs "
                   "what is missing; run as root)")


def run(args: argparse.Namespace) -> int:
    from observer.server import serve

    host, port = parse_listen(args.listen)
    observer = make_observer(args)
    try:
        asyncio.run(serve(observer, host, port, args.label_pid, args.interval))
    except OSError as err:
        observer.close()
        raise CliError(f"cannot listen on {args.listen}: {err.strerror or err}") from None
    return 0


def make_observer(args: argparse.Namespace):
    """The observer for the chosen backend, started; falls back to proc under auto."""
    from observer.bpf_backend import BpfUnavailable
    from observer.daemon import BpfObserver, ProcObserver
    from observer.targets import (
        TargetError,
        parse_pid_target,
        parse_regex_target,
        resolve_pid_target,
    )

    try:
        regex_targets = [parse_regex_target(text) for text in args.target]
        pid_targets = [
            resolve_pid_target(parse_pid_target(text), args.allow_non_python)
            for text in args.pid
        ]
    except TargetError as err:
        raise CliError(str(err)) from None
    if not regex_targets and not pid_targets:
        raise CliError("nothing to watch: give --target NAME=REGEX or --pid PID")
    options = (regex_targets, pid_targets, args.allow_non_python)
    children = {"follow_children": not args.no_children}
    if args.backend == "proc":
        return _started(ProcObserver(*options, **children))
    problem = bpf_problem()
    if problem is None:
        try:
            return _started(BpfObserver(*options, **children))
        except BpfUnavailable as err:
            problem = str(err)
    if args.backend == "bpf":
        raise CliError(f"the bpf backend cannot work here: {problem}")
    log.warning("eBPF unavailable (%s): falling back to the proc backend: live threads and "
                "processes only; thread creation counts and getaddrinfo are NOT measured",
                problem)
    return _started(ProcObserver(*options, **children))


def _started(observer):
    observer.start()
    return observer


def bpf_problem() -> str | None:
    """Why the bpf backend cannot work, found cheaply before compiling anything."""
    from observer.check import check_headers, has_bpf_capabilities

    if os.geteuid() != 0 and not has_bpf_capabilities():
        return ("not root and without CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): run as root, "
                "or grant those capabilities")
    headers = check_headers()
    return None if headers.ok else f"kernel headers: {headers.detail}"

"""Command line: ``thread-observer run | check | demo | timeline | top``.

Each command module adds its own subparser and handler; this one adds ``run``, parses, and
reports a :class:`~thread_observer.errors.UsageError` as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from thread_observer import __version__, check, demo, top
from thread_observer.arguments import (
    add_backend_argument,
    add_target_arguments,
    common_parser,
    non_negative_float,
    positive_float,
)
from thread_observer.errors import UsageError
from thread_observer.kubernetes import PodNames, add_pod_arguments
from thread_observer.options import ObserverOptions
from thread_observer.timeline import command as timeline
from thread_observer.web_config import WebConfigError, add_web_arguments, load_web_config

EPILOG_RUN = """examples:
  thread-observer run --target api='python.*server\\.py'          # every matching process
  thread-observer run --pid 4242 --pid worker=4343 --label-pid      # given processes
  thread-observer run --target api='uvicorn' --listen 0.0.0.0:9097 --backend auto
  thread-observer run --target '{app}=gunicorn: master \\[(?P<app>[^]:]+)'  # a target per app
  curl -s localhost:9097/metrics | grep thread_observer_
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thread-observer",
        description="Watch native threads and getaddrinfo calls of Python processes with eBPF, "
        "from outside the interpreter, as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"thread-observer {__version__}")
    parents = [common_parser()]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(commands, parents)
    check.add_parser(commands, parents)
    demo.add_parser(commands, parents)
    timeline.add_parser(commands, parents)
    top.add_parser(commands, parents)
    return parser


def add_run_parser(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "run",
        help="watch targets and serve /metrics",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--listen",
        default=ObserverOptions.listen,
        metavar="HOST:PORT",
        help="where to serve /metrics and /healthz (default %(default)s)",
    )
    add_backend_argument(
        parser,
        "bpf: eBPF probes; proc: /proc only (live threads, no counts); "
        "auto: bpf, or proc when eBPF cannot work here (default)",
    )
    parser.add_argument(
        "--label-pid", action="store_true", help="add a pid label to every per-target series"
    )
    parser.add_argument(
        "--no-sites",
        dest="sites",
        action="store_false",
        help="do not read Python frames: no call sites, no executor threads, "
        "caller=event_loop from the epoll mark alone",
    )
    parser.add_argument(
        "--no-host-names",
        dest="host_names",
        action="store_false",
        help="do not read the name each getaddrinfo call asks for: no "
        "getaddrinfo_host_calls_total, and each call costs less",
    )
    parser.add_argument(
        "--no-dns-queries",
        dest="dns_queries",
        action="store_false",
        help="do not follow DNS messages on the wire: no dns_queries_total, and no program "
        "runs at any process's write, send or close",
    )
    parser.add_argument(
        "--no-epoll-mark",
        dest="epoll_mark",
        action="store_false",
        help="do not mark threads that wait in epoll: caller=event_loop from Python frames "
        "alone (other where they cannot tell), and no program runs at any process's epoll "
        "waits; needs call sites (not with --no-sites)",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=ObserverOptions.interval,
        metavar="SECONDS",
        help="how often new and exited processes are handled (default %(default)s)",
    )
    parser.add_argument(
        "--series-grace",
        type=non_negative_float,
        default=ObserverOptions.series_grace,
        metavar="SECONDS",
        help="how long a series that comes and goes with processes (a name template's, a "
        "pod's container's, a pid's) stays after its last process ended; a named target's "
        "stay for the observer's life (default %(default)s)",
    )
    add_pod_arguments(parser)
    add_web_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except UsageError as err:
        print(f"thread-observer: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run(args: argparse.Namespace) -> int:
    from thread_observer.server import serve
    from thread_observer.startup import make_observer

    options = ObserverOptions.from_arguments(args)
    try:
        web_config = load_web_config(options)
    except WebConfigError as err:
        raise UsageError(str(err)) from None
    pod_names = PodNames(options.kubelet_log_dir) if options.wants_pod_names else None
    observer = make_observer(options, pod_names)
    host, port = options.address
    try:
        asyncio.run(
            serve(
                observer,
                host,
                port,
                options.label_pid,
                options.interval,
                pod_names=pod_names if options.pod_labels else None,
                web_config=web_config,
            )
        )
    except OSError as err:  # the server's clean-up has closed the observer
        raise UsageError(f"cannot listen on {options.listen}: {err.strerror or err}") from None
    return 0

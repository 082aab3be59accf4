"""``thread-observer top``: the targets' threads and getaddrinfo calls, live in a terminal.

Every second it takes a sample of the metrics, from an observer's /metrics URL or from an
observer started in this process, and shows rates between the last two frames. A sample is
parsed from the exposition text in both cases, so what top shows is what Prometheus scrapes.

Counters are kept per series for the whole session (a :class:`Session`): a process that exits
takes its series with it, but not what it did, so a "since start" view still shows short jobs
long gone, and rates never jump when one leaves.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from thread_observer.arguments import add_backend_argument, add_target_arguments, positive_float
from thread_observer.errors import UsageError, require_rich
from thread_observer.options import ObserverOptions
from thread_observer.top_sample import ObserverSource, Sample, Session, UrlSource

EPILOG = """examples:
  thread-observer top --url http://127.0.0.1:9097/metrics     # a running observer
  thread-observer top --target api='python.*server\\.py'        # an observer of its own
  thread-observer top --pid 4242 --interval 2
  thread-observer top --target batch='python.*job\\.py' --since-start --log-file top.log

Keys: q quits (Ctrl-C too, and without a terminal only Ctrl-C); s switches between rates now
and totals since start (every process seen, gone ones included).
"""


# The terminal
@contextmanager
def key_reader() -> Iterator[Callable[[float], str]]:
    """``wait(seconds)`` returns a key pressed meanwhile, or "" when the time is up."""
    if not sys.stdin.isatty():
        yield lambda seconds: time.sleep(max(seconds, 0)) or ""
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still interrupts

    def wait(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], max(seconds, 0))
        return os.read(fd, 1).decode(errors="replace") if ready else ""

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Screen:
    """What is on screen: the session, the last frame's view, and which view is shown."""

    def __init__(self, source, interval: float, since_start: bool, status: StatusLine) -> None:
        self.source = source
        self.interval = interval
        self.since_start = since_start
        self.session = Session()
        self.status = status
        self.started = time.monotonic()
        self.latest = self._sample()
        self.previous: Sample | None = None
        self.shown = self.session.view(self.latest)

    def _sample(self) -> Sample:
        sample = self.source.sample()
        self.session.update(sample)
        return sample

    def frame(self):
        """The frame to show now (a rich renderable)."""
        from thread_observer.top_view import render_frame

        elapsed = self.shown.time - self.started
        return render_frame(
            self.previous,
            self.shown,
            self.shown.time - self.previous.time if self.previous else self.interval,
            elapsed if self.since_start else None,
            self.status.text,
        )

    def wait_for_frame(self, wait: Callable[[float], str], on_key: Callable[[], None]) -> bool:
        """Samples until the next frame is due; False when q was pressed."""
        due = self.shown.time + self.interval
        while True:
            now = time.monotonic()
            if now >= due:
                break
            next_sample = min(due, self.latest.time + (self.source.period or self.interval))
            key = wait(next_sample - now)
            if key in ("q", "Q"):
                return False
            if key in ("s", "S"):
                self.since_start = not self.since_start
                on_key()
            elif not key and time.monotonic() < due:
                self.latest = self._sample()
        self.latest = self._sample()
        self.previous, self.shown = self.shown, self.session.view(self.latest)
        return True


def show(source, interval: float, count: int | None, since_start: bool, status: StatusLine) -> None:
    from rich.console import Console
    from rich.live import Live

    screen = Screen(source, interval, since_start, status)
    frames = 1
    with Live(screen.frame(), console=Console(), auto_refresh=False) as live, key_reader() as wait:

        def redraw() -> None:
            live.update(screen.frame(), refresh=True)

        while count is None or frames < count:
            if not screen.wait_for_frame(wait, redraw):
                return
            redraw()
            frames += 1


class StatusLine(logging.Handler):
    """The last log record, shown under the table rather than printed over it; the last
    warning stays there too, so that an INFO line cannot push it out of sight."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""
        self.warning = ""
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        line = " ".join(self.format(record).split())  # one line, whatever the message
        if record.levelno >= logging.WARNING:
            self.warning = line
        self.last = line

    @property
    def text(self) -> str:
        return "\n".join(dict.fromkeys(line for line in (self.warning, self.last) if line))


@contextmanager
def logs_elsewhere(status: StatusLine, log_file: str | None) -> Iterator[None]:
    """While the table is live, log records go to the status line, and to ``log_file``
    if given; never to the terminal, where they would scroll through the table."""
    root = logging.getLogger()
    saved = root.handlers[:]
    handlers: list[logging.Handler] = [status]
    if log_file:
        to_file = logging.FileHandler(log_file)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    root.handlers = handlers
    try:
        yield
    finally:
        root.handlers = saved
        for handler in handlers[1:]:
            handler.close()


# Command line
def add_parser(subparsers, parents) -> None:
    """The ``top`` subcommand."""
    parser = subparsers.add_parser(
        "top",
        help="live view of the targets' threads and getaddrinfo calls",
        description="A live terminal view: threads now, creation rate by creator, getaddrinfo "
        "rate, p99 latency, failures and calls on event loops.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    parser.add_argument(
        "--url", metavar="URL", help="an observer's /metrics, e.g. http://127.0.0.1:9097/metrics"
    )
    add_target_arguments(parser)
    add_backend_argument(parser, "without --url: the backend of the observer started here")
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="refresh period (default %(default)s)",
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="stop after N frames (default: until q or Ctrl-C)"
    )
    parser.add_argument(
        "--since-start",
        action="store_true",
        help="start with the totals since start, gone processes included (key s switches)",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        help="also write log records to FILE (while the table is on screen, "
        "the last one shows under it)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thread_observer.startup import make_observer

    require_rich("top")
    if args.url and (args.pid or args.target):
        raise UsageError("give either --url or --pid/--target, not both")
    options = ObserverOptions.from_arguments(args)
    if options.log_file:
        try:
            open(options.log_file, "a").close()
        except OSError as err:
            raise UsageError(f"--log-file {options.log_file}: {err.strerror or err}") from None
    status = StatusLine()
    with logs_elsewhere(status, options.log_file):
        source = UrlSource(args.url) if args.url else ObserverSource(make_observer(options))
        try:
            show(source, options.interval, args.count, args.since_start, status)
        except KeyboardInterrupt:
            pass  # the way to quit without a terminal
        finally:
            source.close()
    return 0

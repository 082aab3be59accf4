"""``thread-observer top``: the targets' threads and getaddrinfo calls, live in a terminal.

Every second it takes a sample of the metrics, from an observer's /metrics URL or from an
observer started in this process, and shows rates between the last two samples. A sample is
parsed from the exposition text in both cases, so what top shows is what Prometheus scrapes.
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
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from observer.arguments import add_backend_argument, add_target_arguments, positive_float
from observer.constants import METRIC_PREFIX, metric_name
from observer.errors import UsageError
from observer.histogram import quantile as histogram_quantile
from observer.labels import short_creator

EPILOG = """examples:
  thread-observer top --url http://127.0.0.1:9097/metrics     # a running observer
  thread-observer top --target api='python.*server\\.py'        # an observer of its own
  thread-observer top --pid 4242 --interval 2

Keys: q quits (Ctrl-C too, and without a terminal only Ctrl-C).
"""
NO_VALUE = "—"


@dataclass
class TargetSample:
    """One target's series at one instant (summed over its processes)."""

    processes: float = 0
    threads: float = 0
    created: dict[str, float] = field(default_factory=dict)  # by creator
    exited: float = 0
    calls: dict[str, float] = field(default_factory=dict)  # by caller
    failures: dict[str, float] = field(default_factory=dict)  # by EAI_* name
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative
    counted: bool = False  # the backend counts (bpf): the counters exist


@dataclass
class Sample:
    time: float  # time.monotonic() when taken
    targets: dict[str, TargetSample] = field(default_factory=dict)
    backend: str = ""
    source: str = ""
    error: str = ""  # why this sample is empty (the observer did not answer)


def _add(values: dict[str, float], key: str, value: float) -> None:
    values[key] = values.get(key, 0.0) + value


def parse_sample(text: str, taken: float, source: str = "") -> Sample:
    """A sample from /metrics text; series with a ``pid`` label are summed by target."""
    sample = Sample(taken, source=source)
    targets: dict[str, TargetSample] = defaultdict(TargetSample)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric_name("build_info"):
                sample.backend = s.labels.get("backend", "")
            elif "target" in s.labels:
                _add_target_sample(targets[s.labels["target"]], s.name, s.labels, s.value)
    sample.targets = dict(sorted(targets.items()))
    return sample


def _add_target_sample(target: TargetSample, name: str, labels: dict, value: float) -> None:
    name = name.removeprefix(METRIC_PREFIX + "_")
    if name == "processes":
        target.processes += value
    elif name == "threads":
        target.threads += value
    elif name == "threads_created_total":
        target.counted = True
        _add(target.created, labels["creator"], value)
    elif name == "threads_exited_total":
        target.exited += value
    elif name == "getaddrinfo_calls_total":
        _add(target.calls, labels["caller"], value)
    elif name == "getaddrinfo_failures_total":
        _add(target.failures, labels["error"], value)
    elif name == "getaddrinfo_duration_seconds_bucket":
        bound = float(labels["le"])
        target.buckets[bound] = target.buckets.get(bound, 0.0) + value


# Between two samples
def increase(current: float, previous: float | None) -> float:
    """A counter's increase; a counter that went down was reset (its process restarted)."""
    if previous is None:
        return current
    return current - previous if current >= previous else current


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Like PromQL's histogram_quantile, over ``{upper bound: cumulative count}``."""
    return histogram_quantile(q, sorted(buckets.items()))


def bucket_increase(current: TargetSample, previous: TargetSample | None) -> dict[float, float]:
    old = previous.buckets if previous else {}
    return {bound: increase(count, old.get(bound)) for bound, count in current.buckets.items()}


def format_rate(per_second: float) -> str:
    if per_second == 0:
        return "0"
    return f"{per_second:.1f}/s" if per_second >= 0.1 else f"{per_second:.2f}/s"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return NO_VALUE
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _rates(current: dict[str, float], previous: dict[str, float] | None,
           interval: float) -> dict[str, float]:
    old = previous or {}
    return {key: increase(value, old.get(key)) / interval for key, value in current.items()}


def _breakdown(current: dict[str, float], previous: dict[str, float] | None,
               interval: float) -> Text:
    """``rate name (total)`` per key, one a line, busiest first."""
    if not current:
        return Text("0")
    rates = _rates(current, previous, interval)
    text = Text()
    for key in sorted(current, key=lambda k: (-rates[k], -current[k], k)):
        if text:
            text.append("\n")
        text.append(f"{format_rate(rates[key])} ", style="bold" if rates[key] else "")
        text.append(f"{short_creator(key)} ({current[key]:.0f})", style="dim")
    return text


def render_frame(previous: Sample | None, current: Sample, interval: float) -> RenderableType:
    """One screen: a row per target, rates over the ``interval`` seconds between samples."""
    header = Text(f"thread-observer top · {current.source or 'in-process observer'}"
                  f" · backend {current.backend or '?'} · every {interval:.1f} s · q quits")
    if current.error:
        return Group(header, Text(current.error, style="bold red"))
    if not current.targets:
        return Group(header, Text("no targets yet", style="dim"))
    table = Table(expand=True, header_style="bold")
    for column, justify in COLUMNS:
        # One line per creator or error: cut long names rather than wrap them.
        table.add_column(column, justify=justify, no_wrap=True, overflow="ellipsis")
    for name, target in current.targets.items():
        table.add_row(name, *_target_cells(target, _previous(previous, name), interval))
    return Group(header, table)


COLUMNS = (("target", "left"), ("procs", "right"), ("threads", "right"),
           ("created (total)", "left"), ("exited", "right"), ("getaddrinfo", "right"),
           ("on event loop", "right"), ("p99", "right"), ("failures (total)", "left"))


def _previous(sample: Sample | None, name: str) -> TargetSample | None:
    return sample.targets.get(name) if sample and not sample.error else None


def _target_cells(target: TargetSample, previous: TargetSample | None,
                  interval: float) -> list[RenderableType]:
    cells: list[RenderableType] = [f"{target.processes:.0f}", f"{target.threads:.0f}"]
    if not target.counted:  # the proc backend: no counters, and no zeros passed off as such
        return cells + [NO_VALUE] * (len(COLUMNS) - 3)
    if previous is None:  # the first sample: totals, no rates yet
        return cells + [_breakdown(target.created, target.created, 1), *[NO_VALUE] * 4,
                        _breakdown(target.failures, target.failures, 1)]
    calls = sum(_rates(target.calls, previous.calls, interval).values())
    on_loop = increase(target.calls.get("event_loop", 0), previous.calls.get("event_loop"))
    return cells + [
        _breakdown(target.created, previous.created, interval),
        format_rate(increase(target.exited, previous.exited) / interval),
        format_rate(calls),
        # A getaddrinfo on an event-loop thread blocks every coroutine of that loop.
        Text(format_rate(on_loop / interval), style="bold red" if on_loop else ""),
        format_seconds(quantile(0.99, bucket_increase(target, previous))),
        _breakdown(target.failures, previous.failures, interval),
    ]


# Where samples come from
class UrlSource:
    def __init__(self, url: str) -> None:
        self.url = url

    def sample(self) -> Sample:
        taken = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                text = response.read().decode()
        except OSError as err:
            return Sample(taken, source=self.url, error=f"cannot scrape {self.url}: {err}")
        return parse_sample(text, taken, self.url)

    def close(self) -> None:
        pass


class ObserverSource:
    """An observer in this process, read through the same collector /metrics uses."""

    def __init__(self, observer) -> None:
        from prometheus_client import CollectorRegistry

        from observer.collector import ObserverCollector

        self.observer = observer
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ObserverCollector(observer.snapshot))

    def sample(self) -> Sample:
        from prometheus_client import generate_latest

        self.observer.poll()
        taken = time.monotonic()
        return parse_sample(generate_latest(self.registry).decode(), taken)

    def close(self) -> None:
        self.observer.close()


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


def show(source, interval: float, count: int | None) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    previous = source.sample()
    frames = 1
    with Live(render_frame(None, previous, interval), console=console,
              auto_refresh=False) as live, logs_through(console), key_reader() as wait:
        while count is None or frames < count:
            if _quit_pressed(wait, previous.time + interval):
                return
            current = source.sample()
            live.update(render_frame(previous, current, current.time - previous.time),
                        refresh=True)
            previous, frames = current, frames + 1


@contextmanager
def logs_through(console) -> Iterator[None]:
    """Log records printed above the live view rather than through it."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [RichHandler(console=console, show_path=False)]
    try:
        yield
    finally:
        root.handlers = saved


def _quit_pressed(wait: Callable[[float], str], until: float) -> bool:
    while True:
        key = wait(until - time.monotonic())
        if key in ("q", "Q"):
            return True
        if not key:
            return False


# Command line
def add_parser(subparsers, parents) -> None:
    """The ``top`` subcommand."""
    parser = subparsers.add_parser(
        "top", help="live view of the targets' threads and getaddrinfo calls",
        description="A live terminal view: threads now, creation rate by creator, getaddrinfo "
        "rate, p99 latency, failures and calls on event loops.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    parser.add_argument("--url", metavar="URL",
                        help="an observer's /metrics, e.g. http://127.0.0.1:9097/metrics")
    add_target_arguments(parser)
    add_backend_argument(parser, "without --url: the backend of the observer started here")
    parser.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                        help="refresh period (default %(default)s)")
    parser.add_argument("--count", type=int, metavar="N",
                        help="stop after N frames (default: until q or Ctrl-C)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from observer.startup import make_observer

    if args.url and (args.pid or args.target):
        raise UsageError("give either --url or --pid/--target, not both")
    source = UrlSource(args.url) if args.url else ObserverSource(make_observer(args))
    try:
        show(source, args.interval, args.count)
    except KeyboardInterrupt:
        pass  # the way to quit without a terminal
    finally:
        source.close()
    return 0

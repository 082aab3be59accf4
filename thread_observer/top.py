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
import copy
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

from thread_observer.arguments import add_backend_argument, add_target_arguments, positive_float
from thread_observer.constants import METRIC_PREFIX, metric_name
from thread_observer.errors import UsageError
from thread_observer.histogram import quantile as histogram_quantile
from thread_observer.labels import short_creator

EPILOG = """examples:
  thread-observer top --url http://127.0.0.1:9097/metrics     # a running observer
  thread-observer top --target api='python.*server\\.py'        # an observer of its own
  thread-observer top --pid 4242 --interval 2
  thread-observer top --target batch='python.*job\\.py' --since-start --log-file top.log

Keys: q quits (Ctrl-C too, and without a terminal only Ctrl-C); s switches between rates now
and totals since start (every process seen, gone ones included).
"""
NO_VALUE = "—"
# An observer of this process is read this often between frames: a process seen alive once is
# counted whole, up to its exit (its series is read before the observer forgets it).
OWN_OBSERVER_PERIOD = 0.1
# The executor gauges, by pool: shown as they are now (they are not counters).
EXECUTOR_GAUGES = (
    "executor_threads",
    "executor_busy_threads",
    "executor_max_workers",
    "executor_queued_work",
)


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
    thread_sites: dict[str, float] = field(default_factory=dict)  # threads created by site
    call_sites: dict[str, float] = field(default_factory=dict)  # getaddrinfo calls by site
    # pool -> executor gauge (threads, busy_threads, max_workers, queued_work) -> value
    executors: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # by pool
    # and executor name
    counted: bool = False  # the backend counts (bpf): the counters exist


@dataclass
class Sample:
    time: float  # time.monotonic() when taken
    targets: dict[str, TargetSample] = field(default_factory=dict)
    series: dict[tuple[str, str], TargetSample] = field(default_factory=dict)  # (target, pid)
    backend: str = ""
    source: str = ""
    error: str = ""  # why this sample is empty (the observer did not answer)


def _add(values: dict[str, float], key: str, value: float) -> None:
    values[key] = values.get(key, 0.0) + value


def parse_sample(text: str, taken: float, source: str = "") -> Sample:
    """A sample from /metrics text; series with a ``pid`` label are summed by target."""
    sample = Sample(taken, source=source)
    targets: dict[str, TargetSample] = defaultdict(TargetSample)
    series: dict[tuple[str, str], TargetSample] = defaultdict(TargetSample)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric_name("build_info"):
                sample.backend = s.labels.get("backend", "")
            elif "target" in s.labels:
                _add_target_sample(targets[s.labels["target"]], s.name, s.labels, s.value)
                key = (s.labels["target"], s.labels.get("pid", ""))
                _add_target_sample(series[key], s.name, s.labels, s.value)
    sample.targets = dict(sorted(targets.items()))
    sample.series = dict(series)
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
    elif name == "threads_created_by_site_total":
        _add(target.thread_sites, labels["site"], value)
    elif name == "getaddrinfo_calls_by_site_total":
        _add(target.call_sites, labels["site"], value)
    elif name in EXECUTOR_GAUGES:
        key = (labels["pool"], labels.get("executor", ""))
        _add(target.executors.setdefault(key, {}), name, value)
    elif name == "getaddrinfo_duration_seconds_bucket":
        bound = float(labels["le"])
        target.buckets[bound] = target.buckets.get(bound, 0.0) + value


# The session: every series' increases, summed by target
COUNTER_MAPS = ("created", "calls", "failures", "buckets", "thread_sites", "call_sites")


class Session:
    """What the processes seen since top started did, gone ones included, by target.

    Each series (a target, or a target and a pid) adds its increase between two samples; one
    that went down was reset. A series that disappears keeps what it added.
    """

    def __init__(self) -> None:
        self.totals: dict[str, TargetSample] = {}
        self._last: dict[tuple[str, str], TargetSample] = {}

    def update(self, sample: Sample) -> None:
        if sample.error:
            return
        for key, series in sample.series.items():
            total = self.totals.setdefault(key[0], TargetSample())
            _accumulate(total, series, self._last.get(key))
        self._last = sample.series

    def view(self, sample: Sample) -> Sample:
        """``sample`` with the session's counters, and the targets gone since listed too."""
        targets = {}
        for name in sorted(set(self.totals) | set(sample.targets)):
            now = sample.targets.get(name, TargetSample())
            total = copy.deepcopy(self.totals.get(name, now))
            total.processes, total.threads = now.processes, now.threads
            targets[name] = total
        return Sample(
            sample.time, targets, sample.series, sample.backend, sample.source, sample.error
        )


def _accumulate(total: TargetSample, current: TargetSample, last: TargetSample | None) -> None:
    total.counted = total.counted or current.counted
    total.exited += increase(current.exited, last.exited if last else None)
    for name in COUNTER_MAPS:
        added, old = getattr(total, name), getattr(last, name) if last else {}
        for key, value in getattr(current, name).items():
            added[key] = added.get(key, 0.0) + increase(value, old.get(key))


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


def _rates(
    current: dict[str, float], previous: dict[str, float] | None, interval: float
) -> dict[str, float]:
    old = previous or {}
    return {key: increase(value, old.get(key)) / interval for key, value in current.items()}


def _breakdown(
    current: dict[str, float], previous: dict[str, float] | None, interval: float
) -> Text:
    """``rate name (total)`` per key that ever counted, one a line, busiest first; a single
    ``0`` when none did (ten lines of zero failures say nothing)."""
    current = {key: value for key, value in current.items() if value}
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


def render_frame(
    previous: Sample | None,
    current: Sample,
    interval: float,
    since_start: float | None = None,
    status: str = "",
) -> RenderableType:
    """One screen: a row per target, busiest first. Rates over the ``interval`` seconds
    between samples or, with ``since_start`` (the session's length in seconds), totals."""
    view = (
        f"totals since start ({format_seconds(since_start)} ago) · s: rates now"
        if since_start is not None
        else f"every {interval:.1f} s · s: since start"
    )
    header = Text(
        f"thread-observer top · {current.source or 'in-process observer'}"
        f" · backend {current.backend or '?'} · {view} · q quits"
    )
    footer = Text(status, style="dim", overflow="ellipsis")
    if current.error:
        return Group(header, Text(current.error, style="bold red"), footer)
    if not current.targets:
        return Group(header, Text("no targets yet", style="dim"), footer)
    table = Table(expand=True, header_style="bold")
    for column, justify in TOTAL_COLUMNS if since_start is not None else COLUMNS:
        # One line per creator or error: cut long names rather than wrap them.
        table.add_column(column, justify=justify, no_wrap=True, overflow="ellipsis")
    for name in by_activity(previous, current, since_start is not None):
        target = current.targets[name]
        cells = (
            _total_cells(target)
            if since_start is not None
            else _target_cells(target, _previous(previous, name), interval)
        )
        table.add_row(name, *cells)
    below = [part for part in (executors_table(current), sites_table(current)) if part]
    return Group(header, table, *below, footer)


def executors_table(sample: Sample) -> Table | None:
    """Each target's executors now, by pool and name (summed over its processes): threads,
    busy over the cap, work waiting; None when no target has a pool thread."""
    rows = [
        (name, pool, executor, values)
        for name, target in sample.targets.items()
        for (pool, executor), values in sorted(target.executors.items())
        if values.get("executor_threads")
    ]
    if not rows:
        return None
    table = Table(expand=True, header_style="bold", title="thread pools (now)")
    named = ("target", "pool", "executor")
    for column in (*named, "threads", "busy / max", "queued"):
        table.add_column(column, justify="left" if column in named else "right", no_wrap=True)
    for name, pool, executor, values in rows:
        cap = values.get("executor_max_workers")
        busy = f"{values.get('executor_busy_threads', 0):.0f}"
        queued = values.get("executor_queued_work")
        table.add_row(
            name,
            pool,
            executor,
            f"{values['executor_threads']:.0f}",
            f"{busy} / {cap:.0f}" if cap is not None else busy,
            f"{queued:.0f}" if queued is not None else NO_VALUE,
        )
    return table


SITES_SHOWN = 3  # call sites listed per target


def top_sites(target: TargetSample) -> list[tuple[str, float, float]]:
    """(site, threads created, getaddrinfo calls) of the target's busiest sites."""
    names = {
        site for site, value in [*target.thread_sites.items(), *target.call_sites.items()] if value
    }
    rows = [
        (site, target.thread_sites.get(site, 0.0), target.call_sites.get(site, 0.0))
        for site in names
    ]
    rows.sort(key=lambda row: (-(row[1] + row[2]), row[0]))
    return rows[:SITES_SHOWN]


def sites_table(sample: Sample) -> Table | None:
    """The Python code that created the threads and made the lookups (counted so far), under
    the targets' table; None when no target's frames are read."""
    rows = [(name, *site) for name, target in sample.targets.items() for site in top_sites(target)]
    if not rows:
        return None
    table = Table(expand=True, header_style="bold", title="top call sites (counted so far)")
    table.add_column("target", no_wrap=True)
    table.add_column("site", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("threads created", justify="right")
    table.add_column("getaddrinfo", justify="right")
    for name, site, threads, calls in rows:
        table.add_row(name, site, f"{threads:.0f}", f"{calls:.0f}")
    return table


COLUMNS = (
    ("target", "left"),
    ("procs", "right"),
    ("threads", "right"),
    ("created (total)", "left"),
    ("exited", "right"),
    ("getaddrinfo", "right"),
    ("on event loop", "right"),
    ("p99", "right"),
    ("failures (total)", "left"),
)
TOTAL_COLUMNS = (
    ("target", "left"),
    ("procs", "right"),
    ("threads", "right"),
    ("created", "left"),
    ("exited", "right"),
    ("getaddrinfo", "right"),
    ("on event loop", "right"),
    ("p99", "right"),
    ("failures", "left"),
)


def activity(target: TargetSample) -> float:
    """Threads created and ended and getaddrinfo calls: what a busy target does."""
    return sum(target.created.values()) + target.exited + sum(target.calls.values())


def by_activity(previous: Sample | None, current: Sample, totals: bool) -> list[str]:
    """Target names, the busiest first: over the last interval, or since start; ties by
    their totals, then by name."""

    def key(name: str) -> tuple[float, float, str]:
        total = activity(current.targets[name])
        last = _previous(previous, name)
        recent = total if totals or last is None else total - activity(last)
        return -recent, -total, name

    return sorted(current.targets, key=key)


def _previous(sample: Sample | None, name: str) -> TargetSample | None:
    return sample.targets.get(name) if sample and not sample.error else None


def _target_cells(
    target: TargetSample, previous: TargetSample | None, interval: float
) -> list[RenderableType]:
    cells: list[RenderableType] = [f"{target.processes:.0f}", f"{target.threads:.0f}"]
    if not target.counted:  # the proc backend: no counters, and no zeros passed off as such
        return cells + [NO_VALUE] * (len(COLUMNS) - 3)
    if previous is None:  # the first sample: totals, no rates yet
        return cells + [
            _breakdown(target.created, target.created, 1),
            *[NO_VALUE] * 4,
            _breakdown(target.failures, target.failures, 1),
        ]
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


def _total_cells(target: TargetSample) -> list[RenderableType]:
    cells: list[RenderableType] = [f"{target.processes:.0f}", f"{target.threads:.0f}"]
    if not target.counted:
        return cells + [NO_VALUE] * (len(TOTAL_COLUMNS) - 3)
    on_loop = target.calls.get("event_loop", 0)
    return cells + [
        _counts_text(target.created),
        f"{target.exited:.0f}",
        f"{sum(target.calls.values()):.0f}",
        Text(f"{on_loop:.0f}", style="bold red" if on_loop else ""),
        format_seconds(quantile(0.99, target.buckets)),
        _counts_text(target.failures),
    ]


def _counts_text(counts: dict[str, float]) -> Text:
    """``count name`` per key that counted, largest first; a single ``0`` when none did."""
    nonzero = sorted(
        ((value, key) for key, value in counts.items() if value),
        key=lambda item: (-item[0], item[1]),
    )
    return Text("\n".join(f"{value:.0f} {short_creator(key)}" for value, key in nonzero) or "0")


# Where samples come from
class UrlSource:
    period: float | None = None  # read once a frame

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

    period = OWN_OBSERVER_PERIOD

    def __init__(self, observer) -> None:
        from prometheus_client import CollectorRegistry

        from thread_observer.collector import ObserverCollector

        self.observer = observer
        self.registry = CollectorRegistry(auto_describe=False)
        # By target, as /metrics: the observer keeps the counts of a target's processes that
        # ended in its series (observer.retired), so they never go down.
        self.registry.register(ObserverCollector(observer.snapshot))

    def sample(self) -> Sample:
        from prometheus_client import generate_latest

        # Read before the poll, which detaches the processes that exited.
        taken = time.monotonic()
        text = generate_latest(self.registry).decode()
        self.observer.poll()
        return parse_sample(text, taken)

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

    def frame(self) -> RenderableType:
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

    if args.url and (args.pid or args.target):
        raise UsageError("give either --url or --pid/--target, not both")
    if args.log_file:
        try:
            open(args.log_file, "a").close()
        except OSError as err:
            raise UsageError(f"--log-file {args.log_file}: {err.strerror or err}") from None
    status = StatusLine()
    with logs_elsewhere(status, args.log_file):
        source = UrlSource(args.url) if args.url else ObserverSource(make_observer(args))
        try:
            show(source, args.interval, args.count, args.since_start, status)
        except KeyboardInterrupt:
            pass  # the way to quit without a terminal
        finally:
            source.close()
    return 0

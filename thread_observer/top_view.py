"""``thread-observer top``'s view: a sample (and the one before) as rich tables. rich is
imported here only, so that the daemon and the other commands run without it."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from thread_observer.labels import short_creator
from thread_observer.top_sample import (
    NO_VALUE,
    Sample,
    TargetSample,
    bucket_increase,
    increase,
    quantile,
)


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

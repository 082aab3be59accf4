"""Drawing a :class:`~thread_observer.timeline.model.Timeline`: PNG and SVG with matplotlib (and
what every kind of picture says; the HTML page is :mod:`thread_observer.timeline.html`).

One lane per thread, coloured by the code that created it, in order of creation but grouped: the
lanes of one executor together under a heading row (:mod:`thread_observer.timeline.groups`),
each process's threads in no executor under one too; getaddrinfo calls are marks on the lane of
the thread that made them, failed ones a red cross. The number of events the kernel could not
hand over is always on the picture: a gap in the record must not pass for a quiet moment.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from thread_observer.timeline.groups import LaneGroup, grouped_rows
from thread_observer.timeline.model import EXISTING, MAIN, Lane, Lookup, Timeline, Window

FIXED_COLOURS = {MAIN: "#97a3b0", "python": "#3d7cc9", EXISTING: "#aab4bf", "unknown": "#c2c2c2"}
PALETTE = ("#e8891d", "#3aa655", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
CREATOR_TITLES = {
    MAIN: "main thread of a process",
    "python": "python (CPython's threading)",
    EXISTING: "alive before the recording",
    "unknown": "unknown (not via pthread_create)",
}
CALL_COLOUR = "#111111"
FAILED_COLOUR = "#d62728"
HEADING_COLOUR = "#e9edf2"  # the background of a group's heading row
MAX_TITLE = 110


def visible(timeline: Timeline, window: Window) -> Timeline:
    """The lanes alive during the window and the calls made in it."""

    def overlaps(start_ns: int, end_ns: int | None) -> bool:
        end = timeline.end_ns if end_ns is None else end_ns
        return (
            start_ns - timeline.start_ns <= window.end and end - timeline.start_ns >= window.start
        )

    lanes = [lane for lane in timeline.lanes if overlaps(lane.start_ns, lane.end_ns)]
    shown = {lane.task for lane in lanes}
    lookups = [
        lookup
        for lookup in timeline.lookups
        if lookup.task in shown and overlaps(lookup.start_ns, lookup.end_ns)
    ]
    return dataclasses.replace(timeline, lanes=lanes, lookups=lookups)


def window_text(timeline: Timeline, window: Window) -> str:
    if window.whole and window.end == timeline.end_ns - timeline.start_ns:
        return ""
    return (
        f"showing {format_offset(window.start)} to {format_offset(window.end)} of "
        f"{format_duration(timeline.end_ns - timeline.start_ns)}"
    )


# What both kinds of picture say
def creator_colours(timeline: Timeline) -> dict[str, str]:
    """A colour per creator, in the order creators first appear; fixed ones keep theirs."""
    colours: dict[str, str] = {}
    others = iter(PALETTE * (1 + len(timeline.lanes) // len(PALETTE)))
    for lane in timeline.lanes:
        if lane.creator not in colours:
            colours[lane.creator] = FIXED_COLOURS.get(lane.creator) or next(others)
    return colours


SITE_LABEL_LENGTH = 40  # a lane's label names its site in short, where there is room


def short_site(site: str) -> str:
    """``call_sites.py:spawn`` for ``/srv/app/call_sites.py:spawn``, at most 40 characters."""
    path, _, name = site.rpartition(":")
    text = f"{path.rsplit('/', 1)[-1]}:{name}" if path else site
    return text if len(text) <= SITE_LABEL_LENGTH else text[: SITE_LABEL_LENGTH - 3] + "..."


def lane_label(lane: Lane) -> str:
    by = f" ← {lane.parent}" if lane.parent and lane.parent != lane.tid else ""
    site = f" · {short_site(lane.site)}" if lane.site else ""
    return f"{lane.tid or '?'} {lane.name or '?'} · {lane.short_creator}{by}{site}"


def group_heading(group: LaneGroup, timeline: Timeline) -> str:
    """``asyncio · pid 100 python3: 5 threads, at most 4 at once``: a group's heading row."""
    count = len(group.lanes)
    process = f" {group.process}" if group.process else ""
    most = group.most_alive(timeline.end_ns)
    at_once = f", at most {most} at once" if count > 1 else ""
    return (
        f"{group.name} · pid {group.tgid}{process}: {count} thread{'s' if count != 1 else ''}"
        f"{at_once}"
    )


def group_tip(group: LaneGroup) -> str:
    if group.executor is None:
        return f"threads of process {group.tgid} in no executor, in order of creation"
    return (
        f'threads of the executor "{group.executor}" in process {group.tgid}, in order of '
        "creation: by their names, or by the stack that created them where the names say "
        "nothing (Python before 3.14 names no thread for the OS)"
    )


def lane_tip(lane: Lane, timeline: Timeline) -> str:
    end = (
        "alive at the end"
        if lane.end_ns is None
        else f"ended at {format_offset(lane.end_ns - timeline.start_ns)}"
    )
    lived = (lane.end_ns or timeline.end_ns) - lane.start_ns
    parts = [
        f'thread {lane.tid or "?"} "{lane.name}" of process {lane.tgid}',
        f"creator: {CREATOR_TITLES.get(lane.creator, lane.creator)}",
    ]
    if lane.parent:
        parts.append(f"created by thread {lane.parent}")
    if lane.start_routine:
        parts.append(f"start routine 0x{lane.start_routine:x}")
    if lane.site:
        parts.append(f"started from {lane.site}")
    parts.append(
        f"started at {format_offset(lane.start_ns - timeline.start_ns)}, {end}, "
        f"lived {format_duration(lived)}"
    )
    return "\n".join(parts)


def lookup_tip(lookup: Lookup, timeline: Timeline) -> str:
    target = f"{lookup.host or 'NULL'}" + (f", {lookup.service}" if lookup.service else "")
    if lookup.end_ns is None:
        outcome = "still in progress at the end"
    else:
        outcome = f"took {format_duration(lookup.end_ns - lookup.start_ns)}, " + (
            f"failed: {lookup.error} ({lookup.rc})" if lookup.failed else "ok"
        )
    site = f", from {lookup.site}" if lookup.site else ""
    return (
        f"getaddrinfo({target}) on thread {lookup.tid}{site} at "
        f"{format_offset(lookup.start_ns - timeline.start_ns)}: {outcome}"
    )


def summary(timeline: Timeline) -> str:
    processes = len(timeline.processes)
    return (
        f"{processes} process{'es' if processes != 1 else ''}, "
        f"{timeline.threads_created} threads created, "
        f"{len(timeline.lookups)} getaddrinfo calls ({timeline.failures} failed) "
        f"in {format_duration(timeline.end_ns - timeline.start_ns)}"
    )


def outcome_text(timeline: Timeline) -> str:
    """How the command recorded ended; "" when it did not end during the recording."""
    if timeline.exit_status is None:
        return ""
    ran = format_duration(timeline.end_ns - timeline.start_ns)
    if timeline.exit_status > 128:
        return f"the command was killed by signal {timeline.exit_status - 128} after {ran}"
    if timeline.exit_status:
        return f"the command FAILED: exit status {timeline.exit_status} after {ran}"
    return f"the command exited with status 0 after {ran}"


def lost_text(timeline: Timeline) -> str:
    if timeline.lost_events:
        return (
            f"lost events: {timeline.lost_events} (the ring buffer was full: the picture "
            "misses some)"
        )
    return "lost events: 0"


def title(timeline: Timeline) -> str:
    text = " ".join(timeline.command.split())  # a script given with -c spans lines
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1] + "…"


def bunches(timeline: Timeline, span_ns: int, fraction: float = 0.01) -> list[list[Lookup]]:
    """Calls of one thread closer together than ``fraction`` of the ``span_ns`` shown: drawn
    on top of each other, so the picture says how many there are."""
    window = span_ns * fraction
    found: list[list[Lookup]] = []
    last: dict[int, list[Lookup]] = {}
    for lookup in timeline.lookups:  # in order of start
        bunch = last.get(lookup.task)
        if bunch is not None and lookup.start_ns - bunch[0].start_ns <= window:
            bunch.append(lookup)
            continue
        last[lookup.task] = [lookup]
        found.append(last[lookup.task])
    return [bunch for bunch in found if len(bunch) > 1]


def bunch_text(bunch: list[Lookup]) -> str:
    failed = sum(lookup.failed for lookup in bunch)
    return f"×{len(bunch)}" + (f" ({failed} failed)" if failed else "")


def format_duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.3f} s"


def format_offset(ns: int) -> str:
    return f"+{format_duration(max(ns, 0))}"


def time_unit(timeline: Timeline, window: Window | None = None) -> tuple[float, str]:
    """Nanoseconds per axis unit, and its name: ms for short spans, else s."""
    total = window.span if window else timeline.end_ns - timeline.start_ns
    return (1e6, "ms") if total < 5e9 else (1e9, "s")


# PNG and SVG
def render_picture(timeline: Timeline, path: Path, window: Window) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    whole, timeline = timeline, visible(timeline, window)
    rows = grouped_rows(timeline.lanes)  # the groups of the lanes shown, headings and lanes
    count = max(len(rows), 1)
    # Rows get thinner as they grow in number, and the picture stays within what Agg draws.
    per_row = min(0.28 if count <= 60 else max(0.1, 17 / count), 150 / count)
    fig, ax = plt.subplots(figsize=(12, 1.9 + per_row * count), dpi=110)
    try:
        _draw(ax, timeline, rows, window)
        _label_lanes(ax, timeline, rows, per_row)
        _titles(ax, whole, window)
        fig.savefig(path, bbox_inches="tight", format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)


def lane_rows(rows: list[LaneGroup | Lane]) -> dict[int, int]:
    """The row of each lane (by task) among the rows drawn."""
    return {row.task: at for at, row in enumerate(rows) if isinstance(row, Lane)}


def _draw(ax, timeline: Timeline, rows: list[LaneGroup | Lane], window: Window) -> None:
    scale, unit = time_unit(timeline, window)
    shortest = max(window.span / scale * 0.002, 1e-9)  # a thread of a few µs stays visible

    def at(ns: int | None) -> float:
        return ((ns or timeline.end_ns) - timeline.start_ns) / scale

    colours = creator_colours(timeline)
    where = lane_rows(rows)
    lanes = [row for row in rows if isinstance(row, Lane)]
    bars = ax.barh(
        [where[lane.task] for lane in lanes],
        [max(at(lane.end_ns) - at(lane.start_ns), shortest) for lane in lanes],
        left=[at(lane.start_ns) for lane in lanes],
        height=0.64,
        color=[colours[lane.creator] for lane in lanes],
        edgecolor="none",
    )
    for bar, lane in zip(bars, lanes, strict=True):
        bar.set_gid(f"lane-{lane.task}")
    _draw_lookups(ax, timeline, where, at, shortest, window)
    margin = window.span * 0.01 if window.whole else 0
    ax.set_xlim(window.start / scale, (window.end + margin) / scale)
    ax.set_xlabel(f"time since the start ({unit})")
    ax.grid(axis="x", color="#dddddd", linestyle="--", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(
        handles=_legend_handles(timeline, colours),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )


def _draw_lookups(
    ax, timeline: Timeline, rows: dict[int, int], at, shortest: float, window: Window
) -> None:
    """All calls in three artists, however many there are."""
    done = [lookup for lookup in timeline.lookups if not lookup.failed]
    failed = [lookup for lookup in timeline.lookups if lookup.failed]
    if done:
        ax.barh(
            [rows[c.task] for c in done],
            [max(at(c.end_ns) - at(c.start_ns), shortest / 2) for c in done],
            left=[at(c.start_ns) for c in done],
            height=0.3,
            color=CALL_COLOUR,
        )
        ax.plot(
            [at(c.start_ns) for c in done],
            [rows[c.task] for c in done],
            linestyle="none",
            marker="|",
            color=CALL_COLOUR,
            markersize=9,
            markeredgewidth=1.2,
        )
    if failed:
        ax.plot(
            [at(c.start_ns) for c in failed],
            [rows[c.task] for c in failed],
            linestyle="none",
            marker="x",
            color=FAILED_COLOUR,
            markersize=8,
            markeredgewidth=2,
        )
    for bunch in bunches(timeline, window.span):
        ax.annotate(
            bunch_text(bunch),
            (at(bunch[0].start_ns), rows[bunch[0].task]),
            xytext=(6, 5),
            textcoords="offset points",
            fontsize=7,
        )


def _label_lanes(ax, timeline: Timeline, rows: list[LaneGroup | Lane], per_row: float) -> None:
    """Each group's heading across its row, on a band; the lanes' labels left of the axis.
    Names come from the targets: never read as matplotlib's math text."""
    from matplotlib.transforms import blended_transform_factory

    ax.set_ylim(len(rows) - 0.5, -0.5)
    across = blended_transform_factory(ax.transAxes, ax.transData)
    small = 8 if per_row >= 0.2 else 6
    for at, row in enumerate(rows):
        if isinstance(row, LaneGroup):
            ax.axhspan(at - 0.5, at + 0.5, color=HEADING_COLOUR, zorder=0, linewidth=0)
            ax.text(
                0.004,
                at,
                group_heading(row, timeline),
                transform=across,
                va="center",
                fontsize=max(small, 7),
                fontweight="bold",
                parse_math=False,
                gid=f"group-{at}",
            )
    lanes = lane_rows(rows)
    if per_row < 0.09:  # labels would overlap: the HTML output has them all
        ax.set_yticks([])
        ax.set_ylabel(f"{len(lanes)} threads, by executor, in order of creation")
        return
    ax.set_yticks(list(lanes.values()))
    ax.set_yticklabels(
        [lane_label(row) for row in rows if isinstance(row, Lane)],
        fontsize=small,
        family="monospace",
        parse_math=False,
    )


def _titles(ax, timeline: Timeline, window: Window) -> None:
    # Offsets in points, so that title and summary never overlap whatever the height.
    ax.annotate(
        title(timeline),
        xy=(0, 1),
        xycoords="axes fraction",
        xytext=(0, 24),
        textcoords="offset points",
        fontsize=11,
        fontweight="bold",
        family="monospace",
    )
    shown = window_text(timeline, window)
    ax.annotate(
        summary(timeline) + (f" · {shown}" if shown else ""),
        xy=(0, 1),
        xycoords="axes fraction",
        xytext=(0, 10),
        textcoords="offset points",
        fontsize=9,
        color="#333333",
    )
    ax.annotate(
        lost_text(timeline),
        xy=(1, 1),
        xycoords="axes fraction",
        xytext=(0, 10),
        textcoords="offset points",
        fontsize=9,
        ha="right",
        color=FAILED_COLOUR if timeline.lost_events else "#333333",
    )
    if timeline.failed:
        ax.annotate(
            outcome_text(timeline),
            xy=(0, 1),
            xycoords="axes fraction",
            xytext=(0, 42),
            textcoords="offset points",
            fontsize=10,
            fontweight="bold",
            color=FAILED_COLOUR,
        )


def _legend_handles(timeline: Timeline, colours: dict[str, str]) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=colour, label=CREATOR_TITLES.get(creator, creator))
        for creator, colour in colours.items()
    ]
    handles.append(
        Line2D(
            [],
            [],
            color=CALL_COLOUR,
            marker="|",
            linestyle="none",
            markersize=9,
            label="getaddrinfo call",
        )
    )
    errors = sorted({lookup.error for lookup in timeline.lookups if lookup.failed})
    if errors:
        handles.append(
            Line2D(
                [],
                [],
                color=FAILED_COLOUR,
                marker="x",
                linestyle="none",
                markersize=8,
                markeredgewidth=2,
                label=f"getaddrinfo failed ({', '.join(errors)})",
            )
        )
    return handles

"""Drawing a :class:`~observer.timeline.model.Timeline`: PNG and SVG with matplotlib, HTML by hand.

One lane per thread, in order of creation, coloured by the code that created it; getaddrinfo
calls are marks on the lane of the thread that made them, failed ones a red cross. The number
of events the kernel could not hand over is always on the picture: a gap in the record must
not pass for a quiet moment.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from observer.timeline.model import EXISTING, MAIN, Lane, Lookup, Timeline

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
MAX_TITLE = 110


def render(timeline: Timeline, path: Path) -> None:
    if path.suffix.lower() == ".html":
        path.write_text(render_html(timeline))
    else:
        render_picture(timeline, path)


# What both kinds of picture say
def creator_colours(timeline: Timeline) -> dict[str, str]:
    """A colour per creator, in the order creators first appear; fixed ones keep theirs."""
    colours: dict[str, str] = {}
    others = iter(PALETTE * (1 + len(timeline.lanes) // len(PALETTE)))
    for lane in timeline.lanes:
        if lane.creator not in colours:
            colours[lane.creator] = FIXED_COLOURS.get(lane.creator) or next(others)
    return colours


def lane_label(lane: Lane) -> str:
    by = f" ← {lane.parent}" if lane.parent and lane.parent != lane.tid else ""
    return f"{lane.tid or '?'} {lane.name or '?'} · {lane.short_creator}{by}"


def lane_tip(lane: Lane, timeline: Timeline) -> str:
    end = "alive at the end" if lane.end_ns is None else \
        f"ended at {format_offset(lane.end_ns - timeline.start_ns)}"
    lived = (lane.end_ns or timeline.end_ns) - lane.start_ns
    parts = [f"thread {lane.tid or '?'} \"{lane.name}\" of process {lane.tgid}",
             f"creator: {CREATOR_TITLES.get(lane.creator, lane.creator)}"]
    if lane.parent:
        parts.append(f"created by thread {lane.parent}")
    if lane.start_routine:
        parts.append(f"start routine 0x{lane.start_routine:x}")
    parts.append(f"started at {format_offset(lane.start_ns - timeline.start_ns)}, {end}, "
                 f"lived {format_duration(lived)}")
    return "\n".join(parts)


def lookup_tip(lookup: Lookup, timeline: Timeline) -> str:
    target = f"{lookup.host or 'NULL'}" + (f", {lookup.service}" if lookup.service else "")
    if lookup.end_ns is None:
        outcome = "still in progress at the end"
    else:
        outcome = f"took {format_duration(lookup.end_ns - lookup.start_ns)}, " + (
            f"failed: {lookup.error} ({lookup.rc})" if lookup.failed else "ok")
    return (f"getaddrinfo({target}) on thread {lookup.tid} at "
            f"{format_offset(lookup.start_ns - timeline.start_ns)}: {outcome}")


def summary(timeline: Timeline) -> str:
    processes = len(timeline.processes)
    return (f"{processes} process{'es' if processes != 1 else ''}, "
            f"{timeline.threads_created} threads created, "
            f"{len(timeline.lookups)} getaddrinfo calls ({timeline.failures} failed) "
            f"in {format_duration(timeline.end_ns - timeline.start_ns)}")


def lost_text(timeline: Timeline) -> str:
    if timeline.lost_events:
        return f"lost events: {timeline.lost_events} (the ring buffer was full: the picture " \
               "misses some)"
    return "lost events: 0"


def title(timeline: Timeline) -> str:
    text = " ".join(timeline.command.split())  # a script given with -c spans lines
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1] + "…"


def bunches(timeline: Timeline, fraction: float = 0.01) -> list[list[Lookup]]:
    """Calls of one thread closer together than ``fraction`` of the recording: drawn on top
    of each other, so the picture says how many there are."""
    window = (timeline.end_ns - timeline.start_ns) * fraction
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


def time_unit(timeline: Timeline) -> tuple[float, str]:
    """Nanoseconds per axis unit, and its name: ms for short recordings, else s."""
    total = timeline.end_ns - timeline.start_ns
    return (1e6, "ms") if total < 5e9 else (1e9, "s")


# PNG and SVG
def render_picture(timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = max(len(timeline.lanes), 1)
    # Lanes get thinner as they grow in number, and the picture stays within what Agg draws.
    per_lane = min(0.28 if lanes <= 60 else max(0.1, 17 / lanes), 150 / lanes)
    fig, ax = plt.subplots(figsize=(12, 1.9 + per_lane * lanes), dpi=110)
    try:
        _draw(ax, timeline)
        _label_lanes(ax, timeline, per_lane)
        _titles(ax, timeline)
        fig.savefig(path, bbox_inches="tight", format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)


def _draw(ax, timeline: Timeline) -> None:
    scale, unit = time_unit(timeline)
    total = (timeline.end_ns - timeline.start_ns) / scale
    shortest = max(total * 0.002, 1e-9)  # a thread of a few µs stays visible

    def at(ns: int | None) -> float:
        return ((ns or timeline.end_ns) - timeline.start_ns) / scale

    colours = creator_colours(timeline)
    lanes = timeline.lanes
    bars = ax.barh(range(len(lanes)), [max(at(lane.end_ns) - at(lane.start_ns), shortest)
                                       for lane in lanes],
                   left=[at(lane.start_ns) for lane in lanes], height=0.64,
                   color=[colours[lane.creator] for lane in lanes], edgecolor="none")
    for bar, lane in zip(bars, lanes, strict=True):
        bar.set_gid(f"lane-{lane.task}")
    _draw_lookups(ax, timeline, at, shortest)
    ax.set_xlim(0, total * 1.01 or 1)
    ax.set_xlabel(f"time since the start ({unit})")
    ax.grid(axis="x", color="#dddddd", linestyle="--", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(handles=_legend_handles(timeline, colours), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _draw_lookups(ax, timeline: Timeline, at, shortest: float) -> None:
    """All calls in three artists, however many there are."""
    rows = {lane.task: row for row, lane in enumerate(timeline.lanes)}
    done = [lookup for lookup in timeline.lookups if not lookup.failed]
    failed = [lookup for lookup in timeline.lookups if lookup.failed]
    if done:
        ax.barh([rows[c.task] for c in done],
                [max(at(c.end_ns) - at(c.start_ns), shortest / 2) for c in done],
                left=[at(c.start_ns) for c in done], height=0.3, color=CALL_COLOUR)
        ax.plot([at(c.start_ns) for c in done], [rows[c.task] for c in done], linestyle="none",
                marker="|", color=CALL_COLOUR, markersize=9, markeredgewidth=1.2)
    if failed:
        ax.plot([at(c.start_ns) for c in failed], [rows[c.task] for c in failed],
                linestyle="none", marker="x", color=FAILED_COLOUR, markersize=8,
                markeredgewidth=2)
    for bunch in bunches(timeline):
        ax.annotate(bunch_text(bunch), (at(bunch[0].start_ns), rows[bunch[0].task]),
                    xytext=(6, 5), textcoords="offset points", fontsize=7)


def _label_lanes(ax, timeline: Timeline, per_lane: float) -> None:
    ax.set_ylim(len(timeline.lanes) - 0.5, -0.5)
    if per_lane < 0.09:  # labels would overlap: the HTML output has them all
        ax.set_yticks([])
        ax.set_ylabel(f"{len(timeline.lanes)} threads, in order of creation")
        return
    ax.set_yticks(range(len(timeline.lanes)))
    ax.set_yticklabels([lane_label(lane) for lane in timeline.lanes],
                       fontsize=8 if per_lane >= 0.2 else 6, family="monospace")


def _titles(ax, timeline: Timeline) -> None:
    # Offsets in points, so that title and summary never overlap whatever the height.
    ax.annotate(title(timeline), xy=(0, 1), xycoords="axes fraction", xytext=(0, 24),
                textcoords="offset points", fontsize=11, fontweight="bold", family="monospace")
    ax.annotate(summary(timeline), xy=(0, 1), xycoords="axes fraction", xytext=(0, 10),
                textcoords="offset points", fontsize=9, color="#333333")
    ax.annotate(lost_text(timeline), xy=(1, 1), xycoords="axes fraction", xytext=(0, 10),
                textcoords="offset points", fontsize=9, ha="right",
                color=FAILED_COLOUR if timeline.lost_events else "#333333")


def _legend_handles(timeline: Timeline, colours: dict[str, str]) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=CREATOR_TITLES.get(creator, creator))
               for creator, colour in colours.items()]
    handles.append(Line2D([], [], color=CALL_COLOUR, marker="|", linestyle="none",
                          markersize=9, label="getaddrinfo call"))
    errors = sorted({lookup.error for lookup in timeline.lookups if lookup.failed})
    if errors:
        handles.append(Line2D([], [], color=FAILED_COLOUR, marker="x", linestyle="none",
                              markersize=8, markeredgewidth=2,
                              label=f"getaddrinfo failed ({', '.join(errors)})"))
    return handles


# HTML: an inline SVG with tooltips, no external resources
LABEL_WIDTH = 360
PLOT_WIDTH = 860
LANE_HEIGHT = 20
TOP = 34
BOTTOM = 40

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 16px; margin: 0 0 4px; font-family: monospace; }}
.lost {{ color: {lost_colour}; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; vertical-align: -1px;
  margin-right: 4px; }}
svg text {{ font: 11px monospace; fill: #333; }}
svg [data-tip]:hover {{ stroke: #000; stroke-width: 1; }}
#tip {{ position: fixed; display: none; pointer-events: none; white-space: pre;
  background: #fffff0; border: 1px solid #999; padding: 4px 6px; font: 12px monospace; }}
</style></head><body>
<h1>{title}</h1>
<p>{summary} &middot; <span class="lost">{lost}</span></p>
<p class="legend">{legend}</p>
{svg}
<div id="tip"></div>
<script>
const tip = document.getElementById("tip");
document.querySelectorAll("[data-tip]").forEach(el => {{
  el.addEventListener("mousemove", ev => {{
    tip.textContent = el.dataset.tip;
    tip.style.display = "block";
    tip.style.left = (ev.clientX + 14) + "px";
    tip.style.top = (ev.clientY + 10) + "px";
  }});
  el.addEventListener("mouseleave", () => {{ tip.style.display = "none"; }});
}});
</script>
</body></html>
"""


def render_html(timeline: Timeline) -> str:
    colours = creator_colours(timeline)
    legend = "".join(
        f'<span><i style="background:{colour}"></i>'
        f"{html.escape(CREATOR_TITLES.get(creator, creator))}</span>"
        for creator, colour in colours.items()
    ) + (f'<span><i style="background:{CALL_COLOUR}"></i>getaddrinfo call</span>'
         f'<span style="color:{FAILED_COLOUR}">&#x2716; getaddrinfo failed</span>')
    return PAGE.format(
        title=html.escape(title(timeline)), summary=html.escape(summary(timeline)),
        lost=html.escape(lost_text(timeline)),
        lost_colour=FAILED_COLOUR if timeline.lost_events else "#333",
        legend=legend, svg=svg_timeline(timeline, colours),
    )


def svg_timeline(timeline: Timeline, colours: dict[str, str]) -> str:
    total = max(timeline.end_ns - timeline.start_ns, 1)
    height = TOP + LANE_HEIGHT * len(timeline.lanes) + BOTTOM

    def x(ns: int) -> float:
        return LABEL_WIDTH + PLOT_WIDTH * (ns - timeline.start_ns) / total

    rows = {lane.task: row for row, lane in enumerate(timeline.lanes)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + PLOT_WIDTH + 20}" '
             f'height="{height}">']
    parts += _svg_axis(timeline, x, height)
    for row, lane in enumerate(timeline.lanes):
        parts.append(_svg_lane(timeline, lane, row, x, colours[lane.creator]))
    for lookup in timeline.lookups:
        parts.append(_svg_lookup(timeline, lookup, rows[lookup.task], x))
    for bunch in bunches(timeline):
        y = TOP + rows[bunch[0].task] * LANE_HEIGHT
        parts.append(f'<text x="{x(bunch[0].start_ns) + 5:.2f}" y="{y + 2}" '
                     f'style="font-size:9px">{html.escape(bunch_text(bunch))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_axis(timeline: Timeline, x, height: int) -> list[str]:
    scale, unit = time_unit(timeline)
    total = (timeline.end_ns - timeline.start_ns) / scale
    parts = []
    for tick in nice_ticks(total):
        at = x(timeline.start_ns + int(tick * scale))
        parts.append(f'<line x1="{at:.1f}" y1="{TOP - 6}" x2="{at:.1f}" y2="{height - BOTTOM}" '
                     'stroke="#ddd" stroke-dasharray="3,3"/>')
        parts.append(f'<text x="{at:.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">'
                     f"{tick:g}</text>")
    parts.append(f'<text x="{LABEL_WIDTH + PLOT_WIDTH / 2}" y="{height - 6}" '
                 f'text-anchor="middle">time since the start ({unit})</text>')
    return parts


def _svg_lane(timeline: Timeline, lane: Lane, row: int, x, colour: str) -> str:
    y = TOP + row * LANE_HEIGHT
    start, end = x(lane.start_ns), x(lane.end_ns or timeline.end_ns)
    tip = html.escape(lane_tip(lane, timeline), quote=True)
    return (
        f'<g class="lane" id="lane-{lane.task}" data-tid="{lane.tid}">'
        f'<text x="{LABEL_WIDTH - 8}" y="{y + 14}" text-anchor="end">'
        f"{html.escape(lane_label(lane))}</text>"
        f'<rect x="{start:.2f}" y="{y + 3}" width="{max(end - start, 2):.2f}" '
        f'height="{LANE_HEIGHT - 6}" fill="{colour}" data-tip="{tip}"/></g>'
    )


def _svg_lookup(timeline: Timeline, lookup: Lookup, row: int, x) -> str:
    y = TOP + row * LANE_HEIGHT
    start = x(lookup.start_ns)
    tip = html.escape(lookup_tip(lookup, timeline), quote=True)
    if lookup.failed:
        return (f'<text class="call failed" x="{start:.2f}" y="{y + 15}" text-anchor="middle" '
                f'style="fill:{FAILED_COLOUR};font-size:14px;font-weight:bold" '
                f'data-tip="{tip}">&#x2716;</text>')
    width = max(x(lookup.end_ns or timeline.end_ns) - start, 2)
    return (f'<rect class="call" x="{start:.2f}" y="{y + 6}" width="{width:.2f}" '
            f'height="{LANE_HEIGHT - 12}" fill="{CALL_COLOUR}" data-tip="{tip}"/>')


def nice_ticks(total: float, count: int = 8) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from 0 to ``total``."""
    if total <= 0:
        return [0.0]
    raw = total / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(total / step) + 1)]

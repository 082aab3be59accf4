"""The HTML timeline: one self-contained page, an inline SVG that zooms and pans.

Lanes and calls are drawn here for the first window shown, and carry their times so that
``timeline.js`` (inlined: the page fetches nothing) lays them out again on every zoom or pan,
and groups marks that overlap at the current zoom. Lanes are in rows grouped by executor, each
group under a heading row (:mod:`thread_observer.timeline.groups`); a call's ``data-row`` is
its lane's row among all rows, headings included.
"""

from __future__ import annotations

import html
import json
from importlib import resources

from thread_observer.timeline.groups import LaneGroup, grouped_rows
from thread_observer.timeline.model import Lane, Lookup, Timeline
from thread_observer.timeline.render import (
    CALL_COLOUR,
    CREATOR_TITLES,
    FAILED_COLOUR,
    HEADING_COLOUR,
    Window,
    creator_colours,
    group_heading,
    group_tip,
    lane_label,
    lane_rows,
    lane_tip,
    lookup_tip,
    lost_text,
    outcome_text,
    summary,
    time_unit,
    title,
)

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
.failed, #errors {{ color: {failed_colour}; font-weight: bold; }}
#errors {{ white-space: pre; }}
#view {{ color: #555; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; vertical-align: -1px;
  margin-right: 4px; }}
svg {{ user-select: none; cursor: grab; }}
svg.dragging {{ cursor: grabbing; }}
svg text {{ font: 11px monospace; fill: #333; }}
svg text.bunch {{ font-size: 9px; }}
svg .group text {{ font-weight: bold; }}
svg [data-tip]:hover {{ stroke: #000; stroke-width: 1; }}
#tip {{ position: fixed; display: none; pointer-events: none; white-space: pre;
  background: #fffff0; border: 1px solid #999; padding: 4px 6px; font: 12px monospace; }}
</style></head><body>
<h1>{title}</h1>
{outcome}<p>{summary} &middot; <span class="lost">{lost}</span></p>
<p class="legend">{legend}</p>
<p id="view" data-from="{start}" data-to="{end}"></p>
<div id="errors" hidden></div>
{svg}
<div id="tip"></div>
<script type="application/json" id="timeline-config">{config}</script>
<script>
{script}
</script>
</body></html>
"""


def render_html(timeline: Timeline, window: Window) -> str:
    colours = creator_colours(timeline)
    legend = (
        "".join(
            f'<span><i style="background:{colour}"></i>'
            f"{html.escape(CREATOR_TITLES.get(creator, creator))}</span>"
            for creator, colour in colours.items()
        )
        + f'<span><i style="background:{CALL_COLOUR}"></i>getaddrinfo call</span>'
    )
    errors = sorted({lookup.error for lookup in timeline.lookups if lookup.failed})
    if errors:
        legend += (
            f'<span style="color:{FAILED_COLOUR}">&#x2716; getaddrinfo failed '
            f"({html.escape(', '.join(errors))})</span>"
        )
    scale, unit = time_unit(timeline)
    rows = grouped_rows(timeline.lanes)
    config = {
        "label": LABEL_WIDTH,
        "plot": PLOT_WIDTH,
        "top": TOP,
        "bottom": BOTTOM,
        "laneHeight": LANE_HEIGHT,
        "rows": len(rows),  # lanes and group headings
        "total": max(timeline.end_ns - timeline.start_ns, 1),
        "scale": scale,
        "unit": unit,
        "from": window.start,
        "to": window.end,
    }
    return PAGE.format(
        title=html.escape(title(timeline)),
        summary=html.escape(summary(timeline)),
        lost=html.escape(lost_text(timeline)),
        lost_colour=FAILED_COLOUR if timeline.lost_events else "#333",
        failed_colour=FAILED_COLOUR,
        outcome=f'<p class="failed" id="outcome">{html.escape(outcome_text(timeline))}</p>\n'
        if timeline.failed
        else "",
        legend=legend,
        start=window.start,
        end=window.end,
        svg=svg_timeline(timeline, rows, colours, window),
        # "</" cannot end the script early: JSON has no other way to spell it.
        config=json.dumps(config).replace("</", "<\\/"),
        script=resources.files("thread_observer.timeline").joinpath("timeline.js").read_text(),
    )


def svg_timeline(
    timeline: Timeline, rows: list[LaneGroup | Lane], colours: dict[str, str], window: Window
) -> str:
    """The picture as first shown; the script lays it out again for each window."""
    height = TOP + LANE_HEIGHT * len(rows) + BOTTOM

    def x(ns: int) -> float:
        offset = ns - timeline.start_ns
        return LABEL_WIDTH + PLOT_WIDTH * (offset - window.start) / window.span

    lanes = lane_rows(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" '
        f'width="{LABEL_WIDTH + PLOT_WIDTH + 20}" height="{height}">',
        f'<defs><clipPath id="plot"><rect x="{LABEL_WIDTH}" y="0" width="{PLOT_WIDTH}" '
        f'height="{height}"/></clipPath></defs>',
        '<g id="ticks"></g>',
        _axis_title(timeline, height),
    ]
    for at, row in enumerate(rows):
        if isinstance(row, LaneGroup):
            parts.append(_svg_heading(timeline, row, at))
        else:
            parts.append(_svg_lane(timeline, row, at, x, colours[row.creator]))
    parts.append('<g id="calls" clip-path="url(#plot)">')
    for lookup in timeline.lookups:
        parts.append(_svg_lookup(timeline, lookup, lanes[lookup.task], x))
    parts += ["</g>", '<g id="bunches" clip-path="url(#plot)"></g>', "</svg>"]
    return "\n".join(parts)


def _axis_title(timeline: Timeline, height: int) -> str:
    _, unit = time_unit(timeline)
    return (
        f'<text x="{LABEL_WIDTH + PLOT_WIDTH / 2}" y="{height - 6}" '
        f'text-anchor="middle">time since the start ({unit})</text>'
    )


def _times(timeline: Timeline, start_ns: int, end_ns: int | None) -> str:
    end = timeline.end_ns if end_ns is None else end_ns
    return f'data-s="{start_ns - timeline.start_ns}" data-e="{end - timeline.start_ns}"'


def _svg_heading(timeline: Timeline, group: LaneGroup, row: int) -> str:
    """A group's heading row across the labels and the plot; its text is the targets'."""
    y = TOP + row * LANE_HEIGHT
    tip = html.escape(group_tip(group), quote=True)
    return (
        f'<g class="group" id="group-{row}" data-lanes="{len(group.lanes)}" '
        f'data-tip="{tip}"><rect x="0" y="{y + 1}" width="{LABEL_WIDTH + PLOT_WIDTH}" '
        f'height="{LANE_HEIGHT - 2}" fill="{HEADING_COLOUR}"/>'
        f'<text x="6" y="{y + 14}">{html.escape(group_heading(group, timeline))}</text></g>'
    )


def _svg_lane(timeline: Timeline, lane: Lane, row: int, x, colour: str) -> str:
    y = TOP + row * LANE_HEIGHT
    start, end = x(lane.start_ns), x(lane.end_ns or timeline.end_ns)
    tip = html.escape(lane_tip(lane, timeline), quote=True)
    return (
        f'<g class="lane" id="lane-{lane.task}" data-tid="{lane.tid}">'
        f'<text x="{LABEL_WIDTH - 8}" y="{y + 14}" text-anchor="end">'
        f"{html.escape(lane_label(lane))}</text>"
        f'<rect x="{start:.2f}" y="{y + 3}" width="{max(end - start, 2):.2f}" '
        f'height="{LANE_HEIGHT - 6}" fill="{colour}" clip-path="url(#plot)" '
        f'{_times(timeline, lane.start_ns, lane.end_ns)} data-tip="{tip}"/></g>'
    )


def _svg_lookup(timeline: Timeline, lookup: Lookup, row: int, x) -> str:
    y = TOP + row * LANE_HEIGHT
    start = x(lookup.start_ns)
    tip = html.escape(lookup_tip(lookup, timeline), quote=True)
    times = _times(timeline, lookup.start_ns, lookup.end_ns)
    if lookup.failed:
        return (
            f'<text class="call failed" x="{start:.2f}" y="{y + 15}" text-anchor="middle" '
            f'style="fill:{FAILED_COLOUR};font-size:14px;font-weight:bold" '
            f'data-row="{row}" {times} data-tip="{tip}">&#x2716;</text>'
        )
    width = max(x(lookup.end_ns or timeline.end_ns) - start, 2)
    return (
        f'<rect class="call" x="{start:.2f}" y="{y + 6}" width="{width:.2f}" '
        f'height="{LANE_HEIGHT - 12}" fill="{CALL_COLOUR}" data-row="{row}" {times} '
        f'data-tip="{tip}"/>'
    )

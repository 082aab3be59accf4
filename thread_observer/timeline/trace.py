"""A :class:`~thread_observer.timeline.model.Timeline` in the Chrome Trace Event format.

The JSON Object Format of the Trace Event Format document (the one chrome://tracing, the
Perfetto UI and speedscope open): ``{"traceEvents": [...], "displayTimeUnit": "ms",
"otherData": {...}}``. Each process is a ``pid``, each thread a ``tid`` track named by
``process_name``/``thread_name`` metadata events (``"ph": "M"``); a thread's life is a complete
event (``"ph": "X"``, ``ts`` and ``dur`` in microseconds from the start of the recording), and
so is each getaddrinfo call, on its thread's track. Failed calls carry the reserved colour
name ``terrible`` and their ``EAI_*`` name in ``args``.

Threads are grouped by executor as in the pictures (:mod:`thread_observer.timeline.groups`):
the viewers order a process's tracks by their ``thread_sort_index`` metadata and processes by
``process_sort_index``, both given here, so that a pool's threads sit together; a track has no
heading of its own, so an executor thread's name starts with its executor's (``[asyncio]
python3 · python``) where its own name does not say it already, and its slice's ``args`` hold
``executor``.
"""

from __future__ import annotations

import json
from pathlib import Path

from thread_observer.timeline.groups import LaneGroup, group_lanes
from thread_observer.timeline.model import Lane, Lookup, Timeline
from thread_observer.timeline.render import CREATOR_TITLES, outcome_text, title

SUFFIX = ".trace.json"
LANE_CATEGORY = "thread"
CALL_CATEGORY = "getaddrinfo"
FAILED_COLOUR = "terrible"  # one of the colour names the trace viewers reserve


def is_trace_path(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIX)


def write_trace(timeline: Timeline, path: Path) -> None:
    path.write_text(json.dumps(chrome_trace(timeline), indent=None, separators=(",", ":")))


def chrome_trace(timeline: Timeline) -> dict:
    groups = group_lanes(timeline.lanes)
    events = _process_names(timeline, groups)
    lanes = [(group, lane) for group in groups for lane in group.lanes]
    for row, (group, lane) in enumerate(lanes):
        events += _lane_events(timeline, lane, row, group)
    events += [_lookup_event(timeline, lookup) for lookup in timeline.lookups]
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "command": title(timeline),
            "outcome": outcome_text(timeline),
            "lost_events": timeline.lost_events,
            "exit_status": timeline.exit_status,
        },
    }


def microseconds(timeline: Timeline, ns: int) -> float:
    return round((ns - timeline.start_ns) / 1e3, 3)


def duration(timeline: Timeline, start_ns: int, end_ns: int) -> float:
    # From the rounded ends, so that a slice ends exactly where its numbers say.
    return round(microseconds(timeline, end_ns) - microseconds(timeline, start_ns), 3)


def track_id(lane_or_lookup: Lane | Lookup) -> int:
    # Seen from a PID namespace, a thread created a moment ago may not have its id yet:
    # the kernel's own id keeps its track apart.
    return lane_or_lookup.tid or lane_or_lookup.task


def _process_names(timeline: Timeline, groups: list[LaneGroup]) -> list[dict]:
    names = {lane.tgid: lane.name for lane in timeline.lanes if lane.main}
    order = dict.fromkeys(group.tgid for group in groups)  # processes as the groups are
    return [
        {"ph": "M", "name": kind, "pid": tgid, "tid": tgid, "args": args}
        for place, tgid in enumerate(order)
        for kind, args in (
            ("process_name", {"name": f"{names.get(tgid) or 'process'} (pid {tgid})"}),
            ("process_sort_index", {"sort_index": place}),
        )
    ]


def track_name(lane: Lane, executor: str | None) -> str:
    """``name · creator · site``, after ``[executor] `` where the name does not say it (a name
    cut at 15 characters may hold only the start of the executor's)."""
    name = lane.name or "?"
    said = executor is None or name.startswith(executor) or executor.startswith(name)
    return (
        ("" if said else f"[{executor}] ")
        + f"{name} · {lane.short_creator}"
        + (f" · {lane.site}" if lane.site else "")
    )


def _lane_events(timeline: Timeline, lane: Lane, row: int, group: LaneGroup) -> list[dict]:
    pid, tid = lane.tgid, track_id(lane)
    end_ns = lane.end_ns if lane.end_ns is not None else timeline.end_ns
    args = {
        "tid": lane.tid,
        "comm": lane.name,
        "creator": CREATOR_TITLES.get(lane.creator, lane.creator),
        "created_by_thread": lane.parent,
        "alive_at_end": lane.end_ns is None,
    }
    if group.executor is not None:
        args["executor"] = group.executor
    if lane.start_routine:
        args["start_routine"] = f"0x{lane.start_routine:x}"
    if lane.site:
        args["site"] = lane.site
    return [
        {
            "ph": "M",
            "name": "thread_name",
            "pid": pid,
            "tid": tid,
            "args": {"name": track_name(lane, group.executor)},
        },
        {
            "ph": "M",
            "name": "thread_sort_index",
            "pid": pid,
            "tid": tid,
            "args": {"sort_index": row},
        },
        {
            "ph": "X",
            "cat": LANE_CATEGORY,
            "name": lane.name or "thread",
            "pid": pid,
            "tid": tid,
            "ts": microseconds(timeline, lane.start_ns),
            "dur": duration(timeline, lane.start_ns, end_ns),
            "args": args,
        },
    ]


def _lookup_event(timeline: Timeline, lookup: Lookup) -> dict:
    end_ns = lookup.end_ns if lookup.end_ns is not None else timeline.end_ns
    args = {
        "host": lookup.host,
        "service": lookup.service,
        "in_progress_at_end": lookup.end_ns is None,
    }
    event = {
        "ph": "X",
        "cat": CALL_CATEGORY,
        "name": f"getaddrinfo {lookup.host or 'NULL'}",
        "pid": lookup.tgid,
        "tid": track_id(lookup),
        "ts": microseconds(timeline, lookup.start_ns),
        "dur": duration(timeline, lookup.start_ns, end_ns),
        "args": args,
    }
    if lookup.site:
        args["site"] = lookup.site
    if lookup.failed:
        args.update(error=lookup.error, rc=lookup.rc)
        event["cname"] = FAILED_COLOUR
        event["name"] += f" failed: {lookup.error}"
    return event

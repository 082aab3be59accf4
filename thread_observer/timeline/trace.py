"""A :class:`~thread_observer.timeline.model.Timeline` in the Chrome Trace Event format.

The JSON Object Format of the Trace Event Format document (the one chrome://tracing, the
Perfetto UI and speedscope open): ``{"traceEvents": [...], "displayTimeUnit": "ms",
"otherData": {...}}``. Each process is a ``pid``, each thread a ``tid`` track named by
``process_name``/``thread_name`` metadata events (``"ph": "M"``); a thread's life is a complete
event (``"ph": "X"``, ``ts`` and ``dur`` in microseconds from the start of the recording), and
so is each getaddrinfo call, on its thread's track. Failed calls carry the reserved colour
name ``terrible`` and their ``EAI_*`` name in ``args``.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    events = _process_names(timeline)
    for row, lane in enumerate(timeline.lanes):
        events += _lane_events(timeline, lane, row)
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


def _process_names(timeline: Timeline) -> list[dict]:
    names = {lane.tgid: lane.name for lane in timeline.lanes if lane.main}
    return [
        {
            "ph": "M",
            "name": "process_name",
            "pid": tgid,
            "tid": tgid,
            "args": {"name": f"{names.get(tgid) or 'process'} (pid {tgid})"},
        }
        for tgid in timeline.processes
    ]


def _lane_events(timeline: Timeline, lane: Lane, row: int) -> list[dict]:
    pid, tid = lane.tgid, track_id(lane)
    end_ns = lane.end_ns if lane.end_ns is not None else timeline.end_ns
    args = {
        "tid": lane.tid,
        "comm": lane.name,
        "creator": CREATOR_TITLES.get(lane.creator, lane.creator),
        "created_by_thread": lane.parent,
        "alive_at_end": lane.end_ns is None,
    }
    if lane.start_routine:
        args["start_routine"] = f"0x{lane.start_routine:x}"
    site = lane.site
    if site:
        args["site"] = site
    return [
        {
            "ph": "M",
            "name": "thread_name",
            "pid": pid,
            "tid": tid,
            "args": {
                "name": f"{lane.name or '?'} · {lane.short_creator}"
                + (f" · {site}" if site else "")
            },
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

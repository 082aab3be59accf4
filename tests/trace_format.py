"""The Chrome Trace Event format as a JSON schema, from the format's own document ("Trace
Event Format", the JSON Object Format and the event types it lists), and a check that a trace
holds every lane and call of a timeline, each track and process in a place of its own."""

from __future__ import annotations

import jsonschema

# Phases the document defines: B/E duration, X complete, i/I instant, C counter, b/n/e async,
# S/T/p/F flow (legacy), s/t/f flow, P sample, N/O/D object, M metadata, V/v memory dump,
# R mark, c clock sync, (/) context.
PHASES = list("BEXiICbneSTpFstfPNODMVvRc()")
# The colour names trace viewers reserve (tracing/base/color_scheme.html).
RESERVED_COLOURS = [
    "thread_state_uninterruptible",
    "thread_state_iowait",
    "thread_state_running",
    "thread_state_runnable",
    "thread_state_sleeping",
    "thread_state_unknown",
    "background_memory_dump",
    "light_memory_dump",
    "detailed_memory_dump",
    "vsync_highlight_color",
    "generic_work",
    "good",
    "bad",
    "terrible",
    "black",
    "grey",
    "white",
    "yellow",
    "olive",
    "rail_response",
    "rail_animation",
    "rail_idle",
    "rail_load",
    "startup",
    "heap_dump_stack_frame",
    "heap_dump_object_type",
    "heap_dump_child_node_arrow",
    "cq_build_running",
    "cq_build_passed",
    "cq_build_failed",
    "cq_build_abandoned",
    "cq_build_attempt_runnig",
    "cq_build_attempt_passed",
    "cq_build_attempt_failed",
]
METADATA_NAMES = [
    "process_name",
    "process_labels",
    "process_sort_index",
    "thread_name",
    "thread_sort_index",
]

EVENT = {
    "type": "object",
    "required": ["name", "ph", "pid", "tid"],
    "properties": {
        "name": {"type": "string"},
        "cat": {"type": "string"},
        "ph": {"enum": PHASES},
        "ts": {"type": "number", "minimum": 0},  # microseconds
        "tts": {"type": "number"},
        "dur": {"type": "number", "minimum": 0},  # microseconds
        "pid": {"type": "integer"},
        "tid": {"type": "integer"},
        "args": {"type": "object"},
        "cname": {"enum": RESERVED_COLOURS},
    },
    "allOf": [
        {"if": {"properties": {"ph": {"const": "X"}}}, "then": {"required": ["ts", "dur"]}},
        {
            "if": {"properties": {"ph": {"const": "M"}}},
            "then": {"properties": {"name": {"enum": METADATA_NAMES}}, "required": ["args"]},
        },
        {
            "if": {"properties": {"ph": {"enum": ["B", "E", "i", "I", "C"]}}},
            "then": {"required": ["ts"]},
        },
    ],
}
TRACE = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "traceEvents": {"type": "array", "items": EVENT},
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "otherData": {"type": "object"},
    },
}


def check_trace(trace: dict, timeline) -> None:
    """Valid by the schema, and every lane and getaddrinfo call of ``timeline`` is in it."""
    jsonschema.validate(trace, TRACE)
    events = trace["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    threads = [e for e in slices if e["cat"] == "thread"]
    calls = [e for e in slices if e["cat"] == "getaddrinfo"]
    ms = 1e3  # microseconds
    assert sorted((e["pid"], e["ts"], e["args"]["tid"]) for e in threads) == sorted(
        (lane.tgid, round((lane.start_ns - timeline.start_ns) / ms, 3), lane.tid)
        for lane in timeline.lanes
    )
    assert sorted(
        (e["pid"], e["ts"], e["args"]["host"], e["args"].get("error", "")) for e in calls
    ) == sorted(
        (call.tgid, round((call.start_ns - timeline.start_ns) / ms, 3), call.host, call.error)
        for call in timeline.lookups
    )
    assert all(e.get("cname") == "terrible" for e in calls if "error" in e["args"])
    total = (timeline.end_ns - timeline.start_ns) / ms
    assert all(e["ts"] + e["dur"] <= total + 0.01 for e in slices)
    names = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {(e["pid"], e["tid"]) for e in threads}  # every track is named
    assert {e["pid"] for e in slices} <= {
        e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"
    }
    assert {(e["pid"], e["tid"]) for e in calls} <= names  # calls sit on their thread's track
    # Every track has its place among its process's (executors' threads together), every
    # process its place: integers, none given twice.
    places = [
        (e["pid"], e["tid"], e["args"]["sort_index"])
        for e in events
        if e["ph"] == "M" and e["name"] == "thread_sort_index"
    ]
    assert {(pid, tid) for pid, tid, _ in places} == names
    assert len({(pid, index) for pid, _, index in places}) == len(places)
    process_places = [
        e["args"]["sort_index"]
        for e in events
        if e["ph"] == "M" and e["name"] == "process_sort_index"
    ]
    assert sorted(process_places) == list(range(len(timeline.processes)))
    assert all(isinstance(index, int) for *_, index in places)

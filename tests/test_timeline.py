"""``thread-observer timeline``: lanes built from records, pictures drawn, and real recordings
compared with what the workloads counted themselves and with the metrics daemon."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import REPO, observer, settled, wait_until, workload
from tests.trace_format import check_trace
from thread_observer.errors import UsageError
from thread_observer.timeline.command import output_paths
from thread_observer.timeline.groups import ANYIO, OTHER, executor_of, group_lanes
from thread_observer.timeline.lanes import build_timeline
from thread_observer.timeline.model import (
    EXISTING,
    MAIN,
    Event,
    Lane,
    Lookup,
    Recording,
    Timeline,
    window_of,
)
from thread_observer.timeline.outputs import render
from thread_observer.timeline.render import lane_label
from thread_observer.timeline.trace import chrome_trace

MS = 1_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Exactly 5 threads (3 that do nothing and live well under a millisecond) and 5 getaddrinfo
# calls on localhost, the last one failing with EAI_SERVICE; then it waits for a line on stdin
# so that the metrics can be read while it is alive.
THREADS_AND_LOOKUPS = """
import socket, sys, threading, time
from workloads.truth import GroundTruth
truth = GroundTruth().install()
threads = [threading.Thread(target=int) for _ in range(3)]
threads += [threading.Thread(target=time.sleep, args=(0.03,)) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for _ in range(4):
    socket.getaddrinfo("localhost", 80)
try:
    socket.getaddrinfo("localhost", "no-such-service")
except socket.gaierror:
    pass
truth.emit()
sys.stdin.readline()
"""


def run_timeline(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thread_observer", "timeline", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        **kwargs,
    )


def load_timeline(path: Path):
    return build_timeline(Recording.load(path))


def created_lanes(timeline):
    return [lane for lane in timeline.lanes if lane.created]


# Lanes from records: no root needed
def event(kind, time_ms, task, tgid=100, **fields) -> Event:
    return Event(kind, time_ms * MS, tgid, task, task, **fields)


def synthetic_recording() -> Recording:
    events = [
        event("process_exec", 1, 100, comm="python3", filename="/usr/bin/python3"),
        event(
            "thread_created",
            2,
            101,
            parent=100,
            comm="python3",
            creator="python",
            start_routine=0x1234,
        ),
        event(
            "thread_created",
            3,
            102,
            parent=100,
            comm="python3",
            creator="loop.cpython-311-x86_64-linux-gnu.so",
        ),
        event("thread_renamed", 3, 102, comm="libuv-worker"),
        event("getaddrinfo_start", 4, 101, host="localhost", service="80"),
        event("getaddrinfo_end", 5, 101),
        event("getaddrinfo_start", 6, 102, host="localhost", service="no-such-service"),
        event("getaddrinfo_end", 7, 102, rc=-8),
        event("thread_exited", 8, 101, comm="python3"),
        event("getaddrinfo_start", 9, 102, host="example.invalid"),
        event("thread_exited", 9, 103, comm="seen-dying"),  # born before the recording
    ]
    return Recording("python3 client.py", 0, 10 * MS, lost_events=2, events=events)


def test_lanes_from_records():
    timeline = build_timeline(synthetic_recording())
    assert [(lane.tid, lane.creator) for lane in timeline.lanes] == [
        (103, EXISTING),
        (100, MAIN),
        (101, "python"),
        (102, "loop.cpython-311-x86_64-linux-gnu.so"),
    ]
    existing, main, worker, uv = timeline.lanes
    assert (existing.start_ns, existing.end_ns, existing.name) == (0, 9 * MS, "seen-dying")
    assert (main.start_ns, main.end_ns) == (1 * MS, None)  # alive at the end
    assert (worker.start_ns, worker.end_ns, worker.parent) == (2 * MS, 8 * MS, 100)
    assert uv.name == "libuv-worker" and uv.end_ns is None
    assert timeline.threads_created == 2
    assert [(c.host, c.end_ns, c.rc, c.error) for c in timeline.lookups] == [
        ("localhost", 5 * MS, 0, ""),
        ("localhost", 7 * MS, -8, "EAI_SERVICE"),
        ("example.invalid", None, 0, ""),
    ]  # still in progress at the end
    assert timeline.failures == 1
    assert lane_label(uv) == "102 libuv-worker · loop.so ← 100"


def test_recording_survives_json(tmp_path):
    recording = synthetic_recording()
    recording.save(tmp_path / "events.json")
    assert Recording.load(tmp_path / "events.json") == recording


def test_not_a_recording_is_a_clear_error(tmp_path):
    (tmp_path / "other.json").write_text('{"events": []}')
    with pytest.raises(UsageError, match="not a thread-observer-timeline recording"):
        Recording.load(tmp_path / "other.json")


@pytest.mark.bpf
def test_records_are_decoded_from_the_c_struct():
    """bcc builds the record type from the compiled C struct: its fields are the ones the
    decoder reads, with the lengths constants.py gives the C."""
    import ctypes

    from thread_observer.constants import MapSize, SiteLimit
    from thread_observer.timeline.recorder import SERVICE_LEN, TimelineProbes

    probes = TimelineProbes(follow_children=False, track_new_processes=False)
    probes.load(lambda event: None)
    try:
        table = probes._bpf["timeline_events"]
        record = type(table.event(ctypes.create_string_buffer(4096)))
    finally:
        probes.close()
    fields = dict(record._fields_)
    assert list(fields) == [
        "time_ns",
        "value",
        "kind",
        "tgid",
        "tid",
        "task",
        "other",
        "reserved",
        "comm",
        "text",
        "service",
        "stack_depth",
        "stack_flags",
        "stack",
    ]
    assert ctypes.sizeof(fields["stack"]) == 8 * SiteLimit.STACK_DEPTH
    assert ctypes.sizeof(fields["text"]) == MapSize.HOST_LENGTH
    assert ctypes.sizeof(fields["service"]) == SERVICE_LEN
    assert ctypes.sizeof(fields["comm"]) == 16


def test_output_kinds_by_extension(tmp_path):
    assert output_paths([str(tmp_path / "a.png")], with_json=True) == [
        tmp_path / "a.png",
        tmp_path / "a.json",
    ]
    assert output_paths([str(tmp_path / "a.trace.json")], with_json=True) == [
        tmp_path / "a.trace.json",
        tmp_path / "a.json",
    ]
    assert output_paths([str(tmp_path / "a.html")], False, with_folded=True) == [
        tmp_path / "a.html",
        tmp_path / "a.folded",
    ]
    with pytest.raises(UsageError, match="extension must be one of"):
        output_paths([str(tmp_path / "a.gif")], with_json=False)
    with pytest.raises(UsageError, match="no such directory"):
        output_paths([str(tmp_path / "missing" / "a.png")], with_json=False)


def test_folded_stacks_of_a_synthetic_recording(tmp_path):
    recording = synthetic_recording()
    created, lookup = recording.events[1], recording.events[4]
    created.site, created.stack = (
        "app.py:spawn",
        ["threading.py:Thread.start", "app.py:spawn", "app.py:<module>"],
    )
    lookup.site, lookup.stack = "app.py:fetch", ["socket.py:getaddrinfo", "app.py:fetch x;y"]
    recording.events[2].site = "<native>"  # frames read, none Python
    timeline = build_timeline(recording)
    assert [lane.site for lane in created_lanes(timeline)] == ["app.py:spawn", "<native>"]
    render(timeline, tmp_path / "run.folded")
    assert (tmp_path / "run.folded").read_text().splitlines() == [
        "getaddrinfo;app.py:fetch_x,y;socket.py:getaddrinfo 1",
        "thread_created;<native> 1",
        "thread_created;app.py:<module>;app.py:spawn;threading.py:Thread.start 1",
    ]
    trace = chrome_trace(timeline)
    assert {e["args"].get("site") for e in trace["traceEvents"] if e.get("ph") == "X"} >= {
        "app.py:spawn",
        "<native>",
        "app.py:fetch",
    }
    # In the pictures' labels (short) and in the page's tooltips (whole).
    spawned = created_lanes(timeline)[0]
    assert lane_label(spawned).endswith(" · app.py:spawn")
    render(timeline, tmp_path / "run.html")
    page = (tmp_path / "run.html").read_text()
    assert "started from app.py:spawn" in page and "from app.py:fetch at" in page


def test_pictures_of_a_synthetic_recording(tmp_path):
    timeline = build_timeline(synthetic_recording())
    for name in ("t.png", "t.svg", "t.html"):
        render(timeline, tmp_path / name)
    assert (tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    assert_one_lane_per_thread(tmp_path / "t.svg", tmp_path / "t.html", timeline)
    html = (tmp_path / "t.html").read_text()
    assert "lost events: 2" in html and "EAI_SERVICE" in html
    assert not re.search(r"(src|href)=\"https?:", html)  # self-contained


def test_chrome_trace_of_a_synthetic_recording(tmp_path):
    timeline = build_timeline(synthetic_recording())
    trace = chrome_trace(timeline)
    check_trace(trace, timeline)
    calls = [e for e in trace["traceEvents"] if e.get("cat") == "getaddrinfo"]
    assert [(e["name"], e["tid"], e["ts"], e["dur"], e.get("cname")) for e in calls] == [
        ("getaddrinfo localhost", 101, 4000, 1000, None),
        ("getaddrinfo localhost failed: EAI_SERVICE", 102, 6000, 1000, "terrible"),
        ("getaddrinfo example.invalid", 102, 9000, 1000, None),
    ]
    assert calls[1]["args"] == {
        "host": "localhost",
        "service": "no-such-service",
        "in_progress_at_end": False,
        "error": "EAI_SERVICE",
        "rc": -8,
    }
    assert calls[2]["args"]["in_progress_at_end"] is True
    names = {
        e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    assert names == {
        103: "seen-dying · existing",
        100: "python3 · main",
        101: "python3 · python",
        102: "libuv-worker · loop.so",
    }
    assert trace["otherData"]["lost_events"] == 2


def test_a_failed_command_says_so_on_the_picture(tmp_path):
    recording = synthetic_recording()
    recording.exit_status = 1
    timeline = build_timeline(recording)
    for name in ("t.svg", "t.html"):
        render(timeline, tmp_path / name)
        assert "the command FAILED: exit status 1 after 10.00 ms" in (tmp_path / name).read_text()
    recording.exit_status = 0
    render(build_timeline(recording), tmp_path / "ok.html")
    assert "FAILED" not in (tmp_path / "ok.html").read_text()


def test_from_and_to_crop_the_picture(tmp_path):
    recording = synthetic_recording()
    recording.save(tmp_path / "events.json")
    result = run_timeline(
        [
            "--input",
            str(tmp_path / "events.json"),
            "-o",
            str(tmp_path / "crop.svg"),
            "--from",
            "0.0085",
            "--to",
            "0.01",
        ]
    )
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "crop.svg").read_text()
    # The worker thread ended at 8 ms: not in the window.
    assert sorted(map(int, re.findall(r'id="lane-(\d+)"', svg))) == [100, 102, 103]
    assert "showing +8.50 ms to +10.00 ms of 10.00 ms" in svg
    empty = run_timeline(
        [
            "--input",
            str(tmp_path / "events.json"),
            "-o",
            str(tmp_path / "none.png"),
            "--from",
            "0.5",
        ]
    )
    assert (empty.returncode, empty.stderr) == (
        2,
        "thread-observer: --from 0.5 --to 0.01: nothing to show (the recording lasts 0.010 s)\n",
    )


def assert_one_lane_per_thread(svg: Path, html: Path, timeline) -> None:
    tasks = sorted(lane.task for lane in timeline.lanes)
    svg_lanes = re.findall(r'id="lane-(\d+)"', svg.read_text())
    html_lanes = re.findall(r'<g class="lane" id="lane-(\d+)"', html.read_text())
    assert sorted(map(int, svg_lanes)) == tasks
    assert sorted(map(int, html_lanes)) == tasks


# Lanes grouped by executor
START = "threading.py:Thread.start"
POOL_START = [
    START,
    "concurrent/futures/thread.py:ThreadPoolExecutor._adjust_thread_count",
    "concurrent/futures/thread.py:ThreadPoolExecutor.submit",
]
RUN_IN_EXECUTOR = "asyncio/base_events.py:BaseEventLoop.run_in_executor"
TO_THREAD = [*POOL_START, RUN_IN_EXECUTOR, "asyncio/threads.py:to_thread", "app.py:work"]
ANYIO_START = [
    START,
    "anyio/_backends/_asyncio.py:AsyncIOBackend.run_sync_in_worker_thread",
    "anyio/to_thread.py:run_sync",
]


@pytest.mark.parametrize(
    "name, stack, expected",
    [
        # By name: the latest, as the kernel keeps it (15 characters).
        ("asyncio_0", [], "asyncio"),
        ("asyncio_12", POOL_START + ["app.py:main"], "asyncio"),
        ("explicit_2", [], "explicit"),
        ("my_pool_12", [], "my_pool"),
        ("ThreadPoolExecu", [], "ThreadPoolExecutor"),  # "ThreadPoolExecutor-3_1", cut
        ("ThreadPoolExecutor-3_1", [], "ThreadPoolExecutor-3"),  # as a --json may hold it
        ("AnyIO worker th", [], ANYIO),
        ("AnyIO worker thread", [], ANYIO),
        ("libuv-worker", [], "libuv-worker"),
        # A name like a pool's, but a stack read that shows no pool starting the thread.
        ("conn_1", [START, "app.py:serve"], None),
        # Names that say nothing: the process's, inherited; 3.14's default; none.
        ("python3", [], None),
        ("Thread-1 (targe", [], None),
        ("", [], None),
        ("python3", [START, "app.py:serve"], None),
        ("python3", ["<native>"], None),
        # By the stack: the default executor of asyncio's loop and of another (uvloop's
        # run_in_executor is C: no frame).
        ("python3", TO_THREAD, "asyncio"),
        (
            "python3",
            [*POOL_START, RUN_IN_EXECUTOR, "asyncio/base_events.py:BaseEventLoop.getaddrinfo"],
            "asyncio",
        ),
        (
            "python3",
            [
                "threading.py:start",  # before 3.11: no qualname
                "concurrent/futures/thread.py:_adjust_thread_count",
                "concurrent/futures/thread.py:submit",
                "asyncio/base_events.py:run_in_executor",
                "asyncio/base_events.py:getnameinfo",
            ],
            "asyncio",
        ),
        ("python3", [*POOL_START, "asyncio/threads.py:to_thread"], "default executor"),
        # Any other pool: which one, a stack cannot say.
        ("python3", [*POOL_START, RUN_IN_EXECUTOR, "app.py:fill"], "ThreadPoolExecutor"),
        (
            "python3",
            [*POOL_START, "concurrent/futures/_base.py:Executor.map", "app.py:main"],
            "ThreadPoolExecutor",
        ),
        ("python3", ANYIO_START, ANYIO),
    ],
)
def test_the_executor_of_a_thread(name, stack, expected):
    assert executor_of(name, stack, inherited="python3") == expected


def test_an_inherited_name_is_no_evidence():
    assert executor_of("worker_1", [], inherited="worker_1") is None
    assert executor_of("worker_1", TO_THREAD, inherited="worker_1") == "asyncio"
    assert executor_of("worker_1", [], inherited="") == "worker"


def hand_built_timeline() -> Timeline:
    """Two processes whose executors' threads are created interleaved with others; names
    from the targets, markup among them."""

    def lane(tgid, task, name, creator, start_ms, end_ms=None, stack=()):
        end = None if end_ms is None else end_ms * MS
        return Lane(tgid, task, task, name, creator, tgid, start_ms * MS, end, stack=list(stack))

    lanes = [
        lane(100, 100, "python3", MAIN, 0),
        lane(100, 101, "python3", "python", 1, 6, TO_THREAD),
        lane(100, 102, "python3", "python", 2, stack=[START, "app.py:serve"]),
        lane(100, 103, "python3", "python", 3, 8, TO_THREAD),
        lane(200, 200, "worker", MAIN, 4),
        lane(100, 104, "AnyIO worker th", "python", 5),
        lane(200, 201, "<i>&pool_1", "python", 6),
        lane(100, 105, "python3", "python", 7, 9, TO_THREAD),
    ]
    lookups = [
        Lookup(100, 105, 105, int(7.5 * MS), "localhost", "80", 8 * MS),
        Lookup(200, 201, 201, 6 * MS, "example.invalid", "", 7 * MS, rc=-2),
    ]
    return Timeline("python3 app.py", 0, 10 * MS, 0, lanes, lookups)


# Top to bottom: (group, lanes) in every output.
HAND_BUILT_GROUPS = [
    ((100, OTHER), [100, 102]),
    ((100, "asyncio"), [101, 103, 105]),
    ((100, ANYIO), [104]),
    ((200, OTHER), [200]),
    ((200, "<i>&pool"), [201]),
]


def test_lanes_grouped_by_process_then_executor():
    groups = group_lanes(hand_built_timeline().lanes)
    assert [((g.tgid, g.name), [lane.task for lane in g.lanes]) for g in groups] == (
        HAND_BUILT_GROUPS
    )
    assert [g.process for g in groups] == ["python3"] * 3 + ["worker"] * 2
    # 101 (1-6 ms) and 103 (3-8 ms), then 103 and 105 (7-9 ms): never all three.
    assert [g.most_alive(10 * MS) for g in groups] == [2, 2, 1, 1, 1]


def test_a_thread_is_grouped_by_its_latest_name():
    """A pool names its threads once they run (3.14 gives the OS the name then): the rename
    decides, and so does a later one."""
    events = [
        event("process_exec", 1, 100, comm="python3"),
        event("thread_created", 2, 101, parent=100, comm="python3", creator="python"),
        event("thread_renamed", 2, 101, comm="asyncio_0"),
        event("thread_created", 3, 102, parent=100, comm="python3", creator="python"),
        event("thread_renamed", 3, 102, comm="asyncio_1"),
        event("thread_renamed", 4, 102, comm="renamed"),
        event("thread_created", 5, 103, parent=100, comm="python3", creator="python"),
        event("thread_renamed", 5, 103, comm="asyncio_2"),
        event("thread_exited", 6, 103, comm="asyncio_2"),
    ]
    timeline = build_timeline(Recording("python3", 0, 10 * MS, 0, events))
    groups = group_lanes(timeline.lanes)
    assert [(g.name, [lane.task for lane in g.lanes]) for g in groups] == [
        (OTHER, [100, 102]),
        ("asyncio", [101, 103]),
    ]


def page_rows(page: str) -> list[tuple[str, int]]:
    """The page's rows top to bottom: ("group", its row) or ("lane", its task)."""
    return [
        (kind, int(number))
        for kind, number in re.findall(r'<g class="(group|lane)" id="(?:group|lane)-(\d+)"', page)
    ]


def test_the_page_shows_each_group_under_its_heading(tmp_path):
    timeline = hand_built_timeline()
    render(timeline, tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    expected, row = [], 0
    for _, tasks in HAND_BUILT_GROUPS:
        expected += [("group", row)] + [("lane", task) for task in tasks]
        row += 1 + len(tasks)
    assert page_rows(page) == expected
    headings = re.findall(r'<g class="group"[^>]*>.*?<text [^>]*>([^<]*)</text></g>', page)
    assert headings == [
        "other threads · pid 100 python3: 2 threads, at most 2 at once",
        "asyncio · pid 100 python3: 3 threads, at most 2 at once",
        "AnyIO worker thread · pid 100 python3: 1 thread",
        "other threads · pid 200 worker: 1 thread",
        "&lt;i&gt;&amp;pool · pid 200 worker: 1 thread",  # the target's text, escaped
    ]
    assert "<i>" not in page
    # Calls sit on their lanes' rows, the script knows how many rows there are.
    rows = {number: at for at, (kind, number) in enumerate(expected) if kind == "lane"}
    assert [int(r) for r in re.findall(r'class="call[^"]*"[^>]*data-row="(\d+)"', page)] == [
        rows[105],
        rows[201],
    ]
    config = json.loads(re.search(r'id="timeline-config">(.*?)</script>', page)[1])
    assert config["rows"] == len(expected) == 13
    assert f'height="{34 + 20 * 13 + 40}"' in page


def test_the_picture_shows_each_group_under_its_heading(tmp_path):
    timeline = hand_built_timeline()
    render(timeline, tmp_path / "t.svg")
    svg = (tmp_path / "t.svg").read_text()
    # Bars in rows top to bottom; each heading, a text on its own row, comes with its text.
    lanes = [int(task) for task in re.findall(r'<g id="lane-(\d+)"', svg)]
    assert lanes == [task for _, tasks in HAND_BUILT_GROUPS for task in tasks]
    assert re.findall(r'<g id="group-(\d+)">\s*<!-- ([^>]*) -->', svg) == [
        ("0", "other threads · pid 100 python3: 2 threads, at most 2 at once"),
        ("3", "asyncio · pid 100 python3: 3 threads, at most 2 at once"),
        ("7", "AnyIO worker thread · pid 100 python3: 1 thread"),
        ("9", "other threads · pid 200 worker: 1 thread"),
        ("11", "&lt;i&gt;&amp;pool · pid 200 worker: 1 thread"),
    ]
    # A window: the groups of the lanes alive in it (101 ended at 6 ms, 105 at 9 ms).
    render(timeline, tmp_path / "late.png", window_of(timeline, 0.0065))
    assert (tmp_path / "late.png").read_bytes().startswith(PNG_MAGIC)


def test_the_trace_sorts_each_executor_s_threads_together():
    timeline = hand_built_timeline()
    trace = chrome_trace(timeline)
    check_trace(trace, timeline)
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    process_order = {e["pid"]: e["args"]["sort_index"] for e in meta if "process_sort" in e["name"]}
    thread_order = {
        (e["pid"], e["tid"]): e["args"]["sort_index"]
        for e in meta
        if e["name"] == "thread_sort_index"
    }
    assert process_order == {100: 0, 200: 1}
    shown = sorted(thread_order, key=lambda track: (process_order[track[0]], thread_order[track]))
    assert [tid for _, tid in shown] == [task for _, tasks in HAND_BUILT_GROUPS for task in tasks]
    names = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert names == {
        100: "python3 · main",
        102: "python3 · python",
        101: "[asyncio] python3 · python",
        103: "[asyncio] python3 · python",
        105: "[asyncio] python3 · python",
        104: "AnyIO worker th · python",  # the name says it, cut
        200: "worker · main",
        201: "<i>&pool_1 · python",
    }
    executors = {
        e["tid"]: e["args"].get("executor")
        for e in trace["traceEvents"]
        if e.get("cat") == "thread"
    }
    assert executors == {
        100: None,
        102: None,
        101: "asyncio",
        103: "asyncio",
        105: "asyncio",
        104: ANYIO,
        200: None,
        201: "<i>&pool",
    }


# Real recordings
@pytest.mark.bpf
def test_exact_threads_and_lookups_and_the_metrics_agree(tmp_path):
    marker = f"timeline-{uuid.uuid4().hex[:12]}"  # -X option, ignored by CPython
    outputs = [tmp_path / f"run.{kind}" for kind in ("json", "png", "svg", "html", "trace.json")]
    with observer(["--target", f"workload={marker}", "--label-pid"], tmp_path) as running:
        timeline_run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thread_observer",
                "timeline",
                *[arg for path in outputs for arg in ("--output", str(path))],
                "--",
                sys.executable,
                "-X",
                marker,
                "-c",
                THREADS_AND_LOOKUPS,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            truth = json.loads(timeline_run.stdout.readline())  # stdout passes through
            metrics = settled(
                running,
                {
                    "thread_observer_threads_created_total": 5,
                    "thread_observer_getaddrinfo_calls_total": 5,
                },
                pid=str(truth["pid"]),
            )
            timeline_run.stdin.write("\n")  # stdin passes through: the workload ends
            timeline_run.stdin.close()
            assert timeline_run.wait(timeout=60) == 0, timeline_run.stderr.read()
        finally:
            timeline_run.kill()
            timeline_run.wait()
    assert (truth["threads_started"], truth["getaddrinfo_calls"]) == (5, 5)
    assert truth["getaddrinfo_errors"] == {"EAI_SERVICE": 1}
    timeline = load_timeline(outputs[0])

    lanes = created_lanes(timeline)
    assert len(lanes) == truth["threads_started"]
    assert {lane.creator for lane in lanes} == {"python"}
    assert all(lane.parent == truth["pid"] and lane.end_ns for lane in lanes)
    # Threads that do nothing are recorded whole, however short: their lanes end. (Not a
    # timing check: on a loaded machine such a thread can live several milliseconds.)
    assert min(lane.end_ns - lane.start_ns for lane in lanes) < 100 * MS
    assert len(timeline.lookups) == truth["getaddrinfo_calls"]
    assert [(c.host, c.error) for c in timeline.lookups if c.failed] == [
        ("localhost", "EAI_SERVICE")
    ]
    assert {c.host for c in timeline.lookups} == {"localhost"}
    assert timeline.lost_events == 0

    pid = {"pid": str(truth["pid"])}
    assert metrics.labels("thread_observer_threads_created_total", "creator", **pid) == {
        "python": len(lanes)
    }
    assert metrics.value("thread_observer_getaddrinfo_calls_total", **pid) == len(timeline.lookups)
    assert metrics.nonzero("thread_observer_getaddrinfo_failures_total", "error", **pid) == {
        "EAI_SERVICE": timeline.failures
    }

    png = outputs[1].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    assert_one_lane_per_thread(outputs[2], outputs[3], timeline)
    assert len(timeline.lanes) == 1 + truth["threads_started"]
    check_trace(json.loads(outputs[4].read_text()), timeline)


@pytest.mark.bpf
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_resolver_threads_of_each_event_loop(tmp_path, loop):
    out = tmp_path / "burst.json"
    result = run_timeline(
        [
            "--output",
            str(out),
            "--",
            sys.executable,
            "-m",
            "workloads.semaphore_burst",
            "--loop",
            loop,
            "--requests",
            "12",
            "--concurrency",
            "3",
        ]
    )
    assert result.returncode == 0, result.stderr
    truth = json.loads(result.stdout.splitlines()[-1])
    timeline = load_timeline(out)
    lanes = created_lanes(timeline)
    assert len(timeline.lookups) == truth["getaddrinfo_calls"] == 12
    assert {lookup.tid for lookup in timeline.lookups} <= {lane.tid for lane in lanes}
    if loop == "uvloop":
        # libuv's native pool: no Python-level view shows these threads.
        assert truth["threads_started"] == 0
        assert len(lanes) == truth["libuv_threads"] == 4
        assert {lane.creator for lane in lanes} == {"loop.cpython-311-x86_64-linux-gnu.so"}
        assert {lane.name for lane in lanes} == {"libuv-worker"}
        # libuv names its pool's threads: one group, under the main thread's.
        groups = group_lanes(timeline.lanes)
        assert [(g.name, [lane.task for lane in g.lanes]) for g in groups] == [
            (OTHER, [truth["pid"]]),
            ("libuv-worker", [lane.task for lane in lanes]),
        ]
    else:
        assert len(lanes) == truth["threads_started"] == truth["executor_threads"] == 3
        assert {lane.creator for lane in lanes} == {"python"}


def record_once_stacks_are_read(
    outputs: list[Path], module: str, *args: str, options: tuple[str, ...] = ()
) -> dict:
    """Runs ``python -m module --wait-stdin ...`` under the timeline (with ``options``), lets
    it work once its interpreter is found (every thread's creation has its stack) and returns
    its truth."""
    command = [sys.executable, "-m", "thread_observer", "timeline", *options]
    command += [arg for path in outputs for arg in ("-o", str(path))]
    command += ["--", sys.executable, "-m", module, "--wait-stdin", *args]
    run = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        for line in run.stderr:  # the gate that execs it may be found first
            if "stacks read" in line and module in line:
                break
        run.stdin.write("\n")
        run.stdin.close()
        stdout = run.stdout.read()
        assert run.wait(timeout=60) == 0, run.stderr.read()
    finally:
        run.kill()
        run.wait()
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.bpf
@pytest.mark.parametrize("loop, executor", [("asyncio", "asyncio"), ("uvloop", "default executor")])
def test_a_default_executor_s_threads_are_one_group(tmp_path, loop, executor):
    """asyncio.to_thread grows the loop's default executor: its threads (all the threads the
    workload starts, Python naming none of them for the OS before 3.14) are one group under
    the main thread's, in the page, the picture and the trace."""
    outputs = [tmp_path / f"run.{kind}" for kind in ("json", "html", "svg", "trace.json")]
    truth = record_once_stacks_are_read(
        outputs, "workloads.to_thread", "--loop", loop, "--requests", "12", "--concurrency", "4"
    )
    timeline = load_timeline(outputs[0])
    workers = [lane.task for lane in created_lanes(timeline)]
    assert len(workers) == truth["threads_started"] == truth["executor_threads"] >= 1
    groups = group_lanes(timeline.lanes)
    assert [(g.tgid, g.name, [lane.task for lane in g.lanes]) for g in groups] == [
        (truth["pid"], OTHER, [truth["pid"]]),
        (truth["pid"], executor, workers),
    ]
    page = outputs[1].read_text()
    assert page_rows(page) == [
        ("group", 0),
        ("lane", truth["pid"]),
        ("group", 2),
        *[("lane", task) for task in workers],
    ]
    heading = re.search(r'<g class="group" id="group-2"[^>]*>.*?<text [^>]*>([^<]*)<', page)[1]
    assert heading.startswith(f"{executor} · pid {truth['pid']} ")
    assert f": {len(workers)} thread" in heading
    svg = outputs[2].read_text()
    assert [int(task) for task in re.findall(r'<g id="lane-(\d+)"', svg)] == [
        truth["pid"],
        *workers,
    ]
    trace = json.loads(outputs[3].read_text())
    check_trace(trace, timeline)
    places = {
        e["tid"]: e["args"]["sort_index"]
        for e in trace["traceEvents"]
        if e["name"] == "thread_sort_index"
    }
    assert sorted(places, key=places.get) == [truth["pid"], *workers]


@pytest.mark.bpf
def test_stdin_stdout_and_exit_status_pass_through(tmp_path):
    out = tmp_path / "sh.json"
    result = run_timeline(
        ["--output", str(out), "--", "sh", "-c", "read x; echo got $x; exit 3"], input="hello\n"
    )
    assert (result.returncode, result.stdout) == (3, "got hello\n"), result.stderr
    assert re.search(
        r"the command FAILED: exit status 3 after [\d.]+ .s: the picture is of "
        "a failed run",
        result.stderr,
    ), result.stderr
    recording = Recording.load(out)
    assert recording.exit_status == 3
    kinds = [e.kind for e in recording.events if e.kind != "thread_renamed"]
    assert kinds == ["process_exec", "thread_exited", "process_exit"]
    assert build_timeline(recording).lanes[0].name == "sh"


@pytest.mark.bpf
def test_a_running_process_given_by_pid(tmp_path):
    out = tmp_path / "pid.json"
    with workload(["-m", "workloads.semaphore_burst", "--requests", "6"]) as target:
        recorder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thread_observer",
                "timeline",
                "--log-level",
                "info",
                "--output",
                str(out),
                "--pid",
                str(target.pid),
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        wait_until(
            lambda: "recording pid" in recorder.stderr.readline(), 30, "the timeline to attach"
        )
        target.go()
        truth = target.truth()
        assert recorder.wait(timeout=30) == 0
        recorder.stderr.close()
    timeline = load_timeline(out)
    # 3 in flight: 3 executor threads, or 4 when a worker had not yet marked itself idle at
    # the next submit (README, the demo's notes): the truth says which.
    assert len(created_lanes(timeline)) == truth["threads_started"] in (3, 4)
    assert len(timeline.lookups) == truth["getaddrinfo_calls"] == 6
    existing = [lane for lane in timeline.lanes if not lane.created]
    assert [lane.tid for lane in existing if lane.main] == [target.pid]


def test_a_pid_is_checked_as_the_daemon_checks_it(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        result = run_timeline(
            ["-o", str(tmp_path / "x.json"), "--pid", str(sleeper.pid), "--seconds", "1"]
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (result.returncode, result.stderr) == (
        2,
        f"thread-observer: --pid {sleeper.pid}: 'sleep' is not a Python process (use "
        "--allow-non-python to watch it anyway)\n",
    )
    assert not (tmp_path / "x.json").exists()


def test_sites_and_stacks_of_each_thread_and_lookup(tmp_path):
    """The site of each thread created and each lookup, as the call-site workload records it
    at the same C calls; the whole stack in --json, and in the folded stacks."""
    from tests.test_sites import frames_of
    from thread_observer.sites import site_label

    out = tmp_path / "run.json"
    truth = record_once_stacks_are_read(
        [out], "workloads.call_sites", "--linger", "0", options=("--folded",)
    )
    events = json.loads(out.read_text())["events"]

    def sites(kind):
        return sorted(e["site"] for e in events if e["kind"] == kind)

    def expected(kind, thread):
        return sorted(
            site_label(frames_of(e), thread) for e in truth["events"] if e["event"] == kind
        )

    assert sites("thread_created") == expected("thread", True)
    assert sites("getaddrinfo_start") == expected("getaddrinfo", False)
    # The whole stack (up to 16 frames): the workload's innermost frames, as it saw them.
    lookups = [e for e in events if e["kind"] == "getaddrinfo_start"]
    assert sorted(len(e["stack"]) for e in lookups) == sorted(
        min(len(e["frames"]), 16) for e in truth["events"] if e["event"] == "getaddrinfo"
    )
    folded = (tmp_path / "run.folded").read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in folded) == len(
        events and [e for e in events if e["kind"] in ("thread_created", "getaddrinfo_start")]
    )

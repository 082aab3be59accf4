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
from thread_observer.timeline.lanes import build_timeline
from thread_observer.timeline.model import EXISTING, MAIN, Event, Recording
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
    assert min(lane.end_ns - lane.start_ns for lane in lanes) < 1 * MS
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
    else:
        assert len(lanes) == truth["threads_started"] == truth["executor_threads"] == 3
        assert {lane.creator for lane in lanes} == {"python"}


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
    command = [
        sys.executable,
        "-m",
        "thread_observer",
        "timeline",
        "-o",
        str(out),
        "--folded",
        "--",
        sys.executable,
        "-m",
        "workloads.call_sites",
        "--wait-stdin",
        "--linger",
        "0",
    ]
    timeline = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        # The workload waits for a line until its interpreter is found (the gate that execs it
        # may be found first): every record is read.
        for line in timeline.stderr:
            if "stacks read" in line and "workloads.call_sites" in line:
                break
        timeline.stdin.write("\n")
        timeline.stdin.close()
        stdout = timeline.stdout.read()
        timeline.wait(timeout=60)
    finally:
        timeline.kill()
    assert timeline.returncode == 0
    truth = json.loads(stdout.strip().splitlines()[-1])
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

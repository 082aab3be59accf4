"""The HTML timeline in a real browser (Debian's headless Chromium): it loads without script
errors, shows every lane, and a wheel event zooms it so that marks bunched at one zoom level
separate at the next."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from thread_observer.timeline.lanes import build_timeline
from thread_observer.timeline.model import Event, Recording, window_of
from thread_observer.timeline.outputs import render

MS = 1_000_000
US = 1_000
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (deploy/setup.sh --extras test installs it)"
)


def bunched_recording(threads: int = 12) -> Recording:
    """A 10 ms recording: a main thread, ``threads`` workers of asyncio's default executor (so
    named once started), and on each worker five calls 100 µs apart (9 px at the full width of
    860 px: one bunch) of which the last fails."""
    events = [Event("process_exec", 0, 100, 100, 100, comm="python3")]
    for index in range(threads):
        task = 101 + index
        born = 1 * MS + index * 100 * US
        events.append(
            Event(
                "thread_created",
                born,
                100,
                task,
                task,
                parent=100,
                comm="worker",
                creator="python",
                start_routine=0x1234,
            )
        )
        events.append(Event("thread_renamed", born, 100, task, task, comm=f"asyncio_{index}"))
        for call in range(5):
            at = 5 * MS + call * 100 * US
            events.append(Event("getaddrinfo_start", at, 100, task, task, host="localhost"))
            events.append(
                Event("getaddrinfo_end", at + 20 * US, 100, task, task, rc=-8 if call == 4 else 0)
            )
        events.append(Event("thread_exited", 9 * MS, 100, task, task, comm=f"asyncio_{index}"))
    return Recording("python3 <bunched>", 0, 10 * MS, 0, events)


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="thread-observer-chromium-")
    try:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1300,700",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dumped_dom(page: Path, fragment: str = "") -> str:
    result = chromium("--dump-dom", page.as_uri() + fragment)
    assert result.returncode == 0, result.stderr
    # Console messages and uncaught exceptions reach stderr with --enable-logging, as
    # 'INFO:CONSOLE:268] "Uncaught ReferenceError: ..."'; the page itself logs nothing.
    assert "CONSOLE" not in result.stderr and "Uncaught" not in result.stderr, result.stderr
    return result.stdout


def view_state(dom: str) -> dict[str, str]:
    tag = re.search(r'<p id="view"([^>]*)>', dom)[1]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("html") / "bunched.html"
    render(build_timeline(bunched_recording()), path)
    return path


def test_loads_without_errors_and_shows_every_lane(page):
    timeline = build_timeline(bunched_recording())
    dom = dumped_dom(page)
    assert re.search(r'<div id="errors" hidden=""></div>', dom)  # no script error
    lanes = re.findall(r'<g class="lane" id="lane-(\d+)"', dom)
    assert sorted(map(int, lanes)) == sorted(lane.task for lane in timeline.lanes)
    assert len(lanes) == 13
    state = view_state(dom)
    assert (state["from"], state["to"]) == ("0", str(10 * MS))
    # The script drew the axis and one "×5 (1 failed)" label per worker.
    assert len(re.findall(r"<line ", dom)) >= 5
    assert state["bunches"] == "12"
    assert dom.count("×5 (1 failed)") == 12
    # Two groups under their headings: the main thread's, then the executor's 12 workers.
    headings = re.findall(r'<g class="group" id="group-(\d+)"[^>]*>.*?<text [^>]*>([^<]*)<', dom)
    assert headings == [
        ("0", "other threads · pid 100 python3: 1 thread"),
        ("2", "asyncio · pid 100 python3: 12 threads, at most 12 at once"),
    ]
    rows = re.findall(r'<g class="(group|lane)" id="(?:group|lane)-(\d+)"', dom)
    assert rows == [("group", "0"), ("lane", "100"), ("group", "2")] + [
        ("lane", str(101 + index)) for index in range(12)
    ]
    # Each worker's bunch label sits on its own lane's row (rows 3 to 14, headings counted),
    # and the axis reaches the last row.
    top, lane_height = 34, 20
    bunch_rows = sorted(
        (int(float(y)) - 2 - top) // lane_height
        for y in re.findall(r'<text class="bunch" [^>]*y="([\d.]+)"', dom)
    )
    assert bunch_rows == list(range(3, 15))
    axis_ends = {float(y) for y in re.findall(r'<line [^>]*y2="([\d.]+)"', dom)}
    assert axis_ends == {top + lane_height * 15}


def test_a_wheel_event_zooms_and_the_bunches_separate(page):
    dom = dumped_dom(page, "#wheel-check")
    state = view_state(dom)
    span = int(float(state["to"])) - int(float(state["from"]))
    assert int(state["zoomed-from"]) == 10 * MS
    assert 0 < span < 10 * MS / 2  # zoomed in around the middle of the plot
    assert float(state["from"]) < 5 * MS < float(state["to"])
    assert state["bunches"] == "0"  # 100 µs is more than 14 px apart now
    assert "×5" not in dom


def test_from_and_to_open_the_page_there(tmp_path):
    timeline = build_timeline(bunched_recording(threads=2))
    path = tmp_path / "window.html"
    render(timeline, path, window_of(timeline, 0.0049, 0.0056))
    state = view_state(dumped_dom(path))
    assert (state["from"], state["to"]) == (str(4_900_000), str(5_600_000))
    assert state["bunches"] == "0"


def test_a_screenshot_is_drawn(page, tmp_path):
    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0, result.stderr
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

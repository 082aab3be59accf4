"""``thread-observer top``: frames from two samples, and a run against real observers."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from tests.harness import REPO, observer, wait_until
from thread_observer.collector import ObserverCollector
from thread_observer.model import Counts, Executor, ProcessRow, Snapshot
from thread_observer.top import StatusLine, logs_elsewhere
from thread_observer.top_sample import Session, increase, parse_sample, quantile
from thread_observer.top_view import render_frame

LOOP_SO = "loop.cpython-311-x86_64-linux-gnu.so"


def exposition(*rows: ProcessRow, backend: str = "bpf") -> str:
    """What /metrics would serve for these rows, through the real collector."""
    snapshot = Snapshot(
        backend=backend,
        rows=list(rows),
        targets=sorted({row.target for row in rows}),
        bpf_available=backend == "bpf",
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObserverCollector(lambda: snapshot, label_pid=True))
    return generate_latest(registry).decode()


def api_row(pid, threads, python, libuv, exited, on_loop, other, noname, slots) -> ProcessRow:
    counts = Counts(
        threads_created=Counter({"python": python, LOOP_SO: libuv}),
        threads_exited=exited,
        getaddrinfo_calls=Counter(event_loop=on_loop, other=other),
        getaddrinfo_failures=Counter(EAI_NONAME=noname),
        duration_slots=Counter(slots),
    )
    return ProcessRow("api", pid, threads, counts)


def frame_text(previous, current, interval) -> str:
    console = Console(record=True, width=120)
    console.print(render_frame(previous, current, interval))
    return console.export_text()


def row_of(text: str, target: str) -> str:
    return next(line for line in text.splitlines() if line.strip("│ ").startswith(target))


def test_rates_between_two_samples():
    # Two processes of one target (pid label): top sums them. Over 2 s: 4 python threads
    # created, 2 exited, 8 calls of which 2 on an event loop, 2 more EAI_NONAME, and 6 calls
    # of <= 16 µs (slot 14) plus 2 of <= 1.05 ms (slot 20).
    before = parse_sample(
        exposition(
            api_row(10, 5, 10, 4, 6, 2, 10, 1, {14: 12}),
            api_row(11, 1, 0, 0, 0, 0, 0, 0, {}),
        ),
        taken=100.0,
        source="http://observer/metrics",
    )
    after = parse_sample(
        exposition(
            api_row(10, 7, 13, 4, 7, 3, 14, 3, {14: 18, 20: 1}),
            api_row(11, 2, 1, 0, 1, 1, 2, 0, {20: 1}),
        ),
        taken=102.0,
        source="http://observer/metrics",
    )
    assert after.targets["api"].threads == 9
    assert after.targets["api"].created == {"python": 14, LOOP_SO: 4}

    text = frame_text(before, after, after.time - before.time)
    assert "http://observer/metrics" in text and "backend bpf" in text
    row = row_of(text, "api")
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:3] == ["api", "2", "9"]  # processes, threads now
    assert cells[3] == "2.0/s python (14)"  # creation rate by creator (total)
    assert cells[4:8] == ["1.0/s", "4.0/s", "1.0/s", "1.0 ms"]  # exited, calls, on loop, p99
    assert cells[8] == "1.0/s EAI_NONAME (3)"
    second = [
        cell.strip()
        for cell in text.splitlines()[text.splitlines().index(row) + 1].split("│")[1:-1]
    ]
    assert second[3] == "0 loop.so (4)"  # an idle creator stays listed, with its total


def test_first_frame_shows_totals_and_no_rates():
    sample = parse_sample(exposition(api_row(10, 5, 10, 0, 6, 2, 10, 1, {14: 12})), 1.0)
    cells = [cell.strip() for cell in row_of(frame_text(None, sample, 1.0), "api").split("│")]
    assert cells[4] == "0 python (10)"
    assert cells[5:9] == ["—"] * 4


def test_top_sites_per_target_under_the_table():
    """The busiest call sites of each target (threads created and lookups), at most
    SITES_SHOWN, summed over the target's processes and callers."""

    def sited(pid, spawn, fetch, loop_fetch):
        row = api_row(pid, 5, spawn, 0, 0, loop_fetch, fetch, 0, {})
        row.counts.threads_by_site = Counter({"app/jobs.py:spawn": spawn, "app/idle.py:keep": 1})
        row.counts.calls_by_site = Counter(
            {
                ("app/client.py:fetch", "other"): fetch,
                ("app/client.py:fetch", "event_loop"): loop_fetch,
                ("app/rare.py:once", "other"): 0,
            }
        )
        row.executors = []
        return row

    sample = parse_sample(exposition(sited(10, 4, 6, 1), sited(11, 2, 3, 0)), 1.0)
    assert sample.targets["api"].call_sites == {"app/client.py:fetch": 10}
    text = frame_text(None, sample, 1.0)
    assert "top call sites" in text
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in text.splitlines()
        if "app/" in line
    ]
    assert rows == [
        ["api", "app/client.py:fetch", "0", "10"],
        ["api", "app/jobs.py:spawn", "6", "0"],
        ["api", "app/idle.py:keep", "2", "0"],
    ]
    # Without by-site series (no frames read) there is no sites table.
    assert "top call sites" not in frame_text(
        None, parse_sample(exposition(api_row(10, 5, 10, 0, 6, 2, 10, 0, {})), 1.0), 1.0
    )


def test_thread_pools_now_under_the_table():
    """Each target's executors as read, by pool and name, summed over its processes."""

    def pooled(pid, busy, queued):
        row = api_row(pid, 9, 0, 0, 0, 0, 0, 0, {})
        row.executors = [
            Executor("default", "asyncio", 6, busy, 6, queued),
            Executor("thread_pool", "db", 2, 1, 4, 0),
        ]
        return row

    sample = parse_sample(exposition(pooled(10, 6, 2), pooled(11, 1, 0)), 1.0)
    assert sample.targets["api"].executors[("default", "asyncio")] == {
        "executor_threads": 12,
        "executor_busy_threads": 7,
        "executor_max_workers": 12,
        "executor_queued_work": 2,
    }
    text = frame_text(None, sample, 1.0)
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in text.splitlines()
        if "asyncio" in line or " db " in line
    ]
    assert rows == [
        ["api", "default", "asyncio", "12", "7 / 12", "2"],
        ["api", "thread_pool", "db", "4", "2 / 8", "0"],
    ]
    # Pools without threads (here AnyIO's workers) are not listed.
    assert "anyio" not in text


def test_proc_backend_has_no_counts_to_show():
    sample = parse_sample(exposition(ProcessRow("web", 7, 3, None), backend="proc"), 1.0)
    text = frame_text(sample, sample, 1.0)
    cells = [cell.strip() for cell in row_of(text, "web").split("│")[1:-1]]
    assert cells == ["web", "1", "3"] + ["—"] * 6
    assert "backend proc" in text


def test_an_observer_that_does_not_answer():
    from thread_observer.top_sample import Sample

    text = frame_text(None, Sample(1.0, source="http://x/metrics", error="cannot scrape"), 1.0)
    assert "cannot scrape" in text


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.001: 0, 0.002: 10, math.inf: 10}, 0.0015),
        (0.99, {0.001: 100, math.inf: 100}, 0.00099),
        (0.99, {0.001: 0, math.inf: 5}, 0.001),  # beyond the last bound: the bound
        (0.99, {0.001: 0, math.inf: 0}, None),  # no calls
        (0.99, {}, None),
    ],
)
def test_quantile(q, buckets, expected):
    assert quantile(q, buckets) == (pytest.approx(expected) if expected else None)


def test_a_counter_that_went_down_was_reset():
    assert increase(12, 10) == 2
    assert increase(3, 10) == 3
    assert increase(5, None) == 5


# Real runs: the proc backend, so no compile and no root needed
SLEEPER = (
    "import threading, time; "
    "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() "
    "for _ in range(2)]; print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def three_threads():
    process = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()
    process.stdout.close()


def run_top(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "thread_observer",
            "top",
            "--count",
            "2",
            "--interval",
            "0.3",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "COLUMNS": "140"},
        stdin=subprocess.DEVNULL,
    )


def last_row(output: str, target: str) -> list[str]:
    rows = [line for line in output.splitlines() if line.strip("│ ").startswith(target)]
    return [cell.strip() for cell in rows[-1].split("│")[1:-1]]


def test_top_with_an_observer_of_its_own(three_threads):
    result = run_top("--pid", f"sleeper={three_threads.pid}", "--backend", "proc")
    assert result.returncode == 0, result.stderr
    assert last_row(result.stdout, "sleeper")[:3] == ["sleeper", "1", "3"]


def test_top_scraping_a_running_observer(three_threads, tmp_path):
    with observer(
        ["--pid", f"sleeper={three_threads.pid}", "--backend", "proc"], tmp_path
    ) as running:
        result = run_top("--url", running.url + "/metrics")
    assert result.returncode == 0, result.stderr
    assert last_row(result.stdout, "sleeper")[:3] == ["sleeper", "1", "3"]
    assert "backend proc" in result.stdout


# The session: what gone processes did stays on screen
def batch_row(pid, python, calls, noname, slots) -> ProcessRow:
    counts = Counts(
        threads_created=Counter({"python": python}),
        threads_exited=python,
        getaddrinfo_calls=Counter(other=calls),
        getaddrinfo_failures=Counter(EAI_NONAME=noname),
        duration_slots=Counter(slots),
    )
    return ProcessRow("batch", pid, 1, counts)


def test_short_jobs_stay_in_the_totals_since_start():
    """Three short jobs of target "batch" come and go between samples while "api" runs on:
    since start, batch shows every job's threads and calls with no process left, and the
    rates never count a job twice."""
    session = Session()
    samples = [
        parse_sample(
            exposition(api_row(10, 3, 1, 0, 0, 0, 1, 0, {14: 1}), batch_row(20, 2, 3, 0, {14: 3})),
            1.0,
        ),
        parse_sample(
            exposition(
                api_row(10, 3, 1, 0, 0, 0, 2, 0, {14: 2}),
                batch_row(20, 4, 5, 1, {14: 5}),
                batch_row(21, 1, 1, 0, {14: 1}),
            ),
            2.0,
        ),
        parse_sample(
            exposition(api_row(10, 3, 1, 0, 0, 0, 2, 0, {14: 2}), batch_row(22, 3, 2, 0, {20: 2})),
            3.0,
        ),
        parse_sample(exposition(api_row(10, 3, 1, 0, 0, 0, 3, 0, {14: 3})), 4.0),
    ]
    views = []
    for sample in samples:
        session.update(sample)
        views.append(session.view(sample))
    assert "batch" not in samples[-1].targets  # every job is gone
    text = frame_text_since(views[-2], views[-1], since_start=3.0)
    assert "totals since start (3.00 s ago)" in text
    lines = text.splitlines()
    batch = row_of(text, "batch")
    cells = [cell.strip() for cell in batch.split("│")[1:-1]]
    # 4 + 1 + 3 threads, 5 + 1 + 2 calls, one EAI_NONAME, p99 of 7 fast and 2 slow calls.
    assert cells == ["batch", "0", "0", "8 python", "8", "8", "0", "1.0 ms", "1 EAI_NONAME"]
    api = [cell.strip() for cell in row_of(text, "api").split("│")[1:-1]]
    assert api[:6] == ["api", "1", "3", "1 python", "0", "3"]
    assert api[8] == "0"  # no failures: one 0, not a line per EAI_* code
    assert lines.index(batch) < lines.index(row_of(text, "api"))  # the busiest first

    # Rates now: batch's jobs ended, api made one call in the last second: api first.
    now = frame_text(views[-2], views[-1], 1.0)
    assert [cell.strip() for cell in row_of(now, "batch").split("│")[1:-1]][3:6] == [
        "0 python (8)",
        "0",
        "0",
    ]
    assert now.splitlines().index(row_of(now, "api")) < now.splitlines().index(row_of(now, "batch"))


def frame_text_since(previous, current, since_start) -> str:
    console = Console(record=True, width=120)
    console.print(
        render_frame(
            previous,
            current,
            1.0,
            since_start=since_start,
            status="12:00:00 INFO pid 22 of target batch is gone",
        )
    )
    return console.export_text()


def test_zero_failures_show_one_zero():
    sample = parse_sample(exposition(api_row(10, 5, 10, 0, 6, 2, 10, 0, {14: 12})), 1.0)
    failures = sample.targets["api"].failures
    assert len(failures) > 1 and not any(failures.values())  # the usual codes, all zero
    cells = [
        cell.strip() for cell in row_of(frame_text(sample, sample, 1.0), "api").split("│")[1:-1]
    ]
    assert cells[8] == "0"


def test_logs_go_under_the_table_never_over_it():
    status = StatusLine()
    log = logging.getLogger("thread_observer.test")
    log.setLevel(logging.INFO)
    with logs_elsewhere(status, None):
        log.warning("eBPF unavailable")
        log.info("attached pid 1\nto target x")
    assert status.text.endswith("WARNING eBPF unavailable\n" + status.last)
    assert status.last.endswith("INFO attached pid 1 to target x")
    sample = parse_sample(exposition(api_row(10, 5, 10, 0, 6, 2, 10, 0, {})), 1.0)
    console = Console(record=True, width=120)
    console.print(render_frame(None, sample, 1.0, status=status.text))
    lines = console.export_text().splitlines()
    assert lines[-1].endswith("INFO attached pid 1 to target x")
    assert lines[-3].startswith("└")  # the table, then the status lines


def test_logs_to_a_file(tmp_path):
    log_file = tmp_path / "top.log"
    with logs_elsewhere(StatusLine(), str(log_file)):
        logging.getLogger("thread_observer.test").warning("to the file")
    assert "WARNING thread_observer.test: to the file" in log_file.read_text()


# Short jobs under a real observer: each lives about half a second, less than a frame
SHORT_JOB = """
import socket, sys, threading, time
from workloads.truth import GroundTruth
truth = GroundTruth().install()
threads = [threading.Thread(target=int) for _ in range(int(sys.argv[1]))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for _ in range(int(sys.argv[2])):
    socket.getaddrinfo("localhost", 80)
truth.emit()
time.sleep(0.5)
"""


@pytest.mark.bpf
def test_short_jobs_under_a_real_observer():
    from thread_observer.startup import make_observer
    from thread_observer.top_sample import ObserverSource

    marker = f"top-job-{uuid.uuid4().hex[:12]}"  # -X option, ignored by CPython
    args = argparse.Namespace(
        target=[f"batch={marker}"], pid=[], allow_non_python=False, backend="bpf"
    )
    source = ObserverSource(make_observer(args))
    session = Session()
    truths = []
    try:
        session.update(source.sample())
        for threads, calls in ((2, 1), (3, 2), (1, 4)):
            job = subprocess.Popen(
                [sys.executable, "-X", marker, "-c", SHORT_JOB, str(threads), str(calls)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            while job.poll() is None:  # what top does between two frames
                session.update(source.sample())
                time.sleep(source.period)
            truths.append(json.loads(job.stdout.read()))
            job.stdout.close()
        samples: list = []
        ended = sum(truth["threads_started"] for truth in truths)

        def all_ended() -> bool:
            # A named target's series outlive its processes: the jobs' counts stay, at 0
            # processes, once every thread's end is counted.
            samples.append(source.sample())
            session.update(samples[-1])
            batch = samples[-1].targets.get("batch")
            return batch is not None and batch.processes == 0 and batch.exited == ended

        wait_until(all_ended, what="every job's end counted")
        last = samples[-1]
    finally:
        source.close()
    console = Console(record=True, width=140)
    console.print(render_frame(None, session.view(last), 1.0, since_start=2.0))
    cells = [cell.strip() for cell in row_of(console.export_text(), "batch").split("│")[1:-1]]
    threads = sum(truth["threads_started"] for truth in truths)
    calls = sum(truth["getaddrinfo_calls"] for truth in truths)
    assert (threads, calls) == (6, 7)
    assert cells[:7] == ["batch", "0", "0", f"{threads} python", str(threads), str(calls), "0"]
    assert cells[8] == "0"

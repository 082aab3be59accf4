"""The observer's own costs and health: process_* and python_info, the scrape's own duration,
its BPF programs' run count and time as the kernel accounts them, and its poll loop's errors
and last completed poll."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.harness import bpf_skip_reason, observer, wait_until, workload
from thread_observer.health import PollRecord
from thread_observer.self_metrics import (
    BPF_STATS_SYSCTL,
    BpfProgramCollector,
    PollCollector,
    parse_fdinfo,
)

FDINFO = """pos:\t0
flags:\t02000002
mnt_id:\t15
ino:\t2063
prog_type:\t2
prog_jited:\t1
prog_tag:\t6deef7357e7b4530
memlock:\t4096
prog_id:\t812
run_time_ns:\t123456789
run_cnt:\t4242
recursion_misses:\t0
verified_insns:\t120
"""


def test_parse_fdinfo():
    fields = parse_fdinfo(FDINFO)
    assert (fields["prog_id"], fields["run_cnt"], fields["run_time_ns"]) == (
        "812",
        "4242",
        "123456789",
    )
    assert parse_fdinfo("") == {}


def registry_with(collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_program_statistics_when_the_kernel_counts(tmp_path):
    (tmp_path / "7").write_text(FDINFO)
    (tmp_path / "8").write_text(FDINFO.replace("4242", "1").replace("123456789", "500"))
    collector = BpfProgramCollector(
        lambda: {"getaddrinfo_entry": 7, "pthread_create_entry": 8, "gone": 9},
        stats_enabled=lambda: True,
        fdinfo=tmp_path,
    )
    value = registry_with(collector).get_sample_value
    assert value("thread_observer_bpf_stats_enabled") == 1
    assert value("thread_observer_bpf_program_runs_total", {"program": "getaddrinfo_entry"}) == 4242
    assert value(
        "thread_observer_bpf_program_run_seconds_total", {"program": "getaddrinfo_entry"}
    ) == pytest.approx(0.123456789)
    assert value("thread_observer_bpf_program_runs_total", {"program": "pthread_create_entry"}) == 1
    # A program whose fd cannot be read has no series, never a 0.
    assert value("thread_observer_bpf_program_runs_total", {"program": "gone"}) is None


def test_program_statistics_absent_and_said_when_the_kernel_does_not_count(tmp_path, caplog):
    (tmp_path / "7").write_text(FDINFO)
    collector = BpfProgramCollector(
        lambda: {"getaddrinfo_entry": 7}, stats_enabled=lambda: False, fdinfo=tmp_path
    )
    registry = registry_with(collector)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            names = {s.name for family in registry.collect() for s in family.samples}
    # Skipped runs are counted whatever the setting: they are lost events, not a cost.
    assert names == {
        "thread_observer_bpf_stats_enabled",
        "thread_observer_bpf_program_misses_total",
    }
    assert registry.get_sample_value("thread_observer_bpf_stats_enabled") == 0
    misses = {"program": "getaddrinfo_entry"}
    assert registry.get_sample_value("thread_observer_bpf_program_misses_total", misses) == 0
    said = [r for r in caplog.records if "bpf_stats_enabled is 0" in r.getMessage()]
    assert len(said) == 1


@pytest.mark.parametrize("completed", [False, True])
def test_poll_errors_and_the_last_completed_poll(completed):
    polls = PollRecord(0.25, monotonic=lambda: 50.0, wall=lambda: 1_700_000_000.5)
    polls.poll_failed()
    polls.poll_failed()
    if completed:
        polls.poll_completed()
    value = registry_with(PollCollector(polls)).get_sample_value
    assert value("thread_observer_poll_errors_total") == 2
    # Absent until a poll completes: never a 0 that reads as 1970.
    expected = 1_700_000_000.5 if completed else None
    assert value("thread_observer_last_poll_timestamp_seconds") == expected


@pytest.fixture
def python_target():
    with workload(
        [
            "-c",
            'import sys, time; print(\'{"ready": true, "pid": %d}\' % '
            "__import__('os').getpid(), flush=True); time.sleep(60)",
        ],
        wait=True,
    ) as target:
        yield target


def test_process_metrics_and_the_scrape_duration(tmp_path, python_target):
    with observer(["--backend", "proc", "--pid", f"app={python_target.pid}"], tmp_path) as running:
        metrics = running.scrape()
        assert metrics.value("process_cpu_seconds_total") > 0
        assert metrics.value("process_resident_memory_bytes") > 0
        assert metrics.value("python_info", implementation="CPython") == 1
        # The duration of the scrape being served: present on the very first scrape.
        assert metrics.value("thread_observer_scrape_duration_seconds") > 0
        # The poll loop's: no poll has failed, and the last one completed lately (the first
        # may still be under way at the first scrape).
        assert metrics.value("thread_observer_poll_errors_total") == 0
        last_poll = wait_until(
            lambda: running.scrape().value("thread_observer_last_poll_timestamp_seconds"),
            10,
            "a completed poll",
        )
        assert time.time() - 30 < last_poll <= time.time()


needs_bpf = pytest.mark.skipif(bpf_skip_reason() is not None, reason=bpf_skip_reason() or "")


@contextmanager
def bpf_stats_on():
    """kernel.bpf_stats_enabled=1 for the block, restored after (it is machine-wide)."""
    before = BPF_STATS_SYSCTL.read_text().strip()
    BPF_STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        BPF_STATS_SYSCTL.write_text(before)


def our_program_ids(pid: int) -> set[int]:
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            found = re.search(
                r"^prog_id:\s+(\d+)", Path(f"/proc/{pid}/fdinfo/{fd}").read_text(), re.M
            )
        except OSError:
            continue
        if found:
            ids.add(int(found[1]))
    return ids


def bpftool_runs(ids: set[int]) -> int:
    """Total run_cnt of these programs, as bpftool reads it."""
    shown = json.loads(
        subprocess.run(
            ["bpftool", "prog", "show", "--json"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    return sum(p.get("run_cnt", 0) for p in shown if p["id"] in ids)


@pytest.mark.bpf
@needs_bpf
@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not installed")
def test_bpf_program_statistics_agree_with_bpftool(tmp_path, python_target):
    with observer(["--pid", f"app={python_target.pid}"], tmp_path) as running:
        off = running.scrape()
        if BPF_STATS_SYSCTL.read_text().strip() == "0":
            assert off.value("thread_observer_bpf_stats_enabled") == 0
            assert off.value("thread_observer_bpf_program_runs_total") is None
        ids = our_program_ids(running.process.pid)
        with bpf_stats_on():
            with workload(
                [
                    "-m",
                    "workloads.mixed",
                    "--threads",
                    "3",
                    "--loop-calls",
                    "2",
                    "--blocking-calls",
                    "1",
                    "--failures",
                    "0",
                ],
                wait=False,
            ) as busy:
                busy.truth()
            before = bpftool_runs(ids)
            metrics = running.scrape()
            after = bpftool_runs(ids)
        runs = metrics.labels("thread_observer_bpf_program_runs_total", "program")
        # One series per loaded program, and their runs between two bpftool readings.
        assert len(runs) == len(ids)
        assert before <= sum(runs.values()) <= after
        assert sum(runs.values()) > 0
        assert metrics.value("thread_observer_bpf_stats_enabled") == 1
        seconds = metrics.labels("thread_observer_bpf_program_run_seconds_total", "program")
        assert set(seconds) == set(runs)


def test_skipped_runs_are_counted_and_said_once_each_time_they_rise(tmp_path, caplog):
    fdinfo = tmp_path / "7"
    collector = BpfProgramCollector(
        lambda: {"raw_tracepoint__task_newtask": 7}, stats_enabled=lambda: False, fdinfo=tmp_path
    )
    registry = registry_with(collector)
    labels = {"program": "raw_tracepoint__task_newtask"}
    with caplog.at_level(logging.WARNING):
        for misses in (0, 3, 3, 5):
            fdinfo.write_text(
                FDINFO.replace("recursion_misses:\t0", f"recursion_misses:\t{misses}")
            )
            value = registry.get_sample_value("thread_observer_bpf_program_misses_total", labels)
            assert value == misses
    said = [r.getMessage() for r in caplog.records if "skipped runs" in r.getMessage()]
    assert said == [
        "the kernel skipped runs of BPF programs (another program or a map syscall held the "
        f"CPU), events not counted: raw_tracepoint__task_newtask {n}"
        for n in (3, 5)
    ]

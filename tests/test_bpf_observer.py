"""The observer with real probes on real processes, against the workloads' own ground truth."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import pytest

from tests import harness
from tests.harness import (
    PYENV_ROOT,
    exits_settled,
    observer,
    settled,
    shared_libpython_pythons,
    sites_read,
    wait_until,
    workload,
)
from thread_observer import procfs
from thread_observer.bpf_backend import MARK_LINGER
from workloads.mixed import FAILING_LOOKUPS
from workloads.servers import http_server

pytestmark = pytest.mark.bpf

# A unique -X option (accepted and ignored by CPython) tells a test's processes from others'.
MIXED = [
    "-m",
    "workloads.mixed",
    "--threads",
    "23",
    "--loop-calls",
    "37",
    "--blocking-calls",
    "11",
    "--failures",
    "3",
]


def counts_settled(running, target, truth):
    """The scrape once every thread the workload started has been counted as exited."""
    return exits_settled(running, truth["threads_started"], target=target)


def assert_matches_truth(metrics, target, truth, host_names=True):
    assert_matches_truths(metrics, target, [truth], host_names)
    assert metrics.value("thread_observer_threads", target=target) == 1
    assert metrics.value("thread_observer_processes", target=target) == 1


def assert_matches_truths(metrics, target, truths, host_names=True):
    """The target's counters are the sum of its processes' ground truths, live or ended."""
    started = sum(truth["threads_started"] for truth in truths)
    created = metrics.labels("thread_observer_threads_created_total", "creator", target=target)
    assert created == {"python": started}
    assert metrics.value("thread_observer_threads_exited_total", target=target) == started
    on_loop = sum(truth["getaddrinfo_on_loop"] for truth in truths)
    total = sum(truth["getaddrinfo_calls"] for truth in truths)
    calls = metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target=target)
    assert calls == {"event_loop": on_loop, "other": total - on_loop}
    failures = metrics.nonzero("thread_observer_getaddrinfo_failures_total", "error", target=target)
    assert failures == sum((Counter(truth["getaddrinfo_errors"]) for truth in truths), Counter())
    assert (
        metrics.value("thread_observer_getaddrinfo_duration_seconds_count", target=target) == total
    )
    hosts = metrics.labels("thread_observer_getaddrinfo_host_calls_total", "host", target=target)
    expected = sum((expected_hosts(truth) for truth in truths), Counter())
    assert hosts == (expected if host_names else {})


def expected_hosts(truth) -> Counter:
    """Names the mixed workload asks for: its calls, then its failing lookups in turn."""
    hosts = Counter({"localhost": truth["loop_calls"] + truth["blocking_calls"]})
    for index in range(truth["failures"]):
        host = FAILING_LOOKUPS[index % len(FAILING_LOOKUPS)][0]
        hosts[host or "<none>"] += 1  # a NULL node has no name
    return hosts


# Without the epoll mark, caller comes from the Python frames alone: as exact for Python.
@pytest.mark.parametrize("flags", [[], ["--no-epoll-mark"]], ids=["default", "no-epoll-mark"])
def test_exact_counts_of_a_process_given_by_pid(flags, tmp_path):
    with workload([*MIXED, "--linger", "60"]) as target:
        with observer(["--pid", f"mixed={target.pid}", *flags], tmp_path) as running:
            target.go()
            truth = target.truth()
            assert truth["threads_started"] >= 23  # its own 23, plus executor threads
            assert truth["getaddrinfo_calls"] == 37 + 11 + 3
            assert truth["getaddrinfo_on_loop"] == 11 + 3
            metrics = counts_settled(running, "mixed", truth)
            assert_matches_truth(metrics, "mixed", truth)


def test_process_started_after_the_observer_is_counted_from_its_start(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"later=python.*-X tag={tag}"], tmp_path) as running:
        assert running.scrape().value("thread_observer_processes", target="later") == 0
        # No handshake: the work begins at once, before any poll can have seen the process.
        with workload(["-X", f"tag={tag}", *MIXED, "--linger", "60"], wait=False) as target:
            truth = target.truth()
            metrics = counts_settled(running, "later", truth)
            assert_matches_truth(metrics, "later", truth)
            # Where the process runs, not which one it is: no pid label unless --label-pid.
            container_id, pod_uid = procfs.container_identity(target.pid)
            info = [s.labels for s in metrics.samples if s.name == "thread_observer_target_info"]
            assert info == [{"target": "later", "container_id": container_id, "pod_uid": pod_uid}]


def test_a_named_target_keeps_its_counts_after_its_processes_ended(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"brief=python.*-X tag={tag}"], tmp_path) as running:
        truths = []
        for _ in range(2):  # the second run's counts add to the first's: never a reset
            with workload(["-X", f"tag={tag}", *MIXED, "--linger", "60"], wait=False) as target:
                truths.append(target.truth())
                started = sum(truth["threads_started"] for truth in truths)
                metrics = exits_settled(running, started, target="brief")
                assert metrics.value("thread_observer_processes", target="brief") == 1
                assert_matches_truths(metrics, "brief", truths)
            metrics = wait_until(
                lambda: processes_are(running, "brief", 0), 10, "the exited process to be dropped"
            )
            assert_matches_truths(metrics, "brief", truths)
            assert metrics.value("thread_observer_threads", target="brief") == 0
        assert running.get("/healthz")[0].startswith('{"status": "ok"')


def processes_are(running, target: str, count: int):
    """The scrape, if it shows that many processes of the target."""
    metrics = running.scrape()
    return metrics if metrics.value("thread_observer_processes", target=target) == count else None


def test_label_pid_and_openmetrics(tmp_path):
    with workload([*MIXED, "--linger", "60"]) as target:
        with observer(["--pid", f"mixed={target.pid}", "--label-pid"], tmp_path) as running:
            target.go()
            truth = target.truth()
            metrics = counts_settled(running, "mixed", truth)
            assert (
                metrics.value(
                    "thread_observer_threads_created_total", target="mixed", pid=str(target.pid)
                )
                == truth["threads_started"]
            )
            text, content_type = running.get(
                "/metrics", accept="application/openmetrics-text; version=1.0.0"
            )
            assert content_type.startswith("application/openmetrics-text")
            assert text.rstrip().endswith("# EOF")


def test_sigterm_detaches_every_probe_and_exits_zero_within_2s(tmp_path):
    with (
        workload([*MIXED, "--linger", "60"]) as target,
        observer(["--pid", f"mixed={target.pid}"], tmp_path) as running,
    ):
        observer_pid = running.process.pid
        ours = bpf_program_ids(observer_pid)
        assert len(ours) >= 8, "every probe program should be loaded while the observer runs"
        # Five tracepoints (raw ones where the kernel allows; the epoll mark's is attached only
        # while a watched process's frames cannot be read), and the uprobes on pthread_create,
        # getaddrinfo and the resolver functions.
        assert attachment_count(observer_pid) >= 8
        started = time.monotonic()
        assert running.stop() == 0
        assert time.monotonic() - started < 2.0
        assert "stopping: detaching probes" in running.log()
    wait_until(lambda: not ours & loaded_bpf_program_ids(), 5, "the programs to be unloaded")
    # bcc names the tracefs uprobe events it falls back to after its own pid.
    events = Path("/sys/kernel/tracing/uprobe_events")
    assert f"bcc_{observer_pid}" not in (events.read_text() if events.exists() else "")


def attachment_count(pid: int) -> int:
    """Attached probes a process holds open: perf events (tracepoints, uprobes) and BPF links
    (raw tracepoints, uprobe_multi links)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            count += os.readlink(fd) in ("anon_inode:[perf_event]", "anon_inode:bpf_link")
    return count


def bpf_program_ids(pid: int) -> set[int]:
    """The BPF programs a process holds open."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


def loaded_bpf_program_ids() -> set[int]:
    listing = subprocess.run(
        ["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {program["id"] for program in json.loads(listing)}


def test_uvloop_native_pool_threads_are_seen_while_python_sees_one(tmp_path, monkeypatch):
    # libuv starts its whole pool on first use: UV_THREADPOOL_SIZE threads, 4 when unset.
    monkeypatch.setenv("UV_THREADPOOL_SIZE", "4")
    with (
        http_server() as port,
        workload(
            [
                "-m",
                "workloads.semaphore_burst",
                "--loop",
                "uvloop",
                "--port",
                str(port),
                "--linger",
                "60",
            ]
        ) as target,
        observer(["--pid", f"uv={target.pid}"], tmp_path) as running,
    ):
        target.go()
        truth = target.truth()
        assert truth["python_threads_peak"] == 1
        assert truth["threads_started"] == 0
        assert truth["getaddrinfo_calls"] == 30
        metrics = running.scrape()
        created = metrics.labels("thread_observer_threads_created_total", "creator", target="uv")
        # uvloop links libuv into its extension module, which holds libuv's worker routine.
        assert created == {f"loop{sysconfig.get_config_var('EXT_SUFFIX')}": 4}
        assert metrics.value("thread_observer_threads", target="uv") == 5
        calls = metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target="uv")
        assert calls == {"event_loop": 0, "other": truth["getaddrinfo_calls"]}


def test_counts_of_an_exited_process_stay_in_its_target_while_others_live(tmp_path):
    tag = uuid.uuid4().hex[:12]
    command = ["-X", f"tag={tag}", *MIXED, "--linger", "60"]
    with observer(["--target", f"pair=python.*-X tag={tag}"], tmp_path) as running:
        with workload(command, wait=False) as first:
            first_truth = first.truth()
            with workload(command, wait=False) as second:
                second_truth = second.truth()
                wait_until(
                    lambda: running.scrape().value("thread_observer_processes", target="pair") == 2,
                    5,
                    "both attached",
                )
                first.stop()
                wait_until(
                    lambda: running.scrape().value("thread_observer_processes", target="pair") == 1,
                    5,
                    "the first dropped",
                )
                metrics = running.scrape()
                started = first_truth["threads_started"] + second_truth["threads_started"]
                assert (
                    metrics.value("thread_observer_threads_created_total", target="pair") == started
                )
                # A main thread's end is its process's end, not counted as a thread exit.
                assert (
                    metrics.value("thread_observer_threads_exited_total", target="pair") == started
                )
                assert (
                    metrics.value("thread_observer_getaddrinfo_calls_total", target="pair")
                    == first_truth["getaddrinfo_calls"] + second_truth["getaddrinfo_calls"]
                )


def test_a_pid_target_that_exits_keeps_its_final_counts(tmp_path):
    with (
        workload([*MIXED, "--linger", "60"]) as target,
        observer(["--pid", f"once={target.pid}"], tmp_path) as running,
    ):
        target.go()
        truth = target.truth()
        counts_settled(running, "once", truth)
        target.stop()
        metrics = wait_until(lambda: processes_are(running, "once", 0), 10, "the process to end")
        assert_matches_truths(metrics, "once", [truth])
        assert metrics.value("thread_observer_threads", target="once") == 0
        assert running.get("/healthz")[0].startswith('{"status": "ok"')


def test_a_named_target_of_short_lived_processes_reads_their_exact_sum(tmp_path):
    """A cron-like target: three runs that each end as soon as their work is done, scraped
    only once the last one has ended. Its series keep the sum of their counts, at 0 processes,
    for the observer's life: even with no grace period at all (which only series that come
    and go with processes have)."""
    tag = uuid.uuid4().hex[:12]
    args = ["--target", f"cron=python.*-X tag={tag}", "--series-grace", "0"]
    with observer(args, tmp_path) as running:
        truths = []
        for _ in range(3):
            with workload(["-X", f"tag={tag}", *MIXED], wait=False) as run:  # no linger
                truths.append(run.truth())
                assert run.process.wait(timeout=30) == 0
        started = sum(truth["threads_started"] for truth in truths)
        expected = {
            "thread_observer_threads_created_total": started,
            "thread_observer_threads_exited_total": started,
            "thread_observer_getaddrinfo_calls_total": sum(t["getaddrinfo_calls"] for t in truths),
            "thread_observer_processes": 0,
        }
        metrics = settled(running, expected, target="cron")
        assert_matches_truths(metrics, "cron", truths)
        assert metrics.value("thread_observer_threads", target="cron") == 0
        # Some seconds on, through several housekeeping passes and scrapes that drop expired
        # series: the same counts, not a reset and not gone.
        time.sleep(3)
        later = running.scrape()
        assert_matches_truths(later, "cron", truths)
        assert later.value("thread_observer_processes", target="cron") == 0


GRACE = 2.0


def test_a_name_templates_series_stays_for_the_grace_period_then_goes(tmp_path):
    tag = uuid.uuid4().hex[:12]
    template = f"{{app}}=python.*-X tag={tag} -X app=(?P<app>\\w+)"
    with observer(["--target", template, "--series-grace", str(GRACE)], tmp_path) as running:
        command = ["-X", f"tag={tag}", "-X", "app=nightly", *MIXED, "--linger", "60"]
        with workload(command, wait=False) as target:
            truth = target.truth()
            assert_matches_truth(counts_settled(running, "nightly", truth), "nightly", truth)
            target.stop()
            ended = time.monotonic()

        def dropped():
            metrics = running.scrape()
            return (
                metrics
                if metrics.value("thread_observer_processes", target="nightly") != 1
                else None
            )

        metrics = wait_until(dropped, 10, "the process to be dropped")
        if metrics.has_target("nightly"):
            # Right after its process ended: its last counts, with no process.
            assert metrics.value("thread_observer_processes", target="nightly") == 0
            assert_matches_truths(metrics, "nightly", [truth])
        else:
            # Only a machine too loaded to scrape within the grace period gets here; the
            # series must not have gone before it.
            assert time.monotonic() - ended >= GRACE, "the series went before its grace period"
        wait_until(
            lambda: not running.scrape().has_target("nightly"),
            GRACE + 10,
            "the series to go once its grace period passed",
        )
        assert running.get("/healthz")[0].startswith('{"status": "ok"')


# Fake processes: ids above any pid_max, never running.
FAKE_TGIDS = range(5_000_000, 5_000_300)


def test_maps_are_read_whole_past_the_first_buffer_and_swept_of_gone_processes():
    import ctypes

    from thread_observer.bpf_backend import BpfProbes

    probes = BpfProbes(track_new_processes=False)
    probes.load()
    try:
        generations = {tgid: probes.watch(tgid, 1) for tgid in FAKE_TGIDS}
        states = probes.states()
        assert {tgid: entry.generation for tgid, entry in states.items()} == generations
        assert probes.states() is states  # unchanged: nothing to look at again
        created = probes._bpf["threads_created_total"]
        for tgid, generation in generations.items():
            created[created.Key(tgid, 0, generation, 0)] = ctypes.c_uint64(tgid % 7 + 1)
            created[created.Key(tgid + 1000, 0, 1, 0)] = ctypes.c_uint64(1)  # of one gone
        counts = probes.read_counts(generations)
        assert {tgid: c.created_by_routine for tgid, c in counts.items()} == {
            tgid: Counter({0: tgid % 7 + 1}) for tgid in FAKE_TGIDS
        }
        again = probes.read_counts(generations)
        assert all(again[tgid] is counts[tgid] for tgid in FAKE_TGIDS)  # unchanged: kept
        first = FAKE_TGIDS[0]
        created[created.Key(first, 0, generations[first], 0)] = ctypes.c_uint64(99)
        changed = probes.read_counts(generations)
        assert changed[first].created_by_routine == Counter({0: 99})
        assert changed[first] is not counts[first]
        swept, entries = probes.sweep_and_count()
        assert swept == len(FAKE_TGIDS)
        assert entries["watched_tgids"] == entries["threads_created_total"] == len(FAKE_TGIDS)
        probes.forget({tgid: None for tgid in FAKE_TGIDS})
        assert probes.states() == {}
        assert probes.sweep_and_count()[1]["threads_created_total"] == 0
    finally:
        probes.close()


def test_a_process_attached_after_it_exited_is_ended_at_the_next_poll():
    from thread_observer.observers import BpfObserver

    observer = BpfObserver([], [])
    observer.start()
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.kill()
        wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().split()[2] == "Z", 10)
        # A zombie not yet watched: the attach marks it watched, as an attach that overwrote
        # its exit mark would.
        observer.watch_pid(child.pid, "late")
        assert child.pid in observer.procs
        assert child.pid in observer.probes.states()
        observer.poll()
        assert child.pid not in observer.procs
        assert child.pid not in observer.probes.states()
    finally:
        child.wait()
        observer.close()


def test_a_new_target_is_attached_without_waiting_for_the_interval(tmp_path):
    tag = uuid.uuid4().hex[:12]
    args = ["--target", f"soon=python.*-X tag={tag}", "--interval", "60"]
    with observer(args, tmp_path) as running:
        with workload(["-X", f"tag={tag}", *MIXED, "--linger", "60"], wait=False):
            # The exec report wakes the poll: well before the interval (and the 10 s scan).
            wait_until(
                lambda: running.scrape().value("thread_observer_processes", target="soon") == 1,
                5,
                "the new process to be attached",
            )


@pytest.mark.parametrize(
    "flag, family",
    [
        ("--no-host-names", "thread_observer_getaddrinfo_host_calls_total"),
        ("--no-dns-queries", "thread_observer_dns_queries_total"),
    ],
)
def test_a_feature_left_out_has_no_series_and_every_other_count_stays_exact(flag, family, tmp_path):
    with workload([*MIXED, "--linger", "60"]) as target:
        with observer(["--pid", f"mixed={target.pid}", flag], tmp_path) as running:
            target.go()
            truth = target.truth()
            metrics = counts_settled(running, "mixed", truth)
            assert_matches_truth(metrics, "mixed", truth, host_names=flag != "--no-host-names")
            assert f"{family}{{" not in running.get()[0]  # no series, not zeros
            assert f"({flag})" in running.log()  # said at start


def tracepoints_of(pid: int, kinds: tuple[str, ...] = ("tracepoint",)) -> set[str]:
    """The tracepoints a process has programs attached to, as the kernel lists them (with
    ``raw_tracepoint`` in ``kinds``, raw ones too)."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed: it lists a process's attached tracepoints")
    listed = subprocess.run(
        ["bpftool", "-j", "perf"], capture_output=True, text=True, timeout=60, check=True
    )
    return {
        entry["tracepoint"]
        for entry in json.loads(listed.stdout or "[]")
        if entry.get("pid") == pid and entry.get("fd_type") in kinds
    }


def test_by_default_no_syscall_tracepoint_is_attached_where_the_kernel_allows(tmp_path):
    # The DNS probe at the socket layer's sends: no syscall of any process takes the kernel's
    # slower path, and the counts stay exact (every other test here runs this configuration).
    # The epoll mark is not attached while no watched process needs it (below).
    harness.skip_unless_raw_tracepoints("sends_at_sockets")  # which come with sched_switch
    with observer(["--target", "none=^matches-no-process$"], tmp_path) as running:
        attached = tracepoints_of(running.process.pid, ("tracepoint", "raw_tracepoint"))
        assert attached == {
            "task_newtask",
            "sched_process_exec",
            "sched_process_exit",
            "sock_send_length",
            "tcp_sendmsg_locked",
        }
        assert "sends seen at the socket layer" in running.log()


def test_no_program_runs_at_a_context_switch_while_every_watched_process_s_frames_are_read(
    tmp_path,
):
    # The epoll mark decides caller only where frames cannot be read: attached while a watched
    # process has such frames (a Python process whose interpreter is still to be found, a
    # program that is not Python), detached MARK_LINGER seconds after the last of them. The
    # kernel's own list of attached programs is the evidence, not a timing.
    harness.skip_unless_raw_tracepoints("epoll_at_switch")
    tag = uuid.uuid4().hex[:12]
    native_sleep = ["sleep", str(3600 + int(tag[:6], 16))]  # a command line of its own
    targets = [
        "--target",
        f"py=python.*-X tag={tag}",
        "--target",
        f"native=^sleep {native_sleep[1]}$",
    ]
    with observer([*targets, "--allow-non-python"], tmp_path) as running:
        attached = lambda: tracepoints_of(running.process.pid, ("raw_tracepoint",))  # noqa: E731
        with workload(["-X", f"tag={tag}", *MIXED, "--linger", "60"]) as target:
            wait_until(lambda: sites_read(running, target.pid), 10, "its frames read")
            target.go()
            truth = target.truth()
            metrics = counts_settled(running, "py", truth)
            assert_matches_truth(metrics, "py", truth)
            linger = MARK_LINGER + 10
            wait_until(lambda: "sched_switch" not in attached(), linger, "the mark detached")
            scraped = running.scrape()
            assert scraped.value("thread_observer_probes_attached", probe="sched_switch") is None
            native = subprocess.Popen(native_sleep)
            try:
                wait_until(lambda: "sched_switch" in attached(), 10, "the epoll mark attached")
                assert f"(pid {native.pid} first)" in running.log()
                scraped = running.scrape()
                assert scraped.value("thread_observer_probes_attached", probe="sched_switch") == 1
            finally:
                native.kill()
                native.wait()
            wait_until(lambda: "sched_switch" not in attached(), linger, "the mark detached")
        assert "epoll mark detached" in running.log()


LEAN = ["--no-host-names", "--no-dns-queries", "--no-epoll-mark"]


def test_the_lean_configuration_attaches_no_syscall_tracepoint_and_counts_exactly(tmp_path):
    # Any syscall tracepoint puts every syscall of every process on the kernel's slower path.
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"lean=python.*-X tag={tag}", *LEAN], tmp_path) as running:
        # The thread and process events at their raw tracepoints where the kernel's BTF
        # allows, else at the tracepoints: never a syscall's.
        attached = tracepoints_of(running.process.pid, ("tracepoint", "raw_tracepoint"))
        assert {t for t in attached if t.startswith("sys_")} == set()
        assert attached == {"task_newtask", "sched_process_exec", "sched_process_exit"}
        with workload(["-X", f"tag={tag}", *MIXED, "--linger", "60"]) as target:
            # Without the epoll mark, caller comes from the frames alone: the work starts once
            # they are read (a program started with exec is found at the observer's next poll).
            wait_until(lambda: sites_read(running, target.pid), 10, "its call sites")
            target.go()
            truth = target.truth()
            metrics = counts_settled(running, "lean", truth)
            assert_matches_truth(metrics, "lean", truth, host_names=False)
        assert "(--no-epoll-mark)" in running.log()


EXEC_PHASES = Path(__file__).parent / "targets" / "exec_phases.c"
LAST_CALLS = 2000  # exec_phases.c's


def test_a_thread_that_leaves_and_rejoins_the_watched_set_by_exec_is_counted_exactly(tmp_path):
    """One thread through three programs by exec: a target, a program no target matches, and
    another target, which resolves at once. The thread keeps its kernel state across execs,
    with its process's generation in it: each change of watch must reach it, the last one
    before user space has seen the new program."""
    binary = tmp_path / "exec_phases"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(EXEC_PHASES)], check=True)
    tag = uuid.uuid4().hex[:12]
    args = [
        *("--target", f"first=exec_phases first {tag}"),
        *("--target", f"last=exec_phases last {tag}"),
        "--allow-non-python",
    ]
    with observer(args, tmp_path) as running:
        process = subprocess.Popen([str(binary), "first", tag, str(tmp_path)])
        try:
            wait_until((tmp_path / "first").exists, 20, "the first program's calls")
            wait_until(
                lambda: running.scrape().value("thread_observer_processes", target="first"),
                20,
                "the process to join its first target",
            )
            (tmp_path / "attached").touch()
            wait_until((tmp_path / "between").exists, 20, "the program between the targets")
            wait_until(
                lambda: not running.scrape().value("thread_observer_processes", target="first"),
                20,
                "the process to leave its first target",
            )
            (tmp_path / "forgotten").touch()
            wait_until((tmp_path / "done").exists, 20, "the last program's calls")
            expected = {
                "thread_observer_getaddrinfo_calls_total": LAST_CALLS,
                "thread_observer_getaddrinfo_duration_seconds_count": LAST_CALLS,
            }
            settled(running, expected, target="last")
        finally:
            process.kill()
            process.wait()


def test_an_exec_whose_pending_mark_a_watch_overwrote_still_moves_the_process():
    # A process attached on the command line it had just before an exec: the watch written
    # for it can land after the exec's pending mark and overwrite it (user space read the
    # entry before). The exec's report still moves the process to its new program's target.
    from thread_observer.constants import ProcessState
    from thread_observer.observers import BpfObserver
    from thread_observer.targets import parse_regex_target

    tag = uuid.uuid4().hex[:12]
    targets = [
        parse_regex_target(f"before=-X before={tag}"),
        parse_regex_target(f"after=-X after={tag}"),
    ]
    become = (
        "import os, sys; sys.stdin.readline(); "
        f"os.execv(sys.executable, [sys.executable, '-X', 'after={tag}', '-c', "
        "'import time; time.sleep(60)'])"
    )
    observer = BpfObserver(targets, [])
    observer.start()
    process = subprocess.Popen(
        [sys.executable, "-X", f"before={tag}", "-c", become], stdin=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: observer.poll() or process.pid in observer.procs, 10, "the attach")
        assert observer.procs[process.pid].target == "before"
        entry = observer.probes.states()[process.pid]
        process.stdin.write("go\n")
        process.stdin.flush()
        # The exec's mark, not its new command line: the kernel reports an exec at its end,
        # after the command line has changed.
        wait_until(
            lambda: observer.probes.states()[process.pid].state == ProcessState.PENDING,
            10,
            "the exec",
        )
        observer.probes.set_state(process.pid, replace(entry, state=ProcessState.WATCHED))
        assert observer.probes.states()[process.pid].state == ProcessState.WATCHED
        observer.poll()
        assert observer.procs[process.pid].target == "after"
    finally:
        process.kill()
        process.wait()
        observer.close()


@contextmanager
def held_at_exec(command: list[str], regex_targets=()):
    """A started BpfObserver and a child stopped by ptrace at its exec, before the dynamic
    loader maps any library; yields (observer, process, release): release() lets it run."""
    import ctypes

    from thread_observer.observers import BpfObserver

    libc = ctypes.CDLL(None, use_errno=True)
    ptrace_traceme, ptrace_detach = 0, 17
    observer = BpfObserver(list(regex_targets), [])
    observer.start()
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: libc.ptrace(ptrace_traceme, 0, None, None),
    )
    try:
        os.waitpid(process.pid, os.WUNTRACED)  # stopped at its exec
        assert "ld-linux" in Path(f"/proc/{process.pid}/maps").read_text()
        yield observer, process, lambda: libc.ptrace(ptrace_detach, process.pid, None, 0) == 0
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()
        observer.close()


def test_a_process_attached_before_its_loader_mapped_libc_is_probed_once_it_has():
    # A child that stops at its exec, before the dynamic loader maps any library: its
    # executable holds no getaddrinfo, so its libc is probed at a later poll, without an error.
    with held_at_exec(["sleep", "60"]) as (observer, process, release):
        assert "libc.so" not in Path(f"/proc/{process.pid}/maps").read_text()
        errors = dict(observer.probes.attach_errors)
        observer.watch_pid(process.pid, "early")
        assert observer.probes.attach_errors == errors
        assert release()
        wait_until(lambda: "libc.so" in Path(f"/proc/{process.pid}/maps").read_text(), 10)
        attached = observer.probes.probes_attached["getaddrinfo"]
        observer.poll()
        assert observer.probes.attach_errors == errors
        assert observer.probes.probes_attached["getaddrinfo"] == attached + 1
        assert process.pid not in observer._libc_pending


SHARED_PYTHONS = shared_libpython_pythons()


@pytest.mark.skipif(not SHARED_PYTHONS, reason=f"no pyenv interpreters under {PYENV_ROOT}")
@pytest.mark.parametrize("python", SHARED_PYTHONS, ids=lambda python: python.split("/")[-3])
def test_a_python_attached_before_its_loader_mapped_libpython_is_read_once_it_has(python):
    # An interpreter built with a shared libpython stopped at its exec, before the loader maps
    # any library: its executable holds no interpreter, and that is not final.
    command = [python, "-c", "import sys; print(*sys.version_info[:2], flush=True); input()"]
    with held_at_exec(command) as (observer, process, release):
        assert "libpython" not in Path(f"/proc/{process.pid}/maps").read_text()
        observer.watch_pid(process.pid, "early")
        tracked = observer.procs[process.pid]
        assert (tracked.sites, tracked.sites_unavailable) == (None, None)
        observer.poll()
        assert (tracked.sites, tracked.sites_unavailable) == (None, None)
        assert release()
        version = tuple(map(int, process.stdout.readline().split()))  # initialised
        wait_until(
            lambda: observer.poll() or tracked.sites or tracked.sites_unavailable,
            10,
            "its interpreter to be read",
        )
        if version < (3, 8):
            assert (tracked.sites, tracked.sites_unavailable) == (None, "unsupported_version")
        else:
            assert (tracked.sites is not None, tracked.sites_unavailable) == (True, None)


EMBEDDED_WORK = """
import socket, sys, threading
for _ in range(7):
    socket.getaddrinfo("localhost", 80)
threads = [threading.Thread(target=len, args=("",)) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not SHARED_PYTHONS, reason=f"no pyenv interpreters under {PYENV_ROOT}")
def test_a_matched_program_not_named_python_is_decided_once_its_loader_mapped_libpython(
    tmp_path,
):
    # A program with an embedded interpreter (uWSGI's way: libpython, under another name),
    # matched at its exec while held there, before the loader maps any library: it is not
    # Python yet to the eye. It stays pending in the kernel, counted from its first
    # instruction, and is attached once its libraries show what it is.
    import shutil

    from thread_observer.targets import parse_regex_target

    program = tmp_path / f"appserver-{uuid.uuid4().hex[:8]}"
    shutil.copy(SHARED_PYTHONS[-1], program)  # its RUNPATH names its libpython's folder
    target = parse_regex_target(f"embedded={program.name}")
    with held_at_exec([str(program), "-c", EMBEDDED_WORK], [target]) as (
        observer,
        process,
        release,
    ):
        assert "libpython" not in Path(f"/proc/{process.pid}/maps").read_text()
        observer.poll()
        assert process.pid not in observer.procs  # not decided yet
        assert release()
        assert process.stdout.readline() == "done\n"  # all its work made before the attach
        wait_until(lambda: observer.poll() or process.pid in observer.procs, 5, "the attach")
        tracked = observer.procs[process.pid]
        assert tracked.target == "embedded"
        counts = observer.probes.read_counts({process.pid: tracked.generation})[process.pid]
        assert sum(counts.calls.values()) == 7
        assert sum(counts.created_by_routine.values()) == 3

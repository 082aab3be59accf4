"""What a process we do not watch pays, by the kernel's own run counters of our programs
(kernel.bpf_stats_enabled=1): with --pid targets and --no-children the uprobes are the watched
processes' own, so another process's calls never run them; otherwise getaddrinfo's uprobe
session runs once per call of such a process, never at its return. The DNS probe runs at the
socket layer's sends where the kernel allows, nothing at a write to a file; at the syscall
tracepoints elsewhere, at every write of any process, unless --no-dns-queries leaves it out."""

from __future__ import annotations

import pytest

from tests import harness
from tests.harness import bpf_skip_reason, observer, workload
from tests.test_self_metrics import bpf_stats_on
from thread_observer.bpf_backend import UPROBE_PROGRAMS

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(bpf_skip_reason() is not None, reason=bpf_skip_reason() or ""),
]

# On each line of stdin: THREADS threads and CALLS getaddrinfo calls, then a line with both.
CALLER = """
import json, os, socket, sys, threading
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    threads, calls = map(int, line.split())
    for _ in range(threads):
        thread = threading.Thread(target=int)
        thread.start()
        thread.join()
    for _ in range(calls):
        socket.getaddrinfo("localhost", 80)
    print(json.dumps({"threads": threads, "calls": calls}), flush=True)
"""


def work(caller, threads: int, calls: int) -> None:
    caller.process.stdin.write(f"{threads} {calls}\n")
    caller.process.stdin.flush()
    assert caller._line().strip() == f'{{"threads": {threads}, "calls": {calls}}}'


def runs(running) -> dict[str, float]:
    found = running.scrape().labels("thread_observer_bpf_program_runs_total", "program")
    return {program: found.get(program, 0) for program in UPROBE_PROGRAMS}


def test_a_process_we_do_not_watch_never_runs_our_uprobe_programs(tmp_path):
    with (
        bpf_stats_on(),
        workload(["-c", CALLER]) as watched,
        workload(["-c", CALLER]) as unwatched,
        observer(["--pid", f"app={watched.pid}", "--no-children"], tmp_path) as running,
    ):
        before = runs(running)
        work(unwatched, 20, 1000)
        after_unwatched = runs(running)
        work(watched, 23, 37)
        after_watched = runs(running)
    assert after_unwatched == before
    added = {p: after_watched[p] - after_unwatched[p] for p in UPROBE_PROGRAMS}
    assert added["pthread_create_entry"] == 23
    if added["getaddrinfo_session"]:  # one program at entry and at return
        assert added["getaddrinfo_session"] == 2 * 37
    else:  # a kernel without uprobe sessions: a program each
        assert (added["getaddrinfo_entry"], added["getaddrinfo_return"]) == (37, 37)


def test_an_unwatched_process_runs_getaddrinfo_s_program_once_per_call(tmp_path):
    # With --target the uprobes sit on libc for every process, so that a process is counted
    # from its first instruction; the session's entry declines the return for everyone else.
    calls = 1000
    with (
        bpf_stats_on(),
        workload(["-c", CALLER]) as unwatched,
        observer(["--target", "none=^matches-no-process$"], tmp_path) as running,
    ):
        before = runs(running)
        work(unwatched, 0, calls)
        after = runs(running)
    added = {p: after[p] - before[p] for p in UPROBE_PROGRAMS}
    if not added["getaddrinfo_session"]:
        pytest.skip(
            "getaddrinfo's uprobe session is not attached (Linux before 6.13, or another tool's "
            "uprobe on getaddrinfo): an entry and a return program run instead"
        )
    # Other processes on the machine may call getaddrinfo meanwhile: at least one run per
    # call, and far from the two an entry and a return would take.
    assert calls <= added["getaddrinfo_session"] < 1.5 * calls
    assert added["getaddrinfo_return"] == 0


# Writes to /dev/null and closes, WRITES of each, after a line on stdin; then a line.
WRITER = """
import os, sys
print('{"ready": true, "pid": %d}' % os.getpid(), flush=True)
for line in sys.stdin:
    writes = int(line)
    for _ in range(writes):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.write(fd, b"x")
        os.close(fd)
    print(writes, flush=True)
"""


def all_runs(running) -> dict[str, float]:
    return running.scrape().labels("thread_observer_bpf_program_runs_total", "program")


@pytest.mark.parametrize(
    ("prefix", "flags"),
    [
        ([], []),
        (harness.SYSCALL_TRACEPOINTS, []),
        (harness.SYSCALL_TRACEPOINTS, ["--no-dns-queries"]),
    ],
    ids=["socket-layer", "syscall-tracepoints", "no-dns-queries"],
)
def test_writes_and_closes_of_any_process_run_nothing_but_at_the_syscall_tracepoints(
    prefix, flags, tmp_path, monkeypatch
):
    if not prefix:
        harness.skip_unless_raw_tracepoints("sends_at_sockets")
    monkeypatch.setattr(harness, "OBSERVER_PREFIX", prefix)
    writes = 5000
    with (
        bpf_stats_on(),
        workload(["-c", WRITER]) as writer,
        observer(["--target", "none=^matches-no-process$", *flags], tmp_path) as running,
    ):
        before = all_runs(running)
        writer.process.stdin.write(f"{writes}\n")
        writer.process.stdin.flush()
        assert writer._line().strip() == str(writes)
        after = all_runs(running)
    added = {p: after[p] - before.get(p, 0) for p in after}
    # The DNS probe learns what a send's socket is from the kernel at the send: nothing at close.
    assert [p for p in after if p.endswith(("_close", "_socket", "_connect"))] == []
    write = [p for p in after if p.endswith("_write")]
    if not prefix:
        # No syscall tracepoint at all; the socket layer's programs run at sends only (other
        # processes' sends meanwhile count: far fewer than the writer's writes).
        assert [p for p in after if p.startswith("tracepoint__syscalls")] == []
        assert write == []
        for program in ("raw_tracepoint__sock_send_length", "raw_tracepoint__tcp_sendmsg_locked"):
            assert added[program] < writes / 2, added
    elif flags:
        assert write == []  # not even loaded
    else:
        assert len(write) == 2  # write's entry and exit
        # Other processes write meanwhile: at least the writer's.
        for program in write:
            assert added[program] >= writes

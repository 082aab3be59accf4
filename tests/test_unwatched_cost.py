"""What a process we do not watch pays, by the kernel's own run counters of our programs
(kernel.bpf_stats_enabled=1): with --pid targets and --no-children the uprobes are the watched
processes' own, so another process's calls never run them."""

from __future__ import annotations

import pytest

from tests.harness import bpf_skip_reason, observer, workload
from tests.test_self_metrics import bpf_stats_on

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(bpf_skip_reason() is not None, reason=bpf_skip_reason() or ""),
]

UPROBE_PROGRAMS = (
    "pthread_create_entry",
    "getaddrinfo_entry",
    "getaddrinfo_return",
    "resolver_entry",
    "resolver_return",
)

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
    assert added["getaddrinfo_entry"] == 37
    assert added["getaddrinfo_return"] == 37

"""Run inside ``unshare --pid --fork --mount-proc``: an observer and a target that both see the
namespace's PIDs while the kernel runs on the host's. Prints the truth and the metrics as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from tests import harness
from tests.harness import exits_settled, observer, wait_until, workload

MIXED = [
    "-m",
    "workloads.mixed",
    "--threads",
    "13",
    "--loop-calls",
    "7",
    "--blocking-calls",
    "5",
    "--linger",
    "60",
]
TREE = [
    "-m",
    "workloads.process_tree",
    "--workers",
    "3",
    "--threads",
    "10",
    "--lookups",
    "7",
    "--linger",
    "60",
]


def measure(args: list[str], by_pid: bool) -> dict:
    # --label-pid: target_info names the pid the observer sees the target by.
    with tempfile.TemporaryDirectory() as folder:
        if by_pid:
            with (
                workload(args) as target,
                observer(["--pid", f"ns={target.pid}", "--label-pid"], Path(folder)) as running,
            ):
                target.go()
                return result(target, running)
        with (
            observer(["--target", "ns=workloads\\.mixed", "--label-pid"], Path(folder)) as running,
            workload(args, wait=False) as target,
        ):
            return result(target, running)


def result(target, running, earlier_threads: int = 0) -> dict:
    """What the observer says of the target, once its threads (and ``earlier_threads`` of the
    target's processes that ended before) are counted as ended."""
    truth = target.truth()
    ended = earlier_threads + truth["threads_started"]
    metrics = exits_settled(running, ended, target="ns")
    return {
        "truth": truth,
        "pid": target.pid,
        "created": metrics.value("thread_observer_threads_created_total", target="ns"),
        "exited": metrics.value("thread_observer_threads_exited_total", target="ns"),
        "calls": metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target="ns"),
        "info_pids": list(metrics.labels("thread_observer_target_info", "pid", target="ns")),
    }


def reuse_pid(args: list[str]) -> dict:
    """A target exits and a new one gets its PID before the observer polls again."""
    with (
        tempfile.TemporaryDirectory() as folder,
        observer(["--target", "ns=workloads\\.mixed", "--interval", "3"], Path(folder)) as running,
    ):
        with workload([*args[:-2], "--linger", "0"], wait=False) as old:
            old_truth = old.truth()
            old.process.wait()
        # The next PID the kernel hands out in this namespace is the old one's.
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(old.pid - 1))
        with workload(args, wait=False) as new:
            found = result(new, running, old_truth["threads_started"])
        found.update(old_pid=old.pid, old_truth=old_truth)
        return found


def measure_tree(by_pid: bool) -> dict:
    """A parent that forks 3 short workers, given by PID or matched by a target."""
    with tempfile.TemporaryDirectory() as folder, workload(TREE) as root:
        args = ["--pid", f"ns={root.pid}"] if by_pid else ["--target", "ns=workloads\\.process"]
        with observer(args, Path(folder)) as running:
            wait_until(
                lambda: running.scrape().value("thread_observer_processes", target="ns") == 1,
                10,
                "the parent to be attached",
            )
            root.go()
            return result(root, running)


def main() -> int:
    if "--syscall-tracepoints" in sys.argv:  # as on a kernel without the raw tracepoints
        sys.argv.remove("--syscall-tracepoints")
        harness.OBSERVER_PREFIX[:] = harness.SYSCALL_TRACEPOINTS
    if sys.argv[1:] == ["pid-reuse"]:
        results = {"init_pid": os.getpid(), "reuse": reuse_pid(MIXED)}
    elif sys.argv[1:] == ["tree"]:
        results = {
            "init_pid": os.getpid(),
            "by_pid": measure_tree(True),
            "by_target": measure_tree(False),
        }
    else:
        results = {
            "init_pid": os.getpid(),
            "by_pid": measure(MIXED, True),
            "by_target": measure(MIXED, False),
        }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

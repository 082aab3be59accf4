"""A target is a process tree: workers forked, spawned or pooled by a watched process are
counted in its target from their first instruction, against the workloads' own ground truth."""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest

from tests.harness import find_python, observer, settled, sites_read, wait_until, workload

pytestmark = pytest.mark.bpf

TREE = ["-m", "workloads.process_tree", "--linger", "60"]
# Counters of processes: after a run they hold the parent's keys only.
PROCESS_MAPS = (
    "threads_created_total",
    "process_totals",
    "watched_tgids",
)


def tagged(tag: str, *args: str) -> list[str]:
    """A workload command line told apart from every other process by ``-X tag=``."""
    return ["-X", f"tag={tag}", *TREE, *args]


def totals(truth: dict) -> tuple[int, int]:
    """Threads and getaddrinfo calls of the whole tree: the parent's and its workers'."""
    return truth["threads_started"], truth["getaddrinfo_calls"]


def target_totals(metrics, target: str) -> tuple[float | None, float | None, float | None]:
    return (
        metrics.value("thread_observer_threads_created_total", target=target),
        metrics.value("thread_observer_threads_exited_total", target=target),
        metrics.value("thread_observer_getaddrinfo_calls_total", target=target),
    )


def settled_totals(running, target: str, threads: int, calls: int, **gauges: float):
    """The scrape once the target shows the tree's totals (children that ended before a poll
    saw them are folded in at the next poll), and the ``gauges`` given (``processes=1``: an
    ended child leaves the gauge at the poll after its exit, later than its counts)."""
    return settled(
        running,
        {
            "thread_observer_threads_created_total": threads,
            "thread_observer_threads_exited_total": threads,
            "thread_observer_getaddrinfo_calls_total": calls,
            **{f"thread_observer_{name}": value for name, value in gauges.items()},
        },
        15,
        target=target,
    )


def attached(running, target: str, processes: int = 1) -> None:
    wait_until(
        lambda: running.scrape().value("thread_observer_processes", target=target) == processes,
        10,
        f"{processes} process(es) of {target} to be attached",
    )


def run_tree(running, command: list[str], target: str, **gauges: float) -> dict:
    """Starts the tree's root, waits until it is attached, lets it work; returns its truth
    and the settled scrape (with ``gauges`` as settled_totals takes them), once the root has
    been stopped."""
    with workload(command) as root:
        attached(running, target)
        root.go()
        truth = root.truth()
        metrics = settled_totals(running, target, *totals(truth), **gauges)
        return {"truth": truth, "metrics": metrics, "pid": root.pid}


def test_prefork_workers_that_live_milliseconds_are_counted_in_the_target(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"web=python.*-X tag={tag}"], tmp_path) as running:
        # Only the root is left once its workers have ended: processes settles at 1.
        found = run_tree(
            running,
            tagged(tag, "--workers", "3", "--threads", "10", "--lookups", "7"),
            "web",
            processes=1,
        )
        assert totals(found["truth"]) == (30, 21)
        assert found["metrics"].value("thread_observer_processes", target="web") == 1


def test_a_pid_target_covers_the_workers_it_forks(tmp_path):
    with (
        workload([*TREE, "--workers", "3", "--threads", "10", "--lookups", "7"]) as root,
        observer(["--pid", f"master={root.pid}"], tmp_path) as running,
    ):
        root.go()
        truth = root.truth()
        assert totals(truth) == (30, 21)
        settled_totals(running, "master", 30, 21)


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_spawned_children_with_other_command_lines_count_in_the_parents_target(tmp_path, start):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"app=python.*-X tag={tag}"], tmp_path) as running:
        found = run_tree(
            running,
            tagged(tag, "--start", start, "--workers", "2", "--threads", "5", "--lookups", "4"),
            "app",
        )
        truth = found["truth"]
        assert (truth["worker_threads"], truth["worker_getaddrinfo_calls"]) == (10, 8)


def test_workers_spawned_before_their_parent_is_matched_join_its_target(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"early=python.*-X tag={tag}"], tmp_path) as running:
        # No handshake: the workers start while the parent's command line is still unread.
        with workload(
            tagged(
                tag,
                "--start",
                "spawn",
                "--keep-workers",
                "--workers",
                "2",
                "--threads",
                "5",
                "--lookups",
                "4",
            ),
            wait=False,
        ) as root:
            truth = root.truth()
            assert (truth["worker_threads"], truth["worker_getaddrinfo_calls"]) == (10, 8)
            # The pool's threads are alive in the parent; the workers' have ended.
            settled(
                running,
                {
                    "thread_observer_threads_created_total": truth["threads_started"],
                    "thread_observer_threads_exited_total": 10,
                    "thread_observer_getaddrinfo_calls_total": 8,
                    "thread_observer_processes": 4,
                },
                15,
                target="early",
            )


def test_a_recycling_pool_is_exact_and_leaves_the_maps_as_they_were(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"pool=python.*-X tag={tag}"], tmp_path) as running:
        found = run_tree(
            running,
            tagged(tag, "--start", "pool", "--workers", "200", "--threads", "1", "--lookups", "1"),
            "pool",
        )
        assert totals(found["truth"])[1] == 200
        # The whole tree has ended: nothing of it is left in the kernel.
        assert map_entries_after_a_scan(running) == dict.fromkeys(PROCESS_MAPS, 0)


def map_entries_after_a_scan(running) -> dict:
    """Entries of the per-process maps, as counted by a scan after this call (the observer
    counts them once a scan, every second)."""
    time.sleep(2.5)
    metrics = running.scrape()
    return {
        name: metrics.value("thread_observer_bpf_map_entries", map=name) for name in PROCESS_MAPS
    }


def test_a_child_matching_another_target_goes_to_that_target(tmp_path):
    tag = uuid.uuid4().hex[:12]
    # spawn's workers run "PYTHON -c 'from multiprocessing.spawn import spawn_main...'", with
    # a PYTHON of this test's own.
    python = tmp_path / f"python-{tag}"
    python.symlink_to(sys.executable)
    with observer(
        [
            "--target",
            f"parent=python.*-X tag={tag}",
            "--target",
            f"workers=python-{tag} .*spawn_main",
        ],
        tmp_path,
    ) as running:
        with workload(
            tagged(
                tag,
                "--start",
                "spawn",
                "--keep-workers",
                "--workers",
                "2",
                "--threads",
                "5",
                "--lookups",
                "4",
                "--executable",
                str(python),
            )
        ) as root:
            attached(running, "parent")
            root.go()
            truth = root.truth()
            attached(running, "workers", 2)
            metrics = settled_totals(running, "workers", 10, 8)
            # The parent keeps its own threads (the pool's, alive) and its resource tracker.
            assert target_totals(metrics, "parent") == (truth["parent_threads_started"], 0, 0)
            assert metrics.value("thread_observer_processes", target="parent") == 2


def test_no_children_leaves_the_workers_out(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(
        ["--target", f"alone=python.*-X tag={tag}", "--no-children"], tmp_path
    ) as running:
        with workload(tagged(tag, "--start", "spawn", "--workers", "2")) as root:
            attached(running, "alone")
            root.go()
            truth = root.truth()
            assert truth["worker_threads"] == 20
            metrics = settled_totals(running, "alone", truth["parent_threads_started"], 0)
            assert metrics.value("thread_observer_processes", target="alone") == 1


def test_a_fork_bomb_leaves_the_observer_serving_with_exact_totals(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"bomb=python.*-X tag={tag}"], tmp_path) as running:
        found = run_tree(
            running,
            tagged(
                tag, "--workers", "2000", "--concurrency", "200", "--threads", "1", "--lookups", "1"
            ),
            "bomb",
        )
        assert totals(found["truth"]) == (2000, 2000)
        assert map_entries_after_a_scan(running) == dict.fromkeys(PROCESS_MAPS, 0)
        metrics = running.scrape()
        assert metrics.value("thread_observer_children_not_watched_total") == 0
        assert running.get("/healthz")[0].startswith('{"status": "ok"')


# ptrace(2)
PTRACE_CONT, PTRACE_DETACH, PTRACE_GETEVENTMSG = 7, 17, 0x4201
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_O_TRACEFORK, PTRACE_O_TRACEEXIT = 0x2, 0x40
PTRACE_EVENT_FORK, PTRACE_EVENT_EXIT, PTRACE_EVENT_STOP = 1, 6, 128
WALL = 0x40000000  # waitpid's __WALL


def ptrace(request: int, pid: int, data: int = 0) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(request, pid, None, ctypes.c_void_p(data)) == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"ptrace {request:#x} of {pid}: {os.strerror(errno)}")


def hold_forks(parent: int, children: int, at_start, at_exit) -> list[int]:
    """Holds each child the parent's main thread forks (ptrace): stopped before its first
    instruction until ``at_start(pid)`` returns, and at its exit until ``at_exit(pid)``
    returns; lets the parent go on meanwhile. Returns the children once ``children`` of them
    have exited. The parent must have been seized already (``seize_forks``)."""
    started: list[int] = []
    ended = 0
    while ended < children:
        pid, status = os.waitpid(-1, WALL)
        if not os.WIFSTOPPED(status):
            assert pid != parent, f"the parent ended ({status:#x})"
            continue
        event, signal = status >> 16, os.WSTOPSIG(status)
        if pid == parent:
            pass_on = signal if event == 0 else 0  # a signal it is sent, such as SIGCHLD
            ptrace(PTRACE_CONT, parent, pass_on)
        elif pid not in started and event == PTRACE_EVENT_STOP:
            started.append(pid)
            at_start(pid)
            ptrace(PTRACE_CONT, pid)
        elif event == PTRACE_EVENT_EXIT:
            at_exit(pid)
            ptrace(PTRACE_DETACH, pid)
            ended += 1
        else:
            ptrace(PTRACE_CONT, pid, signal if event == 0 else 0)
    release(parent)
    return started


def seize_forks(pid: int) -> None:
    ptrace(PTRACE_SEIZE, pid, PTRACE_O_TRACEFORK | PTRACE_O_TRACEEXIT)


def release(pid: int) -> None:
    """Lets a seized process go, a signal it was stopped with delivered."""
    ptrace(PTRACE_INTERRUPT, pid)
    _, status = os.waitpid(pid, WALL)
    ptrace(PTRACE_DETACH, pid, os.WSTOPSIG(status) if status >> 16 == 0 else 0)


def by_site(metrics, counter: str, target: str) -> dict[str, float]:
    """A by-site counter of a target, sites named by their file's name."""
    name = f"thread_observer_{counter}_by_site_total"
    return {
        os.path.basename(site): value
        for site, value in metrics.nonzero(name, "site", target=target).items()
    }


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_children_seen_before_their_interpreter_dropped_their_parents_threads_get_sites(
    tmp_path, version
):
    # A fork's child holds copies of its parent's thread states until its interpreter drops
    # them: each child here is attached while it is still stopped before its first
    # instruction, with the parent's main thread and 4 more in its thread list.
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} here")
    tag = uuid.uuid4().hex[:12]
    command = tagged(tag, "--parent-threads", "4", "--workers", "3", "--threads", "2")
    # The observer first: the parent is attached at its exec, perhaps before its loader has
    # mapped libpython (pyenv's builds have a shared one).
    with (
        observer(["--target", f"forks=python.*-X tag={tag}"], tmp_path) as running,
        workload([*command, "--lookups", "3"], python=python) as root,
    ):
        attached(running, "forks")
        # Its own threads are named once its frames can be read: after its interpreter is.
        wait_until(lambda: sites_read(running, root.pid), 10, "the parent's sites")

        def at_start(pid: int) -> None:
            wait_until(lambda: f"attached pid {pid} " in running.log(), 10, f"{pid} attached")
            running.scrape()  # served once the poll that attached it has ended

        def at_exit(pid: int) -> None:
            wait_until(lambda: f"pid {pid}: Python" in running.log(), 10, f"{pid}'s sites")
            running.scrape()  # its stacks named while its code objects can still be read

        seize_forks(root.pid)
        root.go()
        children = hold_forks(root.pid, 3, at_start, at_exit)
        truth = root.truth()
        assert totals(truth) == (4 + 3 * 2, 3 * 3)
        metrics = settled_totals(running, "forks", *totals(truth))
        assert by_site(metrics, "threads_created", "forks") == {
            "process_tree.py:waiting_threads": 4,
            "process_tree.py:work": 3 * 2,
        }
        assert by_site(metrics, "getaddrinfo_calls", "forks") == {"process_tree.py:work": 3 * 3}
        log = running.log()
        assert "sites unavailable" not in log, log
        assert all(sites_read(running, child) for child in children), log

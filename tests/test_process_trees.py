"""A target is a process tree: workers forked, spawned or pooled by a watched process are
counted in its target from their first instruction, against the workloads' own ground truth."""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from tests.harness import observer, settled, wait_until, workload

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


def settled_totals(running, target: str, threads: int, calls: int):
    """The scrape once the target shows the tree's totals (children that ended before a poll
    saw them are folded in at the next poll)."""
    return settled(
        running,
        {
            "thread_observer_threads_created_total": threads,
            "thread_observer_threads_exited_total": threads,
            "thread_observer_getaddrinfo_calls_total": calls,
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


def run_tree(running, command: list[str], target: str) -> dict:
    """Starts the tree's root, waits until it is attached, lets it work; returns its truth
    and the settled scrape, once the root has been stopped."""
    with workload(command) as root:
        attached(running, target)
        root.go()
        truth = root.truth()
        metrics = settled_totals(running, target, *totals(truth))
        return {"truth": truth, "metrics": metrics, "pid": root.pid}


def test_prefork_workers_that_live_milliseconds_are_counted_in_the_target(tmp_path):
    tag = uuid.uuid4().hex[:12]
    with observer(["--target", f"web=python.*-X tag={tag}"], tmp_path) as running:
        found = run_tree(
            running, tagged(tag, "--workers", "3", "--threads", "10", "--lookups", "7"), "web"
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

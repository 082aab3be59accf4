"""Observer and target in a PID namespace of their own, as in a sidecar container."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.harness import REPO, TIME_SCALE

pytestmark = pytest.mark.bpf


def in_pid_namespace(*mode: str) -> dict:
    """What tests/in_pid_namespace.py measured inside a new PID namespace."""
    result = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-m",
            "tests.in_pid_namespace",
            *mode,
        ],
        capture_output=True,
        text=True,
        timeout=180 * TIME_SCALE,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is missing")
def test_counts_stay_exact_when_pids_are_those_of_a_namespace():
    found = in_pid_namespace()
    assert found["init_pid"] == 1  # really in a new PID namespace
    for way in ("by_pid", "by_target"):
        measured = found[way]
        truth = measured["truth"]
        assert measured["pid"] < 100, "the target's PID is the namespace's, not the host's"
        assert measured["info_pids"] == [str(measured["pid"])]
        assert measured["created"] == truth["threads_started"]
        assert measured["exited"] == truth["threads_started"]
        assert measured["calls"] == {
            "event_loop": truth["getaddrinfo_on_loop"],
            "other": truth["getaddrinfo_calls"] - truth["getaddrinfo_on_loop"],
        }


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is missing")
def test_a_reused_pid_starts_from_zero():
    found = in_pid_namespace("pid-reuse")["reuse"]
    assert found["pid"] == found["old_pid"], "the new target should have the old one's PID"
    truth, old = found["truth"], found["old_truth"]
    # The named target keeps the old process's final counts (its counters never go down), and
    # the new process under the same PID is counted from zero: nothing of the old one is
    # counted twice or lost.
    assert found["created"] == old["threads_started"] + truth["threads_started"]
    assert found["exited"] == old["threads_started"] + truth["threads_started"]
    assert sum(found["calls"].values()) == old["getaddrinfo_calls"] + truth["getaddrinfo_calls"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is missing")
@pytest.mark.parametrize("hooks", [[], ["--syscall-tracepoints"]], ids=["at-fork", "at-clone-exit"])
def test_forked_workers_count_in_their_parents_target_inside_a_namespace(hooks):
    # A child takes its watch under its id in the namespace at sched_process_fork, or, without
    # the kernel's BTF, at its first return from the clone (a syscall tracepoint).
    found = in_pid_namespace("tree", *hooks)
    assert found["init_pid"] == 1
    for way in ("by_pid", "by_target"):
        measured = found[way]
        truth = measured["truth"]
        assert measured["pid"] < 100, "the parent's PID is the namespace's, not the host's"
        assert (truth["worker_threads"], truth["worker_getaddrinfo_calls"]) == (30, 21)
        assert (measured["created"], measured["exited"]) == (30, 30)
        assert sum(measured["calls"].values()) == 21

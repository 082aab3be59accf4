"""The probes' second ways, exact like the first: per-thread state in a map where the kernel
has no task storage, and getaddrinfo's uprobe and uretprobe where its session cannot be
attached (next to a bcc tool's uprobe on the same function)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests import harness
from tests.harness import bpf_skip_reason, observer, settled, workload
from tests.test_sites import WORKLOAD, expected_calls, expected_threads, site_series, watched_run
from tests.test_sites import settled as sites_settled
from tests.test_unwatched_cost import CALLER, work

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(bpf_skip_reason() is not None, reason=bpf_skip_reason() or ""),
]


def probes_counting(threads: int, calls: int):
    """BpfProbes loaded as they are now (patch what a test changes first), watching a caller
    that makes ``threads`` threads and ``calls`` lookups: (probes, its counts, map entries)."""
    from thread_observer import bpf_backend

    probes = bpf_backend.BpfProbes(
        track_new_processes=False, sites=False, follow_children=False, per_process=True
    )
    with workload(["-c", CALLER]) as caller:
        try:
            probes.load()
            generation = probes.watch(caller.pid, 1)
            bpf_backend.attach_libc_of(probes, caller.pid)
            work(caller, threads, calls)
            counts = probes.read_counts({caller.pid: generation})[caller.pid]
            entries = probes.map_entries()
        finally:
            probes.close()
    return probes, counts, entries


def test_without_task_storage_the_counts_are_exact_and_the_map_empties(monkeypatch):
    from thread_observer import bpf_backend

    monkeypatch.setattr(bpf_backend, "has_task_storage", lambda: False)
    probes, counts, entries = probes_counting(threads=23, calls=37)
    assert sum(counts.calls.values()) == 37
    assert sum(counts.created_by_routine.values()) == 23
    assert counts.threads_exited == 23
    assert sum(counts.duration_slots.values()) == 37
    # The 23 threads that ended took their records with them: the caller's own is left.
    assert entries[bpf_backend.THREAD_STATE_MAP] <= 1


def test_without_kernel_btf_the_dns_probe_is_left_out_and_says_so(monkeypatch, caplog):
    # The DNS probe reads kernel structs at the offsets the kernel's BTF gives: without them it
    # is not loaded (no dns_queries_total rather than zeros), its probes show as never attached,
    # and everything else counts exactly.
    from thread_observer import bpf_backend

    def no_btf():
        raise bpf_backend.BtfError("the kernel's BTF is not readable (no such file)")

    monkeypatch.setattr(bpf_backend, "running_kernel_btf", no_btf)
    probes, counts, entries = probes_counting(threads=5, calls=37)
    assert not probes.dns_queries
    assert "DNS messages not followed" in caplog.text and "BTF" in caplog.text
    for name in bpf_backend.DNS_PROBE_NAMES:
        assert (probes.probes_attached[name], probes.attach_errors[name]) == (0, 1)
    assert not set(bpf_backend.DNS_MAPS) & set(entries)
    assert sum(counts.calls.values()) == 37
    assert sum(counts.created_by_routine.values()) == 5


@pytest.fixture
def bcc_uprobes_on_getaddrinfo():
    """An empty uprobe and uretprobe on libc's getaddrinfo made as bcc's Python tools make
    them (gethostlatency's way), for every process."""
    from thread_observer import bpf_backend, procfs

    bpf = bpf_backend.import_bcc().BPF(text="int empty(void *ctx) { return 0; }")
    pid = os.getpid()
    try:
        for path in procfs.libc_objects(pid, procfs.read_maps(pid)):
            if bpf_backend.symbol_offset(path, "getaddrinfo") is None:
                continue  # glibc's libpthread stub
            for on_return in (False, True):
                if not bpf_backend.attach_uprobe(bpf, path, "getaddrinfo", "empty", on_return):
                    pytest.skip(
                        "a uprobe on getaddrinfo is held with another reference counter offset "
                        "(an observer running beside the tests): bcc's cannot join it"
                    )
        yield
    finally:
        bpf.cleanup()


def test_next_to_a_bcc_tool_on_getaddrinfo_the_counts_stay_exact(
    bcc_uprobes_on_getaddrinfo, tmp_path
):
    with (
        workload(["-c", CALLER]) as caller,
        observer(["--pid", f"app={caller.pid}"], tmp_path) as running,
    ):
        work(caller, 5, 37)
        settled(running, {"thread_observer_getaddrinfo_calls_total": 37}, target="app")
        log = running.log()
    assert "could not attach getaddrinfo_session" in log
    assert "attached getaddrinfo (return)" in log


def test_without_task_storage_the_sites_are_exact(monkeypatch, tmp_path):
    # The whole observer, with the thread states and live threads' stacks in maps.
    wrapper = Path(__file__).with_name("without_task_storage.py")
    monkeypatch.setattr(harness, "OBSERVER_PREFIX", [sys.executable, str(wrapper)])
    with watched_run(WORKLOAD, "sites", tmp_path) as (running, truth):
        metrics = sites_settled(running, "sites", truth)
        threads, calls = site_series(metrics, "sites")
        assert threads == expected_threads(truth)
        assert calls == expected_calls(truth)
        assert "no task storage in this kernel" in running.log()

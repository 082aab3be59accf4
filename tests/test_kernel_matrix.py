"""The kernel matrix: Debian's kernels booted under qemu, each running ``check`` and the kernel
suite (tests/kernel_matrix/suite.py) with this checkout; plus, without root, what the probes
ask of each kernel's tracepoint formats (real format files the guests left behind)."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kernel_matrix.guest import choose_accelerator, qemu_skip_reason
from tests.kernel_matrix.kernels import KERNELS, Archive, fetch
from tests.kernel_matrix.matrix import (
    GUEST_SECONDS,
    README,
    TABLE_END,
    TABLE_START,
    run_kernel,
)
from tests.kernel_matrix.suite import CI_SUITE, KERNEL_SUITE
from thread_observer import bpf_backend
from thread_observer.kernel_btf import BtfError
from thread_observer.tracefs import TRACEPOINT_FIELDS, format_fields, missing_fields

FORMATS = Path(__file__).parent / "data" / "tracepoint_formats"
# Guests booted side by side, a vCPU each: the suite in a guest is mostly one compile or one
# workload at a time, so two guests on two cores take half the time of one after the other.
GUESTS_AT_ONCE = 2
# `make test` runs check (a real compile, load and attach) in every kernel and CI_SUITE in those
# whose ci_suite is set (see kernels.py); the whole kernel suite with
# THREAD_OBSERVER_KERNEL_SUITE=1 (`make kernel-suite`, about 50 minutes here).
WHOLE_SUITE = os.environ.get("THREAD_OBSERVER_KERNEL_SUITE") == "1"


def suite_for(kernel) -> tuple[str, ...]:
    if WHOLE_SUITE:
        return KERNEL_SUITE
    if not kernel.ci_suite:
        return ()
    return tuple(test for test in CI_SUITE if test not in kernel.ci_known_failures)


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Future]:
    """Every kernel's guest, started as the first test asks and run two at a time."""
    reason = qemu_skip_reason()
    if reason:
        pytest.skip(reason)
    archive = Archive()
    archive.update()
    for kernel in KERNELS:  # one download at a time
        fetch(kernel, archive)
    accelerator = choose_accelerator(fetch(KERNELS[0], archive), tmp_path_factory.mktemp("kvm"))
    print(f"kernel matrix under {accelerator.name}")
    with ThreadPoolExecutor(max_workers=GUESTS_AT_ONCE) as pool:
        yield {
            kernel.name: pool.submit(
                run_kernel,
                kernel,
                archive,
                tmp_path_factory.mktemp(kernel.name),
                accelerator,
                1,
                suite_for(kernel),
            )
            for kernel in KERNELS
        }


@pytest.mark.timeout(len(KERNELS) * GUEST_SECONDS // GUESTS_AT_ONCE + 900)
@pytest.mark.parametrize("kernel", KERNELS, ids=[kernel.name for kernel in KERNELS])
def test_check_and_the_kernel_suite_pass_on_the_kernel(kernel, guests):
    report = guests[kernel.name].result()
    assert report.check_status == 0, report.check_output
    assert "OK   probes" in report.check_output, report.check_output
    # With BPF, PERFMON and SYS_PTRACE alone (no SYS_ADMIN) every probe loads and attaches, or
    # check fails saying that this kernel needs CAP_SYS_ADMIN, and why.
    if report.least_privilege_status != 0:
        assert "CAP_SYS_ADMIN" in report.least_privilege_output, report.least_privilege_output
    print(f"{kernel.name}: check with BPF, PERFMON, SYS_PTRACE: {report.least_privilege_output}")
    assert report.failures == {}, "\n\n".join(f"{t}:\n{m}" for t, m in report.failures.items())
    # Every test of the suite ran there: passed, or skipped for a reason of that kernel.
    suite = suite_for(kernel)
    assert len(report.outcomes) == len(suite), report.outcomes
    assert report.passed > 0 or not suite, report.outcomes
    # A test skipped in a guest is skipped for a reason of that kernel, said here.
    for test, reason in report.skips.items():
        print(f"{kernel.name}: {test} skipped: {reason}")


def kernel_formats() -> list[Path]:
    return sorted(path for path in FORMATS.iterdir() if path.is_dir())


def formats_of(folder: Path, drop: str | None = None):
    """tracepoint_fields as a kernel's format files say, without the field ``drop``
    (``system:event.field``)."""

    def fields_of(tracepoint: str):
        path = folder / tracepoint.replace(":", "/")
        if not path.exists():
            return None
        fields = format_fields(path.read_text())
        dropped_tracepoint, _, dropped_field = (drop or "").partition(".")
        return fields - {dropped_field} if dropped_tracepoint == tracepoint else fields

    return fields_of


@pytest.mark.parametrize("folder", kernel_formats(), ids=lambda path: path.name)
def test_every_field_the_probes_read_is_in_each_kernels_formats(folder):
    files = tuple(TRACEPOINT_FIELDS)
    assert missing_fields(files, formats_of(folder)) == {}
    assert all(
        formats_of(folder)(tracepoint)
        for table in TRACEPOINT_FIELDS.values()
        for tracepoint in table
    )


@pytest.mark.parametrize("folder", kernel_formats(), ids=lambda path: path.name)
@pytest.mark.parametrize(
    ("dropped", "files"),
    [
        ("syscalls:sys_enter_sendto.addr", ["dns.bpf.c"]),
        ("syscalls:sys_exit_writev.ret", ["dns.bpf.c"]),
        ("task:task_newtask.clone_flags", ["threads.bpf.c", "timeline.bpf.c"]),
        ("task:task_rename.newcomm", ["timeline.bpf.c"]),
    ],
)
def test_a_field_missing_from_a_kernels_format_leaves_out_exactly_the_files_that_read_it(
    folder, dropped, files
):
    lacking = missing_fields(tuple(TRACEPOINT_FIELDS), formats_of(folder, drop=dropped))
    assert lacking == {file: [dropped] for file in files}


@pytest.mark.parametrize("folder", kernel_formats(), ids=lambda path: path.name)
def test_an_exit_tracepoint_without_group_dead_reads_it_from_the_task(folder):
    """Kernels up to 6.12 have no group_dead at sched_process_exit: the probes then read the
    task's live-thread count at BTF offsets (or, without BTF, take the main thread's end), and
    never name the field bcc would not find."""
    fields = formats_of(folder)("sched:sched_process_exit")
    with_btf = bpf_backend.process_exit_cflags(fields, FakeBtf())
    without_btf = bpf_backend.process_exit_cflags(fields, BtfError("no BTF"))
    if "group_dead" in fields:
        assert with_btf == without_btf == ["-DEXIT_GROUP_DEAD_FIELD=1"]
    else:
        assert with_btf == [
            "-DEXIT_GROUP_DEAD_FIELD=0",
            "-DTASK_STRUCT_SIGNAL=1",
            "-DSIGNAL_STRUCT_LIVE=2",
        ]
        assert without_btf == ["-DEXIT_GROUP_DEAD_FIELD=0"]


def test_the_formats_cover_kernels_with_and_without_group_dead():
    seen = {
        "group_dead" in formats_of(folder)("sched:sched_process_exit")
        for folder in kernel_formats()
    }
    assert seen == {True, False}


def test_readme_has_a_row_for_each_kernel_of_the_matrix():
    text = README.read_text()
    table = text[text.index(TABLE_START) : text.index(TABLE_END)]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    suites = [row.split("|")[2].strip() for row in rows[1:]]
    assert suites == [kernel.suite for kernel in KERNELS]


class FakeBtf:
    """A kernel BTF that places each field the probes ask for at a known offset."""

    OFFSETS = {("task_struct", "signal"): (1, 8), ("signal_struct", "live"): (2, 4)}

    def field(self, struct_name: str, path: str) -> tuple[int, int]:
        return self.OFFSETS[struct_name, path]

"""The kernel suite: the tests that run in every guest of the matrix, one or more per probe
family, each exact against the workload's own truth. Chosen to fit CI's budget under qemu's
emulation, where each observer start compiles the probes anew (see README, *Kernels*); the
whole suite runs on this machine's kernel."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.harness import LEAST_CAPABILITIES, capabilities_prefix
from thread_observer.tracefs import TRACEPOINT_FIELDS

KERNEL_SUITE = (
    # threads and creators, getaddrinfo by caller, failures by EAI_*, host names, latency
    "tests/test_bpf_observer.py::test_exact_counts_of_a_process_given_by_pid[default]",
    # a --target matched at exec, counted from its first instruction
    "tests/test_bpf_observer.py::test_process_started_after_the_observer_is_counted_from_its_start",
    # DNS on the wire, UDP and TCP, at the socket layer (6.10+) and at the syscalls' tracepoints
    "tests/test_dns.py::test_queries_counted_exactly_however_they_are_sent[socket layer-tcp-expected2]",
    "tests/test_dns.py::test_queries_counted_exactly_however_they_are_sent[syscall tracepoints-getaddrinfo-expected3]",
    # every libc resolver function (on pre-6.6 kernels a plain uprobe each)
    "tests/test_dns.py::test_native_resolver_functions_counted_exactly_per_function[glibc]",
    # Python call sites (and executor threads), from frames read in the kernel
    "tests/test_sites.py::test_sites_equal_the_stacks_the_workload_records[debian-3.11]",
    # fork and exec: process trees whose children live milliseconds
    "tests/test_process_trees.py::test_prefork_workers_that_live_milliseconds_are_counted_in_the_target",
    # a PID namespace (the sidecar's)
    "tests/test_pid_namespace.py::test_forked_workers_count_in_their_parents_target_inside_a_namespace[at-fork]",
    # uprobe programs preempted by threads on the same CPU (on kernels that preempt kernel code)
    "tests/test_preemption.py::test_threads_preempting_one_another_on_one_cpu_are_counted_exactly",
)  # fmt: skip
# What `make test` runs in every guest (a minute or two a test under emulation, two guests at a
# time, in CI's budget): threads and creators, getaddrinfo by caller, failures, host names and
# latency; DNS on the wire at the syscalls' tracepoints (every kernel has them); Python call
# sites and executor threads from frames read in the kernel, whose frame walk is the verifier's
# hardest program; the sidecar's shape, a PID namespace; and uprobe programs preempted mid-run.
CI_SUITE = tuple(KERNEL_SUITE[i] for i in (0, 3, 5, 7, 8))
# The tracepoints whose format files a guest leaves behind (tests/data/tracepoint_formats):
# every one whose fields the probes read.
FORMATS = tuple(
    sorted(
        {
            tracepoint.replace(":", "/")
            for table in TRACEPOINT_FIELDS.values()
            for tracepoint in table
        }
        | {"sched/sched_process_exit"}
    )
)


@dataclass
class GuestReport:
    """What one kernel's guest did: ``check``'s verdict and the suite's outcomes."""

    kernel: str
    release: str
    check_status: int | None
    check_output: str
    outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed/failed/...
    failures: dict[str, str] = field(default_factory=dict)  # test id -> its message
    skips: dict[str, str] = field(default_factory=dict)  # test id -> why
    seconds: float = 0.0
    # check again with BPF, PERFMON and SYS_PTRACE alone and no_new_privs (least privilege)
    least_privilege_status: int | None = None
    least_privilege_output: str = ""

    @property
    def passed(self) -> int:
        return sum(outcome == "passed" for outcome in self.outcomes.values())

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for outcome in self.outcomes.values():
            found[outcome] = found.get(outcome, 0) + 1
        return found

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> GuestReport:
        return cls(**json.loads(path.read_text()))


def junit_outcomes(xml: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(outcome, failure message, skip reason) by test id, from pytest's --junitxml."""
    outcomes, failures, skips = {}, {}, {}
    for case in ElementTree.fromstring(xml).iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                failures[test] = (child.get("message", "") + "\n" + (child.text or ""))[-3000:]
            elif child.tag == "skipped":
                outcome = "skipped"
                skips[test] = child.get("message", "")
        outcomes[test] = outcome
    return outcomes, failures, skips


def guest_command(
    checkout: Path,
    python: str,
    results: Path,
    time_scale: float,
    suite: tuple[str, ...] = KERNEL_SUITE,
) -> str:
    """The shell commands a guest runs: ``check``, the tests of ``suite`` (none: check only),
    the format files."""
    tests = " ".join(f"'{test}'" for test in suite)
    pytest = (
        f"'{python}' -m pytest -p no:cacheprovider -o timeout={int(300 * time_scale)} "
        f"--junitxml='{results}/junit.xml' -q -rfEs {tests} > '{results}/pytest.log' 2>&1"
    )
    return "\n".join(
        [
            f"cd '{checkout}'",
            f"export THREAD_OBSERVER_TEST_TIME_SCALE={time_scale}",
            "export XDG_CACHE_HOME=/tmp/cache MPLCONFIGDIR=/tmp/matplotlib PYTHONDONTWRITEBYTECODE=1",
            f"'{python}' -m thread_observer check > '{results}/check.log' 2>&1",
            f"echo $? > '{results}/check_status'",
            f"{' '.join(capabilities_prefix(LEAST_CAPABILITIES, True))} '{python}' -m thread_observer check "
            f"> '{results}/least_privilege.log' 2>&1",
            f"echo $? > '{results}/least_privilege_status'",
            *([pytest] if suite else []),
            formats_command(results),
        ]
    )


def formats_command(results: Path) -> str:
    """Copies the format files of FORMATS into ``results``/formats/SYSTEM/EVENT."""
    return (
        f"for event in {' '.join(FORMATS)}; do mkdir -p '{results}/formats/'${{event%/*}}; "
        f"cp /sys/kernel/tracing/events/$event/format '{results}/formats/'$event; done"
    )


def read_report(kernel: str, release: str, results: Path, seconds: float) -> GuestReport:
    def text(name: str) -> str:
        path = results / name
        return path.read_text(errors="replace") if path.exists() else ""

    def status(name: str) -> int | None:
        found = text(name).strip()
        return int(found) if re.fullmatch(r"\d+", found) else None

    report = GuestReport(kernel, release, status("check_status"), text("check.log"))
    report.least_privilege_status = status("least_privilege_status")
    report.least_privilege_output = text("least_privilege.log")
    if text("junit.xml"):
        report.outcomes, report.failures, report.skips = junit_outcomes(text("junit.xml"))
    report.seconds = seconds
    return report

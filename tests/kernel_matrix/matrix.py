"""One kernel of the matrix, end to end: fetch it, boot it, run the kernel suite, report."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from tests.kernel_matrix.guest import CHECKOUT, TCG, Accelerator, boot
from tests.kernel_matrix.kernels import CACHE, KERNELS, Archive, Kernel, Unpacked, fetch
from tests.kernel_matrix.suite import (
    KERNEL_SUITE,
    GuestReport,
    formats_command,
    guest_command,
    read_report,
)

README = CHECKOUT / "README.md"
FORMATS_DATA = CHECKOUT / "tests" / "data" / "tracepoint_formats"
# Each kernel's last report, for README's table (python -m tests.kernel_matrix --readme).
REPORTS = CACHE / "reports"
# A guest's whole run under emulation, one vCPU: boot, check, the suite (eight observer starts,
# each compiling the probes: about 2.5 minutes a test).
GUEST_SECONDS = 2400
TABLE_START = "<!-- kernel matrix: start (python -m tests.kernel_matrix --readme) -->"
TABLE_END = "<!-- kernel matrix: end -->"


def run_kernel(
    kernel: Kernel,
    archive: Archive,
    results: Path,
    accelerator: Accelerator,
    cpus: int = 2,
    suite: tuple[str, ...] = KERNEL_SUITE,
) -> GuestReport:
    """Boots ``kernel`` with this checkout and its virtual environment, runs ``check`` and
    the tests of ``suite`` in it, and reads what it left in ``results``."""
    unpacked = fetch(kernel, archive)
    command = guest_command(CHECKOUT, sys.executable, results, accelerator.time_scale, suite)
    booted = boot(unpacked, command, results, GUEST_SECONDS, accelerator, cpus=cpus)
    report = read_report(kernel.name, unpacked.release, results, booted.seconds)
    if booted.exit_status is None:
        report.failures["guest"] = "the guest did not finish:\n" + booted.console[-3000:]
    report.save(REPORTS / f"{kernel.name}.json")
    return report


def keep_formats(unpacked: Unpacked) -> Path:
    """Boots the kernel only to copy its tracepoint formats into tests/data, where the
    table tests read them without root; returns that folder."""
    kept = FORMATS_DATA / unpacked.release
    with tempfile.TemporaryDirectory(prefix="formats-", dir="/var/tmp") as folder:
        results = Path(folder) / "guest"
        booted = boot(unpacked, formats_command(results), results, 300, TCG)
        if booted.exit_status != 0:
            raise RuntimeError(f"{unpacked.release}: no formats:\n{booted.console[-2000:]}")
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(results / "formats", kept)
    return kept


def readme_table(reports: list[GuestReport]) -> str:
    """README's table: each kernel, what runs it, and what the suite found there (the tests
    a kernel skipped named, with the first words of their reason)."""
    by_name = {kernel.name: kernel for kernel in KERNELS}
    lines = [
        "| kernel | Debian suite | runs in | `check` | `check`, least privilege | kernel suite "
        "| minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        kernel = by_name[report.kernel]
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.counts().items()))
        skipped = "; ".join(
            f"skipped `{test.split('::')[-1].split('[')[-1].rstrip(']')}`: {reason.split(':')[0]}"
            for test, reason in report.skips.items()
        )
        verdict = "OK" if report.check_status == 0 else f"exit {report.check_status}"
        least = least_privilege_verdict(report)
        lines.append(
            f"| {report.release} | {kernel.suite} | {kernel.distribution} | {verdict} | {least} | "
            f"{counts + ' of ' + str(len(report.outcomes)) if counts else 'not run (check only)'}"
            f"{'; ' + skipped if skipped else ''}"
            f" | {report.seconds / 60:.0f} |"
        )
    return "\n".join(lines)


def least_privilege_verdict(report: GuestReport) -> str:
    """What check said with BPF, PERFMON and SYS_PTRACE alone, in a few words."""
    if report.least_privilege_status is None:
        return "not run"
    if report.least_privilege_status == 0:
        return "OK"
    paranoid = re.search(r"perf_event_paranoid is (\d+)", report.least_privilege_output)
    if paranoid:
        return f"needs `SYS_ADMIN` (perf_event_paranoid {paranoid[1]})"
    return f"exit {report.least_privilege_status}"


def replace_table(text: str, table: str) -> str:
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    return text[: start + len(TABLE_START)] + "\n" + table + "\n" + text[end:]

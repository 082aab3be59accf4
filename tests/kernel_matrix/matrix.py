"""One kernel of the matrix, end to end: fetch it, boot it, run the kernel suite, report."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.kernel_matrix.guest import Accelerator, boot
from tests.kernel_matrix.kernels import KERNELS, Archive, Kernel, fetch
from tests.kernel_matrix.suite import KERNEL_SUITE, GuestReport, guest_command, read_report

CHECKOUT = Path(__file__).resolve().parent.parent.parent
README = CHECKOUT / "README.md"
# A guest's whole run under emulation, one vCPU: boot, check, the suite (eight observer starts,
# each compiling the probes: about 2.5 minutes a test).
GUEST_SECONDS = 2400
TABLE_START = "<!-- kernel matrix: start (python -m tests.kernel_matrix --readme) -->"
TABLE_END = "<!-- kernel matrix: end -->"


def run_kernel(
    kernel: Kernel, archive: Archive, results: Path, accelerator: Accelerator, cpus: int = 2
) -> GuestReport:
    """Boots ``kernel`` with this checkout and its virtual environment, runs ``check`` and the
    kernel suite in it, and reads what it left in ``results``."""
    unpacked = fetch(kernel, archive)
    command = guest_command(CHECKOUT, sys.executable, results, accelerator.time_scale)
    booted = boot(unpacked, command, results, GUEST_SECONDS, accelerator, cpus=cpus)
    report = read_report(kernel.name, unpacked.release, results, booted.seconds)
    if booted.exit_status is None:
        report.failures["guest"] = "the guest did not finish:\n" + booted.console[-3000:]
    return report


def readme_table(reports: list[GuestReport]) -> str:
    """README's table: each kernel, what runs it, and what the suite found there."""
    by_name = {kernel.name: kernel for kernel in KERNELS}
    lines = [
        "| kernel | Debian suite | runs in | `check` | kernel suite |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        kernel = by_name[report.kernel]
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.counts().items()))
        verdict = "OK" if report.check_status == 0 else f"exit {report.check_status}"
        lines.append(
            f"| {report.release} | {kernel.suite} | {kernel.distribution} | {verdict} | "
            f"{counts or 'did not run'} of {len(KERNEL_SUITE)} |"
        )
    return "\n".join(lines)


def replace_table(text: str, table: str) -> str:
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    return text[: start + len(TABLE_START)] + "\n" + table + "\n" + text[end:]

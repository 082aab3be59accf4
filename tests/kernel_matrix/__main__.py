"""Runs the kernel matrix by hand, keeps each kernel's tracepoint formats, and writes the
README's table of kernels tested.

python -m tests.kernel_matrix                   # every kernel, a line each
python -m tests.kernel_matrix --kernel 6.1      # one
python -m tests.kernel_matrix --readme          # README.md's table from the last run's reports
python -m tests.kernel_matrix --formats         # each kernel's formats into tests/data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.kernel_matrix.guest import choose_accelerator
from tests.kernel_matrix.kernels import KERNELS, Archive, by_name, fetch
from tests.kernel_matrix.matrix import (
    README,
    REPORTS,
    keep_formats,
    readme_table,
    replace_table,
    run_kernel,
)
from tests.kernel_matrix.suite import GuestReport


def run(kernels: list, archive: Archive) -> bool:
    with tempfile.TemporaryDirectory(prefix="kernel-matrix-", dir="/var/tmp") as folder:
        accelerator = choose_accelerator(fetch(kernels[0], archive), Path(folder) / "kvm")
        print(f"qemu accelerator: {accelerator.name}", flush=True)
        passed = True
        for kernel in kernels:
            report = run_kernel(kernel, archive, Path(folder) / kernel.name, accelerator)
            passed &= report.check_status == 0 and not report.failures
            print(
                f"{kernel.name:6} {report.release:24} check {report.check_status} "
                f"{report.counts()} in {report.seconds:.0f} s",
                flush=True,
            )
            for test, message in report.failures.items():
                print(f"  {test}: {message.splitlines()[0] if message else ''}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kernel_matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kernel", action="append", help="a kernel's name (repeatable)")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's table")
    parser.add_argument("--formats", action="store_true", help="keep each kernel's formats")
    args = parser.parse_args(argv)
    kernels = by_name(args.kernel) if args.kernel else list(KERNELS)
    if args.readme:
        reports = [GuestReport.load(REPORTS / f"{kernel.name}.json") for kernel in kernels]
        README.write_text(replace_table(README.read_text(), readme_table(reports)))
        return 0
    archive = Archive()
    archive.update()
    if args.formats:
        for kernel in kernels:
            print(f"{kernel.name}: {keep_formats(fetch(kernel, archive))}", flush=True)
        return 0
    return 0 if run(kernels, archive) else 1


if __name__ == "__main__":
    sys.exit(main())

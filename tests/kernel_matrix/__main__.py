"""Runs the kernel matrix by hand and writes the README's table of kernels tested.

python -m tests.kernel_matrix                   # every kernel, a line each
python -m tests.kernel_matrix --kernel 6.1      # one
python -m tests.kernel_matrix --readme          # and rewrite README.md's table
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.kernel_matrix.guest import choose_accelerator
from tests.kernel_matrix.kernels import KERNELS, Archive, by_name, fetch
from tests.kernel_matrix.matrix import README, readme_table, replace_table, run_kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kernel_matrix", description=__doc__)
    parser.add_argument("--kernel", action="append", help="a kernel's name (repeatable)")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's table")
    args = parser.parse_args(argv)
    kernels = by_name(args.kernel) if args.kernel else list(KERNELS)
    archive = Archive()
    archive.update()
    reports = []
    with tempfile.TemporaryDirectory(prefix="kernel-matrix-") as folder:
        accelerator = choose_accelerator(fetch(kernels[0], archive), Path(folder) / "kvm")
        print(f"qemu accelerator: {accelerator.name}", flush=True)
        for kernel in kernels:
            report = run_kernel(kernel, archive, Path(folder) / kernel.name, accelerator)
            reports.append(report)
            print(
                f"{kernel.name:6} {report.release:24} check {report.check_status} "
                f"{report.counts()} in {report.seconds:.0f} s",
                flush=True,
            )
            for test, message in report.failures.items():
                print(f"  {test}: {message.splitlines()[0] if message else ''}")
    if args.readme:
        README.write_text(replace_table(README.read_text(), readme_table(reports)))
    return 0 if all(r.check_status == 0 and not r.failures for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())

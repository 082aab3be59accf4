"""``python -m benchmarks``: every measurement in one run, written to BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    accuracy,
    bpf_time,
    dns_syscalls,
    floor,
    overhead,
    rest,
    scale,
    site_time,
    soak,
    startup,
    storm,
    unwatched,
)
from benchmarks.children import REPO, Children
from benchmarks.environment import cpu_times, describe, load_average
from benchmarks.report import Section, render
from benchmarks.settings import FULL, QUICK, Settings

EPILOG = """examples:
  python -m benchmarks                  # the full run (about 12 minutes), writes BENCHMARKS.md
  python -m benchmarks --quick          # the same measurements, shorter (about 3 minutes)
  python -m benchmarks --quick --only storm --output /tmp/storm.md
"""

SECTIONS: dict[str, Callable[[Children, Settings], Section]] = {
    "overhead": overhead.measure,
    "storm": storm.measure,
    "accuracy": accuracy.measure,
    "scale": scale.measure,
    "startup": startup.measure,
    "dns_syscalls": dns_syscalls.measure,
    "unwatched": unwatched.measure,
    "bpf_time": bpf_time.measure,
    "site_time": site_time.measure,
    "floor": floor.measure,
    "rest": rest.measure,
}
TOOLS = ("bpftool", "gcc", "gethostlatency-bpfcc", "threadsnoop-bpfcc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure what thread-observer costs, how exact it is and how far it "
        "scales, side by side in one run, and write BENCHMARKS.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a shorter run (about 3 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SECTIONS),
        default=[],
        help="run only this section (repeatable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "BENCHMARKS.md",
        help="where to write the report (default %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = missing_prerequisite()
    if problem:
        print(f"benchmarks: {problem}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so every child is ended on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = QUICK if args.quick else FULL
    names = args.only or list(SECTIONS)
    started, before, load_before = time.monotonic(), cpu_times(), load_average()
    with Children() as children:
        sections = [run_section(name, children, settings) for name in names]
    elapsed = time.monotonic() - started
    preamble = _preamble(settings, elapsed, before, load_before)
    report = render("Benchmarks", preamble, sections)
    args.output.write_text(report + kept_soak_section(args.output))
    print(f"benchmarks: wrote {args.output} after {elapsed:.0f} s", file=sys.stderr)
    return 1 if any(s.title.endswith("(failed)") for s in sections) else 0


def kept_soak_section(path: Path) -> str:
    """The soak run's section (``python -m benchmarks.soak``), which this run does not redo."""
    try:
        found = re.search(
            re.escape(soak.BEGIN) + ".*?" + re.escape(soak.END), path.read_text(), flags=re.S
        )
    except OSError:
        return ""
    return f"\n{found[0]}\n" if found else ""


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the observer's eBPF probes, bpftool and the bcc tools)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not found (make setup installs bpftool, gcc and bpfcc-tools)"
    return None


def run_section(name: str, children: Children, settings: Settings) -> Section:
    """One section; a failure is reported in its place and the other sections still run."""
    print(f"benchmarks: {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        section = SECTIONS[name](children, settings)
    except Exception as err:
        traceback.print_exc()
        section = Section(f"{name} (failed)")
        section.text(f"This section failed: `{type(err).__name__}: {err}`")
    finally:
        children.close()  # whatever the section left running ends here
    section.lines.append(f"_Section time: {time.monotonic() - started:.0f} s._")
    print(
        f"benchmarks: {name} done in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return section


def _preamble(settings: Settings, elapsed: float, before, load_before: str) -> list[str]:
    after = cpu_times()
    total = max(after.total - before.total, 1)
    lines = [
        f"Written by `python -m benchmarks{' --quick' if settings.name == 'quick' else ''}` "
        f"(`make bench`): the {settings.name} run, every figure below measured in this one "
        f"run of {elapsed / 60:.1f} minutes, side by side.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in describe()],
        f"| load average (1/5/15 min) | {load_before} before, {load_average()} after |",
        f"| machine CPU busy during the run | {100 * (after.busy - before.busy) / total:.0f} % "
        f"(steal {100 * (after.steal - before.steal) / total:.1f} %) |",
        "",
        "The machine is shared and noisy (other work runs beside the benchmarks), so "
        "comparisons alternate sides (A/B, B/A) and report medians and ratios of paired runs; "
        "counts are compared exactly.",
    ]
    return lines

"""Where a /metrics scrape's time goes: an observer built the way the CLI builds it, in this
process, its scrape path timed piece by piece next to cheaper ways to read the same data.

usage: python -m benchmarks.scrape_anatomy --target NAME=REGEX --processes N

Prints one JSON object of milliseconds per scrape (null for a piece this version of the
observer does not have). Run as a child of the scale benchmark, with its processes running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

REPEAT = 20


def per_call_ms(function, repeat: int = REPEAT) -> float | None:
    try:
        function()  # warm, and find out whether this observer has the piece at all
        started = time.perf_counter()
        for _ in range(repeat):
            function()
    except (AttributeError, ImportError, TypeError, KeyError):
        return None
    return (time.perf_counter() - started) / repeat * 1000


def threads_from_stat(pid: int) -> int:
    """Field 20 of /proc/PID/stat: one short line, where /proc/PID/status formats ~60."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rpartition(b")")[2].split()[17])


def anatomy(observer) -> dict[str, float | None]:
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from thread_observer import bpf_backend, observers
    from thread_observer.collector import ObserverCollector
    from thread_observer.text_format import write_text

    collector = ObserverCollector(observer.snapshot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    snapshot = observer.snapshot()
    on_snapshot = ObserverCollector(lambda: snapshot)
    # The bcc tables behind the probes: private to the observer, read here only to time them.
    tables = observer.probes._bpf
    counters = [*bpf_backend.COUNTER_MAPS, *bpf_backend.HOST_COUNTER_MAPS]
    pids = list(observer.procs)
    return {
        "scrape": per_call_ms(lambda: write_text([collector])),
        "scrape_client_python": per_call_ms(lambda: generate_latest(registry)),
        "snapshot": per_call_ms(observer.snapshot),
        "series_text": per_call_ms(lambda: write_text([on_snapshot])),
        "counter_maps_items": per_call_ms(lambda: [list(tables[n].items()) for n in counters]),
        "counter_maps_batch": per_call_ms(
            lambda: [observer.probes._reader(n).raw() for n in counters]
        ),
        "map_entries": per_call_ms(observer.probes.map_entries),
        "threads_status": per_call_ms(lambda: [observers.live_threads(pid) for pid in pids]),
        "threads_stat": per_call_ms(lambda: [threads_from_stat(pid) for pid in pids]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scrape_anatomy")
    parser.add_argument("--target", required=True, metavar="NAME=REGEX")
    parser.add_argument("--processes", type=int, required=True)
    args = parser.parse_args(argv)

    from thread_observer.cli import build_parser
    from thread_observer.startup import make_observer

    observer = make_observer(
        build_parser().parse_args(["run", "--target", args.target, "--log-level", "warning"])
    )
    try:
        if len(observer.procs) < args.processes:
            raise SystemExit(f"attached {len(observer.procs)} of {args.processes} processes")
        observer.poll()
        print(json.dumps(anatomy(observer)), flush=True)
    finally:
        observer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak: the observer for a long while next to targets that come and go, to show that its
memory and its BPF maps stay flat and that nothing is lost over time.

    python -m benchmarks.soak --minutes 10

A long-lived target makes threads and getaddrinfo calls all along and counts them itself; every
second a short-lived target starts (a new PID, a new process to attach, then to forget). Every
30 seconds the observer's RSS and map entries are sampled. The section it writes goes into
BENCHMARKS.md between the soak markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from workloads.servers import free_port

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- soak -->", "<!-- /soak -->"
TAG = "soak-target"

# Threads and lookups at a steady pace until a line on stdin, then the counts as JSON; it
# lives on (to be scraped) until stdin closes.
LONG_LIVED = (
    "# "
    + TAG
    + """
import json, socket, sys, threading, time, select
threads = calls = 0
while not select.select([sys.stdin], [], [], 0.02)[0]:
    t = threading.Thread(target=lambda: None); t.start(); t.join(); threads += 1
    socket.getaddrinfo("localhost", 80); calls += 1
sys.stdin.readline()
print(json.dumps({"threads": threads, "calls": calls}), flush=True)
sys.stdin.read()
"""
)
SHORT_LIVED = (
    "# "
    + TAG
    + """
import socket, threading, time
for _ in range(3):
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    socket.getaddrinfo("localhost", 80)
time.sleep(1.5)
"""
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    result = soak(args.minutes * 60, args.sample_seconds)
    write_section(args.output, render(result))
    print(render(result))
    return 0 if result["exact"] else 1


def soak(seconds: float, sample_every: float) -> dict:
    port = free_port()
    with tempfile.TemporaryFile() as log:
        observer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thread_observer",
                "run",
                "--listen",
                f"127.0.0.1:{port}",
                "--label-pid",
                "--target",
                f"soak=-c # {TAG}",
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            wait_for(url)
            return drive(observer.pid, url, seconds, sample_every)
        finally:
            observer.terminate()
            observer.wait(timeout=10)


def drive(observer_pid: int, url: str, seconds: float, sample_every: float) -> dict:
    long_lived = subprocess.Popen(
        [sys.executable, "-c", LONG_LIVED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    samples, short_lived = [], []
    started = time.monotonic()
    next_sample = started
    try:
        while time.monotonic() - started < seconds:
            short_lived.append(subprocess.Popen([sys.executable, "-c", SHORT_LIVED]))
            short_lived = [p for p in short_lived if p.poll() is None]
            if time.monotonic() >= next_sample:
                samples.append(sample(observer_pid, url, time.monotonic() - started))
                next_sample += sample_every
            time.sleep(1.0)
        for process in short_lived:
            process.wait()
        long_lived.stdin.write("stop\n")
        long_lived.stdin.flush()
        truth = json.loads(long_lived.stdout.readline())
        time.sleep(2.0)  # the last short-lived ones are dropped, the last exits counted
        samples.append(sample(observer_pid, url, time.monotonic() - started))
        final = scrape(url, long_lived.pid)
        long_lived.stdin.close()
    finally:
        for process in [long_lived, *short_lived]:
            if process.poll() is None:
                process.kill()
            process.wait()
    return {**summarize(samples, truth, final, seconds), "sample_every": sample_every}


def summarize(samples: list[dict], truth: dict, metrics: dict, seconds: float) -> dict:
    # Read once the long-lived target had stopped working, while it still lived.
    return {
        "seconds": seconds,
        "samples": samples,
        "truth": truth,
        "created": metrics.get("created", 0),
        "calls": metrics.get("calls", 0),
        "exact": (metrics.get("created"), metrics.get("calls"))
        == (truth["threads"], truth["calls"]),
    }


def sample(observer_pid: int, url: str, elapsed: float) -> dict:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    entries = {
        s.labels["map"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "thread_observer_bpf_map_entries"
    }
    return {
        "elapsed": round(elapsed),
        "rss_kib": rss_kib(observer_pid, "VmRSS"),
        "anon_kib": rss_kib(observer_pid, "RssAnon"),
        "map_entries": int(sum(entries.values())),
        "watched": int(entries["watched_tgids"]),
    }


def scrape(url: str, pid: int) -> dict:
    """The long-lived target's own counters (its pid label)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("pid") != str(pid):
                continue
            if s.name == "thread_observer_threads_created_total":
                values["created"] = values.get("created", 0) + s.value
            elif s.name == "thread_observer_getaddrinfo_calls_total":
                values["calls"] = values.get("calls", 0) + s.value
    return values


def rss_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(field + r":\s+(\d+)", status)[1])


def render(result: dict) -> str:
    samples = result["samples"]
    rss = [s["rss_kib"] for s in samples]
    lines = [
        BEGIN,
        f"## Soak: {result['seconds'] / 60:g} minutes",
        "",
        "One long-lived target making a thread and a getaddrinfo call every 20 ms, and a new "
        "short-lived target every second (3 threads, 3 calls, 1.5 s of life), all under one "
        f"`--target`. Sampled every {result['sample_every']:g} s.",
        "",
        "| elapsed (s) | observer RSS (MiB) | of which anonymous (MiB) | BPF map entries "
        "| watched processes |",
        "|---|---|---|---|---|",
        *(
            f"| {s['elapsed']} | {s['rss_kib'] / 1024:.1f} | {s['anon_kib'] / 1024:.1f} | "
            f"{s['map_entries']} | {s['watched']} |"
            for s in samples
        ),
        "",
        f"RSS from the second sample to the last: {rss[1] / 1024:.1f} -> {rss[-1] / 1024:.1f} MiB "
        f"({(rss[-1] - rss[1]) / max(rss[1], 1):+.1%}), between {min(rss[1:]) / 1024:.1f} and "
        f"{max(rss[1:]) / 1024:.1f} MiB; most of it is libbcc's LLVM, mapped from its file. "
        f"Map entries follow the live targets (the long-lived one and the short-lived ones of "
        f"the moment), with no growth. The long-lived target made "
        f"{result['truth']['threads']} threads and "
        f"{result['truth']['calls']} calls; its series read {result['created']:.0f} threads "
        f"and {result['calls']:.0f} calls ({'exact' if result['exact'] else 'NOT exact'}).",
        END,
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text:
        text = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S
        )
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the observer did not answer at {url}")


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())

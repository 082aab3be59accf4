"""``thread-observer demo``: the seed scenarios next to the observer, side by side.

Each scenario runs as a child that waits until the observer has attached to it, then does its
work and reports its own ground truth; the table puts what the observer saw from outside next
to what the scenario counted from inside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from thread_observer.arguments import add_log_level_argument
from thread_observer.errors import UsageError, require_rich
from thread_observer.histogram import log2_to_buckets, quantile
from thread_observer.model import Counts
from thread_observer.options import ObserverOptions

EPILOG = """examples:
  thread-observer demo                          # every scenario, as a table
  thread-observer demo --scenario semaphore_burst --scenario semaphore_burst_uvloop
  thread-observer demo --python /root/.pyenv/versions/3.6.15/bin/python3   # executor cap 3.6
  thread-observer demo --json                   # one JSON object per scenario
  thread-observer demo --keep                   # then keep serving /metrics
"""
SETTLE_SECONDS = 10.0
LINGER_SECONDS = "600"  # the child stays alive (and scrapable) until the demo closes it


@dataclass
class Row:
    scenario: str
    python: str
    python_threads_peak: int
    native_threads_created: dict[str, int]
    threads_created: int
    threads_truth: int  # Python threads started, and libuv's pool when the workload used it
    getaddrinfo_calls: int
    getaddrinfo_truth: int
    event_loop_calls: int
    event_loop_truth: int
    p50_seconds: float | None
    p99_seconds: float | None
    teaches: str
    dns_queries: int = 0
    dns_truth: int | None = None  # what a private responder received, when there is one

    @property
    def exact(self) -> bool:
        return (
            self.threads_created == self.threads_truth
            and self.getaddrinfo_calls == self.getaddrinfo_truth
            and self.event_loop_calls == self.event_loop_truth
            and self.dns_truth in (None, self.dns_queries)
        )


def add_parser(subparsers, parents) -> None:
    """The ``demo`` subcommand. Not the shared parents: the table is the output, so logs
    default to warnings here (a parent parser's actions are shared, and so are their
    defaults)."""
    from workloads.scenarios import SCENARIOS

    demo = subparsers.add_parser(
        "demo",
        help="run the sample workloads next to the observer, as a table",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help="run only these (repeatable; default all): " + ", ".join(SCENARIOS),
    )
    demo.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="run the scenarios under this interpreter (default this one)",
    )
    demo.add_argument("--json", action="store_true", help="one JSON object per scenario")
    demo.add_argument(
        "--keep", action="store_true", help="keep the observer serving afterwards and print its URL"
    )
    demo.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the observer serves meanwhile (default a free port)",
    )
    add_log_level_argument(demo, "warning")
    demo.set_defaults(func=run)


@dataclass(frozen=True)
class DemoChoices:
    """The demo's own options, besides the observer's: which scenarios, under which
    interpreter, and how to show them."""

    scenarios: tuple[str, ...]  # empty for every one
    python: str
    as_json: bool
    keep: bool

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> DemoChoices:
        return cls(tuple(args.scenario or ()), args.python, args.json, args.keep)


def run(args: argparse.Namespace) -> int:
    """The demo needs eBPF: without it, what to fix instead of a table of zeros."""
    from thread_observer.bpf_backend import BpfUnavailable
    from thread_observer.capabilities import bpf_problem
    from thread_observer.observers import BpfObserver
    from thread_observer.startup import started

    require_rich("demo")
    options = ObserverOptions.from_arguments(args)
    choices = DemoChoices.from_arguments(args)
    problem = bpf_problem()
    if problem is None:
        try:
            return asyncio.run(run_demo(options, choices, started(BpfObserver([], []))))
        except BpfUnavailable as err:
            problem = str(err)
    raise UsageError(
        f"the demo needs eBPF, which cannot work here: {problem}. "
        "Run 'thread-observer check' to see what to fix ('make setup' installs "
        "what is missing; run as root)"
    )


async def run_demo(options: ObserverOptions, choices: DemoChoices, observer) -> int:
    from thread_observer.server import start_serving, until_signalled

    host, port = options.address
    runner, urls = await start_serving(
        observer, host, port, label_pid=options.label_pid, interval=options.interval
    )
    try:
        loop = asyncio.get_running_loop()
        rows, skipped = await loop.run_in_executor(
            None, run_scenarios, observer, choices.scenarios, choices.python
        )
        show(rows, skipped, choices.as_json)
        if choices.keep:
            print(f"observer serving at {' '.join(urls)} (Ctrl-C to stop)", file=sys.stderr)
            await until_signalled()
    finally:
        await runner.cleanup()  # which closes the observer too
    return 0 if all(row.exact for row in rows) else 1


def run_scenarios(observer, scenarios, python: str) -> tuple[list[Row], dict[str, str]]:
    from workloads.scenarios import SCENARIOS
    from workloads.servers import local_servers

    names = list(scenarios) or list(SCENARIOS)
    version, missing = interpreter_facts(python, SCENARIOS, names)
    skipped = {
        name: why for name in names if (why := why_skipped(SCENARIOS[name], version, missing))
    }
    wanted = [name for name in names if name not in skipped]
    needs_redis = any(SCENARIOS[name].server in ("redis_unix", "redis_tcp") for name in wanted)
    rows = []
    with local_servers(http=True, redis=needs_redis) as servers:
        for name in wanted:
            rows.append(run_one(observer, SCENARIOS[name], python, servers))
    return rows, skipped


def interpreter_facts(python: str, scenarios, names) -> tuple[tuple[int, int], set[str]]:
    """The interpreter's version, and which of the modules the scenarios need it lacks."""
    modules = sorted({m for name in names for m in scenarios[name].requires})
    probe = (
        "import importlib.util, json, sys; print(json.dumps([list(sys.version_info[:2]), "
        f"[m for m in {modules!r} if importlib.util.find_spec(m) is None]]))"
    )
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    version, missing = json.loads(found.stdout)
    return tuple(version), set(missing)


def why_skipped(scenario, version: tuple[int, int], missing: set[str]) -> str | None:
    if not scenario.runs_on(version):
        return f"needs {scenario.pythons}"
    lacking = [m for m in scenario.requires if m in missing]
    if lacking:
        return f"{', '.join(lacking)} not installed for this interpreter"
    return None


def run_one(observer, scenario, python: str, servers, extra_args=()) -> Row:
    from workloads.scenarios import start_scenario

    arguments = [*extra_args, "--linger", LINGER_SECONDS]
    with start_scenario(scenario.name, python, servers, arguments) as child:
        observer.watch_pid(child.pid, scenario.name)
        try:
            child.go()
            truth = child.truth()
            received = dns_received(child.dns)
            counts = settled_counts(observer, scenario.name, truth, received)
            dns_truth = received() if received else None
        finally:
            observer.unwatch_pid(child.pid)
    return make_row(scenario, truth, counts, dns_truth)


def dns_received(responder):
    """A function giving the queries a scenario's private responder received, or None."""
    if responder is None:
        return None
    return lambda: sum(responder.received().values())


def settled_counts(observer, target: str, truth: dict, dns_received=None) -> Counts:
    """The target's counts once they have caught up with the ground truth (threads may still
    be ending when the truth is printed), or as they are after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        counts = target_counts(observer.snapshot(), target)
        calls = sum(counts.getaddrinfo_calls.values())
        threads = sum(counts.threads_created.values())
        caught_up = calls == truth["getaddrinfo_calls"] and threads == threads_truth(truth)
        if dns_received is not None:
            caught_up = caught_up and sum(counts.dns_queries.values()) == dns_received()
        if caught_up or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def threads_truth(truth: dict) -> int:
    """The threads a workload knows it started: every ``Thread.start`` (executor workers
    included, however many the pool's timing made it start), libuv's native pool, whole
    from its first job, and c-ares's event threads (one per channel)."""
    native = truth.get("libuv_threads", 0) + truth.get("c_ares_threads", 0)
    return truth["threads_started"] + native


def target_counts(snapshot, target: str) -> Counts:
    """Its processes' counts, and those of its processes that ended (workers)."""
    total = Counts()
    for row in snapshot.rows:
        if row.target == target and row.counts is not None:
            total.add(row.counts)
    for (name, *_), counts in snapshot.retired.items():
        if name == target:
            total.add(counts)
    return total


def make_row(scenario, truth: dict, counts: Counts, dns_truth: int | None = None) -> Row:
    buckets = log2_to_buckets(counts.duration_slots)
    return Row(
        scenario=scenario.name,
        python=truth["python"],
        python_threads_peak=truth["python_threads_peak"],
        native_threads_created=dict(sorted(counts.threads_created.items())),
        threads_created=sum(counts.threads_created.values()),
        threads_truth=threads_truth(truth),
        getaddrinfo_calls=sum(counts.getaddrinfo_calls.values()),
        getaddrinfo_truth=truth["getaddrinfo_calls"],
        event_loop_calls=counts.getaddrinfo_calls.get("event_loop", 0),
        event_loop_truth=truth["getaddrinfo_on_loop"],
        p50_seconds=quantile(0.5, buckets),
        p99_seconds=quantile(0.99, buckets),
        teaches=scenario.teaches,
        dns_queries=sum(counts.dns_queries.values()),
        dns_truth=dns_truth,
    )


def show(rows: list[Row], skipped: dict[str, str], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps({**asdict(row), "exact": row.exact}), flush=True)
        for name, why in skipped.items():
            print(json.dumps({"scenario": name, "skipped": why}), flush=True)
        return
    from rich.console import Console  # rich draws the table; the daemon does without it

    console = Console(width=max(Console().width, 170))
    console.print(table(rows))
    for row in rows:
        console.print(f"  {row.scenario}: {row.teaches}")
    for name, why in skipped.items():
        console.print(f"  skipped {name}: {why}")


def table(rows: list[Row]):
    """The rows as a rich Table."""
    from rich.table import Table

    python = ", ".join(sorted({row.python for row in rows}))
    result = Table(title=f"thread-observer demo (Python {python})", show_lines=False)
    for column, justify in [
        ("scenario", "left"),
        ("Python-visible threads (peak)", "right"),
        ("native threads created, by creator", "left"),
        ("threads created (observer / truth)", "right"),
        ("getaddrinfo calls (observer / truth)", "right"),
        ("on the event loop (observer / truth)", "right"),
        ("p50 / p99 latency", "right"),
        ("DNS queries on the wire (observer / responder)", "right"),
    ]:
        # Headers may wrap; values may not (a library name cut in two reads as two).
        result.add_column(
            column, justify=justify, no_wrap=column.startswith(("native", "scenario")), max_width=44
        )
    for row in rows:
        result.add_row(
            row.scenario,
            str(row.python_threads_peak),
            creators_text(row.native_threads_created),
            versus(row.threads_created, row.threads_truth),
            versus(row.getaddrinfo_calls, row.getaddrinfo_truth),
            versus(row.event_loop_calls, row.event_loop_truth),
            latency_text(row.p50_seconds, row.p99_seconds),
            dns_text(row.dns_queries, row.dns_truth),
        )
    return result


def versus(observed: int, truth: int) -> str:
    return f"{observed} / {truth}" + ("" if observed == truth else "  MISMATCH")


def creators_text(created: dict[str, int]) -> str:
    return ", ".join(f"{count} {creator}" for creator, count in created.items()) or "0"


def dns_text(queries: int, received: int | None) -> str:
    """Names from /etc/hosts cost no packet: no responder to compare with, the count alone."""
    return str(queries) if received is None else versus(queries, received)


def latency_text(p50: float | None, p99: float | None) -> str:
    if p50 is None:
        return "-"
    return f"{p50 * 1e6:.0f} / {p99 * 1e6:.0f} µs"

"""1. What the observer costs the process it watches.

One target process runs each benchmark once per side in every round, with the observer attached
to it (``--pid``) and without any observer running; the side that goes first alternates from
round to round (A/B, B/A) so that drift on a shared machine falls on both sides alike. Each
round gives a with/without ratio; the report gives their median and range.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from benchmarks.bpftool import foreign_attachments
from benchmarks.children import Children
from benchmarks.observer_process import Observer
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median, number, ratio, times
from benchmarks.target_process import TargetProcess, start_http_server

SETTLE_SECONDS = 0.5  # after the observer starts or stops: let its compile's aftermath pass


@dataclass(frozen=True)
class Benchmark:
    key: str
    label: str
    unit: str
    goal: float | None  # None: reported, no goal
    per_op: str  # what one operation costs the target with the observer attached


BENCHMARKS = (
    Benchmark(
        "getaddrinfo",
        "`socket.getaddrinfo('localhost', 80)` loop",
        "calls/s",
        0.97,
        "a program at libc's getaddrinfo entry and return (a uprobe session): two traps "
        "into the kernel and two runs per call",
    ),
    Benchmark(
        "threads",
        "`threading.Thread` start + join loop",
        "threads/s",
        0.97,
        "a uprobe on pthread_create plus the task_newtask and sched_process_exit "
        "programs per thread",
    ),
    Benchmark(
        "http",
        "aiohttp GET `http://localhost:PORT/`, new connection per request, 4 at a time",
        "requests/s",
        0.99,
        "one getaddrinfo (entry and return) and one executor hand-off per request, "
        "plus the DNS probe's program at each send and the epoll mark's where a thread sleeps "
        "in epoll (raw tracepoints at the socket layer and at sched_switch where the kernel "
        "allows, else the syscalls' tracepoints, which put every syscall on the kernel's "
        "slower path)",
    ),
    Benchmark(
        "bystander",
        "the same getaddrinfo loop in another process, **not** watched",
        "calls/s",
        None,
        "the observer attaches its uprobes to the libc file for every process (pid -1), "
        "so a process it does not watch still hits them (getaddrinfo's entry returns after "
        "one map lookup and declines the return); this row shows what that costs such a "
        "process",
    ),
)


@dataclass
class Sample:
    rate: float  # operations per wall-clock second
    cpu_rate: float  # operations per CPU second of the whole target process


@dataclass
class Rounds:
    samples: dict[tuple[str, bool], list[Sample]]
    foreign: list[dict[str, int]]  # attach points of other processes during each "without"


def measure(children: Children, settings: Settings) -> Section:
    target = TargetProcess(children)
    bystander = TargetProcess(children)
    port = start_http_server(children)
    rounds = Rounds({(b.key, side): [] for b in BENCHMARKS for side in (False, True)}, [])
    for index in range(settings.overhead_rounds):
        for attached in (False, True) if index % 2 == 0 else (True, False):
            if attached:
                _run_attached(children, (target, bystander), port, settings, rounds)
            else:
                rounds.foreign.append(foreign_attachments(ours=set()))
                _run_all((target, bystander), port, settings, rounds, attached=False)
            time.sleep(SETTLE_SECONDS)
    return _section(rounds, settings)


def _run_attached(children, targets, port, settings, rounds: Rounds) -> None:
    with Observer(children, ["--pid", f"bench={targets[0].pid}"]) as observer:
        observer.wait_ready()
        time.sleep(SETTLE_SECONDS)
        _run_all(targets, port, settings, rounds, attached=True)
        if not observer.scrape().value("thread_observer_getaddrinfo_calls_total"):
            raise RuntimeError("the observer counted no getaddrinfo call: not attached?")


def _run_all(targets, port, settings, rounds: Rounds, attached: bool) -> None:
    target, bystander = targets
    replies = {
        "getaddrinfo": target.call("getaddrinfo", seconds=settings.micro_seconds),
        "threads": target.call("threads", seconds=settings.micro_seconds),
        "http": target.call(
            "http", seconds=settings.http_seconds, port=port, concurrency=settings.http_concurrency
        ),
        "bystander": bystander.call("getaddrinfo", seconds=settings.micro_seconds),
    }
    for key, reply in replies.items():
        if reply.get("failed"):
            raise RuntimeError(f"{reply['failed']} HTTP requests failed")
        rounds.samples[(key, attached)].append(
            Sample(reply["ops"] / reply["wall"], reply["ops"] / reply["cpu"])
        )
    progress = "  ".join(
        f"{key} {s[-1].rate:,.0f}/s"
        for (key, side), s in rounds.samples.items()
        if side == attached
    )
    print(f"  {'with' if attached else 'without'}: {progress}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    without: float
    with_: float
    ratios: list[float]
    cpu_ratio: float
    added_us: float  # extra time per operation, from the medians


def _outcome(rounds: Rounds, key: str) -> Outcome:
    without = rounds.samples[(key, False)]
    with_ = rounds.samples[(key, True)]
    ratios = [ratio(w.rate, wo.rate) for w, wo in zip(with_, without, strict=True)]
    cpu_ratios = [ratio(w.cpu_rate, wo.cpu_rate) for w, wo in zip(with_, without, strict=True)]
    slow, fast = median([s.rate for s in with_]), median([s.rate for s in without])
    return Outcome(fast, slow, ratios, median(cpu_ratios), 1e6 * (1 / slow - 1 / fast))


def _section(rounds: Rounds, settings: Settings) -> Section:
    section = Section("1. Overhead on the watched process")
    section.text(
        f"{settings.overhead_rounds} A/B rounds in one target process (Python "
        "3.11); each round runs every benchmark without any observer and with one attached to "
        f"the target (`--pid`), {settings.micro_seconds:g} s per microbenchmark and "
        f"{settings.http_seconds:g} s of HTTP per side. *ratio* is with/without per round "
        "(1.000 = no cost), its median and range over the rounds; *per CPU-second* is the same "
        "ratio of operations per CPU second of the target, which noise from other processes "
        "on the machine moves less; *added* is the extra time per operation implied by the "
        "median rates."
    )
    rows = []
    for bench in BENCHMARKS:
        outcome = _outcome(rounds, bench.key)
        rows.append(
            [
                bench.label,
                f"{number(outcome.without)} {bench.unit}",
                f"{number(outcome.with_)} {bench.unit}",
                f"**{times(median(outcome.ratios))}**",
                f"{times(min(outcome.ratios))} - {times(max(outcome.ratios))}",
                times(outcome.cpu_ratio),
                f"{outcome.added_us:+.2f} µs",
                "-" if bench.goal is None else f">= {bench.goal}",
            ]
        )
        if bench.goal is not None:
            section.goals.append(_goal(bench, outcome))
    section.table(
        [
            "benchmark",
            "without",
            "with",
            "median ratio",
            "ratio range",
            "per CPU-second",
            "added per op",
            "goal",
        ],
        rows,
    )
    bystander = next(b for b in BENCHMARKS if b.key == "bystander")
    section.text(f"The last row: {bystander.per_op}.")
    _foreign_note(section, rounds.foreign)
    return section


def _goal(bench: Benchmark, outcome: Outcome) -> Goal:
    middle = median(outcome.ratios)
    met = middle >= bench.goal
    why = ""
    if not met:
        # The median of paired ratios and the ratio of median rates can disagree in sign.
        cost = (
            f"with the observer each operation took {outcome.added_us:.2f} µs longer "
            "(from the median rates)"
            if outcome.added_us > 0
            else "the median rates show no added time per operation, while the median of the "
            "paired rounds' ratios is below the goal"
        )
        why = (
            f"{cost} ({bench.per_op}; section 2 splits the probes' cost into the BPF "
            "programs' own time and the rest)."
        )
        if min(outcome.ratios) <= 1.0 <= max(outcome.ratios) or max(outcome.ratios) >= bench.goal:
            why += (
                f" The round ratios spread from {min(outcome.ratios):.3f} to "
                f"{max(outcome.ratios):.3f}, so part of the shortfall may be noise."
            )
    return Goal(
        f"overhead: {bench.key} (with/without)", f">= {bench.goal}", times(middle), met, why
    )


def _foreign_note(section: Section, foreign: list[dict[str, int]]) -> None:
    busy = [kinds for kinds in foreign if kinds]
    if not busy:
        section.text(
            "No other process had BPF programs attached through perf events (uprobes, "
            "tracepoints) during any *without* run: the baseline was clean."
        )
        return
    kinds = sorted({kind for found in busy for kind in found})
    section.text(
        f"During {len(busy)} of {len(foreign)} *without* runs other processes on this shared "
        f"machine had BPF programs attached ({', '.join(kinds)}; bpftool perf), so those "
        "baselines already paid part of a probe cost: the ratios are then too kind."
    )

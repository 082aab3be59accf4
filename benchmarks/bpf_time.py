"""8. BPF program time per event of a watched process, by the kernel's own accounting.

A storm (``storm.c``) watched with ``--pid`` and ``--no-sites`` (a C program has no Python
frames to read anyway), with host names and the DNS probe (the default), with
``--no-host-names``, and with ``--no-dns-queries`` as well, and, for
reference, an empty program attached to getaddrinfo the way the observer's is; with
kernel.bpf_stats_enabled=1: each program's run time over the storm, divided by the storm's own
counts. Repeated, the order of the sides rotating, and the spread reported.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import storm
from benchmarks.children import Children
from benchmarks.empty_probes import EMPTY_PROGRAMS, EmptyProbes, empty_probes, side_attached
from benchmarks.hooks import DNS_PROGRAMS, EPOLL_SWITCH_PROGRAMS, default_hooks, dns_hook
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median
from thread_observer.bpf_backend import GETADDRINFO_PROBE, has_uprobe_sessions

CALL_PROGRAMS = (GETADDRINFO_PROBE.session, GETADDRINFO_PROBE.entry, GETADDRINFO_PROBE.on_return)
# The raw tracepoints' programs where the kernel's BTF allows, else the tracepoints'.
CREATE_PROGRAMS = (
    "pthread_create_entry",
    "raw_tracepoint__task_newtask",
    "tracepoint__task__task_newtask",
)
EXIT_PROGRAMS = ("raw_tracepoint__sched_process_exit", "tracepoint__sched__sched_process_exit")
# The DNS probe's programs (hooks.DNS_PROGRAMS, at the socket layer's sends or at the sends'
# syscall tracepoints, whichever the observer loaded) are counted with a call's: any that a
# getaddrinfo call runs.
CALL_GOAL_NS = 400
THREAD_GOAL_NS = 300
# Observer sides: their arguments beyond --pid.
OBSERVERS = {
    "host names": ["--no-sites"],
    "counting only": ["--no-sites", "--no-host-names"],
    "no dns probe": ["--no-sites", "--no-host-names", "--no-dns-queries"],
}
LABELS = {
    "host names": "`--no-sites` (host names and the DNS probe on)",
    "counting only": "`--no-sites --no-host-names`",
    "no dns probe": "`--no-sites --no-host-names --no-dns-queries`",
}


@dataclass
class Figures:
    """BPF ns per event of one storm."""

    call: float
    create: float
    exit: float
    dns: float
    switch: tuple[int, int]  # the epoll mark's (runs, ns) at sched_switch, machine-wide


def switch_runs(programs: dict[str, tuple[int, int]]) -> tuple[int, int]:
    runs = [programs.get(name, (0, 0)) for name in EPOLL_SWITCH_PROGRAMS]
    return sum(r for r, _ in runs), sum(ns for _, ns in runs)


def ns_per(programs: dict[str, tuple[int, int]], names: tuple[str, ...], events: int) -> float:
    return sum(programs.get(name, (0, 0))[1] for name in names) / max(events, 1)


def empty_kind() -> str:
    """The empty program attached as the observer attaches getaddrinfo's on this kernel."""
    return "session" if has_uprobe_sessions() else "pair"


def storm_once(
    children: Children, binary: Path, settings: Settings, side: str, probes: EmptyProbes
) -> Figures:
    done, ran = storm.run_storm(
        children,
        binary,
        settings.storm_calls,
        settings.storm_threads,
        lambda pid: side_attached(side, children, pid, probes, OBSERVERS),
        True,
    )
    calls, threads = done["getaddrinfo_calls"], done["threads_created"]
    return Figures(
        ns_per(ran, (*CALL_PROGRAMS, *EMPTY_PROGRAMS[empty_kind()]), calls),
        ns_per(ran, CREATE_PROGRAMS, threads),
        ns_per(ran, EXIT_PROGRAMS, threads),
        ns_per(ran, DNS_PROGRAMS, calls),
        switch_runs(ran),
    )


def measure(children: Children, settings: Settings) -> Section:
    settings = replace(
        settings,
        storm_calls=max(30_000, settings.storm_calls // 10),
        storm_threads=max(3_000, settings.storm_threads // 10),
    )
    repeats = 5 if settings.name == "full" else 3
    # The empty program's side is named by its kind, as empty_probes.side_attached takes it.
    sides = (empty_kind(), *OBSERVERS)
    figures: dict[str, list[Figures]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bpf-time-") as folder, empty_probes() as probes:
        binary = storm.build(Path(folder))
        for repeat in range(repeats):
            shift = repeat % len(sides)
            for side in sides[shift:] + sides[:shift]:
                figures[side].append(storm_once(children, binary, settings, side, probes))
    return _section(figures, repeats, settings)


def _cell(values: list[float]) -> tuple[str, str]:
    return f"{median(values):.0f}", f"{min(values):.0f} to {max(values):.0f}"


def _section(figures: dict[str, list[Figures]], repeats: int, settings: Settings) -> Section:
    section = Section("8. BPF time per event of a watched process")
    kind = empty_kind()
    section.text(
        f"{repeats} rounds of storms of {settings.storm_calls:,} getaddrinfo calls and "
        f"{settings.storm_threads:,} thread create+join pairs, one storm per side and round, the "
        "order rotating: the observer with `--pid` and `--no-sites`, with host names, with "
        "`--no-host-names` (getaddrinfo counts calls, reads no name and keeps no count by host) "
        "and with `--no-dns-queries` as well (no DNS probe: no program at any write or send), "
        "and, for reference, an empty program on getaddrinfo attached as the "
        f"observer's is on this kernel (a uprobe {kind}). The kernel's run time of each program "
        "(kernel.bpf_stats_enabled=1) divided by the storm's own counts. The DNS probe's programs "
        "are counted with a call's: any send the call makes runs them (on this kernel they are "
        f"at {dns_hook(default_hooks())}). It has none at socket, connect or close: glibc's "
        "getaddrinfo opens and closes /etc/hosts in every call, and runs no program for that."
    )
    total = {side: [f.call + f.dns for f in figures[side]] for side in OBSERVERS}
    rows = [
        [
            LABELS[side],
            *_cell([f.call for f in figures[side]]),
            _cell([f.dns for f in figures[side]])[0],
            *_cell(total[side]),
        ]
        for side in OBSERVERS
    ]
    section.table(
        [
            "observer",
            "getaddrinfo's programs, ns per call (median)",
            "range",
            "the DNS probe's programs, ns per call",
            "all programs per call (median)",
            "range",
        ],
        rows,
    )
    hosts = [f.call for f in figures["host names"]]
    counting = [f.call for f in figures["counting only"]]
    paired = [h - c for h, c in zip(hosts, counting, strict=True)]
    empty = [f.call for f in figures[kind]]
    observed = [f for side in OBSERVERS for f in figures[side]]
    create = [f.create for f in observed]
    ended = [f.exit for f in observed]
    rows = [
        [
            "what host names add per call",
            "getaddrinfo's",
            f"{median(hosts) - median(counting):+.0f}",
            f"{min(paired):+.0f} to {max(paired):+.0f} (per round)",
        ],
        [
            f"an empty program on getaddrinfo (a uprobe {kind}), per call, for reference",
            ", ".join(f"`{p}`" for p in EMPTY_PROGRAMS[kind]),
            *_cell(empty),
        ],
        [
            "thread created, every configuration",
            ", ".join(f"`{p}`" for p in CREATE_PROGRAMS),
            *_cell(create),
        ],
        [
            "thread ended, every configuration",
            ", ".join(f"`{p}`" for p in EXIT_PROGRAMS),
            *_cell(ended),
        ],
    ]
    switches = [f.switch for f in observed if f.switch[0]]
    if switches:
        rows.append(
            [
                "a context switch of any task on the machine, every configuration (the epoll mark)",
                ", ".join(f"`{p}`" for p in EPOLL_SWITCH_PROGRAMS),
                *_cell([ns / runs for runs, ns in switches]),
            ]
        )
    section.table(["event", "programs", "ns (median)", "range"], rows)
    section.text(
        "Host names and the DNS probe do not change the thread programs: their rows pool "
        "every configuration."
        + (
            " The epoll mark runs at every context switch on the machine (a raw tracepoint on "
            "sched_switch); its row is ns per run, over "
            f"{median([runs for runs, _ in switches]):,.0f} runs per storm (median), which "
            "the storm's thread joins and every other task's switches make."
            if switches
            else ""
        )
    )
    lean, empty_call = median(total["no dns probe"]), median(empty)
    created = median(create)
    section.goals.append(
        Goal(
            "BPF time per watched getaddrinfo call, all programs that run for it, without "
            "sites, host names or the DNS probe",
            f"<= {CALL_GOAL_NS} ns",
            f"{lean:.0f} ns",
            lean <= CALL_GOAL_NS,
            f"a call is a run at entry and one at return: an empty program attached the same "
            f"way takes {empty_call:.0f} ns per call here (with the statistics' clock reads); "
            f"the other {lean - empty_call:.0f} ns are the thread's state at entry (with its "
            "process's generation, kept there while the watch epoch holds) and the process's "
            "totals at return, after a libc call that has left the caches cold",
        )
    )
    for side, wording in (
        ("counting only", "without sites or host names"),
        ("host names", "without sites (host names and the DNS probe on)"),
    ):
        section.goals.append(
            Goal.reported(
                f"BPF time per watched getaddrinfo call, all programs that run for it, {wording}",
                f"{median(total[side]):.0f} ns",
            )
        )
    section.goals.append(
        Goal(
            "BPF time per thread created",
            f"<= {THREAD_GOAL_NS} ns",
            f"{created:.0f} ns",
            created <= THREAD_GOAL_NS,
            "pthread_create_entry finds the creating thread's state (with its process's "
            "generation, kept there while the watch epoch holds) and stores the start routine "
            "in it; task_newtask takes it back from the same state and adds to the creators' "
            f"map (a 24-byte key); an empty uprobe program takes {empty_call / 2:.0f} ns a run "
            "here before doing anything",
        )
    )
    return section

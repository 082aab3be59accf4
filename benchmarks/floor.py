"""9. Added time per getaddrinfo call against the floor.

No entry-and-return probe can cost less than its traps, so the observer is measured against
floors: the same storm (``storm.c``, getaddrinfo calls only) timed with nothing attached, with
an empty program at getaddrinfo's entry and return as a uprobe session (one link, a run at
entry and one at return; Linux 6.13+, the way the observer's own program is attached there),
with an empty uprobe+uretprobe pair (an entry and a return program, a uprobe_multi link each,
as the observer attaches them where the kernel has no sessions: the floor the goal names), and
with the observer (``--pid``, ``--no-children``, ``--no-sites``): with host names and the DNS
probe, with ``--no-host-names``, and with ``--no-dns-queries`` as well; the lean configuration
(``--no-host-names --no-dns-queries --no-epoll-mark``, which needs the sites on); and
``--no-host-names`` once more with the epoll mark and the DNS probe forced onto the syscalls'
tracepoints (``tests/with_syscall_tracepoints.py``), as on a kernel without the raw tracepoints
the observer prefers: while a syscall tracepoint is attached, every syscall of the storm (glibc
opens, reads and closes /etc/hosts in every call) takes the kernel's slower path. Every uprobe
is for the storm's pid only, the order of the sides rotating each round. The figure is
(observer - nothing) / (floor - nothing) of the time per call. One more storm per side with the
kernel's BPF statistics on then gives each side's program time per call.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import storm
from benchmarks.bpf_time import CALL_PROGRAMS
from benchmarks.children import Children
from benchmarks.empty_probes import EmptyProbes, empty_probes, side_attached
from benchmarks.hooks import (
    SYSCALL_TRACEPOINTS,
    default_hooks,
    describe,
    has_syscall_tracepoints,
    hooks_of,
)
from benchmarks.report import Goal, Section
from benchmarks.settings import Settings
from benchmarks.stats import median
from thread_observer.bpf_backend import GETADDRINFO_PROBE, has_uprobe_sessions

GOAL = 1.3
# Observer sides: their arguments beyond --pid.
OBSERVERS = {
    "observer": ["--no-children", "--no-sites"],
    "no host names": ["--no-children", "--no-sites", "--no-host-names"],
    "no dns probe": ["--no-children", "--no-sites", "--no-host-names", "--no-dns-queries"],
    # No epoll mark, DNS probe or host names; the epoll mark's absence needs the frames (sites
    # on).
    "lean": ["--no-children", "--no-host-names", "--no-dns-queries", "--no-epoll-mark"],
    # As "no host names", on the syscall tracepoints whatever the kernel allows.
    "syscall tracepoints": ["--no-children", "--no-sites", "--no-host-names", SYSCALL_TRACEPOINTS],
}
# Each observer side as the goals' rows say it.
WORDING = {
    "observer": "with host names",
    "no host names": "`--no-host-names`",
    "no dns probe": "`--no-host-names --no-dns-queries`",
    "lean": "`--no-host-names --no-dns-queries --no-epoll-mark`",
    "syscall tracepoints": "`--no-host-names`, syscall tracepoints",
}
# The sides the goal judges; the others' ratios are reported beside it.
JUDGED = ("observer", "no host names", "no dns probe", "lean")
SIDES = ("nothing", "session", "pair", *OBSERVERS)
LABELS = {
    "nothing": "nothing",
    "session": "empty uprobe session",
    "pair": "empty uprobe+uretprobe pair (the goal's floor)",
    "observer": "observer, `--no-sites` (host names on)",
    "no host names": "observer, `--no-sites --no-host-names`",
    "no dns probe": "observer, `--no-sites --no-host-names --no-dns-queries`",
    "lean": "observer, `--no-host-names --no-dns-queries --no-epoll-mark` (sites on)",
    "syscall tracepoints": "observer, `--no-sites --no-host-names`, syscall tracepoints "
    "(`tests/with_syscall_tracepoints.py`)",
}
FLOORS = ("pair", "session")


@dataclass
class StormTime:
    ns_per_call: float
    calls: int
    programs: dict[str, tuple[int, int]]  # (runs, ns) over the storm, with statistics on


def timed_storm(
    children: Children, binary: Path, calls: int, side: str, probes: EmptyProbes, stats: bool
) -> StormTime:
    """One storm of ``calls`` getaddrinfo calls under ``side``; with ``stats``, the kernel's
    BPF statistics on around it (they add clock reads to every run: not for the timed rounds)."""
    done, ran = storm.run_storm(
        children,
        binary,
        calls,
        1,
        lambda pid: side_attached(side, children, pid, probes, OBSERVERS),
        stats,
    )
    return StormTime(
        1e9 * done["getaddrinfo_seconds"] / done["getaddrinfo_calls"],
        done["getaddrinfo_calls"],
        {name: figures for name, figures in ran.items() if figures[0] > 0},
    )


@dataclass
class Figures:
    sides: tuple[str, ...]
    times: dict[str, list[float]]  # ns per call, by side, one per round
    ratios: dict[tuple[str, str], list[float]]  # (observer side, floor): per round
    programs: dict[str, StormTime]  # the storms with statistics on, by side
    rounds: int
    calls: int

    def added(self, side: str) -> float:
        return median(self.times[side]) - median(self.times["nothing"])

    def ratio(self, side: str, floor: str) -> float:
        floor_added = self.added(floor)
        return self.added(side) / floor_added if floor_added > 0 else float("nan")

    def program_ns(self, side: str, names: tuple[str, ...] | None = None) -> float:
        """BPF ns per call of the side's programs (all, or ``names``), statistics on."""
        run = self.programs[side]
        total = sum(ns for name, (_, ns) in run.programs.items() if names is None or name in names)
        return total / max(run.calls, 1)


def measure(children: Children, settings: Settings) -> Section:
    sides = SIDES if has_uprobe_sessions() else tuple(s for s in SIDES if s != "session")
    calls = max(20_000, settings.storm_calls // 15)
    # Each side in each place of the order once per rotation.
    rounds = len(sides) * (3 if settings.name == "full" else 1)
    times: dict[str, list[float]] = {side: [] for side in sides}
    ratios: dict[tuple[str, str], list[float]] = {
        (side, floor): [] for side in OBSERVERS for floor in FLOORS if floor in sides
    }
    programs: dict[str, StormTime] = {}
    with tempfile.TemporaryDirectory(prefix="floor-") as folder, empty_probes() as probes:
        binary = storm.build(Path(folder))
        for index in range(rounds):
            shift = index % len(sides)
            figures = {}
            for side in sides[shift:] + sides[:shift]:
                figures[side] = timed_storm(children, binary, calls, side, probes, False)
                times[side].append(figures[side].ns_per_call)
            for side, floor in ratios:
                floor_added = figures[floor].ns_per_call - figures["nothing"].ns_per_call
                if floor_added > 0:
                    added = figures[side].ns_per_call - figures["nothing"].ns_per_call
                    ratios[side, floor].append(added / floor_added)
        for side in sides[1:]:
            programs[side] = timed_storm(children, binary, calls, side, probes, True)
    return _section(Figures(sides, times, ratios, programs, rounds, calls))


def _times(ratio: float) -> str:
    """A ratio of added times; none where the floor added nothing measurable."""
    return "no floor above nothing" if math.isnan(ratio) else f"{ratio:.2f}x"


def _spread(values: list[float]) -> str:
    if not values:
        return "no round with a positive floor"
    return (
        f"{min(values):.2f} to {max(values):.2f} over {len(values)} rounds "
        f"(median {median(values):.2f})"
    )


def _section(f: Figures) -> Section:
    section = Section("9. Added time per getaddrinfo call against the floor")
    sessions = "session" in f.sides
    section.text(
        f'{f.rounds} rounds, each timing a storm of {f.calls:,} getaddrinfo("localhost") calls '
        "under each side, the order rotating each round: nothing attached; "
        + (
            "an empty program at getaddrinfo's entry and return as a uprobe session (one link, "
            "a run at entry and one at return, as the observer's own program is attached on "
            "this kernel)"
            if sessions
            else "no empty uprobe session (skipped: this kernel has no uprobe sessions, Linux "
            "6.13+, and the observer attaches an entry and a return program instead)"
        )
        + "; an empty uprobe+uretprobe pair (an entry and a return program, a uprobe_multi "
        "link each: two traps and two empty runs, the floor the goal names); the observer "
        "(`--pid`, `--no-children`, `--no-sites`) with host names and the DNS probe, as by "
        "default, with `--no-host-names`, and with `--no-dns-queries` as well; the lean "
        "configuration (`--no-host-names --no-dns-queries --no-epoll-mark`, sites on: no "
        "epoll mark, DNS probe or host names); and `--no-host-names` once more with the epoll "
        "mark and the DNS probe forced onto the syscalls' tracepoints "
        "(`tests/with_syscall_tracepoints.py`). Every uprobe is attached for the storm's pid "
        f"only. On this kernel the observer puts {describe(default_hooks())}"
        + (
            ": no syscall tracepoint"
            if not has_syscall_tracepoints(default_hooks())
            else ", so the last side is the same as `--no-host-names`"
        )
        + "; while a syscall tracepoint is attached, every syscall of every task (here: "
        "glibc's open, read and close of /etc/hosts in every call) takes the kernel's slower "
        "path."
    )
    rows = []
    for side in f.sides:
        values = f.times[side]
        run = f.programs.get(side)
        rows.append(
            [
                LABELS[side],
                f"{median(values):,.0f}",
                f"{min(values):,.0f} to {max(values):,.0f}",
                f"{f.added(side):,.0f}",
                "-" if run is None else f"{f.program_ns(side):,.0f}",
            ]
        )
    section.table(
        [
            "side",
            "ns per call (median)",
            "range",
            "added (median)",
            "BPF ns per call (statistics on)",
        ],
        rows,
    )
    lines = []
    for side in OBSERVERS:
        for floor in FLOORS:
            if (side, floor) in f.ratios:
                ratio = _times(f.ratio(side, floor))
                lines.append(
                    f"- {LABELS[side]} / {LABELS[floor]}: **{ratio}** from the medians; per "
                    f"round {_spread(f.ratios[side, floor])}"
                )
    section.lines += ["Added time, observer / floor:", "", *lines, ""]
    raw, syscalls = "no host names", "syscall tracepoints"
    section.text(
        f"{WORDING[raw]} adds {f.added(raw):,.0f} ns per call with the hooks the observer "
        f"chose here ({_hooks_note(raw)}) and {f.added(syscalls):,.0f} ns forced onto the "
        f"syscall tracepoints ({_hooks_note(syscalls)}): {f.added(syscalls) - f.added(raw):+,.0f} "
        f"ns, while its programs ran {f.program_ns(raw):,.0f} and "
        f"{f.program_ns(syscalls):,.0f} ns per call with the statistics on."
    )
    section.text(
        "*BPF ns per call*: one more storm per side with kernel.bpf_stats_enabled=1, the "
        "run time of every program of the side that ran, divided by the calls (the statistics "
        "add their clock reads to each run; the observer's tracepoints also run for the rest "
        "of the machine in that window)." + _other_programs(f)
    )
    why = _why(f)
    for side in JUDGED:
        wording = WORDING[side]
        ratio = f.ratio(side, "pair")
        section.goals.append(
            Goal(
                f"added time per getaddrinfo call, observer ({wording}) / an empty "
                "uprobe+uretprobe pair",
                f"<= {GOAL}x",
                _times(ratio),
                None if math.isnan(ratio) else ratio <= GOAL,
                why[side],
            )
        )
    syscalls = "syscall tracepoints"
    section.goals.append(
        Goal.reported(
            f"added time per getaddrinfo call, observer ({WORDING[syscalls]}) / an empty "
            "uprobe+uretprobe pair",
            _times(f.ratio(syscalls, "pair")),
        )
    )
    if sessions:
        for side, wording in WORDING.items():
            section.goals.append(
                Goal.reported(
                    f"added time per getaddrinfo call, observer ({wording}) / an empty uprobe "
                    "session",
                    _times(f.ratio(side, "session")),
                )
            )
    return section


def _others(f: Figures, side: str) -> list[tuple[str, int, int]]:
    """The side's programs other than getaddrinfo's that ran at least once per two calls:
    (name, runs, ns), the costliest first."""
    run = f.programs[side]
    return sorted(
        (
            (name, runs, ns)
            for name, (runs, ns) in run.programs.items()
            if name not in CALL_PROGRAMS and runs * 2 >= run.calls
        ),
        key=lambda item: -item[2],
    )


def _other_programs(f: Figures) -> str:
    run = f.programs["observer"]
    text = (
        " Of the observer's, getaddrinfo's programs took "
        f"{f.program_ns('observer', CALL_PROGRAMS):,.0f} ns per call with host names and "
        f"{f.program_ns('no host names', CALL_PROGRAMS):,.0f} without"
    )
    others = _others(f, "observer")
    if not others:
        return text + "; no other program ran as often as once per two calls."
    listed = ", ".join(
        f"`{name}` ({runs / run.calls:.2f} runs and {ns / run.calls:,.0f} ns per call)"
        for name, runs, ns in others
    )
    return (
        text + f"; besides them, at least once per two calls: {listed}, at events the call "
        "makes (glibc's getaddrinfo opens, reads and closes /etc/hosts in every call)."
    )


def _why(f: Figures) -> dict[str, str]:
    """What the run shows about each observer side's distance from the pair floor."""
    pair, pair_bpf = f.added("pair"), f.program_ns("pair")
    texts = {}
    for side in OBSERVERS:
        added, bpf = f.added(side), f.program_ns(side)
        run = f.programs[side]
        others = "".join(f", `{name}` {ns / run.calls:,.0f}" for name, _, ns in _others(f, side))
        text = (
            f"the observer adds {added:,.0f} ns per call, the pair {pair:,.0f}; with the "
            f"statistics on, the observer's programs ran {bpf:,.0f} ns per call (getaddrinfo's "
            f"{f.program_ns(side, CALL_PROGRAMS):,.0f}{others}) against {pair_bpf:,.0f} ns for "
            f"the pair's two empty runs: {bpf - pair_bpf:,.0f} ns more work in the programs, of "
            f"the {added - pair:,.0f} ns between the two"
        )
        session_link = GETADDRINFO_PROBE.session in run.programs
        if session_link and "session" in f.sides and f.added("session") < pair:
            text += (
                ", although its getaddrinfo program is one uprobe session, whose mechanism "
                f"costs less than the pair's (an empty session adds {f.added('session'):,.0f} "
                f"ns per call; against it the ratio is {_times(f.ratio(side, 'session'))})"
            )
        if side == "observer":
            text += (
                f"; host names account for {added - f.added('no host names'):,.0f} ns of the "
                f"added time (`--no-host-names`: {_times(f.ratio('no host names', 'pair'))})"
            )
        if side == "no host names":
            text += (
                f"; the DNS probe accounts for {added - f.added('no dns probe'):,.0f} ns of it "
                "(it runs no program in a call that sends nothing, as these, which read "
                "/etc/hosts; `--no-dns-queries`: "
                f"{_times(f.ratio('no dns probe', 'pair'))})"
            )
        if side == "no host names":
            syscalls = "syscall tracepoints"
            text += (
                f"; on the syscall tracepoints it adds {f.added(syscalls):,.0f} ns "
                f"({_times(f.ratio(syscalls, 'pair'))})"
            )
        texts[side] = text + "; this side has " + _hooks_note(side)
    return texts


def _hooks_note(side: str) -> str:
    """Which syscall tracepoints the side's observer has attached, and what that does to the
    storm's syscalls."""
    arguments = OBSERVERS[side]
    hooks = hooks_of(arguments)
    epoll_mark = "--no-epoll-mark" not in arguments
    dns = "--no-dns-queries" not in arguments
    if has_syscall_tracepoints(hooks, epoll_mark, dns):
        return (
            "the "
            + " and the ".join(
                what
                for what, on in (
                    ("epoll mark's", epoll_mark and not hooks.epoll_at_switch),
                    ("DNS probe's", dns and not hooks.sends_at_sockets),
                )
                if on
            )
            + " syscall tracepoints attached, so every syscall the call makes takes the "
            "kernel's slower path"
        )
    return "no syscall tracepoint attached"

"""``thread-observer timeline``: every thread's life and every getaddrinfo call, as a picture.

The one place where per-event records are right: a lane per thread over time needs each
creation, exit and call with its instant, not counters. ``probes/timeline.bpf.c`` sends them
through a ring buffer; :class:`Recorder` keeps those of the watched processes and names each
thread's creator while the process is still alive to be looked at; :func:`build_timeline` turns
the records into lanes, and :mod:`observer.timeline_render` draws them.

A command given after ``--`` is watched from its first instruction: it starts blocked on a
pipe, is put in the watched set, and only then allowed to exec.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from observer import procfs
from observer.arguments import LOG_LEVELS, positive_float
from observer.bpf_backend import (
    BpfUnavailable,
    attach_uprobe,
    compile_probes,
    watch_process,
)
from observer.constants import bpf_cflags, eai_name
from observer.targets import (
    RegexTarget,
    TargetError,
    cmdline_of,
    match_target,
    parse_regex_target,
)

log = logging.getLogger(__name__)

PROBE_FILES = ("watched.h", "timeline.bpf.c")
HOST_LEN = 64  # host names are cut there: the picture needs to tell calls apart, not more
SERVICE_LEN = 32
RINGBUF_PAGES = 256  # 1 MiB: thousands of records between two polls
POLL_MS = 100
REFRESH_SECONDS = 0.1
MAX_CREATOR_LENGTH = 96
OUTPUT_KINDS = (".png", ".svg", ".html", ".json")
FORMAT = "thread-observer-timeline"
# (symbol, BPF function, on return)
UPROBES = (
    ("pthread_create", "timeline_pthread_create", False),
    ("getaddrinfo", "timeline_getaddrinfo_entry", False),
    ("getaddrinfo", "timeline_getaddrinfo_return", True),
)
# Runs in the child before the command: waits for "go" on a pipe so that the observer can put
# its pid in the watched set first, then becomes the command (same pid, stdin and stdout).
GATE = """
import os, sys
fd = int(sys.argv[1])
if os.read(fd, 3) != b"go\\n":
    sys.exit(125)
os.close(fd)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as err:
    print(f"thread-observer: {sys.argv[2]}: {err.strerror}", file=sys.stderr)
    sys.exit(126 if isinstance(err, PermissionError) else 127)
"""

EPILOG = """examples:
  thread-observer timeline --output run.png -- python3 client.py          # from its start
  thread-observer timeline -o run.html -o run.png --json -- python3 -m workloads.semaphore_burst
  thread-observer timeline --output api.svg --pid 4242 --seconds 10       # a running process
  thread-observer timeline --output api.png --target api='python.*server\\.py' --seconds 30
  thread-observer timeline --input run.json --output run.svg              # draw a recording again

The output format follows the extension: .png and .svg (a picture), .html (interactive, with
tooltips, self-contained), .json (the raw events). With -- COMMAND, its stdin, stdout and exit
status are passed through.
"""


class TimelineError(Exception):
    """A problem to report in one line on stderr, with exit status 2."""


class EventKind(enum.IntEnum):
    """Kinds of records; the BPF program gets them as ``-DEVENT_*`` cflags."""

    THREAD_CREATED = 1
    THREAD_RENAMED = 2
    THREAD_EXITED = 3
    GETADDRINFO_START = 4
    GETADDRINFO_END = 5
    PROCESS_EXEC = 6
    PROCESS_FORK = 7
    PROCESS_EXIT = 8
    # Made in user space, never by the probe: a thread alive when the recording started.
    THREAD_EXISTING = 101

    @property
    def label(self) -> str:
        return self.name.lower()


class RawEvent(ctypes.Structure):
    """``struct timeline_event`` of probes/timeline.bpf.c."""

    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("task", ctypes.c_uint32),
        ("other", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("text", ctypes.c_char * HOST_LEN),
        ("service", ctypes.c_char * SERVICE_LEN),
    ]


def timeline_cflags(follow_children: bool) -> list[str]:
    flags = [f"-DEVENT_{kind.name}={kind.value}" for kind in EventKind if kind.value < 100]
    flags += [f"-DHOST_LEN={HOST_LEN}", f"-DSERVICE_LEN={SERVICE_LEN}",
              f"-DRINGBUF_PAGES={RINGBUF_PAGES}", f"-DFOLLOW_CHILDREN={int(follow_children)}"]
    return flags


# The records
@dataclass
class Event:
    kind: str
    time_ns: int
    tgid: int
    tid: int  # 0 when not known yet (a thread just created, seen from a PID namespace)
    task: int  # the kernel's thread id: what pairs one thread's records
    parent: int = 0  # creating thread (thread_created, process_fork); old pid (process_exec)
    comm: str = ""
    start_routine: int = 0
    creator: str = ""
    host: str = ""
    service: str = ""
    rc: int = 0
    filename: str = ""


def event_from_raw(raw: RawEvent) -> Event:
    kind = EventKind(raw.kind)
    event = Event(kind.label, raw.time_ns, raw.tgid, raw.tid, raw.task,
                  comm=raw.comm.decode(errors="replace"))
    text = raw.text.decode(errors="replace")
    if kind in (EventKind.THREAD_CREATED, EventKind.PROCESS_FORK):
        event.parent = raw.other
        event.start_routine = raw.value
    elif kind == EventKind.GETADDRINFO_START:
        event.host, event.service = text, raw.service.decode(errors="replace")
    elif kind == EventKind.GETADDRINFO_END:
        event.rc = ctypes.c_int64(raw.value).value
    elif kind == EventKind.PROCESS_EXEC:
        event.filename, event.parent = text, raw.other
    return event


@dataclass
class Recording:
    """What ``--json`` writes, and what every picture is drawn from."""

    command: str
    start_ns: int
    end_ns: int
    lost_events: int
    events: list[Event] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "command": self.command,
                "start_ns": self.start_ns, "end_ns": self.end_ns,
                "lost_events": self.lost_events, "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_json(cls, data: dict) -> Recording:
        if data.get("format") != FORMAT:
            raise TimelineError(f"not a {FORMAT} recording (no \"format\": \"{FORMAT}\")")
        events = [Event(**e) for e in data["events"]]
        unknown = {e.kind for e in events} - {kind.label for kind in EventKind}
        if unknown:
            raise TimelineError(f"unknown event kinds {sorted(unknown)}: a newer recording?")
        return cls(data["command"], data["start_ns"], data["end_ns"], data["lost_events"],
                   events)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Recording:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TimelineError(f"cannot read the recording {path}: {err}") from None


# Lanes, from the records
MAIN = "main"  # creator of a process's first thread
EXISTING = "existing"  # creator of a thread alive before the recording started


@dataclass
class Lane:
    """One thread's life."""

    tgid: int
    task: int
    tid: int
    name: str
    creator: str
    parent: int  # the thread that created it (0: not seen)
    start_ns: int
    end_ns: int | None = None  # None: alive when the recording ended
    start_routine: int = 0

    @property
    def main(self) -> bool:
        return self.creator == MAIN

    @property
    def created(self) -> bool:
        """Created during the recording by clone(CLONE_THREAD): not a process's first thread."""
        return self.creator not in (MAIN, EXISTING)


@dataclass
class Lookup:
    """One getaddrinfo call."""

    tgid: int
    task: int
    tid: int
    start_ns: int
    host: str
    service: str
    end_ns: int | None = None  # None: still in progress when the recording ended
    rc: int = 0

    @property
    def failed(self) -> bool:
        return self.rc != 0

    @property
    def error(self) -> str:
        return eai_name(self.rc) if self.failed else ""


@dataclass
class Timeline:
    command: str
    start_ns: int
    end_ns: int
    lost_events: int
    lanes: list[Lane]
    lookups: list[Lookup]

    @property
    def threads_created(self) -> int:
        return sum(lane.created for lane in self.lanes)

    @property
    def failures(self) -> int:
        return sum(lookup.failed for lookup in self.lookups)

    @property
    def processes(self) -> list[int]:
        return sorted({lane.tgid for lane in self.lanes})


class _LaneBuilder:
    """Replays the records in order; one handler per kind."""

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.open: dict[int, Lane] = {}
        self.lanes: list[Lane] = []
        self.calls: dict[int, Lookup] = {}
        self.lookups: list[Lookup] = []

    def add(self, event: Event) -> None:
        getattr(self, "_" + event.kind)(event)

    def _start(self, event: Event, creator: str, start_ns: int | None = None) -> Lane:
        self._close(event.task, event.time_ns)  # a thread id reused without its exit seen
        lane = Lane(event.tgid, event.task, event.tid, event.comm, creator, event.parent,
                    event.time_ns if start_ns is None else start_ns, None, event.start_routine)
        self.open[event.task] = lane
        self.lanes.append(lane)
        return lane

    def _close(self, task: int, time_ns: int) -> Lane | None:
        lane = self.open.pop(task, None)
        if lane is not None:
            lane.end_ns = time_ns
        return lane

    def _known(self, event: Event) -> Lane:
        """The event's thread; one alive before the recording if never seen born."""
        lane = self.open.get(event.task)
        if lane is None:
            lane = self._start(event, EXISTING, self.start_ns)
            lane.name = ""
        if not lane.tid and event.tid:
            lane.tid = event.tid
        return lane

    def _thread_created(self, event: Event) -> None:
        self._start(event, event.creator or "unknown")

    def _thread_existing(self, event: Event) -> None:
        self._start(event, MAIN if event.tid == event.tgid else EXISTING)

    def _process_fork(self, event: Event) -> None:
        child = Event(**{**asdict(event), "tgid": event.task, "tid": event.task})
        self._start(child, MAIN)

    def _process_exec(self, event: Event) -> None:
        # The exec'ing thread goes on as the new program's main thread: a fork child keeps
        # its lane, a command started by the observer gets its first one here.
        lane = self.open.get(event.task)
        if lane is None:
            lane = self._start(event, MAIN)
        lane.name = event.comm

    def _thread_renamed(self, event: Event) -> None:
        lane = self.open.get(event.task)
        if lane is not None:  # an exec renames before its exec record: that one names it
            lane.name = event.comm

    def _thread_exited(self, event: Event) -> None:
        lane = self._known(event)
        lane.name = event.comm or lane.name
        self._close(event.task, event.time_ns)
        self._end_call(event.task, event.time_ns, None)

    def _process_exit(self, event: Event) -> None:
        for task in [task for task, lane in self.open.items() if lane.tgid == event.tgid]:
            self._close(task, event.time_ns)

    def _getaddrinfo_start(self, event: Event) -> None:
        lane = self._known(event)
        if not lane.name:
            lane.name = event.comm
        self.calls[event.task] = Lookup(event.tgid, event.task, lane.tid, event.time_ns,
                                        event.host, event.service)

    def _getaddrinfo_end(self, event: Event) -> None:
        self._end_call(event.task, event.time_ns, event.rc)

    def _end_call(self, task: int, time_ns: int, rc: int | None) -> None:
        call = self.calls.pop(task, None)  # none: it started before the recording
        if call is None:
            return
        if rc is not None:
            call.end_ns, call.rc = time_ns, rc
        self.lookups.append(call)

    def finish(self) -> tuple[list[Lane], list[Lookup]]:
        self.lookups.extend(self.calls.values())
        self.calls.clear()
        lanes = sorted(self.lanes, key=lambda lane: (lane.start_ns, not lane.main, lane.task))
        return lanes, sorted(self.lookups, key=lambda lookup: lookup.start_ns)


def build_timeline(recording: Recording) -> Timeline:
    builder = _LaneBuilder(recording.start_ns)
    for event in recording.events:
        builder.add(event)
    lanes, lookups = builder.finish()
    return Timeline(recording.command, recording.start_ns, recording.end_ns,
                    recording.lost_events, lanes, lookups)


# The probe
class TimelineProbes:
    """Compiles and attaches probes/timeline.bpf.c; hands each record to a handler."""

    def __init__(self, follow_children: bool, track_new_processes: bool) -> None:
        self.follow_children = follow_children
        self.track_new_processes = track_new_processes
        self.handler: Callable[[Event], None] = lambda event: None
        self._bpf = None
        self._attached: set[tuple[int, int]] = set()

    def load(self, handler: Callable[[Event], None]) -> None:
        self.handler = handler
        cflags = bpf_cflags(self.track_new_processes) + timeline_cflags(self.follow_children)
        self._bpf = compile_probes(PROBE_FILES, cflags, "timeline probe")
        self._bpf["timeline_events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx, data, size) -> int:
        # An exception would be lost in the ctypes callback: log it and keep recording.
        try:
            raw = RawEvent.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(RawEvent)))
            self.handler(event_from_raw(raw))
        except Exception:
            log.exception("could not handle a timeline record")
        return 0

    def attach_libc(self, paths: list[str]) -> int:
        """Uprobes on libc-like objects, once per file; the number of probes attached."""
        attached = 0
        for path in paths:
            try:
                info = os.stat(path)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in self._attached:
                continue
            self._attached.add((info.st_dev, info.st_ino))
            attached += sum(attach_uprobe(self._bpf, path, *uprobe) for uprobe in UPROBES)
        return attached

    def watch(self, tgid: int) -> None:
        """Marks a process watched, keeping the generation the kernel gave it if any."""
        watch_process(self._bpf["watched_tgids"], tgid)

    def unwatch(self, tgid: int) -> None:
        self._bpf["watched_tgids"].pop(ctypes.c_uint32(tgid), None)

    def poll(self, timeout_ms: int) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        self._bpf.ring_buffer_consume()

    def lost_events(self) -> int:
        return self._bpf["lost_events"][ctypes.c_int(0)].value

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


# Keeping the watched processes' records
class Recorder:
    """Keeps the records of the watched processes and decides which new ones are watched.

    A start routine is named (``python``, a library's basename, ``unknown``) as its record
    arrives, from /proc/PID/maps: the process may be gone by the time the picture is drawn.
    """

    def __init__(self, probes, regex_targets: list[RegexTarget] | None = None,
                 allow_non_python: bool = False) -> None:
        self.probes = probes
        self.regex_targets = regex_targets or []
        self.allow_non_python = allow_non_python
        self.events: list[Event] = []
        self.watched: set[int] = set()
        self.alive: set[int] = set()
        self._resolvers: dict[int, procfs.AddressResolver] = {}
        self._libc_unknown: set[int] = set()
        self._last_refresh = 0.0
        self._self_pid = os.getpid()
        self.since_ns = 0  # records from before are not kept

    def watch(self, pid: int, existing: bool = False) -> None:
        self.probes.watch(pid)
        self._adopt(pid)
        log.info("recording pid %d", pid)
        if existing:
            self._add_existing_threads(pid)

    def _adopt(self, pid: int) -> None:
        self.watched.add(pid)
        self.alive.add(pid)
        self._libc_unknown.add(pid)

    def _add_existing_threads(self, pid: int) -> None:
        now = time.monotonic_ns()
        for tid in thread_ids(pid):
            self.events.append(Event(EventKind.THREAD_EXISTING.label, now, pid, tid, tid,
                                     comm=thread_comm(pid, tid)))

    def handle(self, event: Event) -> None:
        if event.time_ns < self.since_ns or not self._admit(event):
            return
        if event.kind == EventKind.THREAD_CREATED.label:
            event.creator = self._creator(event.tgid, event.start_routine)
        elif event.kind == EventKind.PROCESS_EXEC.label:
            self._resolvers.pop(event.tgid, None)  # a new program image: new mappings
            self._libc_unknown.add(event.tgid)
        elif event.kind == EventKind.PROCESS_EXIT.label:
            self.alive.discard(event.tgid)
            self._libc_unknown.discard(event.tgid)
        self.events.append(event)

    def _admit(self, event: Event) -> bool:
        if event.tgid in self.watched:
            if event.kind == EventKind.PROCESS_FORK.label:
                self.watch(event.task)  # recorded since its fork (FOLLOW_CHILDREN)
            return True
        if event.kind == EventKind.PROCESS_EXEC.label and self.regex_targets:
            return self._classify(event.tgid)
        return False

    def _classify(self, tgid: int) -> bool:
        """A new program (watched by the kernel as pending): kept if a target matches it."""
        if self._matches(tgid):
            self.watch(tgid)
            return True
        self.probes.unwatch(tgid)
        return False

    def _matches(self, pid: int) -> bool:
        cmdline = cmdline_of(pid)
        if pid == self._self_pid or not cmdline or not match_target(self.regex_targets, cmdline):
            return False
        try:
            return self.allow_non_python or procfs.is_python(pid)
        except OSError:
            return False

    def find_targets(self) -> None:
        """Processes already running that a --target matches."""
        import psutil

        for pid in psutil.pids():
            if pid not in self.watched and self._matches(pid):
                self.watch(pid, existing=True)

    # Creators
    def _creator(self, tgid: int, routine: int) -> str:
        if not routine:
            return "unknown"  # not made by pthread_create
        resolver = self._resolver(tgid)
        if resolver is None:
            return "unknown"
        return resolver.creator(routine)[:MAX_CREATOR_LENGTH]

    def _resolver(self, tgid: int) -> procfs.AddressResolver | None:
        resolver = self._resolvers.get(tgid)
        if resolver is None:
            try:
                resolver = procfs.AddressResolver(tgid, procfs.read_maps(tgid),
                                                  procfs.exe_path(tgid))
            except OSError:
                return None
            self._resolvers[tgid] = resolver
        return resolver

    def tick(self) -> None:
        """Now and then: a recent copy of each process's mappings, so that a thread created
        right before its process exits still gets its creator; and the libc of new programs."""
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_SECONDS:
            return
        self._last_refresh = now
        for tgid in list(self.alive):
            resolver = self._resolver(tgid)
            if resolver is not None:
                with suppress(OSError):  # it exited: keep the last copy
                    resolver.refresh()
        for tgid in list(self._libc_unknown):
            self.attach_libc_of(tgid)

    def attach_libc_of(self, tgid: int) -> None:
        try:
            mappings = procfs.read_maps(tgid)
        except OSError:
            self._libc_unknown.discard(tgid)
            return
        paths = {m.path for m in mappings if procfs.LIBC_NAME.match(os.path.basename(m.path))}
        if paths:  # none yet: the dynamic linker has not mapped it
            self.probes.attach_libc([procfs.path_in_root(tgid, path) for path in sorted(paths)])
            self._libc_unknown.discard(tgid)

    def name_live_threads(self, time_ns: int) -> None:
        """The end: live threads get their names as of now."""
        for tgid in sorted(self.alive):
            for tid in thread_ids(tgid):
                self.events.append(Event(EventKind.THREAD_RENAMED.label, time_ns, tgid, tid,
                                         tid, comm=thread_comm(tgid, tid)))

    def last_exit_ns(self) -> int | None:
        exits = [e.time_ns for e in self.events if e.kind == EventKind.PROCESS_EXIT.label]
        return max(exits) if exits else None


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def thread_comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", errors="replace") as comm:
            return comm.read().rstrip("\n")
    except OSError:
        return ""


# A command run under the observer
class GatedCommand:
    """A child that waits before becoming ``argv``, so it is watched from its exec on."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        read_end, self._go = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", GATE, str(read_end), *argv],
                pass_fds=(read_end,),
            )
        finally:
            os.close(read_end)
        self.pid = self.process.pid

    def release(self) -> None:
        os.write(self._go, b"go\n")
        os.close(self._go)

    def abort(self) -> None:
        os.close(self._go)  # the gate exits without running the command
        self.process.wait()

    def wait(self) -> int:
        """The command's exit status as a shell reports it."""
        while True:
            try:
                code = self.process.wait()
                break
            except KeyboardInterrupt:
                continue  # the command got the same Ctrl-C: wait for it to act on it
        return 128 - code if code < 0 else code


class StopFlag:
    """Set by SIGINT or SIGTERM: the recording ends, the outputs are still written."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self, signum, frame) -> None:
        self.set = True


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    previous = {sig: signal.signal(sig, flag) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def record(probes: TimelineProbes, recorder: Recorder, done: Callable[[], bool]) -> None:
    while not done():
        probes.poll(POLL_MS)
        recorder.tick()
    probes.drain()


# Command line
def add_timeline_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    """The ``timeline`` subcommand; ``args.func(args)`` runs it."""
    parser = subparsers.add_parser(
        "timeline", help="draw thread lifetimes and getaddrinfo calls over time",
        description="Record every thread created and ended and every getaddrinfo call of a "
        "command or of running processes, and draw them as lanes over time.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    parser.add_argument("--output", "-o", action="append", required=True, metavar="FILE",
                        help="where to write: .png, .svg, .html or .json (repeatable)")
    parser.add_argument("--json", action="store_true",
                        help="also write the raw events to the first FILE with .json")
    parser.add_argument("--pid", action="append", type=_pid, default=[], metavar="PID",
                        help="record this running process (repeatable)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=REGEX",
                        help="record processes whose command line matches REGEX, and those "
                        "that start later (repeatable)")
    parser.add_argument("--allow-non-python", action="store_true",
                        help="with --target: also record non-Python processes")
    parser.add_argument("--input", type=Path, metavar="EVENTS.json",
                        help="draw a recording saved with --json instead of recording")
    parser.add_argument("--seconds", type=positive_float, metavar="S",
                        help="stop recording after S seconds (default: when the command or "
                        "the processes exit, or on Ctrl-C)")
    parser.add_argument("--children", action="store_true",
                        help="also record the processes the command forks")
    parser.add_argument("--title", help="title of the picture (default: the command line)")
    parser.add_argument("command", nargs="*", metavar="-- COMMAND ARGS",
                        help="run this command and record it from its start")
    if not any(action.dest == "log_level" for action in parser._actions):
        parser.add_argument("--log-level", default="warning",
                            choices=LOG_LEVELS)
    parser.set_defaults(func=run_timeline)
    return parser


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


def run_timeline(args: argparse.Namespace) -> int:
    try:
        outputs = output_paths(args.output, args.json)
        if args.input is not None:
            if args.command or args.pid or args.target:
                raise TimelineError("--input draws a saved recording: give no command, "
                                    "--pid or --target with it")
            recording = Recording.load(args.input)
            recording.command = args.title or recording.command
            return write_outputs(recording, outputs)
        return record_and_write(args, outputs)
    except TimelineError as err:
        print(f"thread-observer: {err}", file=sys.stderr)
        return 2


def output_paths(names: list[str], with_json: bool) -> list[Path]:
    paths = [Path(name) for name in names]
    for path in paths:
        if path.suffix.lower() not in OUTPUT_KINDS:
            raise TimelineError(f"--output {path}: the extension must be one of "
                                f"{', '.join(OUTPUT_KINDS)}")
        if not path.parent.is_dir():
            raise TimelineError(f"--output {path}: no such directory {path.parent}")
    if with_json and not any(path.suffix.lower() == ".json" for path in paths):
        paths.append(paths[0].with_suffix(".json"))
    return paths


def write_outputs(recording: Recording, outputs: list[Path]) -> int:
    from observer.timeline_render import render

    timeline = build_timeline(recording)
    for path in outputs:
        try:
            if path.suffix.lower() == ".json":
                recording.save(path)
            else:
                render(timeline, path)
        except OSError as err:
            raise TimelineError(f"cannot write {path}: {err.strerror or err}") from None
    print(f"thread-observer: {timeline.threads_created} threads created, "
          f"{len(timeline.lookups)} getaddrinfo calls ({timeline.failures} failed), "
          f"{timeline.lost_events} events lost: wrote {', '.join(map(str, outputs))}",
          file=sys.stderr)
    return 0


def record_and_write(args: argparse.Namespace, outputs: list[Path]) -> int:
    if bool(args.command) == bool(args.pid or args.target):
        raise TimelineError("record either a command (after --) or --pid/--target processes")
    try:
        regex_targets = [parse_regex_target(text) for text in args.target]
    except TargetError as err:
        raise TimelineError(str(err)) from None
    probes = TimelineProbes(args.children or bool(regex_targets), bool(regex_targets))
    recorder = Recorder(probes, regex_targets, args.allow_non_python)
    try:
        probes.load(recorder.handle)
    except BpfUnavailable as err:
        raise TimelineError(f"eBPF cannot work here: {err}") from None
    try:
        # The usual libc, probed before anything runs: a new program's first calls count.
        recorder.attach_libc_of(os.getpid())
        if args.command:
            return record_command(args, probes, recorder, outputs)
        return record_processes(args, probes, recorder, outputs)
    finally:
        probes.close()


def record_command(args, probes: TimelineProbes, recorder: Recorder,
                   outputs: list[Path]) -> int:
    command = GatedCommand(args.command)
    try:
        recorder.watch(command.pid)
    except Exception:
        command.abort()
        raise
    deadline = _deadline(args.seconds)
    try:
        with stop_on_signals() as stopped:
            # The gate's own exec can reach the probe after its pid was marked watched.
            recorder.since_ns = start_ns = time.monotonic_ns()
            command.release()
            record(probes, recorder, lambda: stopped.set or command.process.poll() is not None
                   or time.monotonic() > deadline)
        # The picture starts at the exec, not at the gate's start-up before it.
        start_ns = min((e.time_ns for e in recorder.events
                        if e.kind == EventKind.PROCESS_EXEC.label), default=start_ns)
        status = finish(args, probes, recorder, start_ns, " ".join(args.command), outputs)
    finally:
        probes.close()  # the command may run on after --seconds: detach now
        code = command.wait()
    return code or status


def record_processes(args, probes: TimelineProbes, recorder: Recorder,
                     outputs: list[Path]) -> int:
    start_ns = time.monotonic_ns()
    for pid in args.pid:
        if not os.path.exists(f"/proc/{pid}"):
            raise TimelineError(f"--pid {pid}: no such process")
        recorder.watch(pid, existing=True)
    if recorder.regex_targets:
        recorder.find_targets()
    deadline = _deadline(args.seconds)
    with stop_on_signals() as stopped:

        def done() -> bool:
            # --pid alone ends with its processes; a --target waits for new ones.
            gone = not recorder.regex_targets and not any(map(_alive, recorder.alive))
            return stopped.set or gone or time.monotonic() > deadline

        record(probes, recorder, done)
    names = [f"pid {pid}" for pid in args.pid] + [f"--target {t}" for t in args.target]
    return finish(args, probes, recorder, start_ns, ", ".join(names), outputs)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _deadline(seconds: float | None) -> float:
    return time.monotonic() + seconds if seconds else float("inf")


def finish(args, probes: TimelineProbes, recorder: Recorder, start_ns: int, command: str,
           outputs: list[Path]) -> int:
    now = time.monotonic_ns()
    # When everything recorded has exited, the picture ends there, not at the next poll; a
    # --target recording runs for as long as it was asked to, quiet or not.
    done = not recorder.alive and not recorder.regex_targets
    end_ns = (recorder.last_exit_ns() or now) if done else now
    recorder.name_live_threads(end_ns)
    recording = Recording(args.title or command, start_ns, end_ns, probes.lost_events(),
                          recorder.events)
    return write_outputs(recording, outputs)


def main(argv: list[str] | None = None) -> int:
    """``python -m observer.timeline``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="thread-observer")
    add_timeline_parser(parser.add_subparsers(dest="command_name", required=True))
    args = parser.parse_args(["timeline", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Recording: the probe of ``probes/timeline.bpf.c``, the recorder that keeps the watched
processes' records and names each thread's creator while the process is still alive, and a
command run under the observer from its first instruction.

A command given after ``--`` starts blocked on a pipe, is put in the watched set, and only then
allowed to exec.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from thread_observer import labels, procfs
from thread_observer.bpf_backend import (
    TIMELINE_UPROBES,
    UPROBE_NAMES,
    attach_libc_of,
    attach_link_or_uprobe,
    compile_probes,
    raise_for_missing_fields,
    uprobe_name,
    watch_process,
    write_python_process,
)
from thread_observer.constants import bpf_cflags
from thread_observer.targets import RegexTarget, cmdline_of, match_target
from thread_observer.timeline.model import Event, EventKind
from thread_observer.timeline.stacks import ProcessStacks
from thread_observer.tracefs import missing_fields

log = logging.getLogger(__name__)

PROBE_FILES = ("watched.h", "python_stack.h", "timeline.bpf.c")
SERVICE_LEN = 32
RINGBUF_PAGES = 256  # 1 MiB: thousands of records between two polls
POLL_MS = 100
STACK_KINDS = (EventKind.THREAD_CREATED.label, EventKind.GETADDRINFO_START.label)
REFRESH_SECONDS = 0.1
# Runs in the child before the command: waits for "go" on a pipe so that the observer can put
# its pid in the watched set first, then becomes the command (same pid, stdin and stdout).
# It says "up" first: the exec that started it is over by then (the kernel reports an exec
# after closing the descriptors that Popen waits on, so Popen can return before that report).
GATE = """
import os, sys
ready, fd = int(sys.argv[1]), int(sys.argv[2])
os.write(ready, b"up")
os.close(ready)
if os.read(fd, 3) != b"go\\n":
    sys.exit(125)
os.close(fd)
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError as err:
    print(f"thread-observer: {sys.argv[3]}: {err.strerror}", file=sys.stderr)
    sys.exit(126 if isinstance(err, PermissionError) else 127)
"""


def timeline_cflags(follow_children: bool) -> list[str]:
    flags = [f"-DEVENT_{kind.name}={kind.value}" for kind in EventKind if kind.value < 100]
    flags += [
        f"-DSERVICE_LEN={SERVICE_LEN}",
        f"-DRINGBUF_PAGES={RINGBUF_PAGES}",
        f"-DFOLLOW_CHILDREN={int(follow_children)}",
    ]
    return flags


def stack_of_raw(raw) -> tuple[int, tuple[int, ...]]:
    """(STACK_* flags, code objects innermost first) of a record."""
    return raw.stack_flags, tuple(raw.stack[: min(raw.stack_depth, len(raw.stack))])


def event_from_raw(raw) -> Event:
    """An event from a ``struct timeline_event`` as bcc decodes it from the C struct."""
    kind = EventKind(raw.kind)
    event = Event(
        kind.label, raw.time_ns, raw.tgid, raw.tid, raw.task, comm=raw.comm.decode(errors="replace")
    )
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


class TimelineProbes:
    """Compiles and attaches probes/timeline.bpf.c; hands each record to a handler."""

    def __init__(self, follow_children: bool, track_new_processes: bool) -> None:
        self.follow_children = follow_children
        self.track_new_processes = track_new_processes
        self.handler: Callable[[Event], None] = lambda event: None
        self._bpf = None
        self._attached_objects: dict[tuple[int, int], set[str]] = {}
        self._links: list[int] = []  # uprobe_multi link fds

    def load(self, handler: Callable[[Event], None]) -> None:
        self.handler = handler
        cflags = bpf_cflags(self.track_new_processes, sites=True) + timeline_cflags(
            self.follow_children
        )
        raise_for_missing_fields(missing_fields(PROBE_FILES))
        self._bpf = compile_probes(PROBE_FILES, cflags, "timeline probe")
        self._bpf["timeline_events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx, data, size) -> int:
        # An exception would be lost in the ctypes callback: log it and keep recording.
        try:
            # bcc builds the ctypes struct from the C struct: no mirror here to drift.
            raw = self._bpf["timeline_events"].event(data)
            self.handler(event_from_raw(raw), stack_of_raw(raw))
        except Exception:
            log.exception("could not handle a timeline record")
        return 0

    def attach_libc(self, path: str, device_inode: tuple[int, int], pid: int = -1) -> set[str]:
        """Uprobes on one libc-like object, once per file, for every process (the timeline
        follows new processes: ``pid`` is not used); returns the probes attached."""
        if device_inode not in self._attached_objects:
            self._attached_objects[device_inode] = {
                uprobe_name(symbol, on_return)
                for symbol, function, on_return in TIMELINE_UPROBES
                if attach_link_or_uprobe(self._bpf, self._links, path, symbol, function, on_return)
            }
        return self._attached_objects[device_inode]

    def watch(self, tgid: int) -> None:
        """Marks a process watched, keeping the generation the kernel gave it if any."""
        watch_process(self._bpf["watched_tgids"], tgid)

    def unwatch(self, tgid: int) -> None:
        self._bpf["watched_tgids"].pop(ctypes.c_uint32(tgid), None)

    def set_python_process(self, tgid: int, runtime) -> None:
        """Lets the probe read a watched process's Python frames."""
        entry = self._bpf["watched_tgids"].get(ctypes.c_uint32(tgid))
        if entry is not None:
            write_python_process(self._bpf["python_processes"], tgid, entry.generation, runtime)

    def poll(self, timeout_ms: int) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        self._bpf.ring_buffer_consume()

    def lost_events(self) -> int:
        return self._bpf["lost_events"][ctypes.c_int(0)].value

    def close(self) -> None:
        for link in self._links:
            os.close(link)
        self._links.clear()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


# Keeping the watched processes' records
class Recorder:
    """Keeps the records of the watched processes and decides which new ones are watched.

    A start routine is named (``python``, a library's basename, ``unknown``) as its record
    arrives, from /proc/PID/maps: the process may be gone by the time the picture is drawn.
    """

    def __init__(
        self, probes, regex_targets: list[RegexTarget] | None = None, allow_non_python: bool = False
    ) -> None:
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
        self.stacks = ProcessStacks(probes)

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
        self.stacks.look_for(pid)

    def _add_existing_threads(self, pid: int) -> None:
        now = time.monotonic_ns()
        for tid in thread_ids(pid):
            self.events.append(
                Event(
                    EventKind.THREAD_EXISTING.label, now, pid, tid, tid, comm=thread_comm(pid, tid)
                )
            )

    def handle(self, event: Event, stack: tuple[int, tuple[int, ...]] | None = None) -> None:
        """A record, with its Python stack ((flags, code objects)) when the probe read one."""
        if event.time_ns < self.since_ns or not self._admit(event):
            return
        if event.kind == EventKind.THREAD_CREATED.label:
            event.creator = self._creator(event.tgid, event.start_routine)
        elif event.kind == EventKind.PROCESS_EXEC.label:
            self._resolvers.pop(event.tgid, None)  # a new program image: new mappings
            self._libc_unknown.add(event.tgid)
            self.stacks.look_for(event.tgid, exec_ns=event.time_ns)
        elif event.kind == EventKind.PROCESS_EXIT.label:
            self.alive.discard(event.tgid)
            self._libc_unknown.discard(event.tgid)
            self.stacks.forget(event.tgid)
        if stack is not None and event.kind in STACK_KINDS:
            flags, codes = stack
            event.site, event.stack = self.stacks.describe(
                event.tgid, codes, flags, thread=event.kind == EventKind.THREAD_CREATED.label
            )
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
            return labels.UNKNOWN_CREATOR  # not made by pthread_create
        return labels.creator(self._resolver(tgid), routine)

    def _resolver(self, tgid: int) -> procfs.AddressResolver | None:
        resolver = self._resolvers.get(tgid)
        if resolver is None:
            try:
                resolver = procfs.AddressResolver(
                    tgid, procfs.read_maps(tgid), procfs.exe_path(tgid)
                )
            except OSError:
                return None
            self._resolvers[tgid] = resolver
        return resolver

    def tick(self) -> None:
        """Now and then: a recent copy of each process's mappings, so that a thread created
        right before its process exits still gets its creator; the libc of new programs; and the
        interpreters not found yet."""
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_SECONDS:
            self._last_refresh = now
            for tgid in list(self.alive):
                resolver = self._resolver(tgid)
                if resolver is not None:
                    with suppress(OSError):  # it exited: keep the last copy
                        resolver.refresh()
            for tgid in list(self._libc_unknown):
                self.attach_libc_of(tgid)
        # After the probes: reading an interpreter's symbols takes a while.
        self.stacks.find()

    def attach_libc_of(self, tgid: int) -> None:
        try:
            objects, attached = attach_libc_of(self.probes, tgid)
        except OSError:
            self._libc_unknown.discard(tgid)
            return
        # Tried again until every probe is in: right after an exec the dynamic linker may not
        # have mapped libc yet, and only the executable is there to look in.
        if attached >= set(UPROBE_NAMES):
            self._libc_unknown.discard(tgid)
            log.info("pid %d: probes in %s", tgid, ", ".join(objects))

    def name_live_threads(self, time_ns: int) -> None:
        """The end: live threads get their names as of now."""
        for tgid in sorted(self.alive):
            for tid in thread_ids(tgid):
                self.events.append(
                    Event(
                        EventKind.THREAD_RENAMED.label,
                        time_ns,
                        tgid,
                        tid,
                        tid,
                        comm=thread_comm(tgid, tid),
                    )
                )

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
        up_read, up_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", GATE, str(up_write), str(read_end), *argv],
                pass_fds=(read_end, up_write),
            )
        finally:
            os.close(read_end)
            os.close(up_write)
        try:
            os.read(up_read, 2)  # "" if the gate died: the command's status will say
        finally:
            os.close(up_read)
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
        return shell_status(code)

    def status(self) -> int | None:
        """The exit status if the command has ended, else None."""
        code = self.process.poll()
        return None if code is None else shell_status(code)


def shell_status(code: int) -> int:
    """A returncode as a shell reports it: 128 + N for a death by signal N."""
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

"""The timeline's records and what is drawn from them: events, a recording (what ``--json``
writes), and the lanes and lookups of a :class:`Timeline`."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thread_observer.constants import eai_name
from thread_observer.errors import UsageError
from thread_observer.labels import short_creator

FORMAT = "thread-observer-timeline"
MAIN = "main"  # creator of a process's first thread
EXISTING = "existing"  # creator of a thread alive before the recording started


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
    # Python call site and stack (innermost first) of a thread's creation or a lookup; "" and
    # [] where the process's frames are not read
    site: str = ""
    stack: list[str] = field(default_factory=list)


@dataclass
class Recording:
    """What ``--json`` writes, and what every picture is drawn from."""

    command: str
    start_ns: int
    end_ns: int
    lost_events: int
    events: list[Event] = field(default_factory=list)
    exit_status: int | None = None  # of the command after --, as a shell reports it

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "command": self.command,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "lost_events": self.lost_events,
            "exit_status": self.exit_status,
            "events": [asdict(e) for e in self.events],
        }

    @classmethod
    def from_json(cls, data: dict) -> Recording:
        if data.get("format") != FORMAT:
            raise UsageError(f'not a {FORMAT} recording (no "format": "{FORMAT}")')
        events = [Event(**e) for e in data["events"]]
        unknown = {e.kind for e in events} - {kind.label for kind in EventKind}
        if unknown:
            raise UsageError(f"unknown event kinds {sorted(unknown)}: a newer recording?")
        return cls(
            data["command"],
            data["start_ns"],
            data["end_ns"],
            data["lost_events"],
            events,
            data.get("exit_status"),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Recording:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"cannot read the recording {path}: {err}") from None


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
    site: str = ""  # the Python code that created it ("" where frames are not read)
    stack: list[str] = field(default_factory=list)  # its frames, innermost first

    @property
    def main(self) -> bool:
        return self.creator == MAIN

    @property
    def short_creator(self) -> str:
        return short_creator(self.creator)

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
    site: str = ""  # the Python code that made it ("" where frames are not read)
    stack: list[str] = field(default_factory=list)  # its frames, innermost first

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
    exit_status: int | None = None

    @property
    def failed(self) -> bool:
        """The command recorded exited with a non-zero status."""
        return bool(self.exit_status)

    @property
    def threads_created(self) -> int:
        return sum(lane.created for lane in self.lanes)

    @property
    def failures(self) -> int:
        return sum(lookup.failed for lookup in self.lookups)

    @property
    def processes(self) -> list[int]:
        return sorted({lane.tgid for lane in self.lanes})


@dataclass(frozen=True)
class Window:
    """The part of a recording shown, in ns since its start."""

    start: int
    end: int

    @property
    def span(self) -> int:
        return max(self.end - self.start, 1)

    @property
    def whole(self) -> bool:
        return self.start == 0


def window_of(
    timeline: Timeline, from_seconds: float | None = None, to_seconds: float | None = None
) -> Window:
    """``--from``/``--to`` (seconds since the start) as a window within the recording."""
    total = timeline.end_ns - timeline.start_ns
    start = 0 if from_seconds is None else round(from_seconds * 1e9)
    end = total if to_seconds is None else min(round(to_seconds * 1e9), total)
    if start >= end:
        raise UsageError(
            f"--from {start / 1e9:g} --to {end / 1e9:g}: nothing to show (the "
            f"recording lasts {total / 1e9:.3f} s)"
        )
    return Window(start, end)

"""Python stacks read by the probes turned into labels: the ``site`` of a thread's creation or
of a getaddrinfo call (executor threads are read as objects: thread_observer/executors.py).

A site is the first frame (innermost first) outside the plumbing that every call goes through
(``threading``, ``socket``, ``asyncio``, ``concurrent.futures``, ``selectors``; for threads
also AnyIO's worker machinery), written ``path/to/file.py:qualname`` with the path relative to
site-packages or the standard library. ``<native>``: no Python frame (a thread made by native
code, such as libuv's pool). When every frame read is plumbing (a lookup inside an executor
worker, whose stack is only the worker's loop), the innermost frame outside ``socket`` and
``threading`` names it: ``concurrent/futures/thread.py:_WorkItem.run``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from thread_observer.pyruntime import CodeInfo

SITES_PER_TARGET = 30  # site label values of a target with series of their own
NATIVE = "<native>"
UNKNOWN_FRAME = "<unknown>"  # a code object that could not be read (freed since)
MAX_SITE_LENGTH = 128  # as host labels (HostLabels cuts there too)

# site-packages / dist-packages, or the standard library (lib/python3.X/).
LIBRARY_PREFIX = re.compile(r"^.*/(?:site|dist)-packages/|^.*/lib/python\d+\.\d+/")
PLUMBING = ("threading.py", "socket.py", "selectors.py", "asyncio/", "concurrent/futures/")
THREAD_PLUMBING = (*PLUMBING, "anyio/_backends/", "anyio/to_thread.py")
ENTRY_PLUMBING = ("threading.py", "socket.py")
# Since 3.14 a work item runs its call through the executor's WorkerContext: skipped, so that
# an executor worker's lookups keep one site label on every version.
WORKER_CALLS = {("concurrent/futures/thread.py", "WorkerContext.run")}

# asyncio's own loop frames: a plain callback (no coroutine) runs under them (by co_name
# before 3.11, which has no co_qualname).
LOOP_FRAMES = {
    ("asyncio/events.py", "Handle._run"),
    ("asyncio/base_events.py", "BaseEventLoop._run_once"),
    ("asyncio/events.py", "_run"),
    ("asyncio/base_events.py", "_run_once"),
}
EVENT_LOOP, OTHER = "event_loop", "other"


def short_path(filename: str) -> str:
    return LIBRARY_PREFIX.sub("", filename, count=1)


def printable(text: str) -> str:
    """Untrusted names as label text: control characters as escapes."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def frame_label(code: CodeInfo | None) -> str:
    if code is None:
        return UNKNOWN_FRAME
    label = printable(f"{short_path(code.filename)}:{code.qualname}")
    if len(label) > MAX_SITE_LENGTH:
        label = label[: MAX_SITE_LENGTH - 3] + "..."
    return label


def is_plumbing(code: CodeInfo | None, plumbing: tuple[str, ...]) -> bool:
    return code is not None and short_path(code.filename).startswith(plumbing)


def site_label(frames: list[CodeInfo | None], thread: bool = False) -> str:
    """The site of a stack (innermost frame first)."""
    if not frames:
        return NATIVE
    plumbing = THREAD_PLUMBING if thread else PLUMBING
    for code in frames:
        if not is_plumbing(code, plumbing):
            return frame_label(code)
    for code in frames:
        if not is_plumbing(code, ENTRY_PLUMBING) and not is_worker_call(code):
            return frame_label(code)
    return frame_label(frames[0])


def is_worker_call(code: CodeInfo | None) -> bool:
    return code is not None and (short_path(code.filename), code.qualname) in WORKER_CALLS


def under_asyncio_loop(frames: list[CodeInfo | None]) -> bool:
    """Whether asyncio's loop frames are among the frames kept: a plain callback it runs."""
    return any(
        code is not None and (short_path(code.filename), code.qualname) in LOOP_FRAMES
        for code in frames
    )


class ProcessSites:
    """One process's stacks as labels, each stack decoded once (while its code objects are
    most likely alive) and remembered, within a bound."""

    MAX_STACKS = 20000

    def __init__(self, read: Callable[[int], CodeInfo | None]) -> None:
        self._read = read
        self._stacks: dict[tuple[bool, tuple[int, ...]], tuple[str, bool]] = {}

    def describe(self, codes: tuple[int, ...], thread: bool) -> tuple[str, bool]:
        """(site, False) of a thread's creation; (site, under asyncio's loop) of a lookup."""
        key = (thread, codes)
        found = self._stacks.get(key)
        if found is None:
            if len(self._stacks) >= self.MAX_STACKS:
                self._stacks.clear()
            frames = [self._read(address) for address in codes]
            detail = not thread and under_asyncio_loop(frames)
            found = (site_label(frames, thread), detail)
            self._stacks[key] = found
        return found

    def caller(self, flags: int, codes: tuple[int, ...], event_loop_flag: int) -> str:
        """The kernel's caller (a coroutine on the stack, or the epoll mark where the frames
        could not be read), or event_loop where asyncio's loop frames run a plain callback."""
        if flags & event_loop_flag or self.describe(codes, thread=False)[1]:
            return EVENT_LOOP
        return OTHER

    def threads_by_site(self, stacks: Counter) -> Counter[str]:
        sites: Counter[str] = Counter()
        for (_, codes), count in stacks.items():
            sites[self.describe(codes, thread=True)[0]] += count
        return sites

    def calls_by_site(self, stacks: Counter, event_loop_flag: int) -> Counter[tuple[str, str]]:
        sites: Counter[tuple[str, str]] = Counter()
        for (flags, codes), count in stacks.items():
            caller = self.caller(flags, codes, event_loop_flag)
            sites[(self.describe(codes, thread=False)[0], caller)] += count
        return sites

    def callbacks_on_loop(self, stacks: Counter, event_loop_flag: int) -> int:
        """Calls the kernel counted as other that asyncio's loop frames show on the loop."""
        return sum(
            count
            for (flags, codes), count in stacks.items()
            if not flags & event_loop_flag
            and self.caller(flags, codes, event_loop_flag) == EVENT_LOOP
        )

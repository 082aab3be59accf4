"""Lanes grouped by executor: a pool's threads shown together, under a heading, in every picture
and in the trace, however their creation interleaves with other threads'.

A group is one executor of one process (:func:`executor_of` says which, from what the recording
knows of a thread), or the threads of a process in no executor. Processes keep the order of
their first lane, and within a process groups keep the order of their first lane, lanes within a
group their order (of creation): a thread in no executor stays with its process's other ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from thread_observer.timeline.model import Lane

OTHER = "other threads"  # the group of a process's threads that are in no executor
COMM_LENGTH = 15  # characters of a thread's name the kernel keeps (TASK_COMM_LEN - 1)
ANYIO = "AnyIO worker thread"  # the name AnyIO gives its worker threads
LIBUV = "libuv-worker"  # the name libuv gives its pool's threads (uvloop's lookups run there)
POOL = "ThreadPoolExecutor"  # a ThreadPoolExecutor whose name is not known
DEFAULT_POOL = "default executor"  # a loop's default executor, on a loop other than asyncio's
ASYNCIO = "asyncio"  # the prefix asyncio names its default executors' threads with
# "<prefix>_<n>": a ThreadPoolExecutor's workers ("ThreadPoolExecutor-<k>_<n>" without a prefix)
NUMBERED = re.compile(r"(?P<prefix>.+)_\d+")

# Frames of a thread's creation, as (file, function): the file relative to the standard library
# or site-packages, the function the last part of its qualname (before 3.11 there is no
# qualname: the frame is named by the function alone).
THREAD_START = ("threading.py", "start")
POOL_WORKER = ("concurrent/futures/thread.py", "_adjust_thread_count")
ANYIO_WORKER = ("anyio/_backends/_asyncio.py", "run_sync_in_worker_thread")
POOL_PLUMBING = ("concurrent/futures/",)
RUN_IN_EXECUTOR = ("asyncio/base_events.py", "run_in_executor")
# Callers that always hand their work to the loop's default executor (run_in_executor(None)).
DEFAULT_EXECUTOR_CALLERS = {
    ("asyncio/threads.py", "to_thread"),
    ("asyncio/base_events.py", "getaddrinfo"),
    ("asyncio/base_events.py", "getnameinfo"),
}


def executor_of(name: str, stack: Sequence[str] = (), inherited: str = "") -> str | None:
    """The executor a thread is a worker of, or None; from its name and its creation's stack.

    ``name`` is the thread's latest name (a thread can rename itself: the lanes keep the last
    name the recording saw), as the kernel keeps it, cut at 15 characters. A name is evidence
    unless it is ``inherited``, the name of its process's main thread: a new thread starts
    with its creator's name, and Python threads keep it before 3.14 (the first to give the OS
    its threads' names). By name, first:

    - ``AnyIO worker thread`` (cut: ``AnyIO worker th``): AnyIO's workers, ``AnyIO worker
      thread``;
    - ``libuv-worker``: libuv's pool (uvloop's getaddrinfo runs there), ``libuv-worker``;
    - ``ThreadPoolExecu``: a ThreadPoolExecutor's default name cut, so which one is not known:
      ``ThreadPoolExecutor``;
    - ``<prefix>_<n>``: a ThreadPoolExecutor's worker, ``<prefix>`` (``asyncio`` for a loop's
      default executor, ``ThreadPoolExecutor-<k>`` for one given no prefix), unless the stack
      that created the thread was read and shows no pool starting it.

    Then by ``stack``, the frames that created it (innermost first, ``file:qualname``; empty
    where the process's frames were not read):

    - a ThreadPoolExecutor starting a worker for ``asyncio.to_thread``, ``loop.getaddrinfo``
      or ``loop.getnameinfo``, which always use the loop's default executor: ``asyncio`` on
      asyncio's own loop, ``default executor`` on another (uvloop);
    - a ThreadPoolExecutor starting a worker for any other work: ``ThreadPoolExecutor`` (a
      stack tells no pool from another: ``run_in_executor(pool)`` looks like
      ``run_in_executor(None)``);
    - AnyIO starting a worker (``run_sync_in_worker_thread``): ``AnyIO worker thread``.
    """
    frames = [_where(frame) for frame in stack]
    starter = next((frame for frame in frames if frame != THREAD_START), None)
    if name and name != inherited:
        if name == ANYIO or name == ANYIO[:COMM_LENGTH]:
            return ANYIO
        if name == LIBUV:
            return LIBUV
        if name == POOL[:COMM_LENGTH]:
            return POOL
        numbered = NUMBERED.fullmatch(name)
        if numbered and (not frames or starter == POOL_WORKER):
            return numbered["prefix"]
    if starter == ANYIO_WORKER:
        return ANYIO
    if starter != POOL_WORKER:
        return None
    callers = [
        frame
        for frame in frames[frames.index(POOL_WORKER) + 1 :]
        if not frame[0].startswith(POOL_PLUMBING)
    ]
    on_asyncio_loop = bool(callers) and callers[0] == RUN_IN_EXECUTOR
    if on_asyncio_loop:
        callers = callers[1:]
    if callers and callers[0] in DEFAULT_EXECUTOR_CALLERS:
        return ASYNCIO if on_asyncio_loop else DEFAULT_POOL
    return POOL


def _where(frame: str) -> tuple[str, str]:
    """(file, function) of a frame label ``path/file.py:Class.function``."""
    path, _, qualname = frame.rpartition(":")
    return path, qualname.rsplit(".", 1)[-1]


@dataclass
class LaneGroup:
    """One executor's lanes in one process, or the process's lanes in no executor."""

    tgid: int
    executor: str | None  # None: the threads of the process in no executor
    process: str  # the name of the process's main thread ("" where not seen)
    lanes: list[Lane] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.executor or OTHER

    def most_alive(self, end_ns: int) -> int:
        """The most lanes of the group alive at one time (``end_ns``: where lanes alive at the
        end of the recording end); one that ends as another starts does not overlap it."""
        changes = sorted(
            [(lane.start_ns, 1) for lane in self.lanes]
            + [(end_ns if lane.end_ns is None else lane.end_ns, -1) for lane in self.lanes]
        )
        alive = most = 0
        for _, change in changes:
            alive += change
            most = max(most, alive)
        return most


def group_lanes(lanes: Sequence[Lane]) -> list[LaneGroup]:
    """The lanes in groups: the groups of each process together, in the order of their first
    lane; the lanes of a group in their order in ``lanes``."""
    processes: dict[int, str] = {}
    for lane in lanes:
        if lane.main:
            processes.setdefault(lane.tgid, lane.name)
    groups: dict[tuple[int, str | None], LaneGroup] = {}
    order: dict[int, int] = {}  # process -> its place
    for lane in lanes:
        process = processes.get(lane.tgid, "")
        executor = None if lane.main else executor_of(lane.name, lane.stack, process)
        key = (lane.tgid, executor)
        if key not in groups:
            groups[key] = LaneGroup(lane.tgid, executor, process)
        groups[key].lanes.append(lane)
        order.setdefault(lane.tgid, len(order))
    return sorted(groups.values(), key=lambda group: order[group.tgid])


def grouped_rows(lanes: Sequence[Lane]) -> list[LaneGroup | Lane]:
    """What the pictures draw, top to bottom: each group's heading row, then its lanes."""
    return [row for group in group_lanes(lanes) for row in (group, *group.lanes)]


def lane_order(lanes: Sequence[Lane]) -> list[Lane]:
    return [lane for group in group_lanes(lanes) for lane in group.lanes]

"""Lanes and lookups, from a recording's events replayed in order."""

from __future__ import annotations

from dataclasses import asdict

from thread_observer.timeline.model import EXISTING, MAIN, Event, Lane, Lookup, Recording, Timeline


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
        lane = Lane(
            event.tgid,
            event.task,
            event.tid,
            event.comm,
            creator,
            event.parent,
            event.time_ns if start_ns is None else start_ns,
            None,
            event.start_routine,
        )
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
        lane = self._start(event, event.creator or "unknown")
        lane.site, lane.stack = event.site, event.stack

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
        # A lane keeps its thread's latest name (here and at its exit): the one that says which
        # executor it works for (timeline/groups.py), a pool naming its threads once started.
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
        self.calls[event.task] = Lookup(
            event.tgid,
            event.task,
            lane.tid,
            event.time_ns,
            event.host,
            event.service,
            site=event.site,
            stack=event.stack,
        )

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
    return Timeline(
        recording.command,
        recording.start_ns,
        recording.end_ns,
        recording.lost_events,
        lanes,
        lookups,
        recording.exit_status,
    )

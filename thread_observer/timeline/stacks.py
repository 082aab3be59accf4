"""The Python stacks of a timeline's records: each watched process's interpreter found (as the
observer finds it, thread_observer/pyruntime.py) and given to the probe, and the code objects of
each record decoded while the process is alive."""

from __future__ import annotations

import logging
import time

from thread_observer import procfs, pyruntime
from thread_observer.constants import StackFlag
from thread_observer.sites import NATIVE, frame_label, site_label
from thread_observer.targets import cmdline_of

log = logging.getLogger(__name__)

FIND_TRIES = 100  # a program just started: its interpreter is looked for at each tick


class ProcessStacks:
    """Where each watched process's frames can be read, and the stacks of its records."""

    def __init__(self, probes) -> None:
        self.probes = probes
        self._readers: dict[int, pyruntime.CodeReader] = {}
        self._looking: dict[int, int] = {}  # tgid -> tries left
        self._read_since: dict[int, int] = {}  # tgid -> when its interpreter was read (ns)

    def look_for(self, tgid: int, exec_ns: int | None = None) -> None:
        """A process watched, or one that started a new program at ``exec_ns``: its
        interpreter is sought, unless it was read after that exec (its record can arrive
        late)."""
        if exec_ns is not None and self._read_since.get(tgid, 0) > exec_ns:
            return
        self._readers.pop(tgid, None)
        self._looking[tgid] = FIND_TRIES

    def forget(self, tgid: int) -> None:
        self._readers.pop(tgid, None)
        self._looking.pop(tgid, None)
        self._read_since.pop(tgid, None)

    def find(self) -> None:
        for tgid in list(self._looking):
            self._looking[tgid] -= 1
            started = time.monotonic_ns()  # the clock of the records
            try:
                runtime = pyruntime.locate(tgid, procfs.read_maps(tgid))
            except pyruntime.NotReadyYet:
                if self._looking[tgid] <= 0:
                    del self._looking[tgid]
                continue
            except (pyruntime.SitesUnavailable, OSError) as err:
                log.debug("pid %d: no Python stacks in the timeline: %s", tgid, err)
                del self._looking[tgid]
                continue
            del self._looking[tgid]
            self.probes.set_python_process(tgid, runtime)
            self._readers[tgid] = pyruntime.CodeReader(tgid, runtime)
            self._read_since[tgid] = started
            log.info(
                "pid %d: Python %d.%d stacks read: %s",
                tgid,
                *runtime.version,
                " ".join((cmdline_of(tgid) or "?").split())[:120],
            )

    def describe(
        self, tgid: int, codes: tuple[int, ...], flags: int, thread: bool
    ) -> tuple[str, list[str]]:
        """(site, frames innermost first) of a record's stack; ("", []) when the process's
        frames were not read."""
        reader = self._readers.get(tgid)
        if reader is None or not flags & StackFlag.PROCESS_READ:
            return "", []
        if not flags & StackFlag.FRAMES_READ:
            return NATIVE, []
        frames = [reader.code(address) for address in codes]
        return site_label(frames, thread), [frame_label(code) for code in frames]

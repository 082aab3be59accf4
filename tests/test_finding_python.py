"""When the observer gives up on reading a process's Python frames, with a made-up process: a
failure that its timing explains (the process was just started, started a program or exited
while it was read) is tried again or dropped without a word; one that lasts is reported, once,
after at most SITE_TRIES tries."""

from __future__ import annotations

import errno
import logging
import os
import time

import pytest

from tests.harness import shared_libpython_pythons
from thread_observer import observers, procfs, pyruntime
from thread_observer.observers import FRESH_SECONDS, SITE_TRIES, BpfObserver, TrackedProcess
from thread_observer.pyruntime import NotReadyYet, ReadFailed, SitesUnavailable

PID = 4242
PROGRAM = [procfs.Mapping(0x1000, 0x2000, "/usr/bin/python3.11", True)]
ANOTHER_PROGRAM = [procfs.Mapping(0x5000, 0x6000, "/usr/bin/python3.11", True)]
EIO = ReadFailed("unreadable", f"cannot read _PyRuntime: {os.strerror(errno.EIO)}")
MISMATCH = SitesUnavailable("offsets_mismatch", "the main thread is not in the thread list")


class FakeProcess:
    """What the observer sees of a process: its mappings at each read of them (the last one
    read on and on; an exception is raised), its interpreter's lookup, and whether it ended."""

    def __init__(self, monkeypatch, lookup: Exception, maps: list | None = None) -> None:
        self.lookup = lookup
        self.maps = list(maps or [PROGRAM])
        self.ended = False
        monkeypatch.setattr(procfs, "read_maps", self.read_maps)
        monkeypatch.setattr(pyruntime, "locate", self.locate)
        monkeypatch.setattr(observers, "ended", lambda pid, started: self.ended)

    def read_maps(self, pid: int) -> list[procfs.Mapping]:
        found = self.maps.pop(0) if len(self.maps) > 1 else self.maps[0]
        if isinstance(found, Exception):
            raise found
        return found

    def locate(self, pid: int, mappings: list[procfs.Mapping]) -> pyruntime.PythonRuntime:
        raise self.lookup


@pytest.fixture
def observer():
    found = BpfObserver([], [])
    found.procs[PID] = TrackedProcess(pid=PID, target="app", create_time=1.0)
    return found


def look(observer: BpfObserver, fresh: bool = False) -> TrackedProcess:
    """One poll's try at the process's frames."""
    tracked = observer.procs[PID]
    observer._fresh.pop(PID, None)
    if fresh:
        observer._fresh[PID] = time.monotonic() + FRESH_SECONDS
    observer._find_python(tracked)
    return tracked


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_read_failure_while_fresh_is_tried_again_then_reported_once_it_is_not(
    monkeypatch, observer, caplog
):
    # A spawned worker read while it starts its program: EIO from the old address space.
    FakeProcess(monkeypatch, EIO)
    assert look(observer, fresh=True).sites_unavailable is None
    assert warnings(caplog) == []
    assert look(observer, fresh=False).sites_unavailable == "unreadable"
    assert len(warnings(caplog)) == 1


def test_a_read_failure_that_lasts_while_fresh_is_reported_after_site_tries(
    monkeypatch, observer, caplog
):
    FakeProcess(monkeypatch, EIO)
    for _ in range(SITE_TRIES - 1):
        assert look(observer, fresh=True).sites_unavailable is None
    assert look(observer, fresh=True).sites_unavailable == "unreadable"
    assert len(warnings(caplog)) == 1


@pytest.mark.parametrize("failure", [EIO, MISMATCH], ids=["unreadable", "offsets_mismatch"])
def test_a_process_whose_mappings_changed_under_the_read_is_tried_again(
    monkeypatch, observer, caplog, failure
):
    # Its exec (or a library loaded) between the read of its mappings and of its memory.
    FakeProcess(monkeypatch, failure, [PROGRAM, ANOTHER_PROGRAM])
    assert look(observer).sites_unavailable is None
    assert warnings(caplog) == []


def test_a_process_that_changes_under_every_read_is_reported_after_site_tries(
    monkeypatch, observer, caplog
):
    process = FakeProcess(monkeypatch, MISMATCH)
    for tries in range(1, SITE_TRIES + 1):
        process.maps = [PROGRAM, ANOTHER_PROGRAM] if tries % 2 else [ANOTHER_PROGRAM, PROGRAM]
        tracked = look(observer)
        assert tracked.sites_unavailable == (None if tries < SITE_TRIES else "offsets_mismatch")
    assert len(warnings(caplog)) == 1


@pytest.mark.parametrize("failure", [EIO, MISMATCH], ids=["unreadable", "offsets_mismatch"])
def test_a_real_failure_in_an_unchanged_process_is_reported_at_once(
    monkeypatch, observer, caplog, failure
):
    FakeProcess(monkeypatch, failure)
    assert look(observer).sites_unavailable == failure.reason
    assert warnings(caplog) == [
        f"pid {PID}: Python call sites unavailable ({failure.reason}): {failure}; "
        "caller=event_loop falls back to the epoll mark"
    ]


def test_a_mismatch_is_not_excused_by_freshness(monkeypatch, observer):
    # Only a failed read is: offsets that read the wrong thread list stay wrong.
    FakeProcess(monkeypatch, MISMATCH)
    assert look(observer, fresh=True).sites_unavailable == "offsets_mismatch"


GONE = FileNotFoundError(errno.ENOENT, "No such file or directory")


@pytest.mark.parametrize(
    ("failure", "maps", "ended"),
    [
        (MISMATCH, [PROGRAM], True),  # a zombie by now
        (EIO, [PROGRAM, []], False),  # exiting: its address space gone, not a zombie yet
        (ReadFailed("unreadable", str(GONE)), [PROGRAM, GONE], True),  # reaped
        (EIO, [GONE], True),  # reaped before its first read
    ],
    ids=["zombie", "exiting", "reaped", "reaped_before"],
)
def test_a_process_that_exits_while_it_is_read_went_away(
    monkeypatch, observer, caplog, failure, maps, ended
):
    process = FakeProcess(monkeypatch, failure, maps)
    process.ended = ended
    caplog.set_level(logging.DEBUG, logger=observers.log.name)
    assert look(observer).sites_unavailable is None
    assert warnings(caplog) == []
    assert f"process {PID} went away while reading its interpreter" in caplog.text


def test_proc_files_that_stay_unreadable_are_reported(monkeypatch, observer, caplog):
    # Not a silent zero: a live process whose /proc files the observer may not read.
    FakeProcess(monkeypatch, EIO, [PermissionError(errno.EACCES, "Permission denied")])
    assert look(observer).sites_unavailable == "unreadable"
    assert len(warnings(caplog)) == 1


def test_not_ready_yet_is_tried_until_site_tries(monkeypatch, observer, caplog):
    FakeProcess(monkeypatch, NotReadyYet("not_ready", "the interpreter is not initialised yet"))
    for _ in range(SITE_TRIES - 1):
        assert look(observer).sites_unavailable is None
    assert look(observer).sites_unavailable == "not_ready"
    assert len(warnings(caplog)) == 1


# The interpreter of a program whose loader has not mapped its libraries yet
LOADER = procfs.Mapping(0x7000, 0x8000, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", True)
MUSL = procfs.Mapping(0x7000, 0x8000, "/lib/ld-musl-x86_64.so.1", True)
SHARED_PYTHONS = shared_libpython_pythons()


def test_a_program_whose_loader_has_not_mapped_libc_yet_is_not_ready():
    with pytest.raises(NotReadyYet, match="loader has not mapped"):
        pyruntime.locate(os.getpid(), [*PROGRAM, LOADER])


@pytest.mark.skipif(not SHARED_PYTHONS, reason="no pyenv interpreter with a shared libpython")
def test_a_program_that_names_a_libpython_not_mapped_yet_is_not_ready(monkeypatch):
    # musl's loader is its libc: mapped from the exec on, it maps libpython after.
    python = os.path.realpath(SHARED_PYTHONS[0])
    monkeypatch.setattr(procfs, "exe_path", lambda pid: python)
    program = procfs.Mapping(0x1000, 0x2000, python, True)
    with pytest.raises(NotReadyYet, match=r"loader has not mapped libpython3\.\d+m?\.so"):
        pyruntime.locate(os.getpid(), [program, MUSL])


def test_a_program_that_names_no_libpython_has_no_interpreter(monkeypatch):
    sleep = os.path.realpath("/bin/sleep")
    monkeypatch.setattr(procfs, "exe_path", lambda pid: sleep)
    program = procfs.Mapping(0x1000, 0x2000, sleep, True)
    with pytest.raises(SitesUnavailable, match="no _PyRuntime") as raised:
        pyruntime.locate(os.getpid(), [program, MUSL])
    assert not isinstance(raised.value, NotReadyYet)
    assert raised.value.reason == "no_interpreter"

"""Checking a target's interpreter offsets against its memory, with a made-up memory: a thread
list that names another process's threads (a fork's copy of its parent's) is tried again
later, one of the process's own threads without the main one is a mismatch."""

from __future__ import annotations

import os
import struct

import pytest

from thread_observer import pyruntime
from thread_observer.pyoffsets import OFFSETS
from thread_observer.pyruntime import (
    Memory,
    NotReadyYet,
    ReadFailed,
    SitesUnavailable,
    check_offsets,
)

PARENT, CHILD = 4000, 4100  # a process and its child, forked by the parent's main thread
RUNTIME, INTERP, CODE_TYPE = 0x10000, 0x20000, 0x90000
TSTATES = 0x30000  # one thread state every 0x1000 from here
PTHREADS = 0x60000  # one glibc struct pthread every 0x1000 from here
PTHREAD_TID = 0x2D0  # where glibc 2.36 keeps a thread's tid in its struct pthread


class FakeMemory(Memory):
    """A target's memory: blocks of zeros at addresses; reads elsewhere fail as unmapped."""

    def __init__(self) -> None:
        super().__init__(CHILD)
        self.blocks: dict[int, bytearray] = {}

    def add(self, address: int, size: int) -> None:
        self.blocks[address] = bytearray(size)

    def put(self, address: int, value: int, fmt: str = "<Q") -> None:
        start, block = self._block(address, struct.calcsize(fmt))
        struct.pack_into(fmt, block, address - start, value)

    def read(self, address: int, size: int) -> bytes:
        start, block = self._block(address, size)
        return bytes(block[address - start : address - start + size])

    def _block(self, address: int, size: int) -> tuple[int, bytearray]:
        for start, block in self.blocks.items():
            if start <= address and address + size <= start + len(block):
                return start, block
        raise OSError(f"short read at {address:#x}")


def interpreter(offsets: dict, tids: list[int]) -> FakeMemory:
    """An initialised interpreter whose thread list holds one thread state per tid, none
    running Python code. Before 3.11 a thread state holds a pointer to its struct pthread,
    which holds the tid."""
    memory = FakeMemory()
    memory.add(RUNTIME, 512)
    memory.add(INTERP, 512)
    memory.put(RUNTIME + offsets["runtime_interpreters_head"], INTERP)
    states = [TSTATES + i * 0x1000 for i in range(len(tids))]
    memory.put(INTERP + offsets["interp_threads_head"], states[0] if states else 0)
    for i, (tstate, tid) in enumerate(zip(states, tids, strict=True)):
        memory.add(tstate, 512)
        if i + 1 < len(states):
            memory.put(tstate + offsets["tstate_next"], states[i + 1])
        if offsets.get("thread_id_is_pthread"):
            pthread = PTHREADS + i * 0x1000
            memory.add(pthread, pyruntime.PTHREAD_SEARCHED)
            memory.put(pthread + PTHREAD_TID, tid, "<I")
            memory.put(tstate + offsets["tstate_native_thread_id"], pthread)
        else:
            memory.put(tstate + offsets["tstate_native_thread_id"], tid)
    return memory


@pytest.fixture
def threads(monkeypatch):
    """Sets the live threads of the child and of its parent, as /proc would list them."""
    live = {PARENT: [PARENT, PARENT + 1, PARENT + 2], CHILD: [CHILD]}
    monkeypatch.setattr(pyruntime, "namespace_tids", lambda pid: list(live.get(pid, [])))
    monkeypatch.setattr(pyruntime.procfs, "parent_pid", lambda pid: PARENT)
    return live


def check(memory: FakeMemory, offsets: dict) -> int:
    return check_offsets(memory, CHILD, CHILD, RUNTIME, offsets, CODE_TYPE)


def offsets_of(version: tuple[int, int]) -> dict:
    return dict(OFFSETS[version])


def test_a_child_whose_thread_list_still_names_its_parents_threads_is_tried_again(threads):
    offsets = offsets_of((3, 11))
    with pytest.raises(NotReadyYet, match="not the process's own") as raised:
        check(interpreter(offsets, [PARENT, PARENT + 1, PARENT + 2]), offsets)
    # Reported as a mismatch only if it stays so (the observer tries a bounded number of times).
    assert raised.value.reason == "offsets_mismatch"


def test_a_thread_state_not_bound_to_its_thread_yet_is_tried_again(threads):
    offsets = offsets_of((3, 12))
    with pytest.raises(NotReadyYet):
        check(interpreter(offsets, [0]), offsets)


def test_a_list_of_its_own_threads_without_the_main_one_is_a_mismatch(threads):
    threads[CHILD] = [CHILD, CHILD + 1]
    offsets = offsets_of((3, 11))
    with pytest.raises(SitesUnavailable, match="main thread is not") as raised:
        check(interpreter(offsets, [CHILD + 1]), offsets)
    assert not isinstance(raised.value, NotReadyYet)
    assert raised.value.reason == "offsets_mismatch"


def test_the_child_is_read_once_its_interpreter_has_dropped_its_parents_threads(threads):
    offsets = offsets_of((3, 11))
    memory = interpreter(offsets, [CHILD])
    assert check(memory, offsets) == INTERP + offsets["interp_threads_head"]


def test_a_list_begun_after_it_was_read_empty_is_tried_again(threads):
    # A new interpreter (a spawned worker's, just after its exec) links its first thread
    # state while the list is read.
    offsets = offsets_of((3, 11))
    memory = interpreter(offsets, [CHILD])
    head = INTERP + offsets["interp_threads_head"]
    first = memory.pointer(head)
    memory.put(head, 0)
    read = memory.read

    def begun_after_first_read(address: int, size: int) -> bytes:
        data = read(address, size)
        if address == head:
            memory.put(head, first)
        return data

    memory.read = begun_after_first_read
    with pytest.raises(NotReadyYet, match="no thread state yet"):
        check(memory, offsets)


def test_before_3_11_a_child_that_has_not_run_yet_is_tried_again(threads):
    # Its struct pthreads hold its parent's tids: the kernel writes the child's own into the
    # forking thread's when the child first runs.
    offsets = offsets_of((3, 10))
    with pytest.raises(NotReadyYet, match="its parent's"):
        check(interpreter(offsets, [PARENT, PARENT + 1, PARENT + 2]), offsets)


@pytest.mark.parametrize(
    "others",
    [
        [PARENT + 1, PARENT + 2],  # run, but its interpreter has not dropped the copies yet
        [0, 0],  # glibc has marked the parent's other threads gone
    ],
)
def test_before_3_11_a_child_that_has_run_finds_its_tid_offset(threads, others):
    offsets = offsets_of((3, 10))
    memory = interpreter(offsets, [CHILD, *others])
    assert check(memory, offsets) == INTERP + offsets["interp_threads_head"]
    assert offsets["pthread_tid"] == PTHREAD_TID


def test_before_3_11_struct_pthreads_naming_no_related_thread_are_a_mismatch(threads):
    offsets = offsets_of((3, 10))
    with pytest.raises(SitesUnavailable, match="struct pthread") as raised:
        check(interpreter(offsets, [777, 778]), offsets)
    assert not isinstance(raised.value, NotReadyYet)


@pytest.mark.parametrize("address", [1 << 63, 0xFFFF_FFFF_FFFF_FFF8, -8])
def test_an_address_no_process_can_map_fails_as_a_read(address):
    # A pointer read while it changes may hold anything; pread would raise OverflowError.
    with pytest.raises(OSError, match="no such address"):
        Memory(os.getpid()).pointer(address)


def test_a_thread_list_that_fails_to_read_is_a_read_failure(threads):
    # The process may have started a program or exited meanwhile: the observer judges that.
    offsets = offsets_of((3, 11))
    memory = interpreter(offsets, [CHILD])
    memory.put(INTERP + offsets["interp_threads_head"], 0x7777_0000)  # nothing mapped there
    with pytest.raises(ReadFailed, match="reading the thread list failed") as raised:
        check(memory, offsets)
    assert raised.value.reason == "offsets_mismatch"


def published_offsets(version: tuple[int, int], free_threaded: int = 0) -> bytes:
    """The start of a _PyRuntime that publishes ``version``'s own offsets: the cookie, the
    version as PY_VERSION_HEX, then each field this version's layout has at its word."""
    from thread_observer.pyoffsets import DEBUG_FIELDS

    words = [0] * (pyruntime.DEBUG_OFFSETS_SIZE // 8)
    for name, index in DEBUG_FIELDS.get(version, DEBUG_FIELDS[max(DEBUG_FIELDS)]).items():
        words[index] = OFFSETS.get(version, OFFSETS[max(OFFSETS)]).get(name, 0) + 8
    words[DEBUG_FIELDS[max(DEBUG_FIELDS)]["free_threaded"]] = free_threaded
    raw = bytearray(struct.pack(f"<{len(words)}Q", *words))
    raw[:8] = pyruntime.DEBUG_COOKIE
    struct.pack_into("<Q", raw, 8, version[0] << 24 | version[1] << 16 | 0x0A << 4)
    return bytes(raw)


def runtime_publishing(raw: bytes) -> FakeMemory:
    memory = FakeMemory()
    memory.add(RUNTIME, len(raw))
    memory.blocks[RUNTIME][:] = raw
    return memory


@pytest.mark.parametrize("version", [(3, 13), (3, 14)])
def test_published_offsets_are_taken_from_the_interpreter(version):
    memory = runtime_publishing(published_offsets(version))
    found, offsets = pyruntime.interpreter_offsets(memory, RUNTIME, version)
    assert found == version
    # Each published field is the interpreter's (here: the generated one moved by 8); the
    # fields it does not publish come from the generated table.
    assert offsets["tstate_next"] == OFFSETS[version]["tstate_next"] + 8
    assert offsets["frame_owner"] == OFFSETS[version]["frame_owner"] + 8
    assert offsets["code_flags"] == OFFSETS[version]["code_flags"]


def test_a_free_threaded_interpreter_is_said_not_read():
    memory = runtime_publishing(published_offsets((3, 14), free_threaded=1))
    with pytest.raises(SitesUnavailable) as raised:
        pyruntime.interpreter_offsets(memory, RUNTIME, (3, 14))
    assert raised.value.reason == "free_threaded"
    assert "free-threaded" in str(raised.value)


def test_a_published_layout_of_a_later_version_is_unsupported_not_guessed():
    memory = runtime_publishing(published_offsets((3, 15)))
    with pytest.raises(SitesUnavailable) as raised:
        pyruntime.interpreter_offsets(memory, RUNTIME, (3, 15))
    assert raised.value.reason == "unsupported_version"
    assert "3.8 to 3.14 are read" in str(raised.value)

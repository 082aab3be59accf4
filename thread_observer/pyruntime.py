"""Finding a target's CPython interpreter from outside, and reading its code objects.

The probes read frames in the kernel (probes/python_stack.h) with the offsets found here: the
interpreter's ``_PyRuntime`` symbol (pyelftools, in the executable or ``libpythonX.Y``), its
load address from ``/proc/PID/maps``, and the struct offsets: published by the interpreter
itself in ``_Py_DebugOffsets`` (3.13, 3.14), or generated per version from CPython's headers
(``thread_observer/pyoffsets.py``, by ``tools/gen_pyoffsets.py``). Offsets are checked against live
memory before use: the main thread must be found in the interpreter's thread list, and its
current frame must point at a code object. Anything else means "sites unavailable" for the
process, never a guess.

Code objects are decoded from ``/proc/PID/mem`` in user space and cached; a cached entry is
used only while the object at that address still is a code object with the same name and file
pointers (a freed object's address may hold another one).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from thread_observer import procfs
from thread_observer.constants import SiteLimit
from thread_observer.pyoffsets import DEBUG_FIELDS, OFFSETS

DEBUG_COOKIE = b"xdebugpy"
MAX_THREADS = 4096  # thread states looked at when checking the offsets
# Bytes of glibc's struct pthread searched for its tid (0x2d0 on glibc 2.36 x86-64).
PTHREAD_SEARCHED = 2048
MAX_NAME_CHARS = 256  # of a qualname or file name read from a target
FRAME_CHECKS = 20  # reads of a running main thread's frame before trying again later
CODE_CACHE_SIZE = 4096  # code objects remembered per process
ADDRESS_END = 1 << 63  # /proc/PID/mem takes offsets below this (pread's off_t)
# Bytes read at the start of _PyRuntime (every version's is larger): up to the last field used
# of every version's _Py_DebugOffsets.
DEBUG_OFFSETS_SIZE = 8 * (1 + max(max(fields.values()) for fields in DEBUG_FIELDS.values()))
# The first version that publishes its offsets, and the versions read, for messages.
FIRST_PUBLISHED = min(DEBUG_FIELDS)
READ_VERSIONS = "{}.{} to {}.{} are read".format(*min(OFFSETS), *max(OFFSETS))


class SitesUnavailable(Exception):
    """Python frames cannot be read in this process; ``reason`` is the metric's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class NotReadyYet(SitesUnavailable):
    """The interpreter is not mapped or not initialised yet (a process caught at exec), or
    the thread list is not the process's own yet (caught just after a fork): try again later."""


class ReadFailed(SitesUnavailable):
    """A read of the process (its memory, its /proc files) failed: final only if it fails the
    same way in a process that neither ended nor changed meanwhile. A process that starts a
    program while it is read fails so (EIO), and one that exits (ENOENT, a short read)."""


@dataclass(frozen=True)
class PythonRuntime:
    version: tuple[int, int]
    threads_head: int  # address of the main interpreter's threads.head
    code_type: int  # address of PyCode_Type
    offsets: dict[str, int]
    text: tuple[int, int]  # the interpreter's executable mapping: Python threads start there
    # (st_dev, st_ino) of the process's PID namespace when it is not the observer's, where its
    # thread states hold other ids than the observer sees; (0, 0) in the observer's own.
    pidns: tuple[int, int] = (0, 0)
    object_path: str = ""  # the object holding the interpreter, as the process names it
    bias: int = 0  # that object's load bias: where it lies less its addresses as linked


@dataclass(frozen=True)
class CodeInfo:
    filename: str
    qualname: str
    flags: int


class Memory:
    """Reads another process's memory through /proc/PID/mem."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, address: int, size: int) -> bytes:
        if not 0 <= address < ADDRESS_END:  # a pointer read mid-change may be anything
            raise OSError(f"no such address: {address:#x}")
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        try:
            data = os.pread(fd, size, address)
        finally:
            os.close(fd)
        if len(data) != size:
            raise OSError(f"short read at {address:#x}")
        return data

    def pointer(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]


# (device, inode, size, mtime, question) -> the answer read from the file. Parsing an
# interpreter's symbol table takes tens of milliseconds, and every forked worker of a server
# maps the same file.
_ELF_CACHE: dict[tuple, object] = {}
ELF_CACHE_SIZE = 64


def read_elf_once(path: str, question: tuple, read):
    """``read(path)``, remembered per file (by device, inode, size and modification time) and
    question, whatever path the file is reached by."""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, question)
    if key not in _ELF_CACHE:
        if len(_ELF_CACHE) >= ELF_CACHE_SIZE:
            _ELF_CACHE.clear()
        _ELF_CACHE[key] = read(path)
    return _ELF_CACHE[key]


def elf_symbols(path: str, names: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """Addresses of symbols in an ELF file (as linked) and the load bias's reference: the
    lowest PT_LOAD address, page aligned (0 for a fixed-address executable)."""
    found, lowest = read_elf_once(path, names, lambda p: read_elf_symbols(p, names))
    return dict(found), lowest


def symbol_file_offsets(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """The file offsets uprobes take for functions of an ELF file, by name (those it defines):
    each symbol's address moved into the file by the PT_LOAD segment that holds it. The first
    definition of a name counts, .dynsym before .symtab, as bcc resolves them."""
    return dict(read_elf_once(path, ("offsets", *names), lambda p: read_file_offsets(p, names)))


def read_file_offsets(path: str, names: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    with open(path, "rb") as file:
        elf = ELFFile(file)
        addresses = first_symbols(elf, names, defined_only=True)
        segments = [
            (seg["p_vaddr"], seg["p_memsz"], seg["p_offset"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        ]
    offsets = {}
    for name, address in addresses.items():
        for start, size, offset in segments:
            if start <= address < start + size:
                offsets[name] = address - start + offset
                break
    return tuple(offsets.items())


def needed_libraries(path: str) -> tuple[str, ...]:
    """The libraries an ELF file names for the loader to map (DT_NEEDED)."""
    return read_elf_once(path, ("DT_NEEDED",), read_needed_libraries)


def read_needed_libraries(path: str) -> tuple[str, ...]:
    with open(path, "rb") as file:
        for segment in ELFFile(file).iter_segments():
            if segment["p_type"] == "PT_DYNAMIC":
                return tuple(tag.needed for tag in segment.iter_tags("DT_NEEDED"))
    return ()


def first_symbols(elf: ELFFile, names: tuple[str, ...], defined_only: bool) -> dict[str, int]:
    """Each name's address (st_value) from its first symbol, .dynsym before .symtab; with
    ``defined_only``, its first definition (an undefined symbol of an executable may carry
    its PLT stub's address)."""
    found: dict[str, int] = {}
    for section_name in (".dynsym", ".symtab"):
        section = elf.get_section_by_name(section_name)
        for name in names if section is not None else ():
            symbols = [
                symbol["st_value"]
                for symbol in section.get_symbol_by_name(name) or ()
                if not defined_only or (symbol["st_shndx"] != "SHN_UNDEF" and symbol["st_value"])
            ]
            if symbols and name not in found:
                found[name] = symbols[0]
    return found


def read_elf_symbols(path: str, names: tuple[str, ...]) -> tuple[dict[str, int], int]:
    with open(path, "rb") as file:
        elf = ELFFile(file)
        found = first_symbols(elf, names, defined_only=False)
        if elf["e_type"] != "ET_DYN":
            return found, -1
        lowest = min(seg["p_vaddr"] for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
    return found, lowest & ~0xFFF


def interpreter_object(pid: int, mappings: list[procfs.Mapping]) -> str:
    """The object that holds the interpreter: libpythonX.Y when mapped, else the executable."""
    for mapping in mappings:
        if procfs.LIBPYTHON.match(os.path.basename(mapping.path)):
            return mapping.path
    return procfs.exe_path(pid)


def namespace_pid(pid: int, tid: int | None = None) -> int:
    """A process's (or one of its threads') id in its own PID namespace: what
    native_thread_id holds."""
    task = f"/proc/{pid}/task/{tid}" if tid is not None else f"/proc/{pid}"
    with open(f"{task}/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid if tid is None else tid


def pid_namespace(pid: int) -> tuple[int, int]:
    """(st_dev, st_ino) of the process's PID namespace; (0, 0) when it is the observer's."""
    theirs, ours = os.stat(f"/proc/{pid}/ns/pid"), os.stat("/proc/self/ns/pid")
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        return (0, 0)
    return (theirs.st_dev, theirs.st_ino)


def locate(pid: int, mappings: list[procfs.Mapping]) -> PythonRuntime:
    """The interpreter of a process, its offsets checked; raises SitesUnavailable."""
    if procfs.loader_busy(mappings):
        raise NotReadyYet("not_ready", "its loader has not mapped its libraries yet")
    try:
        pidns, ns_pid = pid_namespace(pid), namespace_pid(pid)
    except OSError as err:
        raise ReadFailed("unreadable", f"cannot read its PID namespace: {err}") from None
    path = interpreter_object(pid, mappings)
    version = procfs.python_version(pid, mappings)
    if version is not None and version < (3, 8):
        raise SitesUnavailable("unsupported_version", f"Python {version} ({READ_VERSIONS})")
    try:
        symbols, lowest = elf_symbols(
            procfs.path_in_root(pid, path, mappings), ("_PyRuntime", "PyCode_Type")
        )
    except (OSError, ELFError) as err:
        raise SitesUnavailable("no_interpreter", f"cannot read {path}: {err}") from None
    if len(symbols) < 2:
        awaited = libpython_awaited(pid, path, mappings)
        if awaited:
            raise NotReadyYet("not_ready", f"its loader has not mapped {awaited} yet")
        raise SitesUnavailable("no_interpreter", f"no _PyRuntime/PyCode_Type symbol in {path}")
    bias = 0
    if lowest >= 0:
        starts = [m.start for m in mappings if m.path == path]
        if not starts:
            raise SitesUnavailable("no_interpreter", f"{path} is not mapped")
        bias = min(starts) - lowest
    memory = Memory(pid)
    runtime = bias + symbols["_PyRuntime"]
    version, offsets = interpreter_offsets(memory, runtime, version)
    check_frame_layout(offsets)
    check_thread_layout(offsets)
    threads_head = check_offsets(
        memory, pid, ns_pid, runtime, offsets, bias + symbols["PyCode_Type"]
    )
    text = [(m.start, m.end) for m in mappings if m.path == path and m.executable]
    text_range = (min(s for s, _ in text), max(e for _, e in text)) if text else (0, 0)
    return PythonRuntime(
        version,
        threads_head,
        bias + symbols["PyCode_Type"],
        offsets,
        text_range,
        pidns,
        object_path=path,
        bias=bias,
    )


def libpython_awaited(pid: int, path: str, mappings: list[procfs.Mapping]) -> str | None:
    """The libpython an executable without an interpreter names for its loader, while it is
    not mapped: musl's loader, libc itself, maps the libraries after the program has started."""
    if any(procfs.LIBPYTHON.match(os.path.basename(m.path)) for m in mappings):
        return None
    try:
        needed = needed_libraries(procfs.path_in_root(pid, path, mappings))
    except (OSError, ELFError):
        return None
    return next((name for name in needed if procfs.LIBPYTHON.match(name)), None)


def interpreter_offsets(memory: Memory, runtime: int, version: tuple[int, int] | None):
    """(version, offsets): from _Py_DebugOffsets when the interpreter publishes them."""
    try:
        head = memory.read(runtime, DEBUG_OFFSETS_SIZE)
    except OSError as err:
        raise ReadFailed("unreadable", f"cannot read _PyRuntime: {err}") from None
    if head[:8] == DEBUG_COOKIE:
        hex_version = struct.unpack_from("<Q", head, 8)[0]
        published = (hex_version >> 24, (hex_version >> 16) & 0xFF)
        return published, debug_offsets(published, head)
    if version not in OFFSETS or version >= FIRST_PUBLISHED:
        raise SitesUnavailable(
            "unsupported_version", f"no struct offsets for Python {version} ({READ_VERSIONS})"
        )
    return version, dict(OFFSETS[version])


def debug_offsets(version: tuple[int, int], raw: bytes) -> dict[str, int]:
    """The offsets an interpreter publishes in its _Py_DebugOffsets, whose own layout is its
    version's (thread_observer/pyoffsets.py DEBUG_FIELDS)."""
    if version not in DEBUG_FIELDS:
        raise SitesUnavailable(
            "unsupported_version",
            f"_Py_DebugOffsets of Python {version} has an unknown layout ({READ_VERSIONS})",
        )
    words = struct.unpack_from(f"<{DEBUG_OFFSETS_SIZE // 8}Q", raw)
    published = {name: words[index] for name, index in DEBUG_FIELDS[version].items()}
    if published.pop("free_threaded"):
        # Its objects have another header (ob_tid, a shared reference count) and its code
        # objects another co_flags offset, which _Py_DebugOffsets does not publish.
        raise SitesUnavailable(
            "free_threaded", f"Python {version} built free-threaded: its frames are not read"
        )
    offsets = dict(OFFSETS[version])  # co_flags and the str layout are not published
    offsets.update(published)
    offsets["cframe_current_frame"] = -1
    return offsets


def check_frame_layout(offsets: dict[str, int]) -> None:
    """The probes read a frame's header at once (FRAME_READ_SIZE bytes): its fields must lie
    inside, pointers 8-aligned."""
    size = SiteLimit.FRAME_READ_SIZE
    pointers = (offsets["frame_code"], offsets["frame_previous"])
    if any(p % 8 or p > size - 8 for p in pointers) or offsets["frame_owner"] >= size:
        raise SitesUnavailable("offsets_mismatch", f"frame fields beyond {size} bytes: {offsets}")


def thread_state_fields(offsets: dict[str, int]) -> list[int]:
    """Offsets of the pointer-sized thread state fields the probes read (datastack_top follows
    datastack_chunk)."""
    names = ("tstate_prev", "tstate_next", "tstate_native_thread_id", "tstate_frame")
    fields = [offsets[name] for name in names]
    if offsets["tstate_datastack_chunk"] >= 0:
        fields += [offsets["tstate_datastack_chunk"], offsets["tstate_datastack_chunk"] + 8]
    return fields


def tstate_read_size(offsets: dict[str, int]) -> int:
    """Bytes of a thread state the probes read at once: up to the end of its last field used."""
    return max(thread_state_fields(offsets)) + 8


def check_thread_layout(offsets: dict[str, int]) -> None:
    """The probes read a thread state's first bytes at once, fewer than TSTATE_READ_SIZE: the
    fields used must lie inside, 8-aligned. The data stack only saves reads: without it
    (3.8-3.10, or out of reach) each frame is read on its own."""
    offsets.setdefault("tstate_datastack_chunk", -1)

    def fits() -> bool:
        size = SiteLimit.TSTATE_READ_SIZE
        return all(f % 8 == 0 and 0 <= f < size - 8 for f in thread_state_fields(offsets))

    if not fits():
        offsets["tstate_datastack_chunk"] = -1
    if not fits():
        raise SitesUnavailable("offsets_mismatch", f"thread fields beyond reach: {offsets}")


def check_offsets(
    memory: Memory, pid: int, ns_pid: int, runtime: int, offsets: dict[str, int], code_type: int
) -> int:
    """The address of the main interpreter's thread list head, once the offsets have found
    the main thread (native_thread_id == ns_pid, its id in its own PID namespace) and its
    frame holds a code object."""
    try:
        interp = memory.pointer(runtime + offsets["runtime_interpreters_head"])
        if interp == 0:
            raise NotReadyYet("not_ready", "the interpreter is not initialised yet")
        head = interp + offsets["interp_threads_head"]
        states = thread_states(memory, head, offsets)
        offsets["pthread_tid"] = -1
        if offsets.get("thread_id_is_pthread"):
            offsets["pthread_tid"] = pthread_tid_offset(memory, pid, ns_pid, states, offsets)
        for tstate in states:
            if thread_tid(memory, tstate, offsets) == ns_pid:
                check_frame(memory, tstate, offsets, code_type)
                return head
        strangers = threads_not_its_own(memory, pid, states, offsets)
    except OSError as err:
        raise ReadFailed("offsets_mismatch", f"reading the thread list failed: {err}") from None
    if not states:  # the list as read, not read again: a new one may have begun since
        raise NotReadyYet("not_ready", "no thread state yet")
    if strangers:
        raise NotReadyYet("offsets_mismatch", f"{NOT_ITS_OWN_YET}: {sorted(strangers)[:8]}")
    raise SitesUnavailable(
        "offsets_mismatch",
        "the main thread is not in the interpreter's thread list at the expected offsets",
    )


# A thread list without the main thread that names threads other than the process's own is
# tried again later, as an interpreter not initialised yet is: a forked child holds copies of
# its parent's thread states (the surviving one still with the parent's thread id) from the
# fork until its interpreter resets them (PyOS_AfterFork_Child), and a child of fork and exec
# (multiprocessing's spawn, subprocess) until its exec; 3.12+ also links a new thread state
# before binding it to its thread (id 0 until then).
NOT_ITS_OWN_YET = (
    "the interpreter's thread list names threads that are not the process's own (a fork's "
    "copies of its parent's, until the interpreter drops them, or not bound to a thread yet)"
)


def threads_not_its_own(memory: Memory, pid: int, states: list[int], offsets: dict) -> set[int]:
    """Ids in the thread list that name none of the process's threads (0: not bound yet)."""
    own = set(namespace_tids(pid))
    return {tid for tid in (thread_tid(memory, t, offsets) for t in states) if tid not in own}


def thread_states(memory: Memory, head: int, offsets: dict[str, int]) -> list[int]:
    states, tstate = [], memory.pointer(head)
    while tstate and len(states) < MAX_THREADS:
        states.append(tstate)
        tstate = memory.pointer(tstate + offsets["tstate_next"])
    return states


def thread_tid(memory: Memory, tstate: int, offsets: dict[str, int]) -> int:
    """A thread state's kernel thread id: native_thread_id (3.11+), else the tid in the
    glibc struct pthread that its thread_id (a pthread_t) points at."""
    thread_id = memory.pointer(tstate + offsets["tstate_native_thread_id"])
    if offsets["pthread_tid"] < 0 or thread_id == 0:
        return thread_id
    return struct.unpack("<I", memory.read(thread_id + offsets["pthread_tid"], 4))[0]


def pthread_tid_offset(
    memory: Memory, pid: int, ns_pid: int, states: list[int], offsets: dict
) -> int:
    """Where glibc's struct pthread keeps the thread's tid: the offset at which the main
    thread's (tid == ns_pid) holds it, checked on every other thread state (each must name
    a thread of the process, ids as its PID namespace sees them). As pystack reads it; glibc
    does not publish it.

    A forked child's other thread states name its parent's threads until its interpreter
    drops them (the forking thread's struct pthread gets the child's id when the child first
    runs): those are taken as well, and a child caught before it ran at all, where the structs
    name only its parent's threads, is tried again later."""
    if not states:
        raise NotReadyYet("not_ready", "no thread state yet")
    own = set(namespace_tids(pid))
    found = tid_offset(memory, states, offsets, {ns_pid}, own)
    if found is not None:
        return found
    parents = parent_tids(pid)
    found = tid_offset(memory, states, offsets, {ns_pid}, own | parents)
    if found is not None:
        return found
    if parents and tid_offset(memory, states, offsets, parents, parents) is not None:
        raise NotReadyYet("offsets_mismatch", f"{NOT_ITS_OWN_YET}: its parent's")
    raise SitesUnavailable("offsets_mismatch", "no thread's struct pthread holds its tid")


def tid_offset(
    memory: Memory, states: list[int], offsets: dict, wanted: set[int], known: set[int]
) -> int | None:
    """The first offset at which a thread state's struct pthread holds one of ``wanted`` and
    every other one a thread of ``known`` (or 0: glibc's mark of a thread gone in a fork)."""
    for tstate in states:
        thread_id = memory.pointer(tstate + offsets["tstate_native_thread_id"])
        if not thread_id:
            continue
        data = memory.read(thread_id, PTHREAD_SEARCHED)
        for at in range(0, PTHREAD_SEARCHED, 4):
            if struct.unpack_from("<I", data, at)[0] not in wanted:
                continue
            trial = {**offsets, "pthread_tid": at}
            others = [thread_tid(memory, t, trial) for t in states if t != tstate]
            if all(tid in known or tid == 0 for tid in others):
                return at
    return None


def parent_tids(pid: int) -> set[int]:
    """The threads of the process's parent, as ids of its PID namespace; empty if gone."""
    parent = procfs.parent_pid(pid)
    if not parent:
        return set()
    with contextlib.suppress(OSError):
        return set(namespace_tids(parent))
    return set()


def namespace_tids(pid: int) -> list[int]:
    """The process's live threads, as ids of its own PID namespace."""
    tids = []
    for name in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that exits meanwhile
            tids.append(namespace_pid(pid, int(name)))
    return tids


def current_frame(memory: Memory, tstate: int, offsets: dict[str, int]) -> int:
    """A thread state's innermost frame (through its cframe on 3.11 and 3.12); 0 for none."""
    frame = memory.pointer(tstate + offsets["tstate_frame"])
    if offsets["cframe_current_frame"] >= 0 and frame:
        frame = memory.pointer(frame + offsets["cframe_current_frame"])
    return frame


def check_frame(memory: Memory, tstate: int, offsets: dict[str, int], code_type: int) -> None:
    """The main thread's current frame holds a code object. The thread runs while it is read:
    a frame popped between two reads (its slot already reused by the next call) can show
    anything, so a few reads are made, and a process whose every read fails is tried again
    later (NotReadyYet) before the offsets are called wrong."""
    for _ in range(FRAME_CHECKS):
        frame = current_frame(memory, tstate, offsets)
        if frame == 0:
            return  # not running Python code now: nothing to check the frame offsets with
        try:
            code = memory.pointer(frame + offsets["frame_code"]) & ~SiteLimit.FRAME_CODE_TAG_BITS
            if code and memory.pointer(code + offsets["object_type"]) == code_type:
                return
        except OSError:
            continue  # a pointer read mid-change
    raise NotReadyYet("offsets_mismatch", "the main thread's frame holds no code object")


class CodeReader:
    """Decodes code objects of one process, with a bounded cache checked on every use."""

    def __init__(self, pid: int, runtime: PythonRuntime) -> None:
        self.memory = Memory(pid)
        self.runtime = runtime
        self._cache: OrderedDict[int, tuple[bytes, CodeInfo]] = OrderedDict()
        offsets = runtime.offsets
        self._header_size = (
            max(offsets["code_qualname"], offsets["code_filename"], offsets["code_flags"]) + 8
        )

    def code(self, address: int) -> CodeInfo | None:
        """The code object at an address, or None when there is none (freed, or not code)."""
        offsets = self.runtime.offsets
        try:
            header = self.memory.read(address, self._header_size)
        except OSError:
            return None
        if struct.unpack_from("<Q", header, offsets["object_type"])[0] != self.runtime.code_type:
            return None
        identity = (
            header[offsets["code_filename"] : offsets["code_filename"] + 8]
            + header[offsets["code_qualname"] : offsets["code_qualname"] + 8]
        )
        cached = self._cache.get(address)
        if cached is not None and cached[0] == identity:
            self._cache.move_to_end(address)
            return cached[1]
        info = CodeInfo(
            filename=self.string(struct.unpack_from("<Q", header, offsets["code_filename"])[0]),
            qualname=self.string(struct.unpack_from("<Q", header, offsets["code_qualname"])[0]),
            flags=struct.unpack_from("<I", header, offsets["code_flags"])[0],
        )
        self._cache[address] = (identity, info)
        if len(self._cache) > CODE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return info

    def string(self, address: int) -> str:
        """A str object's text, at most MAX_NAME_CHARS characters; "?" when unreadable."""
        offsets = self.runtime.offsets
        try:
            header = self.memory.read(address, offsets["unicode_compact_size"])
            length = struct.unpack_from("<q", header, offsets["unicode_length"])[0]
            state = struct.unpack_from("<I", header, offsets["unicode_state"])[0]
            kind, compact, ascii_only = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
            if not compact or kind not in (1, 2, 4) or length < 0:
                return "?"
            start = offsets["unicode_ascii_size" if ascii_only else "unicode_compact_size"]
            count = min(length, MAX_NAME_CHARS)
            data = self.memory.read(address + start, count * kind)
        except OSError:
            return "?"
        encoding = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return data.decode(encoding, errors="replace")

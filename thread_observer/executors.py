"""The thread pools of a Python process, read as objects from outside, whenever asked.

How many threads a pool has, how many run a work item, its cap and the work waiting for it are
facts about the executor object now, not about the stacks that once created its threads. So
they are read from the process's memory (/proc/PID/mem), with the struct offsets the call
sites use (thread_observer/pyoffsets.py), each object's type checked by name before it is read:

- every ``ThreadPoolExecutor`` worker thread runs ``concurrent.futures.thread._worker``, whose
  frame holds a weak reference to its executor and the executor's work queue (a
  ``_queue.SimpleQueue``). A worker whose ``_worker`` frame is its innermost frame waits for
  work (``work_queue.get`` is C code, no frame of its own); one with a frame above runs a work
  item. Its executor's ``_max_workers`` and ``_thread_name_prefix`` are read from its
  attributes, the queue's length from the queue;
- a loop's default executor is the ``_default_executor`` of an event loop that a frame holds
  (``run_forever``'s ``self`` while it runs, the local variable of the code that made it
  between two runs); uvloop keeps it in its C struct, where it is found as the word holding
  the address of an executor seen in a worker. Where no loop is found, an executor named
  ``asyncio`` is one (the name asyncio gives the default executors it makes, 3.9+);
- AnyIO's worker threads run ``WorkerThread.run`` and wait in ``queue.Queue.get`` (Python
  code) between work items. AnyIO bounds them with a capacity limiter, not a cap of its own:
  they have no max_workers.

Threads and objects change while they are read: a read that fails or decodes to the wrong type
leaves that thread or executor out of this reading, never a guessed number.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from dataclasses import dataclass

from thread_observer import pyruntime
from thread_observer.constants import SiteLimit
from thread_observer.model import Executor
from thread_observer.pyruntime import (
    ADDRESS_END,
    CodeInfo,
    CodeReader,
    PythonRuntime,
    ReadFailed,
    thread_states,
)
from thread_observer.sites import printable, short_path

# (file, qualname, name): before 3.11 code objects have no qualname, their name stands in.
WORKER = ("concurrent/futures/thread.py", "_worker", "_worker")
ANYIO_WORKER = ("anyio/_backends/_asyncio.py", "WorkerThread.run", "run")
QUEUE_GET = ("queue.py", "Queue.get", "get")
MAX_FRAMES = 256  # of one thread's stack, innermost first: executor frames sit at its bottom
MAX_ATTRIBUTES = 64  # entries of an object's attribute table looked through
MAX_TYPE_NAME = 64
MAX_BASES = 8  # of a loop's class, up to uvloop's C type
MAX_QUEUED = 1 << 40  # beyond: a queue read mid-change
ASYNCIO_PREFIX = "asyncio"
# Local variables of each frame looked at for event loops (a loop is an argument or one of
# the first locals of the code that runs it); what lies past a frame's locals is type-checked
# like the rest.
LOCALS_LOOKED_AT = 16
UVLOOP_LOOP = "uvloop.loop.Loop"  # the C type under uvloop's Loop
MAX_LOOP_BYTES = 4096
# A SimpleQueue's items: a list and the index of the first item not yet taken (3.8-3.12), then
# a ring buffer (3.13+). The struct is private to Modules/_queuemodule.c (no header to generate
# its offsets from): measured on 3.8 to 3.14 and checked on every read (the type's name, a
# list where one must be, indices within the ring).
SIMPLE_QUEUE_LIST = {"list": 32, "position": 40}
SIMPLE_QUEUE_RING = {"put": 24, "get": 32, "capacity": 48, "count": 56}


class Memory(pyruntime.Memory):
    """/proc/PID/mem opened once for one reading (pyruntime's opens it at each read)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, address: int, size: int) -> bytes:
        if not 0 < address < ADDRESS_END:
            raise OSError(f"no such address: {address:#x}")
        data = os.pread(self.fd, size, address)
        if len(data) != size:
            raise OSError(f"short read at {address:#x}")
        return data

    def signed(self, address: int) -> int:
        return struct.unpack("<q", self.read(address, 8))[0]

    def byte(self, address: int) -> int:
        return self.read(address, 1)[0]

    def c_string(self, address: int, limit: int) -> str:
        return self.read(address, limit).split(b"\0", 1)[0].decode("latin-1")


@dataclass
class Worker:
    """A worker thread's frames: which executor and queue, whether it runs a work item."""

    executor: int  # the executor object (0: gone, or not read)
    queue: int
    busy: bool


class ObjectReader:
    """Reads objects of one process with its interpreter's offsets."""

    def __init__(self, memory: Memory, runtime: PythonRuntime, codes: CodeReader) -> None:
        self.memory = memory
        self.offsets = runtime.offsets
        self.version = runtime.version
        self.codes = codes
        self._types: dict[int, str] = {}

    def type_of(self, address: int) -> int:
        return self.memory.pointer(address + self.offsets["object_type"])

    def type_name(self, address: int) -> str:
        """The name of an object's type (tp_name: "module.Name" for C types)."""
        return self._name_of_type(self.type_of(address))

    def _name_of_type(self, type_address: int) -> str:
        name = self._types.get(type_address)
        if name is None:
            name_at = self.memory.pointer(type_address + self.offsets["type_name"])
            name = self.memory.c_string(name_at, MAX_TYPE_NAME)
            self._types[type_address] = name
        return name

    def inherits(self, address: int, type_name: str) -> bool:
        """Whether an object's type or one of its bases (tp_base, first bases only) has that
        name."""
        type_address = self.type_of(address)
        for _ in range(MAX_BASES):
            if not type_address:
                return False
            if self._name_of_type(type_address) == type_name:
                return True
            type_address = self.memory.pointer(type_address + self.offsets["type_base"])
        return False

    def basic_size(self, address: int) -> int:
        return self.memory.signed(self.type_of(address) + self.offsets["type_basicsize"])

    def is_a(self, address: int, *names: str) -> bool:
        return address != 0 and self.type_name(address) in names

    def string(self, address: int) -> str | None:
        return self.codes.string(address) if self.is_a(address, "str") else None

    def integer(self, address: int) -> int | None:
        """A small int's value (up to two 30-bit digits, as max_workers and queue lengths)."""
        if not self.is_a(address, "int", "bool"):
            return None
        offsets = self.offsets
        if offsets["long_tag"] >= 0:
            tag = self.memory.pointer(address + offsets["long_tag"])
            digits, negative = tag >> 3, (tag & 3) == 2
        else:
            size = self.memory.signed(address + offsets["var_size"])
            digits, negative = abs(size), size < 0
        if digits > 2:
            return None
        raw = self.memory.read(address + offsets["long_digits"], 4 * digits)
        value = sum(struct.unpack_from("<I", raw, 4 * i)[0] << (30 * i) for i in range(digits))
        return -value if negative else value

    def locals(self, frame: int, count: int) -> list[int]:
        """A frame's first local variables (3.14's stack references carry tag bits)."""
        raw = self.memory.read(frame + self.offsets["frame_localsplus"], 8 * count)
        return [word & ~SiteLimit.FRAME_CODE_TAG_BITS for word in struct.unpack(f"<{count}Q", raw)]

    def referent(self, weakref: int) -> int:
        """What a weak reference points at; 0 once it died (then it points at None)."""
        if not self.is_a(weakref, "weakref", "weakref.ReferenceType"):
            return 0
        target = self.memory.pointer(weakref + self.offsets["weakref_object"])
        return 0 if self.is_a(target, "NoneType") else target

    def _attribute_table(self, address: int) -> tuple[int, int]:
        """(values array or 0, keys object) of an instance's attributes: split tables hold
        their values apart from the keys their type shares; a plain dict is looked up whole
        (values 0, its entries holding the values)."""
        offsets = self.offsets
        type_address = self.type_of(address)
        flags = self.memory.pointer(type_address + offsets["type_flags"])
        if self.version < (3, 11) or not flags & offsets["tpflags_managed_dict"]:
            dict_offset = self.memory.signed(type_address + offsets["type_dictoffset"])
            if dict_offset <= 0:
                return 0, 0
            return self._dict_table(self.memory.pointer(address + dict_offset))
        shared_keys = self.memory.pointer(type_address + offsets["heaptype_cached_keys"])
        values = self._managed_values(address, type_address, flags)
        if values and shared_keys:
            return values, shared_keys
        return self._dict_table(self.memory.pointer(address + offsets["managed_dict_offset"]))

    def _managed_values(self, address: int, type_address: int, flags: int) -> int:
        """The values array of an instance whose attribute table its interpreter manages."""
        offsets = self.offsets
        if self.version >= (3, 13):
            if not flags & offsets["tpflags_inline_values"]:
                return 0
            inline = address + self.memory.signed(type_address + offsets["type_basicsize"])
            valid = self.memory.byte(inline + 3)  # PyDictValues.valid: 0 once a dict took over
            return inline + offsets["dictvalues_values"] if valid else 0
        if self.version >= (3, 12):
            tagged = self.memory.pointer(address + offsets["managed_dict_offset"])
            return tagged + 1 if tagged & 1 else 0  # stored as the address minus 1
        return self.memory.pointer(address - 4 * 8)  # 3.11: the values pointer before the dict's

    def _dict_table(self, dictionary: int) -> tuple[int, int]:
        if not self.is_a(dictionary, "dict"):
            return 0, 0
        keys = self.memory.pointer(dictionary + self.offsets["dict_keys"])
        values = self.memory.pointer(dictionary + self.offsets["dict_values"])
        if self.version >= (3, 11) and values:  # past the PyDictValues header (3.13+)
            values += self.offsets["dictvalues_values"]
        return values, keys

    def _find_entry(self, keys: int, name: str) -> tuple[int, int] | None:
        """(index, address of the value slot) of a str key's entry: the index is also its
        value's in a split table's values array."""
        entries, count, size, value_at = self._entries(keys)
        for index in range(min(count, MAX_ATTRIBUTES)):
            entry = entries + index * size
            key = self.memory.pointer(entry + value_at - 8)
            if key and self.string(key) == name:
                return index, entry + value_at
        return None

    def _entries(self, keys: int) -> tuple[int, int, int, int]:
        """(first entry, entries used, entry size, offset of the value in an entry): (hash,
        key, value) entries, or (key, value) in a str-keyed table since 3.11."""
        offsets = self.offsets
        count = self.memory.signed(keys + offsets["dictkeys_nentries"])
        if self.version < (3, 11):
            size = self.memory.signed(keys + offsets["dictkeys_size"])
            index_bytes = 1 if size <= 0xFF else 2 if size <= 0xFFFF else 4
            entries = keys + offsets["dictkeys_indices"] + size * index_bytes
            return entries, count, offsets["dict_entry_size"], 16
        log2_index_bytes = self.memory.byte(keys + offsets["dictkeys_log2_index_bytes"])
        entries = keys + offsets["dictkeys_indices"] + (1 << log2_index_bytes)
        if self.memory.byte(keys + offsets["dictkeys_kind"]) == 0:  # DICT_KEYS_GENERAL
            return entries, count, offsets["dict_entry_size"], 16
        return entries, count, offsets["dict_unicode_entry_size"], 8

    def dict_attribute(self, address: int, name: str) -> int | None:
        """An attribute wherever its table keeps it: a values array, or a dict's entries."""
        values, keys = self._attribute_table(address)
        found = self._find_entry(keys, name) if keys else None
        if found is None:
            return None
        index, slot = found
        return self.memory.pointer(values + 8 * index if values else slot)

    def queue_length(self, queue: int) -> int | None:
        """Items waiting in a SimpleQueue."""
        if not self.is_a(queue, "_queue.SimpleQueue"):
            return None
        if self.version >= (3, 13):
            ring = {k: self.memory.signed(queue + v) for k, v in SIMPLE_QUEUE_RING.items()}
            capacity, count = ring["capacity"], ring["count"]
            in_ring = 0 <= ring["put"] < capacity and 0 <= ring["get"] < capacity
            if not (0 <= count <= capacity and in_ring):
                return None
            return count
        items = self.memory.pointer(queue + SIMPLE_QUEUE_LIST["list"])
        if not self.is_a(items, "list"):
            return None
        length = self.memory.signed(items + self.offsets["var_size"])
        position = self.memory.signed(queue + SIMPLE_QUEUE_LIST["position"])
        queued = length - position
        return queued if 0 <= queued < MAX_QUEUED else None


def where(code: CodeInfo | None) -> tuple[str, str] | None:
    return None if code is None else (short_path(code.filename), code.qualname)


def runs(place: tuple[str, str] | None, function: tuple[str, str, str]) -> bool:
    return place is not None and place[0] == function[0] and place[1] in function[1:]


def thread_frames(reader: ObjectReader, tstate: int) -> list[tuple[int, tuple[str, str] | None]]:
    """A thread's frames, innermost first: (frame address, (file, qualname) or None)."""
    offsets, memory = reader.offsets, reader.memory
    frame = pyruntime.current_frame(memory, tstate, offsets)
    frames = []
    while frame and len(frames) < MAX_FRAMES:
        code = memory.pointer(frame + offsets["frame_code"]) & ~SiteLimit.FRAME_CODE_TAG_BITS
        frames.append((frame, where(reader.codes.code(code)) if code else None))
        frame = memory.pointer(frame + offsets["frame_previous"])
    return frames


def read_worker(reader: ObjectReader, frames: list, at: int) -> Worker | None:
    """The worker whose ``_worker`` frame is ``frames[at]``: its first argument is the weak
    reference to the executor, the first SimpleQueue among the next two its work queue (the
    arguments' order changed in 3.14)."""
    reference, *arguments = reader.locals(frames[at][0], 3)
    executor = reader.referent(reference)
    for queue in arguments:
        if reader.is_a(queue, "_queue.SimpleQueue"):
            return Worker(executor, queue, busy=at > 0)
    return None


def anyio_busy(frames: list, at: int) -> bool:
    """An AnyIO worker waits in queue.Queue.get (and what it calls) between work items."""
    return at > 0 and not runs(frames[at - 1][1], QUEUE_GET)


def default_executors(reader: ObjectReader, stacks: list[list], known: set[int]) -> set[int]:
    """The default executors of the event loops that frames hold: a loop running now is its
    run_forever frame's ``self``, one between two runs (run_until_complete, then other work)
    a local variable of the code that made it. An asyncio loop names its default executor in
    an attribute; uvloop's keeps it in a field of its C struct, found as the word that holds
    the address of one of the ``known`` executors."""
    found: set[int] = set()
    if not known:
        return found
    candidates: set[int] = set()
    for frames in stacks:
        for frame, _ in frames:
            with contextlib.suppress(OSError):
                candidates.update(reader.locals(frame, LOCALS_LOOKED_AT))
    for candidate in candidates - {0}:
        with contextlib.suppress(OSError):
            found |= loop_default_executor(reader, candidate, known)
    return found


def loop_default_executor(reader: ObjectReader, candidate: int, known: set[int]) -> set[int]:
    """{the default executor} of an event loop among ``known``, else nothing."""
    if reader.inherits(candidate, UVLOOP_LOOP):
        size = min(reader.basic_size(candidate), MAX_LOOP_BYTES)
        words = struct.unpack(f"<{size // 8}Q", reader.memory.read(candidate, size // 8 * 8))
        return set(words) & known
    executor = reader.dict_attribute(candidate, "_default_executor")
    return {executor} if executor in known else set()


def bounded_name(prefix: str | None) -> str:
    """A thread-name prefix as a label: ThreadPoolExecutor's own default ends in a counter
    ("ThreadPoolExecutor-3"), dropped so that the names stay few."""
    if prefix is None:
        return ""
    return printable(re.sub(r"-\d+$", "", prefix))[:64]


class ExecutorReader:
    """One process's executors, read anew on each call of ``read``. Which executors are loops'
    default ones is looked for again only when an executor not seen before appears: looking
    reads every frame's locals. A process with no pool thread at its last reading gets one
    only by creating a thread: until the kernel counts a new thread there, it is not read
    again (most processes of a node have no pool)."""

    def __init__(self, pid: int, runtime: PythonRuntime, codes: CodeReader) -> None:
        self.pid = pid
        self.runtime = runtime
        self.codes = codes
        self._seen: set[int] = set()
        self._defaults: set[int] = set()
        self._poolless_at: int | None = None  # threads created when last read without pools

    def read(self, threads_created: int | None = None) -> list[Executor]:
        """The executors now; ``threads_created``: the process's threads created so far, as
        the kernel counts them (None: unknown, always read)."""
        if threads_created is not None and threads_created == self._poolless_at:
            return []
        found = self._read_now()
        self._poolless_at = threads_created if not found else None
        return found

    def _read_now(self) -> list[Executor]:
        try:
            memory = Memory(self.pid)
        except OSError as err:
            raise ReadFailed("unreadable", f"cannot open its memory: {err}") from None
        try:
            return self._read(ObjectReader(memory, self.runtime, self.codes))
        finally:
            memory.close()

    def _read(self, reader: ObjectReader) -> list[Executor]:
        stacks = []
        with contextlib.suppress(OSError):
            for tstate in thread_states(reader.memory, self.runtime.threads_head, reader.offsets):
                with contextlib.suppress(OSError):  # a thread that ends while read
                    stacks.append(thread_frames(reader, tstate))
        workers: list[Worker] = []
        anyio = [0, 0]  # threads, busy
        for frames in stacks:
            for at, (_, place) in enumerate(frames):
                if runs(place, WORKER):
                    with contextlib.suppress(OSError):
                        worker = read_worker(reader, frames, at)
                        if worker is not None:
                            workers.append(worker)
                    break
                if runs(place, ANYIO_WORKER):
                    anyio[0] += 1
                    anyio[1] += anyio_busy(frames, at)
                    break
        self._find_defaults(reader, stacks, {w.executor for w in workers} - {0})
        executors = [self._executor(reader, members) for members in by_queue(workers).values()]
        if anyio[0]:
            executors.append(Executor("anyio", "anyio", anyio[0], anyio[1], None, None))
        return executors

    def _find_defaults(self, reader: ObjectReader, stacks: list[list], owners: set[int]) -> None:
        if owners <= self._seen:
            return
        self._defaults = default_executors(reader, stacks, owners)
        self._seen = owners

    def _executor(self, reader: ObjectReader, members: list[Worker]) -> Executor:
        """An executor's numbers; what cannot be read of it is None, its threads still
        counted."""
        owner = next((w.executor for w in members if w.executor), 0)
        prefix = max_workers = queued = None
        with contextlib.suppress(OSError):
            if owner:
                prefix = reader.string(reader.dict_attribute(owner, "_thread_name_prefix") or 0)
                max_workers = reader.integer(reader.dict_attribute(owner, "_max_workers") or 0)
            queued = reader.queue_length(members[0].queue)
        name = bounded_name(prefix)
        default = owner in self._defaults or (not self._defaults and name == ASYNCIO_PREFIX)
        return Executor(
            pool="default" if default and owner else "thread_pool",
            name=name,
            threads=len(members),
            busy=sum(w.busy for w in members),
            max_workers=max_workers,
            queued=queued,
        )


def by_queue(workers: list[Worker]) -> dict[int, list[Worker]]:
    """Workers by executor: its work queue is theirs alone (its weak reference may be dead)."""
    found: dict[int, list[Worker]] = {}
    for worker in workers:
        found.setdefault(worker.queue, []).append(worker)
    return found

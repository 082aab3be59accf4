"""Compiled and loaded probes held by their file descriptors, with the part of bcc's ``BPF``
object the daemon uses (tables by name, ``load_func``, attaching and detaching, the ring
buffer), on the kernel's interfaces (bpf_calls.py) instead of libbcc: the daemon keeps the
programs and maps that probe_loader.py's short-lived child compiled and loaded, and never
maps LLVM.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from thread_observer import bpf_calls
from thread_observer.bpf_calls import (
    ARRAY_TYPES,
    C_TYPES,
    PERCPU_TYPES,
    BpfCallError,
    ctype_of,
    possible_cpus,
)

# bcc's program types (BPF.KPROBE and so on: the kernel's enum bpf_prog_type).
KPROBE, TRACEPOINT, RAW_TRACEPOINT = 2, 5, 17
NO_ATTACH_TYPE = -1  # bcc's default: the program is loaded without an expected attach type
# How a program is attached, by its expected attach type (linux/bpf.h)
FORMS = {NO_ATTACH_TYPE: "perf_event", 48: "uprobe_multi", 57: "uprobe_session"}
AUTOLOAD_PREFIXES = {"tracepoint__": TRACEPOINT, "raw_tracepoint__": RAW_TRACEPOINT}

# What bcc builds a ring buffer's record type from: the C struct's fields as "name#type", with
# the kernel's type names besides C's.
EVENT_FIELD_TYPES = {
    **C_TYPES,
    "s8": ctypes.c_char,
    "u8": ctypes.c_ubyte,
    "s16": ctypes.c_short,
    "u16": ctypes.c_ushort,
    "s32": ctypes.c_int,
    "u32": ctypes.c_uint,
    "s64": ctypes.c_longlong,
    "u64": ctypes.c_ulonglong,
    "enum": ctypes.c_int,
    "u8 *": ctypes.c_char_p,
    "char *": ctypes.c_char_p,
    "void *": ctypes.c_void_p,
}
ARRAY_FIELD = re.compile(r"([^ ]+) ?\[([0-9]+)\]$")


def event_type(fields: list[str]):
    """A ring buffer record's ctypes type from bcc's "name#type" field list."""
    members = []
    for field in fields:
        name, kind = field.split("#", 1)
        kind = "enum" if kind.startswith("enum ") else kind
        array = ARRAY_FIELD.match(kind)
        if array:
            members.append((name, EVENT_FIELD_TYPES[array.group(1)] * int(array.group(2))))
        else:
            members.append((name, EVENT_FIELD_TYPES[kind]))
    return type("", (ctypes.Structure,), {"_fields_": members})


@dataclass
class Program:
    """A loaded program as bcc's ``BPF.Function``: its name (bytes) and a file descriptor of
    the caller's own (closing it leaves the loaded one in place)."""

    name: bytes
    fd: int


@dataclass(frozen=True)
class MapInfo:
    """A map as the loader describes it: kernel map type, size, and bcc's descriptions of its
    key and value C types (a ring buffer's record as its field list)."""

    name: str
    fd: int
    map_type: int
    max_entries: int
    key: object
    leaf: object
    event_fields: list[str] | None = None


class Table:
    """A map by its fd, with bcc's table interface: ``Key``/``Leaf`` ctypes types, lookups
    that raise KeyError, ``items``/``values``, and for arrays integer indexes."""

    def __init__(self, info: MapInfo, open_ring=None) -> None:
        self.name = info.name
        self._open_ring = open_ring
        self.map_fd = info.fd
        self.ttype = info.map_type
        self.max_entries = info.max_entries
        self.Key = ctype_of(info.key)  # noqa: N815 (bcc's names)
        self.Leaf = ctype_of(info.leaf)  # noqa: N815
        if info.map_type in PERCPU_TYPES:
            # A value per possible CPU, each in 8-byte steps, as the kernel copies them out
            # (bcc's PerCpuArray shows them so).
            self.Leaf = self.Leaf * possible_cpus()  # noqa: N815
        self._event_fields = info.event_fields
        self._event_type = None
        self._is_array = info.map_type in ARRAY_TYPES

    def __repr__(self) -> str:
        return f"<map {self.name} fd {self.map_fd}>"

    def _key(self, key):
        return self.Key(key) if isinstance(key, int) else key

    def __getitem__(self, key):
        leaf = self.Leaf()
        if not bpf_calls.lookup(self.map_fd, self._key(key), leaf):
            raise KeyError(key)
        return leaf

    def __setitem__(self, key, leaf) -> None:
        bpf_calls.update(self.map_fd, self._key(key), leaf)

    def __delitem__(self, key) -> None:
        if self._is_array:  # an array's entries cannot go: bcc zeroes them
            self[key] = self.Leaf()
        elif not bpf_calls.delete(self.map_fd, self._key(key)):
            raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def pop(self, key, *default):
        try:
            leaf = self[key]
            del self[key]
        except KeyError:
            if default:
                return default[0]
            raise
        return leaf

    def keys(self) -> Iterator:
        if self._is_array:
            yield from (self.Key(index) for index in range(self.max_entries))
            return
        key, following = None, self.Key()
        while bpf_calls.next_key(self.map_fd, key, following):
            key, following = following, self.Key()
            yield key

    __iter__ = keys

    def items(self) -> list:
        found = []
        for key in list(self.keys()):
            leaf = self.get(key)
            if leaf is not None:  # gone between the walk and the lookup
                found.append((key, leaf))
        return found

    def values(self) -> list:
        return [leaf for _, leaf in self.items()]

    def __len__(self) -> int:
        return len(list(self.keys()))

    def clear(self) -> None:
        for key in list(self.keys()):
            del self[key]

    def open_ring_buffer(self, callback) -> None:
        """Each record of this ring buffer to ``callback(ctx, data, size)`` at the owner's
        ``ring_buffer_consume``."""
        self._open_ring(self.map_fd, callback)

    def event(self, data):
        """A ring buffer record (``data`` its address) as its C struct."""
        if self._event_type is None:
            self._event_type = event_type(self._event_fields or [])
        return ctypes.cast(data, ctypes.POINTER(self._event_type)).contents


class LoadedProbes:
    """The programs and maps one compile made, as the daemon uses bcc's ``BPF`` object.

    ``programs`` holds every variant the loader made of each function: {(name, program type,
    expected attach type): fd} (a uprobe program for a uprobe_multi link and for a perf event
    are loaded apart); ``refused`` says why the kernel refused one."""

    def __init__(
        self,
        programs: dict[tuple[str, int, int], int],
        refused: dict[tuple[str, int, int], str],
        maps: dict[str, MapInfo],
        autoload: list[str],
    ) -> None:
        self._programs = programs
        self._refused = refused
        self._maps = maps
        self._autoload = autoload
        self._tables: dict[str, Table] = {}
        self._ring_buffers: list[bpf_calls.RingBuffer] = []
        self._event_names = itertools.count(1)
        self.funcs: dict[bytes, Program] = {}
        self.uprobe_fds: dict[str, int] = {}
        self.tracepoint_fds: dict[bytes, int] = {}
        self.raw_tracepoint_fds: dict[bytes, int] = {}

    def attach_autoload(self) -> None:
        """Attaches the TRACEPOINT_PROBE and RAW_TRACEPOINT_PROBE programs, as bcc does as it
        loads a module."""
        for name in self._autoload:
            if name.startswith("tracepoint__"):
                tracepoint = name.removeprefix("tracepoint__").replace("__", ":", 1)
                self.attach_tracepoint(tp=tracepoint, fn_name=name)
            else:
                self.attach_raw_tracepoint(tp=name.removeprefix("raw_tracepoint__"), fn_name=name)

    def program_fds(self) -> dict[str, int]:
        """Every loaded program's fd by a label that stays the same for the run: its name for
        the form the kernel attaches first (a link where it has them), the name and the form
        (``name:perf_event``) for a fallback loaded beside it."""
        forms: dict[str, list[tuple[int, int]]] = {}
        for (name, _, attach_type), fd in self._programs.items():
            forms.setdefault(name, []).append((attach_type, fd))
        labels = {}
        for name, loaded in forms.items():
            # A link's form before a perf event's (NO_ATTACH_TYPE, -1, sorts first): reversed.
            loaded.sort(reverse=True)
            labels[name] = loaded[0][1]
            for attach_type, fd in loaded[1:]:
                labels[f"{name}:{FORMS.get(attach_type, attach_type)}"] = fd
        return labels

    def __getitem__(self, name) -> Table:
        name = name.decode() if isinstance(name, bytes) else name
        if name not in self._tables:
            self._tables[name] = Table(self._maps[name], self._open_ring_buffer)
        return self._tables[name]

    def __contains__(self, name) -> bool:
        return (name.decode() if isinstance(name, bytes) else name) in self._maps

    def load_func(self, func_name, prog_type: int, device=None, attach_type: int = -1) -> Program:
        """The program ``func_name`` loaded as ``prog_type`` (and ``attach_type``); as bcc, the
        one handed out before under this name if there is one."""
        name = func_name if isinstance(func_name, bytes) else func_name.encode()
        if name in self.funcs:
            return self.funcs[name]
        key = (name.decode(), prog_type, attach_type)
        if key not in self._programs:
            why = self._refused.get(key, "not among the programs loaded")
            raise BpfCallError(0, f"no program {key[0]} of type {prog_type}: {why}")
        program = Program(name, os.dup(self._programs[key]))
        self.funcs[name] = program
        return program

    def attach_tracepoint(self, tp, fn_name) -> None:
        tp = tp.decode() if isinstance(tp, bytes) else tp
        program = self.load_func(fn_name, TRACEPOINT)
        self.tracepoint_fds[tp.encode()] = bpf_calls.attach_tracepoint(tp, program.fd)

    def detach_tracepoint(self, tp) -> None:
        tp = tp if isinstance(tp, bytes) else tp.encode()
        os.close(self.tracepoint_fds.pop(tp))

    def attach_raw_tracepoint(self, tp, fn_name) -> None:
        tp = tp if isinstance(tp, bytes) else tp.encode()
        if tp in self.raw_tracepoint_fds:
            raise BpfCallError(0, f"raw tracepoint {tp.decode()} already attached")
        program = self.load_func(fn_name, RAW_TRACEPOINT)
        self.raw_tracepoint_fds[tp] = bpf_calls.open_raw_tracepoint(tp.decode(), program.fd)

    def detach_raw_tracepoint(self, tp) -> None:
        tp = tp if isinstance(tp, bytes) else tp.encode()
        os.close(self.raw_tracepoint_fds.pop(tp))

    def attach_uprobe_at(
        self, path: str, offset: int, function: str, on_return: bool, pid: int = -1
    ) -> str:
        """A uprobe (perf event) at a file offset; returns its event's name."""
        program = self.load_func(function, KPROBE)
        try:
            fd = bpf_calls.attach_uprobe(path, offset, on_return, program.fd, pid)
        except BpfCallError as err:
            if err.errno != errno.EINVAL:
                raise
            fd = self._join_held_uprobes(path, offset, on_return, program.fd, pid, err)
        name = f"{'r' if on_return else 'p'}_{path}_{offset:#x}_{pid}_{next(self._event_names)}"
        self.uprobe_fds[name] = fd
        return name

    def _join_held_uprobes(
        self, path: str, offset: int, on_return: bool, program_fd: int, pid: int, refused
    ) -> int:
        """The kernel refuses a uprobe whose reference counter offset differs from those of
        the uprobes already at its place (another tool's): one more, with theirs."""

        def attach(ref_ctr_offset: int = 0) -> int:
            return bpf_calls.attach_uprobe(path, offset, on_return, program_fd, pid, ref_ctr_offset)

        held = bpf_calls.held_ref_ctr_offset(path, offset, attach)
        if not held:
            raise refused
        return attach(held)

    def detach_uprobe_event(self, name: str) -> None:
        os.close(self.uprobe_fds.pop(name))

    def _open_ring_buffer(self, map_fd: int, callback) -> None:
        self._ring_buffers.append(bpf_calls.RingBuffer(map_fd, callback))

    def ring_buffer_consume(self) -> None:
        for ring in self._ring_buffers:
            ring.consume()

    def cleanup(self) -> None:
        """Closes everything: the kernel detaches and unloads what no other fd holds."""
        for ring in self._ring_buffers:
            ring.close()
        self._ring_buffers.clear()
        attachments = [
            *self.uprobe_fds.values(),
            *self.tracepoint_fds.values(),
            *self.raw_tracepoint_fds.values(),
        ]
        held = [program.fd for program in self.funcs.values()]
        loaded = [*self._programs.values(), *(info.fd for info in self._maps.values())]
        for fd in [*attachments, *held, *loaded]:
            with contextlib.suppress(OSError):  # a program handed out twice
                os.close(fd)
        for fds in (self.uprobe_fds, self.tracepoint_fds, self.raw_tracepoint_fds, self.funcs):
            fds.clear()
        self._programs, self._maps, self._tables = {}, {}, {}

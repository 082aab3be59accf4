"""Field offsets of the running kernel's structs, read from its BTF (/sys/kernel/btf/vmlinux).

bcc compiles against whatever kernel headers are installed, which need not be the running
kernel's (Debian's 6.1 headers on a 6.18 kernel here), and it does not relocate field accesses
the way libbpf's CO-RE does. A probe that walks kernel structs therefore takes each offset as a
-D flag found here, in the kernel's own description of itself.

No library at hand gives offsets: bcc's Python side answers only whether a struct has a field
(kernel_struct_has_field), and bpftool, which dumps BTF, is a tool to install in the image
rather than a library. The format is small and stable (the kernel's Documentation/bpf/btf.rst),
and only what the lookups need is decoded: struct and union members (with their bit offsets), and
the types that a member's type goes through (typedefs, qualifiers) to reach its size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off and len
TYPE = struct.Struct("<III")  # name_off, info, size or type
MEMBER = struct.Struct("<III")  # name_off, type, offset

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC = 12
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = (
    13,
    14,
    15,
    17,
    18,
    19,
)
# Bytes that follow a type's common part: fixed, or per member (vlen of them).
EXTRA_BYTES = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
BYTES_PER_MEMBER = {
    KIND_STRUCT: 12,
    KIND_UNION: 12,
    KIND_ENUM: 8,
    KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12,
    KIND_ENUM64: 12,
}
# Types that stand for the type they name.
ALIASES = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
POINTER_SIZE = 8


class BtfError(ValueError):
    """The BTF lacks a struct or field, or is not BTF."""


@dataclass(frozen=True)
class BtfType:
    name: str
    kind: int
    kind_flag: bool
    size_or_type: int
    members: tuple[tuple[str, int, int], ...]  # (name, type id, bit offset and bitfield size)


class Btf:
    """Struct layouts by name, from a BTF blob."""

    def __init__(self, data: bytes) -> None:
        magic, _, _, header_length, type_offset, type_length, string_offset, _ = HEADER.unpack_from(
            data
        )
        if magic != BTF_MAGIC:
            raise BtfError("not BTF (bad magic)")
        self._strings = header_length + string_offset
        self._data = data
        self.types = self._read_types(header_length + type_offset, type_length)
        self.structs = {
            t.name: index
            for index, t in enumerate(self.types)
            if t.kind in (KIND_STRUCT, KIND_UNION) and t.name
        }
        # A tracepoint's arguments are typedef btf_trace_NAME: the typedefs say which exist.
        self.typedefs = {t.name for t in self.types if t.kind == KIND_TYPEDEF}
        # Functions by the offset of their name (kfuncs are called by their type id).
        self._functions = {
            t.size_or_type: index for index, t in enumerate(self.types) if t.kind == KIND_FUNC
        }

    def _name(self, offset: int) -> str:
        end = self._data.index(b"\0", self._strings + offset)
        return self._data[self._strings + offset : end].decode()

    def _read_types(self, start: int, length: int) -> list[BtfType]:
        types = [BtfType("void", 0, False, 0, ())]  # type id 0
        position, end = start, start + length
        while position < end:
            name_offset, info, size_or_type = TYPE.unpack_from(self._data, position)
            position += TYPE.size
            kind, count = info >> 24 & 0x1F, info & 0xFFFF
            members: tuple = ()
            if kind in (KIND_STRUCT, KIND_UNION):
                members = tuple(self._member(position + i * MEMBER.size) for i in range(count))
            position += EXTRA_BYTES.get(kind, 0) + BYTES_PER_MEMBER.get(kind, 0) * count
            # Names are decoded for structs, unions and typedefs only: the rest are never
            # looked up.
            named = kind in (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF)
            name = self._name(name_offset) if named else ""
            # A function's type (its prototype) is never looked up: its name's offset is kept
            # there instead, for function_id.
            if kind == KIND_FUNC:
                size_or_type = name_offset
            types.append(BtfType(name, kind, bool(info >> 31), size_or_type, members))
        return types

    def _member(self, position: int) -> tuple[str, int, int]:
        name_offset, type_id, offset = MEMBER.unpack_from(self._data, position)
        return self._name(name_offset), type_id, offset

    def function_id(self, name: str) -> int | None:
        """The type id of a kernel function (a kfunc is called by it), or None. Names are
        stored once each, so the name's offset is found in the strings, not every function's
        name decoded."""
        wanted = b"\0" + name.encode() + b"\0"
        found = self._data.find(wanted, self._strings)
        if found < 0:
            return None
        return self._functions.get(found + 1 - self._strings)

    def resolve(self, type_id: int) -> BtfType:
        """The type behind typedefs and qualifiers."""
        found = self.types[type_id]
        while found.kind in ALIASES:
            found = self.types[found.size_or_type]
        return found

    def size(self, type_id: int) -> int:
        found = self.resolve(type_id)
        if found.kind == KIND_PTR:
            return POINTER_SIZE
        if found.kind == KIND_ARRAY:
            raise BtfError("arrays have no scalar size")
        return found.size_or_type

    def struct_size(self, struct_name: str) -> int:
        if struct_name not in self.structs:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        return self.types[self.structs[struct_name]].size_or_type

    def field(self, struct_name: str, path: str) -> tuple[int, int]:
        """(byte offset, size) of a field: ``path`` names it through nested members with dots;
        members of anonymous structs and unions are found as if they were the parent's."""
        offset, type_id = self._locate(struct_name, path)
        return offset, self.size(type_id)

    def array_offset(self, struct_name: str, path: str) -> int:
        """The byte offset of an array field (a flexible one has no size)."""
        offset, type_id = self._locate(struct_name, path)
        if self.resolve(type_id).kind != KIND_ARRAY:
            raise BtfError(f"{struct_name}.{path} is not an array")
        return offset

    def _locate(self, struct_name: str, path: str) -> tuple[int, int]:
        if struct_name not in self.structs:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        offset, type_id = 0, self.structs[struct_name]
        for name in path.split("."):
            found = self._find_member(self.resolve(type_id), name)
            if found is None:
                raise BtfError(f"struct {struct_name} has no field {path}")
            bits, type_id = found
            offset += bits
        return offset // 8, type_id

    def _find_member(self, container: BtfType, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of a member, looking into anonymous members."""
        for member_name, type_id, offset in container.members:
            bits, bitfield = offset, 0
            if container.kind_flag:
                bits, bitfield = offset & 0xFFFFFF, offset >> 24
            if member_name == name:
                if bitfield:
                    raise BtfError(f"{name} is a bitfield")
                return bits, type_id
            if not member_name:
                inner = self._find_member(self.resolve(type_id), name)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None


@dataclass(frozen=True)
class KernelField:
    """A field a probe reads: the -D flag ``macro`` gets its offset; ``size`` is what the probe
    reads, checked against the kernel's."""

    macro: str
    struct_name: str
    path: str
    size: int


def field_cflags(btf: Btf, fields: tuple[KernelField, ...]) -> list[str]:
    flags = []
    for wanted in fields:
        offset, size = btf.field(wanted.struct_name, wanted.path)
        if size != wanted.size:
            raise BtfError(
                f"{wanted.struct_name}.{wanted.path} is {size} bytes, the probe reads {wanted.size}"
            )
        flags.append(f"-D{wanted.macro}={offset}")
    return flags


def running_kernel_btf() -> Btf:
    try:
        with open(VMLINUX_BTF, "rb") as blob:
            return Btf(blob.read())
    except OSError as err:
        raise BtfError(f"the kernel's BTF is not readable ({err})") from None

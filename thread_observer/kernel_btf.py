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

import array
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
    """Struct layouts by name, from a BTF blob. The kernel's has some 100,000 types: they are
    indexed in a few flat arrays and decoded only as they are looked up (objects for each would
    hold tens of MiB, and leave the heap fragmented after they are gone)."""

    def __init__(self, data: bytes) -> None:
        magic, _, _, header_length, type_offset, type_length, string_offset, _ = HEADER.unpack_from(
            data
        )
        if magic != BTF_MAGIC:
            raise BtfError("not BTF (bad magic)")
        self._strings = header_length + string_offset
        self._data = data
        # Per type id (0 is void): where its record starts, its info word, its name's offset.
        self._positions = array.array("Q", [0])
        self._infos = array.array("I", [0])
        self._names = array.array("I", [0])
        self._index_types(header_length + type_offset, type_length)
        self._named_cache: dict[tuple[str, tuple[int, ...]], int | None] = {}
        self._packed_names: bytes | None = None

    def _index_types(self, start: int, length: int) -> None:
        position, end = start, start + length
        positions, infos, names = self._positions, self._infos, self._names
        while position < end:
            name_offset, info, _ = TYPE.unpack_from(self._data, position)
            positions.append(position)
            infos.append(info)
            names.append(name_offset)
            kind, count = info >> 24 & 0x1F, info & 0xFFFF
            position += TYPE.size + EXTRA_BYTES.get(kind, 0) + BYTES_PER_MEMBER.get(kind, 0) * count

    def _name(self, offset: int) -> str:
        end = self._data.index(b"\0", self._strings + offset)
        return self._data[self._strings + offset : end].decode()

    def _named(self, name: str, kinds: tuple[int, ...]) -> int | None:
        """The id of the type of one of ``kinds`` with this name, or None."""
        key = (name, kinds)
        if key not in self._named_cache:
            self._named_cache[key] = self._find_named(name, kinds)
        return self._named_cache[key]

    def _find_named(self, name: str, kinds: tuple[int, ...]) -> int | None:
        """Every place the name is in the strings, then the types named by those offsets
        (bytes.find over the packed arrays: no loop in Python over 100,000 types)."""
        wanted = b"\0" + name.encode() + b"\0"
        found = self._data.find(wanted, self._strings)
        while found >= 0:
            for type_id in self._ids_named(found + 1 - self._strings):
                if self._infos[type_id] >> 24 & 0x1F in kinds:
                    return type_id
            found = self._data.find(wanted, found + 1)
        return None

    def _ids_named(self, offset: int):
        if self._packed_names is None:
            self._packed_names = self._names.tobytes()
        needle = struct.pack("=L", offset)
        at = self._packed_names.find(needle)
        while at >= 0:
            if at % self._names.itemsize == 0:
                yield at // self._names.itemsize
            at = self._packed_names.find(needle, at + 1)

    def has_struct(self, name: str) -> bool:
        return self._named(name, (KIND_STRUCT, KIND_UNION)) is not None

    def has_typedef(self, name: str) -> bool:
        """A tracepoint's arguments are typedef btf_trace_NAME: the typedefs say which exist."""
        return self._named(name, (KIND_TYPEDEF,)) is not None

    def type(self, type_id: int) -> BtfType:
        """One type, decoded."""
        if type_id == 0:
            return BtfType("void", 0, False, 0, ())
        position, info = self._positions[type_id], self._infos[type_id]
        _, _, size_or_type = TYPE.unpack_from(self._data, position)
        kind, count = info >> 24 & 0x1F, info & 0xFFFF
        members: tuple = ()
        if kind in (KIND_STRUCT, KIND_UNION):
            first = position + TYPE.size
            members = tuple(self._member(first + i * MEMBER.size) for i in range(count))
        named = kind in (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF)
        name = self._name(self._names[type_id]) if named else ""
        return BtfType(name, kind, bool(info >> 31), size_or_type, members)

    def _member(self, position: int) -> tuple[str, int, int]:
        name_offset, type_id, offset = MEMBER.unpack_from(self._data, position)
        return self._name(name_offset), type_id, offset

    def function_id(self, name: str) -> int | None:
        """The type id of a kernel function (a kfunc is called by it), or None."""
        return self._named(name, (KIND_FUNC,))

    def resolve(self, type_id: int) -> BtfType:
        """The type behind typedefs and qualifiers."""
        found = self.type(type_id)
        while found.kind in ALIASES:
            found = self.type(found.size_or_type)
        return found

    def size(self, type_id: int) -> int:
        found = self.resolve(type_id)
        if found.kind == KIND_PTR:
            return POINTER_SIZE
        if found.kind == KIND_ARRAY:
            raise BtfError("arrays have no scalar size")
        return found.size_or_type

    def struct_size(self, struct_name: str) -> int:
        return self.type(self._struct_id(struct_name)).size_or_type

    def _struct_id(self, struct_name: str) -> int:
        found = self._named(struct_name, (KIND_STRUCT, KIND_UNION))
        if found is None:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        return found

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
        offset, type_id = 0, self._struct_id(struct_name)
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

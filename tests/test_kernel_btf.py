"""Field offsets from BTF: a hand-built blob, no root."""

from __future__ import annotations

import os
import struct

import pytest

from thread_observer.bpf_backend import DNS_KERNEL_FIELDS, EXEC_KERNEL_FIELDS
from thread_observer.kernel_btf import (
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    VMLINUX_BTF,
    Btf,
    BtfError,
    KernelField,
    field_cflags,
    running_kernel_btf,
)


def blob() -> bytes:
    """struct inner {u16 port; u16 family;}; struct outer {u64 *p; union {struct inner in;};
    u16 kind; u32 bits:3;} with u16 a typedef of a 2-byte int."""
    names = b"\0u16\0int\0inner\0port\0family\0outer\0p\0in\0kind\0bits\0"

    def at(name: str) -> int:
        return names.index(b"\0" + name.encode() + b"\0") + 1

    def kind(k: int, count: int = 0, flag: int = 0) -> int:
        return flag << 31 | k << 24 | count

    types = b"".join(
        [
            struct.pack("<III", at("int"), kind(KIND_INT), 2) + struct.pack("<I", 16),  # 1
            struct.pack("<III", at("u16"), kind(KIND_TYPEDEF), 1),  # 2
            struct.pack("<III", 0, kind(KIND_PTR), 1),  # 3
            struct.pack("<III", at("inner"), kind(KIND_STRUCT, 2), 4)  # 4
            + struct.pack("<III", at("port"), 2, 0)
            + struct.pack("<III", at("family"), 2, 16),
            struct.pack("<III", 0, kind(KIND_UNION, 1), 4)  # 5
            + struct.pack("<III", at("in"), 4, 0),
            struct.pack("<III", at("outer"), kind(KIND_STRUCT, 4, flag=1), 24)  # 6
            + struct.pack("<III", at("p"), 3, 0)
            + struct.pack("<III", 0, 5, 64)
            + struct.pack("<III", at("kind"), 2, 96)
            + struct.pack("<III", at("bits"), 1, 3 << 24 | 112),
        ]
    )
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(names))
    return header + types + names


@pytest.mark.parametrize(
    ("struct_name", "path", "expected"),
    [
        ("outer", "p", (0, 8)),
        ("outer", "kind", (12, 2)),
        ("outer", "in.family", (10, 2)),  # through an anonymous union
        ("inner", "port", (0, 2)),
    ],
)
def test_field_offsets_and_sizes(struct_name, path, expected):
    assert Btf(blob()).field(struct_name, path) == expected


@pytest.mark.parametrize(
    ("struct_name", "path"),
    [("outer", "missing"), ("nowhere", "p"), ("outer", "bits")],
)
def test_what_cannot_be_read_is_an_error(struct_name, path):
    with pytest.raises(BtfError):
        Btf(blob()).field(struct_name, path)


def test_cflags_check_the_size_the_probe_reads():
    btf = Btf(blob())
    assert field_cflags(btf, (KernelField("OUTER_KIND", "outer", "kind", 2),)) == [
        "-DOUTER_KIND=12"
    ]
    with pytest.raises(BtfError, match="2 bytes"):
        field_cflags(btf, (KernelField("OUTER_KIND", "outer", "kind", 4),))


def test_not_btf():
    with pytest.raises(BtfError):
        Btf(b"\0" * 24)


@pytest.mark.skipif(not os.path.exists(VMLINUX_BTF), reason="this kernel publishes no BTF")
@pytest.mark.parametrize("fields", [DNS_KERNEL_FIELDS, EXEC_KERNEL_FIELDS], ids=["dns", "exec"])
def test_the_probes_fields_are_in_the_running_kernel(fields):
    flags = field_cflags(running_kernel_btf(), fields)
    assert len(flags) == len(fields)

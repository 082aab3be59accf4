"""Uprobe programs with preemption off: the kfunc calls of probes/preemption.h.

A uprobe program runs under migrate_disable only, so a kernel that preempts kernel code
(PREEMPT, or PREEMPT_LAZY, the default of Linux 6.13+ builds) can run a second copy of it on
the same CPU before the first ends, both using that CPU's scratch maps and private stack
(probes/preemption.h says more). The kernel's bpf_preempt_disable/bpf_preempt_enable kfuncs
(Linux 6.10+) close that window.

bcc 0.26 compiles calls to kernel functions no further than an unresolved symbol, and has no
hook between compiling and loading. The probes therefore call two helpers with numbers no
kernel helper has, and ``guard_calls`` rewrites those calls in the compiled programs into
kfunc calls (BPF_PSEUDO_KFUNC_CALL with the function's id in the kernel's BTF) in bcc's own
copy of the instructions, before bcc loads anything from it: bcc's loader passes that copy
to the kernel as it is.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from dataclasses import dataclass, field

from thread_observer.kernel_btf import Btf, BtfError

log = logging.getLogger(__name__)

# Helper numbers no kernel has (helpers count up from 1, fewer than 300 in 2026), one per kfunc.
PLACEHOLDERS = {"bpf_preempt_disable": 0x7FFF_FF01, "bpf_preempt_enable": 0x7FFF_FF02}
PLACEHOLDER_MACROS = {
    "bpf_preempt_disable": "PREEMPT_DISABLE_PLACEHOLDER",
    "bpf_preempt_enable": "PREEMPT_ENABLE_PLACEHOLDER",
}
INSTRUCTION = struct.Struct("<BBhi")  # opcode, registers (dst low nibble, src high), off, imm
CALL = 0x85  # BPF_JMP | BPF_CALL
PSEUDO_KFUNC_CALL = 2  # src_reg of a call to a kernel function, imm its BTF id


@dataclass(frozen=True)
class PreemptGuard:
    """The kfunc ids the probes' placeholders become; none where the kernel lacks them (the
    probes then compile without the guard, and ``reason`` says why)."""

    kfunc_ids: dict[int, int] = field(default_factory=dict)  # placeholder -> BTF id
    reason: str = ""

    @property
    def active(self) -> bool:
        return bool(self.kfunc_ids)

    def cflags(self) -> list[str]:
        if not self.active:
            return ["-DPREEMPT_GUARD=0"]
        placeholders = [
            f"-D{PLACEHOLDER_MACROS[name]}={number:#x}" for name, number in PLACEHOLDERS.items()
        ]
        return ["-DPREEMPT_GUARD=1", *placeholders]

    def describe(self) -> str:
        if self.active:
            return "uprobe programs run with preemption off (bpf_preempt_disable)"
        return f"uprobe programs run preemptible where the kernel preempts: {self.reason}"


def preempt_guard(btf: Btf | BtfError) -> PreemptGuard:
    """The guard this kernel allows: both kfuncs in its BTF."""
    if isinstance(btf, BtfError):
        return PreemptGuard(reason=f"no kfuncs without the kernel's BTF ({btf})")
    ids = {}
    for name, placeholder in PLACEHOLDERS.items():
        found = btf.function_id(name)
        if found is None:
            return PreemptGuard(reason=f"the kernel has no {name} kfunc (Linux 6.10+)")
        ids[placeholder] = found
    return PreemptGuard(kfunc_ids=ids)


def rewrite_calls(code: bytearray | memoryview, kfunc_ids: dict[int, int]) -> int:
    """Turns each call of a placeholder helper in ``code`` (BPF instructions) into a call of
    its kfunc, in place; returns how many were rewritten."""
    rewritten = 0
    # A 16-byte instruction (ld_imm64) has a second half whose opcode byte is 0: never a call.
    for offset in range(0, len(code) - INSTRUCTION.size + 1, INSTRUCTION.size):
        opcode, registers, _, imm = INSTRUCTION.unpack_from(code, offset)
        if opcode != CALL or registers >> 4 != 0 or imm not in kfunc_ids:
            continue
        registers = (registers & 0x0F) | PSEUDO_KFUNC_CALL << 4
        INSTRUCTION.pack_into(code, offset, opcode, registers, 0, kfunc_ids[imm])
        rewritten += 1
    return rewritten


def guard_calls(bpf, guard: PreemptGuard) -> int:
    """Rewrites the placeholder calls of every program in a compiled bcc module; call it
    before any program is loaded. Returns how many calls became kfunc calls."""
    if not guard.active:
        return 0
    from bcc.libbcc import lib  # bcc is importable: ``bpf`` is its module

    total = 0
    for index in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, index)
        start = lib.bpf_function_start(bpf.module, name)
        size = lib.bpf_function_size(bpf.module, name)
        if start and size:
            code = memoryview((ctypes.c_uint8 * size).from_address(start)).cast("B")
            total += rewrite_calls(code, guard.kfunc_ids)
    return total

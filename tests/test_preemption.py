"""Uprobe programs run with preemption off (probes/preemption.h): the placeholder calls become
kfunc calls in the programs the kernel holds, and threads that preempt one another on one CPU
in the middle of those programs are counted exactly. On a kernel that preempts kernel code
(sid's PREEMPT_LAZY in the kernel matrix) that last test is the one that oopsed before."""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest

from tests.harness import bpf_skip_reason, observer, settled, wait_until, workload
from tests.test_dns import resolver_calls
from thread_observer.kernel_btf import KIND_FUNC, KIND_FUNC_PROTO, KIND_STRUCT, Btf, BtfError
from thread_observer.preemption import (
    CALL,
    INSTRUCTION,
    PLACEHOLDERS,
    PSEUDO_KFUNC_CALL,
    preempt_guard,
    rewrite_calls,
)

BPF_SKIP = bpf_skip_reason()
needs_bpf = pytest.mark.skipif(BPF_SKIP is not None, reason=BPF_SKIP or "")
DISABLE, ENABLE = PLACEHOLDERS["bpf_preempt_disable"], PLACEHOLDERS["bpf_preempt_enable"]


def btf_with(functions: list[str]) -> Btf:
    """A BTF blob with a struct named like a kfunc (never taken for one) and these functions."""
    names = b"\0bpf_preempt_disable_x\0" + b"".join(name.encode() + b"\0" for name in functions)

    def at(name: str) -> int:
        return names.index(b"\0" + name.encode() + b"\0") + 1

    types = struct.pack("<III", at("bpf_preempt_disable_x"), KIND_STRUCT << 24, 0)  # 1
    types += struct.pack("<III", 0, KIND_FUNC_PROTO << 24, 0)  # 2
    for name in functions:  # 3, 4, ...
        types += struct.pack("<III", at(name), KIND_FUNC << 24, 2)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(names))
    return Btf(header + types + names)


def instruction(opcode: int, registers: int = 0, offset: int = 0, imm: int = 0) -> bytes:
    return INSTRUCTION.pack(opcode, registers, offset, imm)


def test_functions_are_found_by_name_and_only_functions():
    btf = btf_with(["bpf_preempt_enable", "bpf_preempt_disable"])
    assert (btf.function_id("bpf_preempt_enable"), btf.function_id("bpf_preempt_disable")) == (3, 4)
    assert btf.function_id("bpf_preempt_disable_x") is None  # a struct's name
    assert btf.function_id("preempt_disable") is None  # the end of a name is no name


def test_the_guard_needs_both_kfuncs_and_says_why_not():
    guard = preempt_guard(btf_with(["bpf_preempt_disable", "bpf_preempt_enable"]))
    assert guard.active and guard.kfunc_ids == {DISABLE: 3, ENABLE: 4}
    assert guard.cflags() == [
        "-DPREEMPT_GUARD=1",
        f"-DPREEMPT_DISABLE_PLACEHOLDER={DISABLE:#x}",
        f"-DPREEMPT_ENABLE_PLACEHOLDER={ENABLE:#x}",
    ]
    older = preempt_guard(btf_with(["bpf_preempt_disable"]))
    assert not older.active and older.cflags() == ["-DPREEMPT_GUARD=0"]
    assert "no bpf_preempt_enable kfunc (Linux 6.10+)" in older.describe()
    without = preempt_guard(BtfError("the kernel's BTF is not readable"))
    assert "without the kernel's BTF" in without.describe() and not without.active


def test_only_calls_of_the_placeholders_become_kfunc_calls():
    code = bytearray(
        instruction(0xBF, 0x16)  # r6 = r1
        + instruction(CALL, imm=DISABLE)
        + instruction(CALL, imm=14)  # bpf_get_current_pid_tgid, a helper: left alone
        + instruction(0x18, 0x01, imm=DISABLE)  # ld_imm64 of the same number: no call
        + instruction(0x00, imm=0)
        + instruction(CALL, 0x10, imm=DISABLE)  # a call to a program's own function
        + instruction(CALL, imm=ENABLE)
        + instruction(0x95)  # exit
    )
    original = bytes(code)
    assert rewrite_calls(code, {DISABLE: 70001, ENABLE: 70002}) == 2
    decoded = [INSTRUCTION.unpack_from(code, at) for at in range(0, len(code), 8)]
    assert decoded[1] == (CALL, PSEUDO_KFUNC_CALL << 4, 0, 70001)
    assert decoded[6] == (CALL, PSEUDO_KFUNC_CALL << 4, 0, 70002)
    unchanged = [0, 2, 3, 4, 5, 7]
    assert [code[i * 8 : i * 8 + 8] for i in unchanged] == [
        original[i * 8 : i * 8 + 8] for i in unchanged
    ]


def xlated(prog_fd: int) -> str:
    """The program as the kernel holds it (bpftool prints a kfunc call by its name)."""
    with open(f"/proc/self/fdinfo/{prog_fd}") as info:
        prog_id = next(line.split()[1] for line in info if line.startswith("prog_id:"))
    dump = ["bpftool", "prog", "dump", "xlated", "id", prog_id]
    return subprocess.run(dump, capture_output=True, text=True, check=True).stdout


@pytest.mark.bpf
@needs_bpf
def test_every_uprobe_program_the_kernel_holds_runs_with_preemption_off():
    from thread_observer import bpf_backend

    btf = bpf_backend.kernel_btf()
    guard = preempt_guard(btf)
    if not guard.active:
        pytest.skip(f"this kernel cannot guard: {guard.reason}")
    probes = bpf_backend.BpfProbes(
        track_new_processes=False, sites=True, follow_children=False, per_process=True
    )
    try:
        probes.load()
        probes.watch(os.getpid(), 1)
        bpf_backend.attach_libc_of(probes, os.getpid())
        loaded = {name.decode(): function.fd for name, function in probes._bpf.funcs.items()}
        uprobes = {name: fd for name, fd in loaded.items() if name in bpf_backend.UPROBE_PROGRAMS}
        assert "pthread_create_entry" in uprobes and len(uprobes) >= 3, loaded
        for name, fd in uprobes.items():
            text = xlated(fd)
            assert text.count("call bpf_preempt_disable#") == 1, (name, text)
            assert "call bpf_preempt_enable#" in text, (name, text)
        # Tracepoints run with preemption off already: no kfunc there.
        others = [fd for name, fd in loaded.items() if name not in bpf_backend.UPROBE_PROGRAMS]
        assert others and not any("bpf_preempt_disable" in xlated(fd) for fd in others)
    finally:
        probes.close()


# THREADS threads pinned to one CPU call getaddrinfo and gethostbyname_ex (getaddrinfo, then
# gethostbyname_r) for SECONDS, each also starting and joining a thread every tenth round: they
# preempt one another inside the uprobe programs wherever the kernel preempts kernel code.
CONTENDED = """
import json, os, socket, sys, threading, time
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
sys.stdin.readline()
lock = threading.Lock()
truth = {"threads_started": threads, "getaddrinfo": 0, "gethostbyname_ex": 0}
def work():
    deadline, rounds, own = time.monotonic() + seconds, 0, {"threads_started": 0,
                                                            "getaddrinfo": 0, "gethostbyname_ex": 0}
    while time.monotonic() < deadline:
        socket.getaddrinfo("localhost", 80)
        socket.gethostbyname_ex("localhost")
        own["getaddrinfo"] += 1
        own["gethostbyname_ex"] += 1
        rounds += 1
        if rounds % 10 == 0:
            child = threading.Thread(target=int)
            child.start()
            child.join()
            own["threads_started"] += 1
    with lock:
        for key, value in own.items():
            truth[key] += value
workers = [threading.Thread(target=work) for _ in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(json.dumps(truth), flush=True)
sys.stdin.readline()
"""


@pytest.mark.bpf
@needs_bpf
def test_threads_preempting_one_another_on_one_cpu_are_counted_exactly(tmp_path):
    with workload(["-c", CONTENDED, "6", "5"], wait=False) as contended:
        ready = json.loads(contended._line())
        assert ready["ready"], ready
        with observer(["--pid", f"contended={contended.pid}"], tmp_path) as running:
            contended.go()
            truth = json.loads(contended._line())
            lookups = truth["getaddrinfo"] + truth["gethostbyname_ex"]
            assert truth["gethostbyname_ex"] > 100, truth  # enough rounds to contend
            settled(
                running,
                {
                    "thread_observer_threads_created_total": truth["threads_started"],
                    "thread_observer_getaddrinfo_calls_total": lookups,
                },
                timeout=30,
                target="contended",
            )
            # Every exit is counted, or skipped by the kernel and said (an exit tracepoint's
            # program does not run while another such program runs on that CPU).
            wait_until(
                lambda: exits_counted_or_said(running) == truth["threads_started"],
                30,
                f"{truth['threads_started']} exits counted or said",
            )
            functions = resolver_calls(running, "contended")
            assert functions == {
                "getaddrinfo": lookups,
                "gethostbyname_r": truth["gethostbyname_ex"],
            }


EXIT_PROGRAMS = ("raw_tracepoint__sched_process_exit", "tracepoint__sched__sched_process_exit")


def exits_counted_or_said(running) -> float:
    metrics = running.scrape()
    exited = metrics.value("thread_observer_threads_exited_total", target="contended") or 0
    misses = metrics.labels("thread_observer_bpf_program_misses_total", "program")
    skipped = sum(misses.get(program, 0) for program in EXIT_PROGRAMS)
    print(f"exits counted {exited}, skipped by the kernel {skipped}")
    return exited + skipped

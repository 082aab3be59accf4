"""The probes compiled and loaded in a short-lived child (probe_compiler.py), the daemon keeping
only their file descriptors (loaded_probes.py, bpf_calls.py): LLVM is never in the daemon, and
what it sees of the maps is what bcc would have shown it."""

from __future__ import annotations

import ctypes
import glob
import os
import sys

import pytest

from tests.harness import bpf_skip_reason, observer, workload
from thread_observer import pyruntime
from thread_observer.bpf_calls import ctype_of
from thread_observer.loaded_probes import event_type

BPF_SKIP = bpf_skip_reason()
needs_bpf = pytest.mark.skipif(BPF_SKIP is not None, reason=BPF_SKIP or "")
# What bcc's compile brings into a process, and must not be in the daemon's.
COMPILER_OBJECTS = ("libLLVM", "libclang", "libbcc")


def layout(kind, prefix: str = "") -> list[tuple[str, int, int]]:
    """(member path, byte offset, size) of every member of a ctypes type, nested ones too."""
    if not hasattr(kind, "_fields_"):
        return [(prefix, 0, ctypes.sizeof(kind))]
    found = []
    for member in kind._fields_:
        name, member_type = member[0], member[1]
        offset = getattr(kind, name).offset
        for path, inner, size in layout(member_type, f"{prefix}.{name}"):
            found.append((path, offset + inner, size))
    return found


def test_a_struct_description_becomes_the_ctypes_type_bcc_would_make():
    desc = [
        "entry",
        [
            ["tgid", "unsigned int"],
            ["kind", "unsigned char"],
            ["flags", "unsigned int", 3],  # a bit field
            ["name", "char", [16]],
            ["", [["a", "unsigned long long"], ["b", "int"]], "union"],  # anonymous
            ["pair", [["x", "unsigned char"], ["y", "unsigned int"]], "struct_packed"],
        ],
        "struct",
    ]
    entry = ctype_of(desc)
    value = entry(tgid=7, kind=2, flags=5, name=b"web")
    value.a = 1 << 40
    assert (value.tgid, value.kind, value.flags, value.name, value.a) == (7, 2, 5, b"web", 1 << 40)
    assert ctypes.sizeof(value.pair) == 5  # packed
    assert entry.name.offset == 12 and ctypes.sizeof(entry) == 48  # the union is 8-aligned
    assert ctype_of("unsigned long long") is ctypes.c_ulonglong


def test_a_ring_buffer_record_type_from_bccs_field_list():
    record = event_type(["tgid#u32", "generation#u64", "args#char [8]", "kind#enum kinds"])
    assert [name for name, _ in record._fields_] == ["tgid", "generation", "args", "kind"]
    assert record.generation.offset == 8 and record.args.size == 8 and ctypes.sizeof(record) == 32


@pytest.mark.parametrize(
    "path",
    ["/lib/x86_64-linux-gnu/libc.so.6", os.path.realpath(sys.executable)]
    + sorted(glob.glob("/var/cache/thread-observer/pythons/*/lib/libpython3*.so.1.0"))[:2],
)
def test_symbol_offsets_are_the_ones_bcc_resolves(path):
    bcc = pytest.importorskip("bcc")
    from thread_observer.bpf_backend import INITIALIZE_SYMBOL, LIBC_SYMBOLS

    if not os.path.exists(path):
        pytest.skip(f"no {path} here")
    names = (*LIBC_SYMBOLS, INITIALIZE_SYMBOL, "no_such_function_here")
    ours = pyruntime.symbol_file_offsets(path, names)
    theirs = {}
    for name in names:
        try:
            theirs[name] = bcc.BPF._check_path_symbol(path.encode(), name.encode(), None, -1)[1]
        except Exception:  # bcc raises bare Exception for a missing symbol
            continue
    assert ours == theirs and ours


@pytest.mark.bpf
@needs_bpf
def test_every_map_the_daemon_reads_has_bccs_layout(monkeypatch):
    """The same source and flags compiled by bcc in this process: each map's key and value, as
    the daemon decodes them from the child's descriptions, lay out as bcc's own types."""
    from thread_observer import bpf_backend

    seen = {}
    real = bpf_backend.load_in_child

    def recording(files, cflags, what, programs):
        seen.update(files=files, cflags=cflags)
        return real(files, cflags, what, programs)

    monkeypatch.setattr(bpf_backend, "load_in_child", recording)
    probes = bpf_backend.BpfProbes(track_new_processes=False)
    probes.load()
    try:
        bpf = bpf_backend.compile_probes(seen["files"], seen["cflags"], "probes")
        try:
            names = list(probes._bpf._maps)
            assert "watched_tgids" in names and "exec_reports" in names
            for name in names:
                if name == bpf_backend.THREAD_STATE_MAP:
                    continue  # task storage: bcc 0.26 has no table for it (never read)
                ours, theirs = probes._bpf[name], bpf[name]
                assert layout(ours.Key) == layout(theirs.Key), name
                assert layout(ours.Leaf) == layout(theirs.Leaf), name
                assert ours.max_entries == theirs.max_entries, name
            record = ctypes.create_string_buffer(4096)
            ours_event = type(probes._bpf["exec_reports"].event(record))
            assert layout(ours_event) == layout(type(bpf["exec_reports"].event(record)))
        finally:
            bpf.cleanup()
    finally:
        probes.close()


@pytest.mark.bpf
@needs_bpf
def test_a_compile_error_in_the_child_is_the_daemons_error():
    from thread_observer.probe_loader import LoaderFailed, load_in_child

    with pytest.raises(LoaderFailed) as failed:
        load_in_child(("watched.h",), ["-include", "/nonexistent/missing.h"], "probes", [])
    message = str(failed.value)
    assert message.startswith("compiling the probes failed: ")
    assert "missing.h" in message


@pytest.mark.bpf
@needs_bpf
def test_the_daemon_never_maps_llvm_and_counts_exactly(tmp_path):
    from tests.test_bpf_observer import MIXED, assert_matches_truth, counts_settled

    with workload([*MIXED, "--linger", "60"]) as target:
        with observer(["--pid", f"mixed={target.pid}"], tmp_path) as running:
            target.go()
            truth = target.truth()
            assert_matches_truth(counts_settled(running, "mixed", truth), "mixed", truth)
            with open(f"/proc/{running.process.pid}/maps") as maps:
                mapped = maps.read()
            log = running.log()
    assert not [name for name in COMPILER_OBJECTS if name in mapped], mapped
    assert "compiled and loaded by a child process" in log

"""The child process that compiles and loads the probes for the daemon (probe_loader.py says
why): ``python -m thread_observer.probe_compiler FD``, FD its end of the daemon's socket."""

from __future__ import annotations

import ctypes
import json
import logging
import socket
import sys
import time

from thread_observer import procfs
from thread_observer.bpf_backend import BpfUnavailable, compile_probes, import_bcc
from thread_observer.compile_errors import captured_stderr, summarize
from thread_observer.loaded_probes import AUTOLOAD_PREFIXES
from thread_observer.probe_loader import receive_message, send_fds, send_message

log = logging.getLogger("thread_observer.probe_compiler")  # not __main__ under -m


class KeptRecords(logging.Handler):
    """Keeps the child's log records for the daemon to write."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def compile_and_describe(request: dict) -> tuple[dict, list[int]]:
    """Compiles, loads what was asked, and describes it: (answer, fds)."""
    bcc = import_bcc()
    # The daemon attaches the TRACEPOINT_PROBE programs itself: attached here, they would be
    # detached as this process exits.
    bcc.BPF._trace_autoload = lambda self: None
    try:
        bpf = compile_probes(tuple(request["files"]), request["cflags"], request["what"])
    except BpfUnavailable as err:
        return {"error": str(err)}, []
    fds: list[int] = []
    names = function_names(bpf)
    autoload = [n for n in names if n.startswith(tuple(AUTOLOAD_PREFIXES))]
    wanted = [(n, AUTOLOAD_PREFIXES[n.split("__")[0] + "__"], -1) for n in autoload]
    wanted += [tuple(spec) for spec in request["programs"] if tuple(spec) not in wanted]
    started = time.monotonic()
    programs = [load_program(bpf, spec, names, fds) for spec in wanted]
    log.info(
        "loaded %d programs (each way the daemon may attach them) in %.2f s",
        sum("fd" in program for program in programs),
        time.monotonic() - started,
    )
    maps = [describe_map(bpf, name, fds) for name in table_names(bpf)]
    answer = {"programs": programs, "maps": [m for m in maps if m], "autoload": autoload}
    return answer, fds


def function_names(bpf) -> list[str]:
    from bcc.libbcc import lib

    count = lib.bpf_num_functions(bpf.module)
    return [lib.bpf_function_name(bpf.module, index).decode() for index in range(count)]


def table_names(bpf) -> list[str]:
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = ctypes.c_ulonglong
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    count = lib.bpf_num_tables(bpf.module)
    return [lib.bpf_table_name(bpf.module, index).decode() for index in range(count)]


def load_program(bpf, spec: tuple, names: list[str], fds: list[int]) -> dict:
    name, program_type, attach_type = spec
    entry = {"name": name, "type": program_type, "attach_type": attach_type}
    if name not in names:
        return {**entry, "error": "no such function in the compiled probes"}
    with captured_stderr() as diagnostics:
        try:
            program = bpf.load_func(name.encode(), program_type, attach_type=attach_type)
        except Exception as err:  # bcc raises bare Exception; the verifier's log on stderr
            return {**entry, "error": summarize(diagnostics()) or str(err)}
    # Each variant is its own load: bcc would hand the first back for any type.
    bpf.funcs.pop(name.encode(), None)
    fds.append(program.fd)
    return {**entry, "fd": len(fds) - 1}


def describe_map(bpf, name: str, fds: list[int]) -> dict | None:
    from bcc.libbcc import lib

    raw = name.encode()
    fd = lib.bpf_table_fd(bpf.module, raw)
    if fd < 0:
        return None
    table_id = lib.bpf_table_id(bpf.module, raw)
    map_type = lib.bpf_table_type_id(bpf.module, table_id)
    entry = {
        "name": name,
        "type": map_type,
        "max_entries": int(lib.bpf_table_max_entries_id(bpf.module, table_id)),
        "key": json.loads(lib.bpf_table_key_desc(bpf.module, raw).decode() or '"int"'),
        "leaf": json.loads(lib.bpf_table_leaf_desc(bpf.module, raw).decode() or '"int"'),
    }
    fields = lib.bpf_perf_event_fields(bpf.module, raw)
    if fields > 0:
        entry["event_fields"] = [
            lib.bpf_perf_event_field(bpf.module, raw, index).decode() for index in range(fields)
        ]
    fds.append(fd)
    return {**entry, "fd": len(fds) - 1}


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    request = receive_message(sock)
    kept = KeptRecords()
    root = logging.getLogger()
    root.addHandler(kept)
    root.setLevel(request.get("level", logging.INFO))
    try:
        answer, fds = compile_and_describe(request)
    except Exception as err:  # anything: the daemon must hear why, not a closed socket
        log.exception("loading the probes failed")
        answer, fds = {"error": f"compiling the {request['what']} failed: {err}"}, []
    answer["logs"] = kept.records
    answer["fd_count"] = len(fds)
    answer["peak_rss_mib"] = procfs.own_peak_rss_mib()
    send_message(sock, answer)
    send_fds(sock, fds)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

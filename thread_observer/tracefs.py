"""What the running kernel's tracepoints carry: the fields of their format files.

bcc builds a TRACEPOINT_PROBE's ``args`` struct from the running kernel's
``events/SYSTEM/EVENT/format``, so a field a kernel lacks is a compile error for the whole
object. The probes ask for optional fields by -D flag instead, from these files.
"""

from __future__ import annotations

import re
from pathlib import Path

from thread_observer.capabilities import tracefs_path

FIELD = re.compile(r"^\s*field:(?P<declaration>[^;]+);", re.MULTILINE)


def format_fields(text: str) -> frozenset[str]:
    """The field names of a tracepoint's format file (``field:bool group_dead;`` ->
    ``group_dead``; ``field:char comm[16];`` -> ``comm``)."""
    names = set()
    for match in FIELD.finditer(text):
        declaration = match["declaration"].strip()
        name = re.split(r"[\s*]", declaration.split("[")[0])[-1]
        names.add(name)
    return frozenset(names)


def tracepoint_fields(tracepoint: str, root: str | None = None) -> frozenset[str] | None:
    """The fields of ``system:event`` in this kernel, None where tracefs or the event is not
    readable (the compile then says what is missing)."""
    root = root or tracefs_path()
    if root is None:
        return None
    system, event = tracepoint.split(":")
    try:
        return format_fields((Path(root) / "events" / system / event / "format").read_text())
    except OSError:
        return None


# The fields each probe file reads through bcc's ``args`` (TRACEPOINT_PROBE), by tracepoint.
# group_dead is not here: the probes ask for it by -D flag (process_exit_cflags). dns.bpf.c's
# are its syscall side's (SENDS_AT_SOCKETS=0); at the socket layer it reads none.
SEND_FIELDS = {
    "sendto": ("fd", "buff", "len", "addr"),
    "write": ("fd", "buf", "count"),
    "writev": ("fd", "vec", "vlen"),
    "sendmsg": ("fd", "msg"),
    "sendmmsg": ("fd", "mmsg", "vlen"),
}
TRACEPOINT_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "threads.bpf.c": {"task:task_newtask": ("pid", "clone_flags")},
    "dns.bpf.c": {
        **{f"syscalls:sys_enter_{name}": fields for name, fields in SEND_FIELDS.items()},
        **{f"syscalls:sys_exit_{name}": ("ret",) for name in SEND_FIELDS},
    },
    "timeline.bpf.c": {
        "task:task_newtask": ("pid", "clone_flags", "comm"),
        "task:task_rename": ("pid", "newcomm"),
        "sched:sched_process_exec": ("old_pid",),
        "sched:sched_process_exit": ("comm",),
    },
}


def missing_fields(files: tuple[str, ...], fields_of=tracepoint_fields) -> dict[str, list[str]]:
    """Each file's tracepoint fields that this kernel's formats lack (``system:event.field``),
    for the files that lack any. A tracepoint whose format cannot be read is not judged here:
    the compile then says what is wrong."""
    missing: dict[str, list[str]] = {}
    for name in files:
        for tracepoint, fields in TRACEPOINT_FIELDS.get(name, {}).items():
            present = fields_of(tracepoint)
            if present is None:
                continue
            for field in fields:
                if field not in present:
                    missing.setdefault(name, []).append(f"{tracepoint}.{field}")
    return missing

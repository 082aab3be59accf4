"""Generates thread_observer/pyoffsets.py: CPython's struct offsets, per version, by compiling a
small C file against each interpreter's own installed headers (``offsetof``, so nothing is copied by
hand).

    python tools/gen_pyoffsets.py /root/.pyenv/versions/3.8.18 /root/.pyenv/versions/3.9.18 \
        /root/.pyenv/versions/3.10.13 /root/.pyenv/versions/3.11.7 \
        /root/.pyenv/versions/3.12.1 /root/.pyenv/versions/3.13.0 \
        DEB/usr > thread_observer/pyoffsets.py

Each PREFIX is an installation (``PREFIX/include/pythonX.Y`` holds the headers, internal ones
included; DEB/usr: Debian's ``libpython3.14-dev`` and ``python3.14-dev`` unpacked with
``dpkg-deb -x``, whose pyconfig.h lies under ``include/<multiarch>/``). 3.13 and later publish
their layout in ``_Py_DebugOffsets`` and the observer reads it from the process: their table
here serves for what that struct lacks (``co_flags``), and ``DEBUG_FIELDS`` says where each
field the observer uses lies in it, in 8-byte words (its layout changes between versions).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile

# (field in the table, C expression) for each layout generation.
FIELDS_3_11 = [
    ("runtime_interpreters_head", "offsetof(_PyRuntimeState, interpreters.head)"),
    ("interp_threads_head", "offsetof(PyInterpreterState, threads.head)"),
    ("tstate_prev", "offsetof(PyThreadState, prev)"),
    ("tstate_next", "offsetof(PyThreadState, next)"),
    ("tstate_native_thread_id", "offsetof(PyThreadState, native_thread_id)"),
    ("tstate_frame", "offsetof(PyThreadState, cframe)"),
    ("tstate_datastack_chunk", "offsetof(PyThreadState, datastack_chunk)"),
    ("tstate_datastack_top", "offsetof(PyThreadState, datastack_top)"),
    ("cframe_current_frame", "offsetof(_PyCFrame, current_frame)"),
    ("frame_previous", "offsetof(_PyInterpreterFrame, previous)"),
    ("frame_code", "offsetof(_PyInterpreterFrame, f_code)"),
    ("frame_owner", "offsetof(_PyInterpreterFrame, owner)"),
    ("code_flags", "offsetof(PyCodeObject, co_flags)"),
    ("code_filename", "offsetof(PyCodeObject, co_filename)"),
    ("code_name", "offsetof(PyCodeObject, co_name)"),
    ("code_qualname", "offsetof(PyCodeObject, co_qualname)"),
    ("code_firstlineno", "offsetof(PyCodeObject, co_firstlineno)"),
    ("object_type", "offsetof(PyObject, ob_type)"),
    ("unicode_length", "offsetof(PyASCIIObject, length)"),
    ("unicode_state", "offsetof(PyASCIIObject, state)"),
    ("unicode_ascii_size", "sizeof(PyASCIIObject)"),
    ("unicode_compact_size", "sizeof(PyCompactUnicodeObject)"),
]
# 3.8-3.10: PyFrameObject (f_back, f_code), the thread list at tstate_head, and the
# thread's pthread_t in thread_id (its kernel tid is read out of glibc's struct pthread); no
# co_qualname (co_name stands in).
FIELDS_3_8 = [
    (name, expression)
    for name, expression in FIELDS_3_11
    if name not in ("cframe_current_frame", "frame_owner")
    and not name.startswith("tstate_datastack")
]
FIELDS_3_8 = [
    (
        name,
        expression.replace("threads.head", "tstate_head")
        .replace("native_thread_id", "thread_id")
        .replace("cframe)", "frame)")
        .replace("_PyInterpreterFrame, previous", "PyFrameObject, f_back")
        .replace("_PyInterpreterFrame", "PyFrameObject")
        .replace("co_qualname", "co_name"),
    )
    for name, expression in FIELDS_3_8
]
FIELDS_3_13 = [
    (name, expression.replace("cframe)", "current_frame)").replace("f_code)", "f_executable)"))
    for name, expression in FIELDS_3_11
    if name != "cframe_current_frame"
]

# (field in the table, member of _Py_DebugOffsets) for 3.13+: where the interpreter publishes it.
DEBUG_MEMBERS = [
    ("free_threaded", "free_threaded"),
    ("runtime_interpreters_head", "runtime_state.interpreters_head"),
    ("interp_threads_head", "interpreter_state.threads_head"),
    ("tstate_prev", "thread_state.prev"),
    ("tstate_next", "thread_state.next"),
    ("tstate_native_thread_id", "thread_state.native_thread_id"),
    ("tstate_frame", "thread_state.current_frame"),
    ("tstate_datastack_chunk", "thread_state.datastack_chunk"),
    ("frame_previous", "interpreter_frame.previous"),
    ("frame_code", "interpreter_frame.executable"),
    ("frame_owner", "interpreter_frame.owner"),
    ("code_filename", "code_object.filename"),
    ("code_name", "code_object.name"),
    ("code_qualname", "code_object.qualname"),
    ("code_firstlineno", "code_object.firstlineno"),
    ("object_type", "pyobject.ob_type"),
]
DEBUG_WORD = "offsetof(_Py_DebugOffsets, %s) / 8"

PROGRAM = """
#define Py_BUILD_CORE 1
#include <Python.h>
#include <frameobject.h>
#include <stddef.h>
#include <stdio.h>
%s
int main(void) {
%s
    return 0;
}
"""


def include_dir(prefix: str) -> str:
    found = sorted(glob.glob(os.path.join(prefix, "include", "python3.*")))
    if not found:
        sys.exit(f"no include/python3.* under {prefix}")
    return found[0]


def version_of(include: str) -> tuple[int, int]:
    major, minor = re.search(r"python(\d+)\.(\d+)", include).groups()
    return int(major), int(minor)


def offsets(prefix: str) -> tuple[tuple[int, int], dict[str, int]]:
    include = include_dir(prefix)
    version = version_of(include)
    fields = (
        FIELDS_3_13 if version >= (3, 13) else FIELDS_3_11 if version >= (3, 11) else FIELDS_3_8
    )
    table = compiled(prefix, include, fields)
    table.setdefault("cframe_current_frame", -1)  # 3.13+: the frame hangs off the thread
    if version < (3, 11):
        # A PyFrameObject always has code: the owner byte read is the low byte of its
        # 8-aligned f_code pointer, never one of the owners without code (3 or 4). thread_id
        # is a pthread_t: the tid in glibc's struct pthread is found at attach
        # (thread_observer/pyruntime.py).
        table["frame_owner"] = table["frame_code"]
        table["thread_id_is_pthread"] = 1
    return version, table


def debug_words(prefix: str) -> dict[str, int]:
    """Where each field the observer reads lies in _Py_DebugOffsets, in 8-byte words."""
    fields = [(name, DEBUG_WORD % member) for name, member in DEBUG_MEMBERS]
    return compiled(prefix, include_dir(prefix), fields)


def compiled(prefix: str, include: str, fields: list[tuple[str, str]]) -> dict[str, int]:
    """The value of each C expression, compiled against the installation's own headers."""
    internal = [
        name
        for name in (
            "pycore_runtime.h",
            "pycore_pystate.h",
            "pycore_interp.h",
            "pycore_frame.h",
            "pycore_debug_offsets.h",
        )
        if os.path.exists(os.path.join(include, "internal", name))
    ]
    includes = "\n".join(f'#include "internal/{name}"' for name in internal)
    lines = "\n".join(f'    printf("{name} %zu\\n", (size_t)({expr}));' for name, expr in fields)
    with tempfile.TemporaryDirectory() as folder:
        source, binary = os.path.join(folder, "o.c"), os.path.join(folder, "o")
        with open(source, "w") as out:
            out.write(PROGRAM % (includes, lines))
        headers = [f"-I{include}", f"-I{include}/internal", f"-I{os.path.join(prefix, 'include')}"]
        subprocess.run(["gcc", *headers, source, "-o", binary], check=True)
        output = subprocess.run([binary], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in output.splitlines())}


def print_table(name: str, tables: dict) -> None:
    print(f"{name} = {{")
    for version in sorted(tables):
        print(f"    {version!r}: {{")
        for field, value in tables[version].items():
            print(f'        "{field}": {value},')  # as ruff format writes it
        print("    },")
    print("}")


def main(argv: list[str]) -> int:
    tables, debug = {}, {}
    for prefix in argv:
        version, table = offsets(prefix)
        tables[version] = table
        if version >= (3, 13):
            debug[version] = debug_words(prefix)
    print('"""CPython struct offsets by version, generated by tools/gen_pyoffsets.py from each')
    print('version\'s own headers (offsetof): do not edit by hand."""')
    print()
    print_table("OFFSETS", tables)
    print()
    print("# Where _Py_DebugOffsets (3.13+) holds each field, in 8-byte words from its start.")
    print_table("DEBUG_FIELDS", debug)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

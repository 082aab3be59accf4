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

# The objects the observer decodes (frames' locals, types, lists, ints, dicts, weakrefs),
# compiled apart and appended so that the fields above keep their place in each table; -1 is a
# member the version lacks, 0 a flag or offset it has no use for.
OBJECT_FIELDS_3_11 = [
    ("frame_localsplus", "offsetof(_PyInterpreterFrame, localsplus)"),
    ("type_name", "offsetof(PyTypeObject, tp_name)"),
    ("type_basicsize", "offsetof(PyTypeObject, tp_basicsize)"),
    ("type_dictoffset", "offsetof(PyTypeObject, tp_dictoffset)"),
    ("type_flags", "offsetof(PyTypeObject, tp_flags)"),
    ("type_base", "offsetof(PyTypeObject, tp_base)"),
    ("heaptype_cached_keys", "offsetof(PyHeapTypeObject, ht_cached_keys)"),
    ("var_size", "offsetof(PyVarObject, ob_size)"),
    ("list_items", "offsetof(PyListObject, ob_item)"),
    ("weakref_object", "offsetof(PyWeakReference, wr_object)"),
    ("long_digits", "offsetof(PyLongObject, ob_digit)"),
    ("long_tag", "-1"),
    ("dict_keys", "offsetof(PyDictObject, ma_keys)"),
    ("dict_values", "offsetof(PyDictObject, ma_values)"),
    ("dictkeys_size", "-1"),
    ("dictkeys_log2_size", "offsetof(PyDictKeysObject, dk_log2_size)"),
    ("dictkeys_log2_index_bytes", "offsetof(PyDictKeysObject, dk_log2_index_bytes)"),
    ("dictkeys_kind", "offsetof(PyDictKeysObject, dk_kind)"),
    ("dictkeys_nentries", "offsetof(PyDictKeysObject, dk_nentries)"),
    ("dictkeys_indices", "offsetof(PyDictKeysObject, dk_indices)"),
    ("dict_entry_size", "sizeof(PyDictKeyEntry)"),
    ("dict_unicode_entry_size", "sizeof(PyDictUnicodeEntry)"),
    ("dictvalues_values", "offsetof(PyDictValues, values)"),
    ("managed_dict_offset", "MANAGED_DICT_OFFSET"),
    ("tpflags_managed_dict", "Py_TPFLAGS_MANAGED_DICT"),
    ("tpflags_inline_values", "0"),
]


def changed(fields: list[tuple[str, str]], changes: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, changes.get(name, expression)) for name, expression in fields]


# 3.8-3.10: locals at the end of the PyFrameObject, dict keys sized by a Py_ssize_t dk_size and
# with one kind of entry (DICT_COMMON below), no split-values struct and no managed dicts.
OBJECT_FIELDS_3_8 = changed(
    OBJECT_FIELDS_3_11,
    {
        "frame_localsplus": "offsetof(PyFrameObject, f_localsplus)",
        "dictkeys_size": "offsetof(PyDictKeysObject, dk_size)",
        "dictkeys_log2_size": "-1",
        "dictkeys_log2_index_bytes": "-1",
        "dictkeys_kind": "-1",
        "dict_unicode_entry_size": "-1",
        "dictvalues_values": "-1",
        "managed_dict_offset": "0",
        "tpflags_managed_dict": "0",
    },
)
# 3.12: the digits behind lv_tag (digit count << 3 | sign), and no MANAGED_DICT_OFFSET: the
# slot is the one _PyObject_DictOrValuesPointer reads, three PyDictOrValues before the object.
OBJECT_FIELDS_3_12 = changed(
    OBJECT_FIELDS_3_11,
    {
        "long_digits": "offsetof(PyLongObject, long_value.ob_digit)",
        "long_tag": "offsetof(PyLongObject, long_value.lv_tag)",
        "managed_dict_offset": "(Py_ssize_t)sizeof(PyDictOrValues) * -3",
    },
)
OBJECT_FIELDS_3_13 = changed(
    OBJECT_FIELDS_3_12,
    {
        "managed_dict_offset": "MANAGED_DICT_OFFSET",
        "tpflags_inline_values": "Py_TPFLAGS_INLINE_VALUES",
    },
)

# Objects/dict-common.h of 3.8-3.10, which is not installed: PyDictKeysObject is opaque in
# their headers.
DICT_COMMON = """
typedef struct {
    Py_hash_t me_hash;
    PyObject *me_key;
    PyObject *me_value;
} PyDictKeyEntry;
typedef Py_ssize_t (*dict_lookup_func)
    (PyDictObject *mp, PyObject *key, Py_hash_t hash, PyObject **value_addr);
struct _dictkeysobject {
    Py_ssize_t dk_refcnt;
    Py_ssize_t dk_size;
    dict_lookup_func dk_lookup;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
};
"""

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
    table.update(compiled(prefix, include, object_fields(version)))
    return version, table


def object_fields(version: tuple[int, int]) -> list[tuple[str, str]]:
    if version >= (3, 13):
        return OBJECT_FIELDS_3_13
    if version >= (3, 12):
        return OBJECT_FIELDS_3_12
    return OBJECT_FIELDS_3_11 if version >= (3, 11) else OBJECT_FIELDS_3_8


def debug_words(prefix: str) -> dict[str, int]:
    """Where each field the observer reads lies in _Py_DebugOffsets, in 8-byte words."""
    fields = [(name, DEBUG_WORD % member) for name, member in DEBUG_MEMBERS]
    return compiled(prefix, include_dir(prefix), fields)


def declarations(include: str) -> str:
    """The headers (and, where they are not installed, the declarations) the fields need."""
    internal = [
        name
        for name in (
            "pycore_runtime.h",
            "pycore_pystate.h",
            "pycore_interp.h",
            "pycore_frame.h",
            "pycore_debug_offsets.h",
            "pycore_dict.h",
            "pycore_object.h",
        )
        if os.path.exists(os.path.join(include, "internal", name))
    ]
    lines = [f'#include "internal/{name}"' for name in internal]
    if os.path.exists(os.path.join(include, "longintrepr.h")):
        lines.insert(0, '#include "longintrepr.h"')  # 3.8-3.9: Python.h leaves PyLongObject opaque
    if "pycore_dict.h" not in internal:
        lines.append(DICT_COMMON)
    return "\n".join(lines)


def compiled(prefix: str, include: str, fields: list[tuple[str, str]]) -> dict[str, int]:
    """The value of each C expression, compiled against the installation's own headers."""
    includes = declarations(include)
    lines = "\n".join(
        f'    printf("{name} %lld\\n", (long long)({expr}));' for name, expr in fields
    )  # signed: MANAGED_DICT_OFFSET lies before the object
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

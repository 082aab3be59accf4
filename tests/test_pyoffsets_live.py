"""Each version's object offsets (thread_observer/pyoffsets.py) against a live interpreter of
that version: the interpreter reads its own objects through ctypes at the table's offsets
(``id()`` is an object's address) and reports each value read next to the one Python itself
gives for it."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.harness import find_python
from thread_observer.pyoffsets import OFFSETS

# Run by the interpreter under test, which may be 3.8: no syntax or library newer than that.
# Prints [check, value read through the offsets, value Python gives] for each check.
PROBE = r"""
import ctypes
import json
import sys
import weakref

OFFSETS = json.loads(sys.argv[1])


def word(address):
    return ctypes.c_size_t.from_address(address).value


def signed(address):
    return ctypes.c_ssize_t.from_address(address).value


def byte(address):
    return ctypes.c_uint8.from_address(address).value


class Target:
    def __init__(self):
        self.first = object()
        self.second = object()


def long_value(number):
    if OFFSETS["long_tag"] >= 0:
        count = word(id(number) + OFFSETS["long_tag"]) >> 3  # the low 3 bits: sign and flags
    else:
        count = abs(signed(id(number) + OFFSETS["var_size"]))  # negative for a negative int
    digits = (ctypes.c_uint32 * count).from_address(id(number) + OFFSETS["long_digits"])
    return sum(digit << (30 * place) for place, digit in enumerate(digits))


def index_bytes_and_entries(keys):
    # Up to 3.10 every entry is (hash, key, value) and a small table's indices are one byte
    # each; from 3.11 a table of str keys only (kind != 0) drops the hash.
    if OFFSETS["dictkeys_size"] >= 0:
        return word(keys + OFFSETS["dictkeys_size"]), OFFSETS["dict_entry_size"], 8
    if byte(keys + OFFSETS["dictkeys_kind"]):
        entry, key = OFFSETS["dict_unicode_entry_size"], 0
    else:
        entry, key = OFFSETS["dict_entry_size"], 8
    return 1 << byte(keys + OFFSETS["dictkeys_log2_index_bytes"]), entry, key


def dict_keys(mapping):
    keys = word(id(mapping) + OFFSETS["dict_keys"])
    index_bytes, entry, key = index_bytes_and_entries(keys)
    entries = keys + OFFSETS["dictkeys_indices"] + index_bytes
    count = signed(keys + OFFSETS["dictkeys_nentries"])
    return [word(entries + entry * place + key) for place in range(count)]


def type_checks(label, obj):
    kind = type(obj)
    name = ctypes.string_at(word(id(kind) + OFFSETS["type_name"])).decode()
    # A static type's tp_name may carry its module ("weakref.ReferenceType").
    yield "type_name " + label, name.rsplit(".", 1)[-1], kind.__name__
    basicsize = signed(id(kind) + OFFSETS["type_basicsize"])
    yield "type_basicsize " + label, basicsize, kind.__basicsize__
    yield "type_flags " + label, word(id(kind) + OFFSETS["type_flags"]), kind.__flags__


def instance_dict_checks(target):
    attributes = target.__dict__  # materialised here where the values live inline (3.11+)
    if OFFSETS["managed_dict_offset"]:
        managed = word(id(target) + OFFSETS["managed_dict_offset"])
        yield "managed_dict_offset", managed, id(attributes)
    keys = word(id(attributes) + OFFSETS["dict_keys"])
    yield "heaptype_cached_keys", word(id(Target) + OFFSETS["heaptype_cached_keys"]), keys
    values = word(id(attributes) + OFFSETS["dict_values"])
    values += max(OFFSETS["dictvalues_values"], 0)  # before 3.11 ma_values is the array
    wanted = [id(target.first), id(target.second)]
    yield "dictvalues_values", [word(values), word(values + 8)], wanted


def checks():
    yield "version", list(sys.version_info[:2]), None
    yield "digit bits", sys.int_info.bits_per_digit, 30
    target = Target()
    ref = weakref.ref(target)
    items = [target, 1, 2]
    big = 10**25 + 12345
    yield "weakref_object", word(id(ref) + OFFSETS["weakref_object"]), id(target)
    yield "list_items", word(word(id(items) + OFFSETS["list_items"])), id(target)
    yield "var_size", signed(id(items) + OFFSETS["var_size"]), len(items)
    yield "long_digits", long_value(12345), 12345
    yield "long_digits several", long_value(big), big
    objects = {"list": items, "int": 12345, "class": target, "weakref": ref, "dict": {}}
    for label, obj in objects.items():
        for check in type_checks(label, obj):
            yield check
    dictoffset = signed(id(Target) + OFFSETS["type_dictoffset"])
    yield "type_dictoffset", dictoffset, Target.__dictoffset__
    strings, numbers = {"a": 1, "b": 2}, {1: "a", 2: "b"}
    yield "dict keys str", dict_keys(strings), [id(key) for key in strings]
    yield "dict keys int", dict_keys(numbers), [id(key) for key in numbers]
    for check in instance_dict_checks(target):
        yield check


print(json.dumps([list(check) for check in checks()]))
"""

VERSIONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


def probed(python: str, offsets: dict) -> dict[str, tuple[object, object]]:
    """Each check's (value read through the offsets, value Python gives), by name."""
    result = subprocess.run(
        [python, "-I", "-c", PROBE, json.dumps(offsets)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {name: (read, wanted) for name, read, wanted in json.loads(result.stdout)}


def expected_checks(version: tuple[int, int]) -> set[str]:
    """Every check the probe must have made: one that was skipped would hide a wrong offset."""
    names = {"digit bits", "weakref_object", "list_items", "var_size", "type_dictoffset"}
    names |= {"long_digits", "long_digits several", "dict keys str", "dict keys int"}
    names |= {"heaptype_cached_keys", "dictvalues_values"}
    for kind in ("list", "int", "class", "weakref", "dict"):
        names |= {f"type_name {kind}", f"type_basicsize {kind}", f"type_flags {kind}"}
    if version >= (3, 11):
        names.add("managed_dict_offset")
    return names


@pytest.mark.parametrize("version", VERSIONS)
def test_offsets_read_a_live_interpreters_objects(version: str) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(
            f"CPython {version} is not installed (no pyenv {version}.*, no python{version})"
        )
    major, minor = (int(part) for part in version.split("."))
    checks = probed(python, OFFSETS[(major, minor)])
    assert checks.pop("version")[0] == [major, minor]
    assert set(checks) == expected_checks((major, minor))
    mismatches = {name: pair for name, pair in checks.items() if pair[0] != pair[1]}
    assert mismatches == {}


def test_a_wrong_offset_is_a_mismatch() -> None:
    version = next((version for version in VERSIONS if find_python(version)), None)
    if version is None:
        pytest.skip(f"none of CPython {', '.join(VERSIONS)} is installed")
    major, minor = (int(part) for part in version.split("."))
    offsets = dict(OFFSETS[(major, minor)])
    offsets["weakref_object"] += 8  # the weakref's callback: none, a null word
    read, wanted = probed(find_python(version), offsets)["weakref_object"]
    assert isinstance(wanted, int) and read != wanted

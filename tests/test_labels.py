"""Label values from targets: bounded in number and length, always valid text."""

from collections import Counter

import pytest

from thread_observer.labels import (
    MAX_CREATORS_PER_PROCESS,
    OTHER_HOSTS,
    HostLabels,
    bounded_creator,
    creator,
    host_label,
    short_creator,
)
from thread_observer.procfs import AddressResolver, Mapping


def test_host_label_escapes_what_is_not_printable():
    assert host_label(b"localhost\0garbage") == "localhost"
    assert host_label(b"") == "<none>"
    assert host_label(b'a"b\\c') == 'a"b\\c'  # quotes stay: the exposition format escapes them
    assert host_label(b"line\nbreak\ttab") == "line\\x0abreak\\x09tab"
    assert host_label(b"\xff\xfebad") == "\ufffd\ufffdbad"


def test_host_labels_admit_the_first_names_and_keep_them():
    labels = HostLabels(limit=2)
    first = labels.relabel(Counter({"a": 5, "b": 1, "c": 3}))
    assert first == Counter({"a": 5, "c": 3, OTHER_HOSTS: 1})
    # b grows, but admission never changes: every series stays monotonic.
    later = labels.relabel(Counter({"a": 6, "b": 50, "c": 3, "d": 1}))
    assert later == Counter({"a": 6, "c": 3, OTHER_HOSTS: 51})


def test_host_labels_truncate_long_names():
    labels = HostLabels(limit=5)
    long_name = "x" * 500
    assert labels.relabel(Counter({long_name: 2})) == Counter({"x" * 128: 2})


MAPPINGS = [
    Mapping(0x1000, 0x2000, "/usr/bin/python3.11", True),
    Mapping(0x3000, 0x4000, "/usr/lib/libpython3.12.so.1.0", True),
    Mapping(0x5000, 0x6000, "/site/uvloop/loop.cpython-311-x86_64-linux-gnu.so", True),
    Mapping(0x7000, 0x8000, "/opt/" + "x" * 200 + ".so", True),
]


class Resolver(AddressResolver):
    def refresh(self) -> None:  # no /proc behind these mappings
        pass


@pytest.mark.parametrize(
    "routine, expected",
    [
        (0x1800, "python"),  # CPython's executable
        (0x3800, "python"),  # libpython
        (0x5800, "loop.cpython-311-x86_64-linux-gnu.so"),
        (0x7800, "x" * 96),  # cut at MAX_CREATOR_LENGTH
        (0x9000, "unknown"),  # in no mapping
        (0, "unknown"),  # not made by pthread_create
    ],
)
def test_creator(routine, expected):
    resolver = Resolver(1, MAPPINGS, "/usr/bin/python3.11")
    assert creator(resolver, routine) == expected


def test_creator_without_mappings_is_unknown():
    assert creator(None, 0x1800) == "unknown"


@pytest.mark.parametrize(
    "seen, name, expected",
    [
        (Counter(), "python", "python"),
        (Counter({f"lib{i}.so": 1 for i in range(MAX_CREATORS_PER_PROCESS)}), "new.so", "other"),
        (Counter({f"lib{i}.so": 1 for i in range(MAX_CREATORS_PER_PROCESS)}), "lib3.so", "lib3.so"),
    ],
)
def test_creators_per_process_are_bounded(seen, name, expected):
    assert bounded_creator(name, seen) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("loop.cpython-311-x86_64-linux-gnu.so", "loop.so"),
        ("_cffi_backend.abi3.so", "_cffi_backend.so"),
        ("libc.so.6", "libc.so.6"),
        ("python", "python"),
    ],
)
def test_short_creator(name, expected):
    assert short_creator(name) == expected

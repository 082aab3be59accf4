"""Label values from targets: bounded in number and length, always valid text."""

from collections import Counter

from observer.labels import OTHER_HOSTS, HostLabels, host_label


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

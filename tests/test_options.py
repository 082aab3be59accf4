"""ObserverOptions: built once from each command's arguments, checked, and frozen."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from thread_observer.cli import build_parser
from thread_observer.errors import UsageError
from thread_observer.options import ObserverOptions
from thread_observer.targets import PidTarget, RegexTarget

# Each command with no flag given, and the options it gives: run's are the defaults.
DEFAULTS = [
    (["run"], ObserverOptions()),
    (["top"], ObserverOptions(interval=1.0)),
    (["demo"], ObserverOptions(listen="127.0.0.1:0")),
]
COMMANDS = [argv[0] for argv, _ in DEFAULTS]


def options(*argv: str) -> ObserverOptions:
    return ObserverOptions.from_arguments(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(("argv", "expected"), DEFAULTS, ids=COMMANDS)
def test_each_command_without_flags_gives_its_defaults(argv, expected):
    assert options(*argv) == expected


@pytest.mark.parametrize(("argv", "expected"), DEFAULTS, ids=COMMANDS)
def test_the_defaults_are_the_flags_defaults(argv, expected):
    """Each option a command has a flag for, the same name as its destination, defaults
    to what argparse gives without the flag."""
    parsed = build_parser().parse_args(argv)
    flagged = [f.name for f in dataclasses.fields(ObserverOptions) if hasattr(parsed, f.name)]
    assert flagged
    for name in flagged:
        flag_default = getattr(parsed, name)
        if isinstance(flag_default, list):  # a repeatable flag
            flag_default = frozenset(flag_default)
        assert getattr(expected, name) == flag_default, name
    if hasattr(parsed, "no_children"):
        assert expected.follow_children is not parsed.no_children


def test_flags_become_typed_values():
    built = options(
        *("run", "--target", "api=uvicorn", "--pid", "worker=42", "--pid", "43"),
        *("--no-children", "--no-sites", "--no-host-names", "--no-dns-queries", "--label-pid"),
        *("--namespace", "shop", "--no-hosts-namespace", "jobs", "--listen", "[::1]:9100"),
    )
    assert built.regex_targets == (RegexTarget("api", re.compile("uvicorn")),)
    assert built.pid_targets == (PidTarget("worker", 42), PidTarget("", 43))
    assert not any((built.follow_children, built.sites, built.host_names, built.dns_queries))
    assert built.label_pid and built.epoll_mark
    assert (built.namespaces, built.no_hosts_namespaces) == ({"shop"}, {"jobs"})
    assert (built.listen, built.address) == ("[::1]:9100", ("::1", 9100))


def test_arguments_of_some_flags_only_keep_the_other_defaults():
    """As tests and benchmarks build them, e.g. tests/test_top.py."""
    parsed = argparse.Namespace(target=["batch=job"], pid=[], allow_non_python=False, backend="bpf")
    assert ObserverOptions.from_arguments(parsed) == ObserverOptions(
        regex_targets=(RegexTarget("batch", re.compile("job")),), backend="bpf"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["run", "--target", "api=python("],
            "--target api: bad regular expression 'python(': missing ), unterminated "
            "subpattern at position 6",
        ),
        (
            ["run", "--target", "api"],
            "--target 'api': expected NAME=REGEX, e.g. api='python.*server\\.py'",
        ),
        (["top", "--pid", "0"], "--pid '0': expected PID or NAME=PID with a positive number"),
        (
            ["run", "--listen", "nowhere"],
            "--listen 'nowhere': expected HOST:PORT, e.g. 0.0.0.0:9097",
        ),
        (["demo", "--listen", "9097"], "--listen '9097': expected HOST:PORT, e.g. 0.0.0.0:9097"),
        (
            ["run", "--no-sites", "--no-epoll-mark"],
            "--no-epoll-mark needs the Python frames to tell a call on the event loop: "
            "it cannot go with --no-sites",
        ),
        (
            ["run", *("--namespace", "web", "--namespace", "jobs", "--exclude-namespace", "jobs")],
            "--namespace and --exclude-namespace both name jobs",
        ),
        (["run", "--tls-cert-file", "cert.pem"], "--tls-cert-file and --tls-key-file go together"),
        (["run", "--tls-key-file", "key.pem"], "--tls-cert-file and --tls-key-file go together"),
    ],
    ids=["regex", "no-regex", "pid", "listen", "demo-listen", "epoll", "namespace", "cert", "key"],
)
def test_a_bad_value_is_the_usage_error_the_command_line_gives(argv, message):
    with pytest.raises(UsageError) as raised:
        options(*argv)
    assert str(raised.value) == message


def test_options_built_directly_are_checked_too():
    with pytest.raises(UsageError, match="cannot go with --no-sites"):
        ObserverOptions(sites=False, epoll_mark=False)


@pytest.mark.parametrize(
    ("name", "value"),
    [("sites", False), ("listen", "127.0.0.1:1"), ("regex_targets", ()), ("namespaces", {"x"})],
)
def test_the_options_cannot_be_changed(name, value):
    built = options("run", "--target", "a=x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, name, value)
    assert built == options("run", "--target", "a=x")


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        ([], False),
        (["--pod-labels"], True),
        (["--namespace", "shop"], True),
        (["--exclude-namespace", "shop"], True),
        (["--no-hosts-namespace", "shop"], True),
    ],
)
def test_pods_are_named_for_labels_or_to_choose_by_namespace(argv, wanted):
    assert options("run", *argv).wants_pod_names is wanted

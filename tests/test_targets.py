import os
import sys

import pytest

from observer import procfs
from observer.targets import (
    TargetError,
    match_target,
    parse_pid_target,
    parse_regex_target,
    resolve_pid_target,
)


def test_regex_target_matches_full_command_line():
    target = parse_regex_target(r"api=python.*server\.py")
    assert target.name == "api"
    assert match_target([target], "/usr/bin/python3 -u /srv/server.py --port 80") is target
    assert match_target([target], "python3 worker.py") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api", "expected NAME=REGEX"),
        ("api=", "expected NAME=REGEX"),
        ("api=python(", "bad regular expression"),
        ("9api=python", "must start with a letter"),
        ('a"b=python', "must start with a letter or _ and use only"),
    ],
)
def test_bad_regex_targets_say_why(text, message):
    with pytest.raises(TargetError, match=message.replace("(", r"\(")):
        parse_regex_target(text)


@pytest.mark.parametrize("text", ["0", "-3", "abc", "api=", "api=x1"])
def test_bad_pids(text):
    with pytest.raises(TargetError, match="expected PID or NAME=PID"):
        parse_pid_target(text)


def test_pid_target_named_or_not():
    assert parse_pid_target("42").pid == 42
    assert parse_pid_target("api=42").name == "api"


def test_pid_that_does_not_exist():
    with pytest.raises(TargetError, match="no such process"):
        resolve_pid_target(parse_pid_target(str(2**22 + 7)), allow_non_python=False)


def test_pid_of_this_python_process_resolves_with_its_name():
    resolved = resolve_pid_target(parse_pid_target(str(os.getpid())), allow_non_python=False)
    assert resolved.name.startswith("python")


def test_is_python_recognises_this_interpreter():
    assert procfs.is_python(os.getpid())
    assert procfs.python_version(os.getpid(), procfs.read_maps(os.getpid())) == \
        sys.version_info[:2]

import os
import sys

import pytest

from observer import procfs
from observer.bpf_backend import exec_arguments
from observer.targets import (
    OTHER_TARGET,
    TargetError,
    TargetNames,
    TargetNumbers,
    first_match,
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


def test_a_name_template_takes_its_values_from_named_groups():
    target = parse_regex_target(r"{app}=gunicorn: \w+ \[(?P<app>[^]:]+)")
    assert target.is_template
    assert target.name_for("gunicorn: worker [shop:app]") == "shop"
    assert target.name_for("gunicorn: master [my shop]") == "my_shop"  # made label-safe
    assert target.name_for("python app.py") is None
    prefixed = parse_regex_target(r"py-{module}=python[\d.]* -m (?P<module>\S+)")
    assert prefixed.name_for("python3.11 -m http.server 8000") == "py-http.server"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{app}=gunicorn", "is not a named group"),
        ("{app=(?P<app>x)", "bad name template"),
        ("a b{app}=(?P<app>x)", "outside its {fields}"),
    ],
)
def test_bad_name_templates_are_refused(text, message):
    with pytest.raises(TargetError, match=message):
        parse_regex_target(text)


def test_target_names_beyond_the_cap_go_under_other():
    target = parse_regex_target(r"{n}=job-(?P<n>\d+)")
    names = TargetNames(limit=2)
    assert [names.name(target, f"job-{i}") for i in (1, 2, 3, 1, 4)] == \
        ["1", "2", OTHER_TARGET, "1", OTHER_TARGET]
    plain = parse_regex_target(r"api=server")
    assert names.name(plain, "server") == "api"  # plain names are not capped


def test_first_match_tries_targets_in_order_over_both_command_lines():
    api, worker = parse_regex_target("api=server"), parse_regex_target("worker=celery")
    assert first_match([api, worker], [None, "celery worker"]) == (worker, "celery worker")
    assert first_match([api, worker], ["python server.py", "renamed"]) == \
        (api, "python server.py")
    assert first_match([api], ["renamed", None]) is None


def test_target_numbers_start_at_one_and_stay():
    numbers = TargetNumbers()
    assert (numbers.number("api"), numbers.number("web"), numbers.number("api")) == (1, 2, 1)
    assert (numbers.name(1), numbers.name(2), numbers.name(0), numbers.name(3)) == \
        ("api", "web", None, None)


def test_exec_report_arguments_end_at_the_first_empty_slot():
    slots = b"python\0\0\0" + b"-m\0\0\0\0\0\0" + b"\0" * 9 + b"stale\0\0\0\0"
    assert exec_arguments(slots, 9) == ["python", "-m"]
    assert exec_arguments(b"\xff\xfe\0" + b"\0" * 6, 9) == ["\ufffd\ufffd"]

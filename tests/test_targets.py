import os
import pwd
import shutil
import subprocess
import sys

import pytest

from tests.harness import REPO
from thread_observer import procfs
from thread_observer.bpf_backend import exec_arguments
from thread_observer.targets import (
    FULL_UID_MAP,
    OTHER_TARGET,
    AccessFacts,
    TargetError,
    TargetNames,
    TargetNumbers,
    denied_text,
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
    assert procfs.python_version(os.getpid(), procfs.read_maps(os.getpid())) == sys.version_info[:2]


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
    assert [names.name(target, f"job-{i}") for i in (1, 2, 3, 1, 4)] == [
        "1",
        "2",
        OTHER_TARGET,
        "1",
        OTHER_TARGET,
    ]
    plain = parse_regex_target(r"api=server")
    assert names.name(plain, "server") == "api"  # plain names are not capped


def test_first_match_tries_targets_in_order_over_both_command_lines():
    api, worker = parse_regex_target("api=server"), parse_regex_target("worker=celery")
    assert first_match([api, worker], [None, "celery worker"]) == (worker, "celery worker")
    assert first_match([api, worker], ["python server.py", "renamed"]) == (api, "python server.py")
    assert first_match([api], ["renamed", None]) is None


def test_target_numbers_start_at_one_and_stay():
    numbers = TargetNumbers()
    assert (numbers.number("api"), numbers.number("web"), numbers.number("api")) == (1, 2, 1)
    assert (numbers.name(1), numbers.name(2), numbers.name(0), numbers.name(3)) == (
        "api",
        "web",
        None,
        None,
    )


def test_exec_report_arguments_end_at_the_first_empty_slot():
    slots = b"python\0\0\0" + b"-m\0\0\0\0\0\0" + b"\0" * 9 + b"stale\0\0\0\0"
    assert exec_arguments(slots, 9) == ["python", "-m"]
    assert exec_arguments(b"\xff\xfe\0" + b"\0" * 6, 9) == ["\ufffd\ufffd"]


# Why a process cannot be read: what is in the way, and what to do
def facts(**changes) -> AccessFacts:
    root = dict(
        pid=1,
        euid=0,
        target_uid=0,
        sys_ptrace=True,
        own_uid_map=FULL_UID_MAP,
        target_uid_map=FULL_UID_MAP,
        security_modules=None,
    )
    return AccessFacts(**{**root, **changes})


@pytest.mark.parametrize(
    ("changes", "says", "advice"),
    [
        (
            {},
            "although this runs with CAP_SYS_PTRACE: a security module protects the process, "
            "as the first process of a VM or container often is (which modules are active is "
            "unknown",
            "Watch another process, or allow this one in that module's policy",
        ),
        (
            {"pid": 42, "security_modules": "lockdown,capability,landlock,apparmor"},
            "protects the process (active modules: lockdown,capability,landlock,apparmor)",
            "AppArmor or SELinux profile",
        ),
        (
            {"euid": 65534, "sys_ptrace": False},
            "it belongs to uid 0 and this runs as uid 65534 without CAP_SYS_PTRACE",
            "Run as root (sudo), or as uid 0",
        ),
        (
            {"euid": 1000, "target_uid": 1000, "sys_ptrace": False},
            "it is yours but not dumpable",
            "Run as root",
        ),
        (
            {"own_uid_map": "0 1000 1"},
            'outside this observer\'s user namespace (its uid_map reads "0 0 4294967295" from '
            'here, this one\'s "0 1000 1")',
            "Run the observer in the process's user namespace",
        ),
    ],
)
def test_denied_says_what_is_in_the_way(changes, says, advice):
    text = denied_text(facts(**changes))
    assert says in text and advice in text
    assert "(run as root)" not in text


def test_denied_as_root_never_advises_running_as_root():
    assert "Run as root" not in denied_text(facts())


def test_denied_for_another_user(as_nobody):
    """A real denial: nobody, without capabilities, asks for a process of root's."""
    result = as_nobody.run(
        ["-m", "thread_observer", "run", "--pid", str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"thread-observer: --pid {os.getpid()}: the kernel denies reading /proc/{os.getpid()}"
        f"/exe and /proc/{os.getpid()}/maps: it belongs to uid 0 and this runs as uid "
        f"{pwd.getpwnam('nobody').pw_uid} without CAP_SYS_PTRACE. Run as root (sudo), or as "
        "uid 0"
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare(1) to make a user namespace",
)
def test_denied_from_inside_a_user_namespace():
    """A real denial: root inside a new user namespace asks for a process outside it."""
    result = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            sys.executable,
            "-m",
            "thread_observer",
            "run",
            "--pid",
            str(os.getpid()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert (
        f"--pid {os.getpid()}: the kernel denies reading /proc/{os.getpid()}/exe and "
        f"/proc/{os.getpid()}/maps: it is outside this observer's user namespace (its "
        'uid_map reads "0 0 4294967295" from here, this one\'s "0 0 1")'
    ) in result.stderr

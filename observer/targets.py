"""Which processes are watched: ``--pid [NAME=]PID`` and ``--target NAME=REGEX``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil

from observer import procfs

TARGET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")


class TargetError(ValueError):
    """A target given on the command line that cannot be used; the message says why."""


@dataclass(frozen=True)
class RegexTarget:
    name: str
    pattern: re.Pattern[str]

    def matches(self, cmdline: str) -> bool:
        return self.pattern.search(cmdline) is not None


@dataclass(frozen=True)
class PidTarget:
    name: str
    pid: int


def parse_regex_target(text: str) -> RegexTarget:
    name, sep, regex = text.partition("=")
    if not sep or not regex:
        raise TargetError(f"--target {text!r}: expected NAME=REGEX, e.g. api='python.*server\\.py'")
    _check_name(name, "--target")
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise TargetError(f"--target {name}: bad regular expression {regex!r}: {err}") from None
    return RegexTarget(name, pattern)


def parse_pid_target(text: str) -> PidTarget:
    name, sep, pid_text = text.rpartition("=")
    if not pid_text.isdigit() or int(pid_text) <= 0:
        raise TargetError(f"--pid {text!r}: expected PID or NAME=PID with a positive number")
    pid = int(pid_text)
    if sep:
        _check_name(name, "--pid")
    return PidTarget(name or "", pid)


def _check_name(name: str, flag: str) -> None:
    if not TARGET_NAME.match(name):
        raise TargetError(
            f"{flag}: target name {name!r} must start with a letter or _ and use only "
            "letters, digits, _ . : - (at most 64)"
        )


def resolve_pid_target(target: PidTarget, allow_non_python: bool) -> PidTarget:
    """Checks the process exists (and is Python); names it after its executable if unnamed."""
    try:
        process = psutil.Process(target.pid)
        name = target.name or _sanitize(process.name())
        if not allow_non_python and not procfs.is_python(target.pid):
            raise TargetError(
                f"--pid {target.pid}: {process.name()!r} is not a Python process "
                "(use --allow-non-python to watch it anyway)"
            )
    except psutil.NoSuchProcess:
        raise TargetError(f"--pid {target.pid}: no such process") from None
    except (psutil.AccessDenied, PermissionError):
        raise TargetError(
            f"--pid {target.pid}: permission denied reading /proc/{target.pid} (run as root)"
        ) from None
    return PidTarget(name, target.pid)


def _sanitize(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:64] or "process"
    return cleaned if cleaned[0].isalpha() or cleaned[0] == "_" else f"_{cleaned}"


def cmdline_of(pid: int) -> str | None:
    """The full command line, or None if the process is gone (or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def match_target(targets: list[RegexTarget], cmdline: str) -> RegexTarget | None:
    for target in targets:
        if target.matches(cmdline):
            return target
    return None

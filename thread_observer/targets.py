"""Which processes are watched: ``--pid [NAME=]PID`` and ``--target NAME=REGEX``.

A target's name may take values from the regex's named groups (``{app}=gunicorn: \\w+
\\[(?P<app>[^]:]+)``): one target per value, up to :data:`MAX_NAMES_PER_TEMPLATE` of them.
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from thread_observer import procfs

log = logging.getLogger(__name__)

TARGET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
MAX_NAMES_PER_TEMPLATE = 100
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.:-]")
OTHER_TARGET = "<other>"  # the processes of a template's names beyond its cap


class TargetError(ValueError):
    """A target given on the command line that cannot be used; the message says why."""


@dataclass(frozen=True)
class RegexTarget:
    name: str  # a name, or a template such as "{app}" naming groups of the pattern
    pattern: re.Pattern[str]

    def matches(self, cmdline: str) -> bool:
        return self.pattern.search(cmdline) is not None

    @property
    def is_template(self) -> bool:
        return "{" in self.name

    def name_for(self, cmdline: str) -> str | None:
        """The target name for a command line (a template filled in), or None."""
        found = self.pattern.search(cmdline)
        if found is None:
            return None
        if not self.is_template:
            return self.name
        values = {
            group: UNSAFE_NAME_CHARACTERS.sub("_", (value or "")[:64])
            for group, value in found.groupdict().items()
        }
        return self.name.format(**values)[:64] or "<none>"


class TargetNames:
    """Target names taken from processes: bounded per template, the rest under
    :data:`OTHER_TARGET`. Admission never changes afterwards."""

    def __init__(self, limit: int = MAX_NAMES_PER_TEMPLATE) -> None:
        self.limit = limit
        self.admitted: dict[str, set[str]] = {}
        self.capped: set[str] = set()  # templates that have reached the cap

    def name(self, target: RegexTarget, cmdline: str) -> str | None:
        name = target.name_for(cmdline)
        if name is None or not target.is_template:
            return name
        admitted = self.admitted.setdefault(target.name, set())
        if name in admitted:
            return name
        if len(admitted) < self.limit:
            admitted.add(name)
            return name
        if target.name not in self.capped:
            self.capped.add(target.name)
            log.warning(
                "target %s has %d names already: later ones count as %s",
                target.name,
                self.limit,
                OTHER_TARGET,
            )
        return OTHER_TARGET


@dataclass
class TargetNumbers:
    """The kernel's numbers for target names (a child inherits its parent's number); 0 is
    none."""

    names: list[str] = field(default_factory=lambda: [""])
    numbers: dict[str, int] = field(default_factory=dict)

    def number(self, name: str) -> int:
        if name not in self.numbers:
            self.numbers[name] = len(self.names)
            self.names.append(name)
        return self.numbers[name]

    def name(self, number: int) -> str | None:
        return self.names[number] if 0 < number < len(self.names) else None


@dataclass(frozen=True)
class PidTarget:
    name: str
    pid: int


def parse_regex_target(text: str) -> RegexTarget:
    name, sep, regex = text.partition("=")
    if not sep or not regex:
        raise TargetError(f"--target {text!r}: expected NAME=REGEX, e.g. api='python.*server\\.py'")
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise TargetError(f"--target {name}: bad regular expression {regex!r}: {err}") from None
    _check_template(name, pattern)
    return RegexTarget(name, pattern)


def _check_template(name: str, pattern: re.Pattern[str]) -> None:
    """A plain name, or a template whose fields are named groups of the pattern."""
    try:
        fields = [(text, group) for text, group, spec, conversion in string.Formatter().parse(name)]
    except ValueError as err:
        raise TargetError(f"--target {name!r}: bad name template: {err}") from None
    groups = [group for _, group in fields if group is not None]
    if not groups:
        _check_name(name, "--target")
        return
    for group in groups:
        if group not in pattern.groupindex:
            raise TargetError(
                f"--target {name!r}: {{{group}}} is not a named group of the "
                "regex (write one as (?P<NAME>...))"
            )
    if not re.fullmatch(r"[A-Za-z0-9_.:-]*", "".join(text for text, _ in fields)):
        raise TargetError(
            f"--target {name!r}: outside its {{fields}}, a name template uses "
            "only letters, digits, _ . : -"
        )


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
        raise TargetError(f"--pid {target.pid}: {denied_text(access_facts(target.pid))}") from None
    return PidTarget(name, target.pid)


# Why the kernel refuses to show a process's executable and mappings
CAP_SYS_PTRACE = 19
FULL_UID_MAP = "0 0 4294967295"  # the map of the initial user namespace


@dataclass(frozen=True)
class AccessFacts:
    """What decides whether this process may read another's /proc/PID/exe and maps (a
    ptrace "read" check): who each one is, and which namespace and security modules apply."""

    pid: int
    euid: int
    target_uid: int | None  # None: gone, or its status unreadable too
    sys_ptrace: bool  # CAP_SYS_PTRACE is in our effective set
    own_uid_map: str
    target_uid_map: str | None
    security_modules: str | None  # /sys/kernel/security/lsm; None when not readable


def access_facts(pid: int) -> AccessFacts:
    status = _status_fields(f"/proc/{pid}/status")
    own = _status_fields("/proc/self/status")
    uid = status.get("Uid")
    return AccessFacts(
        pid=pid,
        euid=os.geteuid(),
        target_uid=int(uid.split()[0]) if uid else None,
        sys_ptrace=bool(int(own.get("CapEff", "0"), 16) >> CAP_SYS_PTRACE & 1),
        own_uid_map=_read_squeezed("/proc/self/uid_map") or FULL_UID_MAP,
        target_uid_map=_read_squeezed(f"/proc/{pid}/uid_map"),
        security_modules=_read_squeezed("/sys/kernel/security/lsm"),
    )


def denied_text(facts: AccessFacts) -> str:
    """What is in the way of reading a process, and what to do about it."""
    pid = facts.pid
    head = f"the kernel denies reading /proc/{pid}/exe and /proc/{pid}/maps"
    if facts.target_uid_map is not None and facts.target_uid_map != facts.own_uid_map:
        return (
            f"{head}: it is outside this observer's user namespace (its uid_map reads "
            f'"{facts.target_uid_map}" from here, this one\'s "{facts.own_uid_map}"), '
            "and capabilities count only inside. Run the observer in the process's user "
            "namespace or an ancestor of it (on the host, or a container sharing the "
            "host's)"
        )
    if not facts.sys_ptrace:
        if facts.target_uid is not None and facts.target_uid != facts.euid:
            return (
                f"{head}: it belongs to uid {facts.target_uid} and this runs as uid "
                f"{facts.euid} without CAP_SYS_PTRACE. Run as root (sudo), or as uid "
                f"{facts.target_uid}"
            )
        return (
            f"{head}: it is yours but not dumpable (setuid, file capabilities or "
            "prctl(PR_SET_DUMPABLE, 0)), and this runs without CAP_SYS_PTRACE. Run as root"
        )
    modules = (
        f"active modules: {facts.security_modules}"
        if facts.security_modules
        else "which modules are active is unknown: /sys/kernel/security/lsm is not readable"
    )
    init = ", as the first process of a VM or container often is" if pid == 1 else ""
    return (
        f"{head} although this runs with CAP_SYS_PTRACE: a security module protects the "
        f"process{init} ({modules}). Watch another process, or allow this one in that "
        "module's policy (AppArmor or SELinux profile, Landlock domain)"
    )


def _status_fields(path: str) -> dict[str, str]:
    try:
        with open(path) as status:
            return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)
    except OSError:
        return {}


def _read_squeezed(path: str) -> str | None:
    """The file's words joined by single spaces, or None if it cannot be read."""
    try:
        with open(path) as file:
            return " ".join(file.read().split())
    except OSError:
        return None


def _sanitize(name: str) -> str:
    cleaned = UNSAFE_NAME_CHARACTERS.sub("_", name)[:64] or "process"
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


def first_match(
    targets: list[RegexTarget], cmdlines: Iterable[str | None]
) -> tuple[RegexTarget, str] | None:
    """The first target (in the order given) whose regex matches one of the command lines
    (tried in the order given), with the command line it matched."""
    lines = [line for line in cmdlines if line]
    for target in targets:
        for line in lines:
            if target.matches(line):
                return target, line
    return None

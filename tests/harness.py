"""Running a real observer and reading its /metrics, for the eBPF tests."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from thread_observer.pyruntime import namespace_pid
from workloads.servers import free_port

REPO = Path(__file__).resolve().parent.parent
PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))


def bpf_skip_reason() -> str | None:
    """Why the eBPF tests cannot run here, or None when they can: the checks of
    ``thread-observer check``, and root (the tests also start namespaces and other users)."""
    from thread_observer.capabilities import check_bcc, check_headers, check_tracefs

    if os.geteuid() != 0:
        return "eBPF tests need root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)"
    for check in (check_bcc, check_headers, check_tracefs):
        result = check()
        if not result.ok:
            return f"{result.name}: {result.detail}"
    return None


def pyenv_pythons() -> list[str]:
    """Every CPython 3 that pyenv has here."""
    return sorted(glob.glob(os.path.join(PYENV_ROOT, "versions", "3.*", "bin", "python3")))


def shared_libpython_pythons() -> list[str]:
    """pyenv's CPythons built with a shared libpython (--enable-shared, as pyenv builds them
    and as the python Docker images are): their executable names it for the loader to map."""
    from thread_observer.procfs import LIBPYTHON
    from thread_observer.pyruntime import needed_libraries

    return [
        python
        for python in pyenv_pythons()
        if any(LIBPYTHON.match(name) for name in needed_libraries(python))
    ]


def find_python(version: str) -> str | None:
    """A CPython of that version ("3.6"): this one, pyenv's, else one on PATH; None."""
    if version == "{}.{}".format(*sys.version_info[:2]):
        return sys.executable
    found = sorted(
        glob.glob(os.path.join(PYENV_ROOT, "versions", f"{version}.*", "bin", "python3"))
    )
    found += filter(None, [shutil.which(f"python{version}")])
    return found[0] if found else None


def sites_read(running, pid: int) -> bool:
    """Whether the observer has logged reading the process's call sites."""
    return re.search(rf"pid {pid}: Python 3\.\d+ call sites read", running.log()) is not None


# How much slower than this machine the tests run: a kernel under qemu's emulation (the kernel
# matrix) sets it, and every wait of the harness stretches by it.
TIME_SCALE = float(os.environ.get("THREAD_OBSERVER_TEST_TIME_SCALE", "1"))


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RunningObserver:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str = "/metrics", accept: str | None = None) -> tuple[str, str]:
        request = urllib.request.Request(self.url + path)
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=10 * TIME_SCALE) as response:
            return response.read().decode(), response.headers["Content-Type"]

    def scrape(self) -> Metrics:
        return Metrics(self.get()[0])

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"observer exited {self.process.returncode}:\n{self.log()}")
        try:
            return self.get("/healthz")[0].startswith("{")
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10 * TIME_SCALE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# Put before the observer's command (a test may drop privileges with setpriv).
OBSERVER_PREFIX: list[str] = []
# The observer as on a kernel without the raw tracepoints it prefers (a prefix).
SYSCALL_TRACEPOINTS = [sys.executable, str(Path(__file__).with_name("with_syscall_tracepoints.py"))]


def skip_unless_raw_tracepoints(hooks: str) -> None:
    """Skips a test of the raw-tracepoint side (``epoll_at_switch`` or ``sends_at_sockets``,
    Hooks' fields) on a kernel that does not offer it; the syscall side is tested beside."""
    from thread_observer.bpf_backend import choose_hooks, kernel_btf

    if not getattr(choose_hooks(kernel_btf()), hooks):
        pytest.skip(
            f"this kernel offers no {hooks}: sched_switch needs bpf_task_pt_regs (x86-64, "
            "Linux 5.15+ with BTF), the sends also sock_send_length and tcp_sendmsg_locked "
            "(6.10+); the observer uses the syscall tracepoints, tested beside"
        )


@contextmanager
def observer(args: list[str], tmp_path: Path, timeout: float = 30.0):
    """``thread-observer run ARGS`` on a free loopback port, stopped afterwards."""
    port = free_port()
    log_path = tmp_path / f"observer-{port}.log"
    command = [
        *OBSERVER_PREFIX,
        sys.executable,
        "-m",
        "thread_observer",
        "run",
        "--listen",
        f"127.0.0.1:{port}",
        *args,
    ]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    running = RunningObserver(process, port, log_path)
    try:
        wait_until(running.ready, timeout, "the observer to serve /healthz")
        yield running
    finally:
        running.stop()


def settled(running, expected: dict[str, float], timeout: float = 10.0, **labels: str) -> Metrics:
    """The first scrape in which each metric (summed over the series with these labels) has
    its expected value: counts catch up with a workload's ground truth shortly after the
    workload reports it (its threads may still be ending). Times out with what it saw last."""
    seen: dict[str, float | None] = {}

    def done():
        metrics = running.scrape()
        seen.update({name: metrics.value(name, **labels) for name in expected})
        return metrics if seen == expected else None

    try:
        return wait_until(done, timeout, f"{expected} with {labels}")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}: saw {seen}\n{running.log()}") from None


def exits_settled(running, threads: int, timeout: float = 10.0, **labels: str) -> Metrics:
    """The first scrape in which every one of ``threads`` threads has been counted as ended."""
    return settled(running, {"thread_observer_threads_exited_total": threads}, timeout, **labels)


class Metrics:
    """Parsed /metrics text with lookups by metric name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples of that name whose labels include ``labels``."""
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(found) if found else None

    def labels(self, name: str, label: str, combine=sum, **match: str) -> dict[str, float]:
        """The values by one label, the series that share it combined (summed: PromQL's
        ``sum by (label)``; ``combine=max`` for a ratio)."""
        found: dict[str, list[float]] = {}
        for s in self.samples:
            wanted = all(s.labels.get(k) == v for k, v in match.items())
            if s.name == name and label in s.labels and wanted:
                found.setdefault(s.labels[label], []).append(s.value)
        return {value: combine(values) for value, values in found.items()}

    def nonzero(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Like labels(), without the series still at 0 (errors exported before they occur)."""
        return {k: v for k, v in self.labels(name, label, **match).items() if v}

    def has_target(self, target: str) -> bool:
        return any(s.labels.get("target") == target for s in self.samples)


class Workload:
    """A workload child process with the ready/go handshake and its ground-truth line."""

    def __init__(
        self,
        args: list[str],
        python: str = sys.executable,
        wait: bool = True,
        native: bool = False,
        own_pid_namespace: bool = False,
    ) -> None:
        # A native target (tests/native/target.c) always does the handshake by itself.
        command = list(args) if native else [python, *args] + (["--wait-stdin"] if wait else [])
        if own_pid_namespace:
            command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.pid = self.process.pid
        if wait:
            ready = json.loads(self._line())
            if own_pid_namespace:  # the workload is unshare's child, pid 1 in its namespace
                self.pid = int(Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text())
            assert ready["ready"] and ready["pid"] == namespace_pid(self.pid), ready

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"workload exited early ({self.process.wait()})")
        return line

    def go(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def truth(self) -> dict:
        """The ground-truth JSON line (the last the workload prints before lingering)."""
        while True:
            line = self._line()
            if line.startswith("{") and "threads_started" in line:
                return json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()


@contextmanager
def workload(args: list[str], **kwargs):
    running = Workload(args, **kwargs)
    try:
        yield running
    finally:
        running.stop()


# Running the command line as another user
def readable_install(folder: Path) -> Path:
    """The project and the dependencies it has in this checkout's virtual environment, put
    where any user can read them (a checkout under a private home is readable by its owner
    only): returns the folder to put on PYTHONPATH."""
    site = folder / "site"
    shutil.copytree(
        REPO / "thread_observer",
        site / "thread_observer",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(
        REPO / "probes",
        site / "thread_observer" / "bpf",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(
        REPO / "workloads", site / "workloads", ignore=shutil.ignore_patterns("__pycache__")
    )
    for dist in runtime_distributions(project_dependencies()):
        root = Path(dist.locate_file(""))
        if not root.resolve().is_relative_to(REPO):
            continue  # the system's: readable by everyone already
        for file in dist.files or []:
            source = root / file
            if source.is_file() and source.resolve().is_relative_to(root.resolve()):
                link_or_copy(source, site / file)
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        if path.is_dir():
            path.chmod(0o755)
        elif not mode & 0o004:  # a linked file is the venv's own: only ever add read bits
            path.chmod(mode | 0o444)
    return site


def project_dependencies() -> list[str]:
    """What pyproject.toml says the project needs to run."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [re.match(r"[A-Za-z0-9._-]+", line)[0] for line in project["dependencies"]]


def runtime_distributions(names: list[str]) -> list:
    """The installed distributions of these names and everything they require to run
    (extras left out)."""
    from importlib import metadata

    found: dict[str, object] = {}
    wanted = list(names)
    while wanted:
        requirement = wanted.pop()
        key = requirement.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = metadata.distribution(requirement)
        except metadata.PackageNotFoundError:
            continue
        found[key] = dist
        for line in dist.requires or []:
            if "extra ==" not in line:
                wanted.append(re.match(r"[A-Za-z0-9._-]+", line)[0])
    return list(found.values())


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # the same file: no copy, and still readable to all
    except OSError:
        shutil.copy2(source, target)


class Unprivileged:
    """Commands run as ``nobody`` with a Python it can read (the venv's interpreter is a link
    to the system's), from a folder it can read."""

    PREFIX = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]

    def __init__(self, site: Path) -> None:
        self.site = site
        self.python = os.path.realpath(sys.executable)
        self.env = {**os.environ, "PYTHONPATH": str(site)}

    def python_command(self, *args: str) -> list[str]:
        return [*self.PREFIX, self.python, *args]

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.python_command(*args), cwd=self.site, env=self.env, **kwargs)

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.python_command(*args), cwd=self.site, env=self.env, **kwargs)


def manifest_capabilities() -> list[str]:
    """The capabilities the sidecar manifest gives the observer (the DaemonSet's are the same:
    tests/test_deploy.py)."""
    import yaml

    manifest = REPO / "deploy" / "kubernetes" / "sidecar" / "sidecar.yaml"
    for document in yaml.safe_load_all(manifest.read_text()):
        if document and document.get("kind") == "Deployment":
            for container in document["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "thread-observer":
                    return container["securityContext"]["capabilities"]["add"]
    raise LookupError("no thread-observer container in the sidecar manifest")


# The fewest capabilities that work where kernel.perf_event_paranoid is 2 or less (Linux 5.8+).
LEAST_CAPABILITIES = ("BPF", "PERFMON", "SYS_PTRACE")


def capabilities_prefix(capabilities, no_new_privs: bool = False) -> list[str]:
    """setpriv's prefix for uid 0 with only these capabilities (and no_new_privs, as a
    container with allowPrivilegeEscalation: false)."""
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in capabilities)])
    prefix = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all"]
    return prefix + (["--no-new-privs"] if no_new_privs else [])


def assert_exact(metrics: Metrics, target: str, truth: dict) -> None:
    """Threads by creator, getaddrinfo calls by caller and failures by error equal what the
    workload recorded of itself."""
    assert metrics.labels("thread_observer_threads_created_total", "creator", target=target) == {
        "python": truth["threads_started"]
    }
    calls = metrics.labels("thread_observer_getaddrinfo_calls_total", "caller", target=target)
    assert calls == {
        "event_loop": truth["getaddrinfo_on_loop"],
        "other": truth["getaddrinfo_calls"] - truth["getaddrinfo_on_loop"],
    }
    assert (
        metrics.nonzero("thread_observer_getaddrinfo_failures_total", "error", target=target)
        == truth["getaddrinfo_errors"]
    )

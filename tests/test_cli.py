"""Bad input: one clear line on stderr, a non-zero exit, no traceback."""

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from observer.capabilities import MOUNTINFO, tracing_mount_points
from tests.harness import REPO


def run_cli(*args, timeout=60, as_nobody=None):
    """The command line; as_nobody: the ``as_nobody`` fixture, to run it as that user."""
    if as_nobody is not None:
        return as_nobody.run(
            ["-m", "observer", *args], capture_output=True, text=True, timeout=timeout
        )
    return subprocess.run(
        [sys.executable, "-m", "observer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def assert_clear_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("thread-observer:")]
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr


def test_bad_regex():
    assert_clear_error(
        run_cli("run", "--target", "api=python(", "--backend", "proc"), "bad regular expression"
    )


def test_pid_that_does_not_exist():
    assert_clear_error(
        run_cli("run", "--pid", str(2**22 + 11), "--backend", "proc"), "no such process"
    )


def test_pid_that_is_not_python():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert_clear_error(
            run_cli("run", "--pid", str(sleeper.pid), "--backend", "proc"),
            "is not a Python process",
        )
    finally:
        sleeper.kill()
        sleeper.wait()


def test_nothing_to_watch():
    assert_clear_error(run_cli("run", "--backend", "proc"), "nothing to watch")


def test_no_epoll_mark_needs_call_sites():
    # Without both, nothing would tell a call on the event loop.
    assert_clear_error(
        run_cli("run", "--target", "a=x", "--no-sites", "--no-epoll-mark", "--backend", "proc"),
        "--no-epoll-mark needs the Python frames",
    )


def test_bad_listen_address():
    assert_clear_error(
        run_cli("run", "--target", "a=x", "--listen", "nowhere", "--backend", "proc"),
        "expected HOST:PORT",
    )


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "run", "--target", "a=x", "--backend", "proc", "--listen", f"127.0.0.1:{port}"
        )
    assert_clear_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_unknown_flag_is_an_argparse_error_without_traceback():
    result = run_cli("run", "--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="dropping privileges needs root and setpriv",
)
def test_without_privileges_bpf_backend_refuses_clearly(as_nobody):
    result = run_cli("run", "--target", "a=x", "--backend", "bpf", as_nobody=as_nobody)
    assert_clear_error(result, "the bpf backend cannot work here: not root")


@pytest.mark.bpf
def test_check_passes_here():
    result = run_cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the bpf backend works here" in result.stdout
    assert "OK   probes" in result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="dropping privileges needs root and setpriv",
)
def test_check_names_what_is_missing_without_privileges(as_nobody):
    result = run_cli("check", as_nobody=as_nobody)
    assert result.returncode == 1
    assert re.search(r"FAIL privileges +not root and no CAP_BPF\+CAP_PERFMON", result.stdout)
    assert re.search(r"FAIL bpf syscall +bpf\(BPF_MAP_CREATE\) failed", result.stdout)
    # Mounted with its default mode 0700, tracefs is there but closed to nobody.
    tracing = "/sys/kernel/tracing"
    if tracing in tracing_mount_points(Path(MOUNTINFO).read_text()):
        assert not re.search(r"tracefs +not mounted", result.stdout)
        if not os.stat(tracing).st_mode & stat.S_IXOTH:
            assert re.search(
                rf"FAIL tracefs +mounted at {tracing}, but not readable by this user \(uid \d+\)",
                result.stdout,
            )
    assert "the bpf backend cannot work here" in result.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="dropping privileges needs root and setpriv",
)
def test_auto_falls_back_to_proc_and_says_so(tmp_path, as_nobody):
    from tests.harness import RunningObserver, free_port, wait_until

    port = free_port()
    log_path = tmp_path / "observer.log"
    # The target runs as nobody too: an unprivileged observer can read only its own users'.
    sleeper = as_nobody.popen(["-c", "import time; time.sleep(60)"])
    command = [
        "-m",
        "observer",
        "run",
        "--pid",
        f"sleeper={sleeper.pid}",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    with open(log_path, "w") as log_file:
        process = as_nobody.popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    running = RunningObserver(process, port, log_path)
    try:
        wait_until(running.ready, 30, "the observer to serve")
        metrics = running.scrape()
        assert metrics.value("thread_observer_build_info", backend="proc") == 1
        assert metrics.value("thread_observer_bpf_available") == 0
        assert metrics.value("thread_observer_threads", target="sleeper") == 1
        assert metrics.value("thread_observer_threads_created_total") is None
        assert "falling back to the proc backend" in running.log()
        assert "getaddrinfo are NOT measured" in running.log()
    finally:
        running.stop()
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="hiding the kernel headers needs root and unshare",
)
def test_missing_kernel_headers_name_the_package_and_the_link():
    release = os.uname().release
    # In a mount namespace of its own, /lib/modules is an empty tmpfs: no headers at all.
    hide = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        'mount -t tmpfs none /lib/modules && exec "$@"',
        "no-headers",
        sys.executable,
        "-m",
        "observer",
    ]
    run = subprocess.run(
        [*hide, "run", "--target", "a=x", "--backend", "bpf"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert_clear_error(run, f"apt-get install linux-headers-{release}")
    assert "link Debian's linux-headers-amd64 there" in run.stderr
    check = subprocess.run([*hide, "check"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert check.returncode == 1
    assert re.search(
        rf"FAIL kernel headers +none at /lib/modules/{re.escape(release)}/build", check.stdout
    )

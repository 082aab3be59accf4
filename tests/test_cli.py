"""Bad input: one clear line on stderr, a non-zero exit, no traceback."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.harness import REPO


def run_cli(*args, timeout=60, user=None):
    command = [sys.executable, "-m", "observer", *args]
    if user:
        command = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups",
                   "--inh-caps=-all", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_clear_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("thread-observer:")]
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr


def test_bad_regex():
    assert_clear_error(run_cli("run", "--target", "api=python(", "--backend", "proc"),
                       "bad regular expression")


def test_pid_that_does_not_exist():
    assert_clear_error(run_cli("run", "--pid", str(2**22 + 11), "--backend", "proc"),
                       "no such process")


def test_pid_that_is_not_python():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert_clear_error(run_cli("run", "--pid", str(sleeper.pid), "--backend", "proc"),
                           "is not a Python process")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_nothing_to_watch():
    assert_clear_error(run_cli("run", "--backend", "proc"), "nothing to watch")


def test_bad_listen_address():
    assert_clear_error(run_cli("run", "--target", "a=x", "--listen", "nowhere",
                               "--backend", "proc"), "expected HOST:PORT")


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--target", "a=x", "--backend", "proc",
                         "--listen", f"127.0.0.1:{port}")
    assert_clear_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_unknown_flag_is_an_argparse_error_without_traceback():
    result = run_cli("run", "--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="dropping privileges needs root and setpriv")
def test_without_privileges_bpf_backend_refuses_clearly():
    result = run_cli("run", "--target", "a=x", "--backend", "bpf", user="nobody")
    assert_clear_error(result, "the bpf backend cannot work here: not root")

"""Bad input: one clear line on stderr, a non-zero exit, no traceback."""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from tests.harness import REPO
from thread_observer.capabilities import MOUNTINFO, tracing_mount_points


def run_cli(*args, timeout=60, as_nobody=None):
    """The command line; as_nobody: the ``as_nobody`` fixture, to run it as that user."""
    if as_nobody is not None:
        return as_nobody.run(
            ["-m", "thread_observer", *args], capture_output=True, text=True, timeout=timeout
        )
    return subprocess.run(
        [sys.executable, "-m", "thread_observer", *args],
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
    log_path = tmp_path / "thread_observer.log"
    # The target runs as nobody too: an unprivileged observer can read only its own users'.
    sleeper = as_nobody.popen(["-c", "import time; time.sleep(60)"])
    command = [
        "-m",
        "thread_observer",
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


def kernel_has_own_headers() -> bool:
    """Whether the running kernel brings its own headers (CONFIG_IKHEADERS, built in or as a
    module): hiding the host's then leaves those."""
    from thread_observer.kernel_headers import KHEADERS, KHEADERS_MODULE

    modprobe = shutil.which("modprobe")
    loadable = modprobe and subprocess.run([modprobe, "-n", KHEADERS_MODULE], capture_output=True)
    return os.path.exists(KHEADERS) or bool(loadable and loadable.returncode == 0)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="hiding the kernel headers needs root and unshare",
)
@pytest.mark.skipif(kernel_has_own_headers(), reason="this kernel has headers of its own")
def test_missing_kernel_headers_name_the_package_and_the_link(tmp_path):
    from tests.harness import RunningObserver, free_port, wait_until
    from thread_observer.kernel_headers import BCC_KERNEL_SOURCE, KHEADERS

    release = os.uname().release
    # In a mount namespace of its own, /lib/modules and /usr/src are empty tmpfs mounts, and
    # nothing names headers for bcc: no headers at all.
    hide = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        'mount -t tmpfs none /lib/modules && mount -t tmpfs none /usr/src && exec "$@"',
        "no-headers",
        sys.executable,
        "-m",
        "thread_observer",
    ]
    env = {name: value for name, value in os.environ.items() if name != BCC_KERNEL_SOURCE}
    run = subprocess.run(
        [*hide, "run", "--target", "a=x", "--backend", "bpf"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert_clear_error(run, f"apt-get install linux-headers-{release}")
    assert "link Debian's linux-headers-amd64 there" in run.stderr
    check = subprocess.run(
        [*hide, "check"], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )
    assert check.returncode == 1
    failed = re.search(
        rf"FAIL kernel headers +none at /lib/modules/{re.escape(release)}/build, "
        rf"no {re.escape(KHEADERS)} .*",
        check.stdout,
    )
    assert failed, check.stdout
    assert "CONFIG_IKHEADERS" in failed[0]
    # Under the default backend (auto), run goes on with the proc backend and says why.
    port = free_port()
    log_path = tmp_path / "thread_observer.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [*hide, "run", "--target", "a=x", "--listen", f"127.0.0.1:{port}"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    running = RunningObserver(process, port, log_path)
    try:
        wait_until(running.ready, 30, "the observer to serve")
        assert running.scrape().value("thread_observer_build_info", backend="proc") == 1
        log = running.log()
        assert "falling back to the proc backend" in log
        assert f"eBPF unavailable (kernel headers: none at /lib/modules/{release}/build" in log
        assert f"apt-get install linux-headers-{release}" in log
        # Alive, but not ready: the kubelet takes the pod out of service, the alert sees it.
        assert json.loads(running.get("/healthz")[0])["status"] == "ok"
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            running.get("/readyz")
        assert not_ready.value.code == 503
        body = json.loads(not_ready.value.read())
        assert (body["status"], body["backend"]) == ("failing", "proc")
        assert "kernel headers" in body["reason"]
    finally:
        running.stop()


def assert_argument_error(result, message):
    """argparse's own usage error: its usage, then one "error:" line naming the argument."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert lines == [f"thread-observer run: error: {message}"], result.stderr


@pytest.mark.parametrize(
    "name",
    ["Shop", "kube_system", "-shop", "shop-", "", "x" * 64, "shop.prod"],
    ids=["upper-case", "underscore", "leading-dash", "trailing-dash", "empty", "too-long", "dot"],
)
@pytest.mark.parametrize("flag", ["--namespace", "--exclude-namespace", "--no-hosts-namespace"])
def test_a_bad_namespace_name_is_a_usage_error(flag, name):
    # FLAG=VALUE: a value that starts with "-" is not taken for an option.
    result = run_cli("run", "--target", "a=x", "--backend", "proc", f"{flag}={name}")
    assert_argument_error(
        result,
        f"argument {flag}: {name!r} is not a Kubernetes namespace name (lower-case letters, "
        "digits and -, starting and ending with a letter or digit, at most 63)",
    )


def test_a_namespace_both_watched_and_excluded_is_a_usage_error():
    result = run_cli(
        "run",
        *("--target", "a=x", "--backend", "proc"),
        *("--namespace", "shop", "--namespace", "jobs", "--namespace", "web"),
        *("--exclude-namespace", "web", "--exclude-namespace", "jobs"),
    )
    assert_clear_error(result, "--namespace and --exclude-namespace both name jobs, web")


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_series_grace_is_a_usage_error(value):
    result = run_cli("run", "--target", "a=x", "--backend", "proc", "--series-grace", value)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "argument --series-grace: " in result.stderr
    assert repr(value) in result.stderr

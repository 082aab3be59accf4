"""Protecting /metrics: bearer tokens and TLS, with real requests to a real observer (the proc
backend: no privileges needed), and bad settings refused in one line."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

from tests.harness import REPO, free_port, observer, wait_until
from tests.test_cli import assert_clear_error, run_cli

# Local addresses must never go through a proxy that the environment may name.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def target():
    """A Python process to watch, so the observer has something to export."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def get(url: str, token: str | None = None, context: ssl.SSLContext | None = None):
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    handlers = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_bearer_token_guards_metrics_but_not_healthz_and_readyz(tmp_path, target):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    args = ["--backend", "proc", "--pid", f"app={target}", "--bearer-token-file", str(token_file)]
    with observer(args, tmp_path) as running:
        metrics = f"{running.url}/metrics"
        assert get(metrics)[0] == 401
        assert get(metrics, token="wrong")[0] == 401
        assert get(metrics, token="s3cret-token-and-more")[0] == 401
        status, body = get(metrics, token="s3cret-token")
        assert status == 200 and 'thread_observer_processes{target="app"} 1.0' in body
        assert get(f"{running.url}/healthz")[0] == 200
        # Ready once its first poll is done: /proc is the backend asked for.
        readyz = f"{running.url}/readyz"
        wait_until(lambda: get(readyz)[0] == 200, 10, "/readyz to answer 200 without a token")
        assert json.loads(get(readyz)[1])["status"] == "ok"
        # A rotated Secret: the new token applies, the old one no longer does.
        time.sleep(0.01)
        token_file.write_text("rotated\n")
        assert get(metrics, token="s3cret-token")[0] == 401
        assert get(metrics, token="rotated")[0] == 200


def self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextmanager
def tls_observer(args, tmp_path, context):
    port = free_port()
    log = tmp_path / "thread_observer.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thread_observer",
                "run",
                "--listen",
                f"127.0.0.1:{port}",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    url = f"https://127.0.0.1:{port}"

    def ready():
        assert process.poll() is None, log.read_text()
        try:
            return get(f"{url}/healthz", context=context)[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, 30, "the observer to serve https")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="openssl is needed to make a certificate (apt-get install openssl)",
)
def test_tls_and_token_together(tmp_path, target):
    cert, key = self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("t0ken")
    context = ssl.create_default_context(cafile=str(cert))
    args = [
        "--backend",
        "proc",
        "--pid",
        f"app={target}",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--bearer-token-file",
        str(token_file),
    ]
    with tls_observer(args, tmp_path, context) as url:
        assert get(f"{url}/metrics", context=context)[0] == 401
        status, body = get(f"{url}/metrics", token="t0ken", context=context)
        assert status == 200 and "thread_observer_processes" in body
        # Plain HTTP gets no metrics from a TLS port.
        with pytest.raises(OSError):
            _http.open(url.replace("https", "http") + "/metrics", timeout=10).read()


def test_bad_protection_settings_are_one_line_errors(tmp_path, target):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    base = ["run", "--backend", "proc", "--pid", str(target)]
    assert_clear_error(run_cli(*base, "--bearer-token-file", str(empty)), "the file is empty")
    assert_clear_error(
        run_cli(*base, "--bearer-token-file", str(tmp_path / "absent")), "No such file"
    )
    assert_clear_error(
        run_cli(*base, "--tls-cert-file", str(empty)),
        "--tls-cert-file and --tls-key-file go together",
    )
    assert_clear_error(
        run_cli(*base, "--tls-cert-file", str(empty), "--tls-key-file", str(empty)),
        "--tls-cert-file",
    )

"""The runner's side of :mod:`benchmarks.target` and of the local HTTP server it fetches."""

from __future__ import annotations

import json
import subprocess

from benchmarks.children import PYTHON, Children


class TargetProcess:
    """A ``benchmarks.target`` child: one command in, one JSON answer out."""

    def __init__(self, children: Children, label: str | None = None) -> None:
        label_args = ["--label", label] if label else []
        self.process = children.spawn(
            [PYTHON, "-m", "benchmarks.target", *label_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = json.loads(self._line())["pid"]

    def call(self, op: str, **params) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **params}) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self._line())
        if "error" in reply:
            raise RuntimeError(f"target {op}: {reply['error']}")
        return reply

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the target exited with status {self.process.wait()}")
        return line


def start_http_server(children: Children) -> int:
    """workloads.http_server on a free loopback port (it ends when its stdin closes)."""
    server = children.spawn(
        [PYTHON, "-m", "workloads.http_server", "--port", "0", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"the HTTP server exited with status {server.wait()}")
    return json.loads(line)["port"]

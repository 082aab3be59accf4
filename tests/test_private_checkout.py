"""The tests pass from a checkout only its owner can enter (a clone under /root, or in a
folder made by mktemp -d): what runs as another user gets what it needs another way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.harness import REPO, link_or_copy

UNPRIVILEGED_TESTS = [
    "tests/test_cli.py::test_without_privileges_bpf_backend_refuses_clearly",
    "tests/test_cli.py::test_check_names_what_is_missing_without_privileges",
    "tests/test_cli.py::test_auto_falls_back_to_proc_and_says_so",
]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="dropping privileges needs root and setpriv",
)
@pytest.mark.skipif(
    not shutil.which("git") or not (REPO / ".git").exists(),
    reason="needs git and a git checkout to clone",
)
def test_tests_run_as_nobody_pass_from_a_private_clone(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    clone = private / "thread-observer"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    clone.chmod(0o700)
    python = private_environment(clone / ".venv")
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *UNPRIVILEGED_TESTS],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(UNPRIVILEGED_TESTS)} passed" in result.stdout, result.stdout


def private_environment(venv) -> str:
    """A virtual environment inside the private clone, as ``make setup`` makes one there: the
    system's interpreter and site-packages, and this one's packages (linked, not copied) but
    not the project itself, which the clone's tests import from the clone."""
    subprocess.run(
        [
            os.path.realpath(sys.executable),
            "-m",
            "venv",
            "--system-site-packages",
            "--without-pip",
            str(venv),
        ],
        check=True,
        timeout=120,
    )
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = venv / ours.relative_to(sys.prefix)
    shutil.copytree(
        ours,
        theirs,
        dirs_exist_ok=True,
        copy_function=lambda source, target: link_or_copy(Path(source), Path(target)),
        ignore=shutil.ignore_patterns("__editable__*", "thread_observer*", "__pycache__"),
    )
    return str(venv / "bin" / "python")

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.harness import Unprivileged, bpf_skip_reason, readable_install


def pytest_collection_modifyitems(config, items):
    reason = bpf_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "bpf" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def as_nobody():
    """Runs commands as ``nobody``, with an interpreter, the project and its dependencies that
    this user can read wherever the checkout is (not under pytest's own temporary folder,
    which only its owner may enter)."""
    folder = Path(tempfile.mkdtemp(prefix="thread-observer-as-nobody-"))
    try:
        yield Unprivileged(readable_install(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

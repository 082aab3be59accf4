import pytest

from tests.harness import bpf_skip_reason


def pytest_collection_modifyitems(config, items):
    reason = bpf_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "bpf" in item.keywords:
            item.add_marker(skip)

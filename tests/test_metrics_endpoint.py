"""/metrics as the app serves it: the collectors' own text, the same bytes as client_python's
registry writes, in the format the scraper asks for. No root, no BPF."""

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.test_collector import bpf_snapshot
from tests.test_health import FakeObserver
from thread_observer.server import REGISTRY_KEY, make_app

# Samples that differ from one scrape to the next: the observer's own process and timing.
VARYING = ("thread_observer_scrape_duration_seconds", "process_", "thread_observer_last_poll")


def steady(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(VARYING)]


class SnapshotObserver(FakeObserver):
    def __init__(self) -> None:
        super().__init__(backend="proc")
        self._snapshot = bpf_snapshot()

    def snapshot(self):
        return self._snapshot

    def close(self) -> None:
        pass


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


THREADS = 'thread_observer_threads{target="api"} 8.0'


@pytest.mark.parametrize(
    ("accept", "content_type", "write", "sample"),
    [
        ("", "text/plain", generate_latest, THREADS),
        (PROMETHEUS_ACCEPT, "application/openmetrics-text", generate_openmetrics, THREADS),
        # An escaping only client_python writes: its own encoder answers.
        (
            "text/plain;version=1.0.0;escaping=dots",
            "text/plain",
            None,
            'thread__observer__threads{target="api"} 8.0',
        ),
    ],
)
def test_metrics_is_client_pythons_exposition(accept, content_type, write, sample):
    observer = SnapshotObserver()

    async def run():
        app = make_app(observer, False, 0.25)
        async with TestClient(TestServer(app)) as client:
            try:
                response = await client.get("/metrics", headers={"Accept": accept})
                body = await response.text()
                expected = write(app[REGISTRY_KEY]).decode() if write else None
                return response.status, response.headers["Content-Type"], body, expected
            finally:
                observer.release.set()

    status, served_as, body, expected = asyncio.run(run())
    assert status == 200
    assert served_as.startswith(content_type)
    assert sample in body.splitlines()
    if expected is not None:
        assert steady(body) == steady(expected)

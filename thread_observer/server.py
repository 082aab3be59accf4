"""The HTTP side: /metrics, /healthz and /readyz with aiohttp, and the poll loop beside them."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import select
import signal
import threading
import time
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from thread_observer.collector import ObserverCollector
from thread_observer.health import PollRecord, health_report, liveness_problem, readiness_problem
from thread_observer.kubernetes import PodNames
from thread_observer.observers import ProcObserver
from thread_observer.self_metrics import (
    BpfProgramCollector,
    PollCollector,
    process_collectors,
)
from thread_observer.text_format import format_of, write_text
from thread_observer.web_config import WebConfig

log = logging.getLogger(__name__)

OBSERVER_KEY = web.AppKey("observer", ProcObserver)
# Seconds between two polls at the least, when the kernel's reports of new programs call them
# before their interval.
MIN_POLL_GAP = 0.01
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
# The registry's collectors in its order: /metrics writes their text itself (text_format).
COLLECTORS_KEY = web.AppKey("collectors", list[Collector])
POLLS_KEY = web.AppKey("polls", PollRecord)


def make_app(
    observer: ProcObserver,
    label_pid: bool,
    interval: float,
    pod_names: PodNames | None = None,
    web_config: WebConfig | None = None,
    polls: PollRecord | None = None,
) -> web.Application:
    if polls is None:
        polls = PollRecord(interval)
    registry = CollectorRegistry(auto_describe=False)
    collectors = [
        ObserverCollector(observer.snapshot, label_pid=label_pid, pod_names=pod_names),
        *process_collectors(),
        PollCollector(polls),
    ]
    if observer.backend == "bpf":
        collectors.append(BpfProgramCollector(observer.probes.program_fds))
    for collector in collectors:
        registry.register(collector)
    app = web.Application(middlewares=(web_config or WebConfig()).middlewares())
    app[OBSERVER_KEY] = observer
    app[REGISTRY_KEY] = registry
    app[COLLECTORS_KEY] = collectors
    app[POLLS_KEY] = polls
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    app.cleanup_ctx.append(_poll_loop(interval))
    return app


def _poll_loop(interval: float):
    async def context(app: web.Application):
        observer = app[OBSERVER_KEY]
        poller = Poller(observer, interval, app[POLLS_KEY])
        poller.start()
        yield
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, poller.stop)
        # Detach every probe before the process exits.
        await loop.run_in_executor(None, observer.close)

    return context


class Poller(threading.Thread):
    """Calls the observer's poll every interval, and at once (MIN_POLL_GAP apart at the most)
    when its wake file descriptor brings news that calls for it: a thread of its own, asleep
    in poll(2) between two polls. Each poll's outcome goes to ``polls``, which /healthz,
    /readyz and the self metrics read."""

    def __init__(self, observer: ProcObserver, interval: float, polls: PollRecord) -> None:
        super().__init__(name="poll", daemon=True)
        self.observer = observer
        self.interval = interval
        self.polls = polls
        self._stop_read, self._stop_write = os.pipe()
        self._stopping = False

    def run(self) -> None:
        wake = self.observer.wake_fd()
        waiting = select.poll()
        for fd in (self._stop_read, wake):
            if fd is not None:
                waiting.register(fd, select.POLLIN)
        while not self._stopping:
            self._poll()
            polled = time.monotonic()
            if self.observer.poll_soon() or self._woken_before(waiting, polled + self.interval):
                # Not more often than this: each exec of a storm may wake the poll.
                time.sleep(max(MIN_POLL_GAP - (time.monotonic() - polled), 0))

    def _poll(self) -> None:
        try:
            self.observer.poll()
        except Exception:  # keep serving: one bad poll must not end the observer
            self.polls.poll_failed()
            log.exception("poll failed")
        else:
            self.polls.poll_completed()

    def _woken_before(self, waiting: select.poll, deadline: float) -> bool:
        """Waits until the deadline; True if the observer was woken with news that calls for
        a poll before it."""
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = [fd for fd, _ in waiting.poll(1000 * left)]
            if ready and self._stop_read not in ready:
                try:
                    if self.observer.woken():
                        return True
                except Exception:  # the next poll reads the news anyway
                    log.exception("reading the kernel's news failed")
                    return True
        return False

    def stop(self) -> None:
        self._stopping = True
        os.write(self._stop_write, b"x")
        self.join()
        os.close(self._stop_read)
        os.close(self._stop_write)


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    text_format = format_of(encoder)
    if text_format is None:  # a format only client_python writes
        write, source = encoder, request.app[REGISTRY_KEY]
    else:
        write = partial(write_text, openmetrics=text_format == "openmetrics")
        source = request.app[COLLECTORS_KEY]
    # Reading the maps is blocking: off the event loop.
    body = await asyncio.get_running_loop().run_in_executor(None, write, source)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 503 when the poll loop is stuck."""
    return health_response(request, liveness_problem(request.app[POLLS_KEY]))


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 until the first poll, and while eBPF was wanted but does not work."""
    fallback_reason = request.app[OBSERVER_KEY].fallback_reason
    return health_response(request, readiness_problem(request.app[POLLS_KEY], fallback_reason))


def health_response(request: web.Request, problem: str | None) -> web.Response:
    observer = request.app[OBSERVER_KEY]
    report = health_report(problem, observer.backend, len(observer.procs), request.app[POLLS_KEY])
    return web.json_response(report, status=200 if problem is None else 503)


async def index(request: web.Request) -> web.Response:
    return web.Response(text="thread-observer: see /metrics, /healthz and /readyz\n")


async def start_serving(
    observer: ProcObserver,
    host: str,
    port: int,
    label_pid: bool,
    interval: float,
    pod_names: PodNames | None = None,
    web_config: WebConfig | None = None,
) -> tuple[web.AppRunner, list[str]]:
    """Starts /metrics and the poll loop; returns the runner and the URLs it serves."""
    web_config = web_config or WebConfig()
    runner = web.AppRunner(
        make_app(observer, label_pid, interval, pod_names, web_config),
        handle_signals=False,
        access_log=None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=web_config.ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    freeze_start_up_objects()
    urls = [
        f"{web_config.scheme}://{address[0]}:{address[1]}/metrics" for address in runner.addresses
    ]
    for url in urls:
        log.info("serving %s (backend %s)", url, observer.backend)
    return runner, urls


def freeze_start_up_objects() -> None:
    """Leaves what start-up built (modules, the probes' maps and their types, the processes
    attached at start: some 75,000 objects) out of the garbage collector's full collections.
    They live as long as the observer, and each full collection walked them all: 20 to 50 ms
    on this machine, taken by whichever scrape allocated at that moment (the scrapes' p99)."""
    gc.collect()
    gc.freeze()


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(
    observer: ProcObserver,
    host: str,
    port: int,
    label_pid: bool,
    interval: float,
    pod_names: PodNames | None = None,
    web_config: WebConfig | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then detaches the probes and returns."""
    runner, _ = await start_serving(
        observer, host, port, label_pid, interval, pod_names, web_config
    )
    try:
        await until_signalled()
        log.info("stopping: detaching probes")
    finally:
        await runner.cleanup()
        log.info("stopped")

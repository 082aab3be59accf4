"""FastAPI calling a local server with httpx, its loop's default executor held full on request.

The commonest asyncio web stack: a FastAPI app on uvicorn whose endpoints call another HTTP
service with ``httpx.AsyncClient``. httpx connects through AnyIO, whose ``getaddrinfo`` is the
loop's: asyncio's resolves in the loop's default executor, uvloop's in libuv's own thread pool.
The service is ``http://localhost:$BACKEND_PORT/`` (a local server, by name: every request
resolves ``localhost``, never a name off the machine).

Each worker process sizes its default executor at start-up, as a service does
(``loop.set_default_executor``: ``$DEFAULT_EXECUTOR_WORKERS`` threads, 3 unless set, named as
asyncio names its own unless ``$DEFAULT_EXECUTOR_PREFIX`` says otherwise; "" leaves
ThreadPoolExecutor's own name), and serves, all on the event loop (``async def``: no AnyIO
worker thread):

  GET  /          one httpx request to the local server; answers its status
  POST /fill      holds the default executor full: max_workers + HELD_QUEUED work items that
                  wait for /release (max_workers run, HELD_QUEUED wait in its queue), then
                  LOOKUPS httpx requests in the background, whose lookups queue behind them on
                  asyncio's loop; answers this worker's /truth once nothing moves any more (a
                  worker already filled only answers it)
  GET  /truth     this worker's pid and its default executor's own numbers: len(_threads),
                  _max_workers, the work items running (busy), _work_queue.qsize(); what the
                  background requests did
  POST /release   lets the held items end, waits for them and the background requests, and
                  answers /truth (the threads stay, idle)

Between /fill and /release nothing a request to the app does touches the executor: each
worker's numbers stand still, whichever worker answers.

examples:
  BACKEND_PORT=8080 uvicorn --loop asyncio --workers 2 workloads.fastapi_httpx:app
  BACKEND_PORT=8080 uvicorn --loop uvloop --port 8000 workloads.fastapi_httpx:app
  curl -X POST localhost:8000/fill; curl localhost:8000/truth; curl -X POST localhost:8000/release
"""

import asyncio
import concurrent.futures
import contextlib
import os
import threading

import httpx
from fastapi import FastAPI

HELD_QUEUED = 1  # held work items beyond max_workers: they wait in the queue
LOOKUPS = 2  # background httpx requests started once the executor is full
DEFAULT_WORKERS = 3
SETTLE_TIMEOUT = 30.0


def backend_url() -> str:
    return f"http://localhost:{os.environ['BACKEND_PORT']}/"


async def fetch_backend() -> int:
    """One request by name, on a new client (a new connection: one lookup). No timeout: a
    request whose lookup waits behind held work waits as long as the test holds it."""
    async with httpx.AsyncClient(timeout=None, trust_env=False) as client:
        response = await client.get(backend_url())
        return response.status_code


class Held:
    """This worker's default executor and the work it holds."""

    def __init__(self, loop, executor) -> None:
        self.loop = loop
        self.executor = executor
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.running = 0  # held items running now
        self.items: list = []
        self.requests: list = []
        self.filled = False

    def hold(self) -> None:
        """A work item: runs in the executor until released."""
        with self.lock:
            self.running += 1
        try:
            self.released.wait()
        finally:
            with self.lock:
                self.running -= 1

    def busy(self) -> int:
        with self.lock:
            return self.running

    async def fill(self) -> None:
        if self.filled:
            return
        self.filled = True
        cap = self.executor._max_workers
        self.items = [self.loop.run_in_executor(None, self.hold) for _ in range(cap + HELD_QUEUED)]
        await settled(lambda: self.busy() == cap)
        self.requests = [asyncio.ensure_future(fetch_backend()) for _ in range(LOOKUPS)]
        await settled(self.requests_settled)

    def requests_settled(self) -> bool:
        """Whether each background request has its lookup queued (asyncio's loop: then it
        cannot end) or has ended (uvloop's: resolved in libuv's pool, the executor untouched)."""
        waiting = sum(not request.done() for request in self.requests)
        return self.executor._work_queue.qsize() == HELD_QUEUED + waiting

    async def release(self) -> None:
        self.released.set()
        await asyncio.gather(*self.items, *self.requests, return_exceptions=True)

    def truth(self) -> dict:
        executor = self.executor
        return {
            "pid": os.getpid(),
            "loop": type(self.loop).__module__,
            "filled": self.filled,
            "released": self.released.is_set(),
            "threads": len(executor._threads),
            "busy": self.busy(),
            "max_workers": executor._max_workers,
            "queued": executor._work_queue.qsize(),
            "requests": len(self.requests),
            "requests_done": [outcome(request) for request in self.requests if request.done()],
        }


def outcome(request) -> object:
    if request.cancelled():
        return "cancelled"
    error = request.exception()
    return repr(error) if error is not None else request.result()


async def settled(condition) -> None:
    """Waits on the loop (the executor untouched) until the condition holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise RuntimeError("the default executor did not settle")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def lifespan(app):
    loop = asyncio.get_running_loop()
    workers = int(os.environ.get("DEFAULT_EXECUTOR_WORKERS", DEFAULT_WORKERS))
    prefix = os.environ.get("DEFAULT_EXECUTOR_PREFIX", "asyncio")  # "": ThreadPoolExecutor's own
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    loop.set_default_executor(executor)
    app.state.held = Held(loop, executor)
    try:
        yield
    finally:
        # A worker stopped while it holds work lets it go: its threads must end for it to exit.
        await app.state.held.release()


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def index() -> int:
    return await fetch_backend()


@app.post("/fill")
async def fill() -> dict:
    await app.state.held.fill()
    return app.state.held.truth()


@app.get("/truth")
async def truth() -> dict:
    return app.state.held.truth()


@app.post("/release")
async def release() -> dict:
    await app.state.held.release()
    return app.state.held.truth()

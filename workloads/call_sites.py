"""Call sites with a known answer: threads and lookups made from known functions, recorded by
the interpreter's own profiler hook at the very C call the probes see.

In this order: ``asyncio.run()`` of an empty coroutine, then synchronous lookups on the same
thread (``sync_lookups_after_asyncio_run``: not on an event loop); 5 short threads started from
``spawn_plain_threads``; a thread that waits in a selector's epoll between synchronous lookups
(``lookups_between_selects``, as gunicorn's gthread workers do); 8 idle threads from
``keep_idle_threads`` (alive until exit); then on ``--loop``: blocking lookups inside a
coroutine (``blocking_lookup_in_coroutine``), the default executor grown from a coroutine
(``grow_default_executor``), a plain callback run by the loop making blocking lookups
(``lookups_in_callback``), on uvloop also ``loop.getaddrinfo`` (libuv's native threads); a
named ThreadPoolExecutor grown from ``use_named_pool``; AnyIO's worker threads grown by
``to_thread.run_sync`` from ``block_in_anyio_worker`` (when AnyIO is installed); with
``--hostile``: a thread and a lookup under a 1,000-deep recursion, and under a function whose
qualname is 300 characters long or holds non-ASCII and unprintable characters. The default
executor, the named pool and AnyIO's workers stay alive while the process lingers.

The last line is the ground truth: every ``thread`` (at the ``start_new_thread`` call) and
``getaddrinfo`` (at ``_socket.getaddrinfo``) event with its Python stack (file, qualname,
co_flags; innermost first) and whether a loop was running on that thread; the live threads of
both pools; the lookups made by libuv, which Python never sees.

examples:
  python -m workloads.call_sites --wait-stdin --linger 60
  python -m workloads.call_sites --loop uvloop --hostile
"""

import asyncio
import concurrent.futures
import json
import os
import selectors
import socket
import sys
import threading

from workloads.lifecycle import add_lifecycle_arguments, begin, scenario_parser
from workloads.loops import LOOPS, new_event_loop

SCENARIO = "call_sites"
HOST = "localhost"
MAX_RECORDED_FRAMES = 64
THREAD_STARTERS = ("start_new_thread", "start_joinable_thread")  # _thread's, by version


class SiteRecorder:
    """Records the stack at each C call that creates a thread or resolves a name."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def install(self):
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)
        return self

    def uninstall(self):
        sys.setprofile(None)
        threading.setprofile(None)

    def _hook(self, frame, event, arg):
        if event != "c_call":
            return
        name = getattr(arg, "__name__", "")
        module = getattr(arg, "__module__", "")
        if module == "_thread" and name in THREAD_STARTERS:
            self._record("thread", frame)
        elif module == "_socket" and name == "getaddrinfo":
            self._record("getaddrinfo", frame)

    def _record(self, kind, frame):
        frames = []
        while frame is not None and len(frames) < MAX_RECORDED_FRAMES:
            code = frame.f_code
            frames.append(
                [code.co_filename, getattr(code, "co_qualname", code.co_name), code.co_flags]
            )
            frame = frame.f_back
        on_loop = asyncio.events._get_running_loop() is not None
        with self._lock:
            self.events.append({"event": kind, "frames": frames, "on_loop": on_loop})


def build_parser():
    parser = scenario_parser(SCENARIO, __doc__)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--hostile", action="store_true")
    add_lifecycle_arguments(parser)
    return parser


def sync_lookups_after_asyncio_run(times=4):
    for _ in range(times):
        socket.getaddrinfo(HOST, 80)


def lookups_between_selects(times=3):
    """A gunicorn gthread worker's pattern: wait in a selectors epoll, then a synchronous
    lookup, on a thread that runs no event loop."""
    selector = selectors.DefaultSelector()
    for _ in range(times):
        selector.select(timeout=0)
        socket.getaddrinfo(HOST, 80)
    selector.close()


def spawn_plain_threads(count=5):
    threads = [threading.Thread(target=lambda: None) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def keep_idle_threads(stop, count=8):
    threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


async def blocking_lookup_in_coroutine(times=3):
    for _ in range(times):
        socket.getaddrinfo(HOST, 80)


def lookups_in_callback(done, times=2):
    """A plain callback the loop runs (no coroutine on the stack): it blocks the loop too."""
    for _ in range(times):
        socket.getaddrinfo(HOST, 80)
    done.set_result(times)


async def run_plain_callback():
    loop = asyncio.get_event_loop()
    done = loop.create_future()
    loop.call_soon(lookups_in_callback, done)
    await done


async def grow_default_executor(times=6):
    loop = asyncio.get_event_loop()
    lookups = []
    for _ in range(times):  # a loop, not a comprehension: no frame of its own on 3.11
        lookups.append(loop.run_in_executor(None, socket.getaddrinfo, HOST, 80))
    await asyncio.gather(*lookups)


async def resolve_with_libuv(times=3):
    loop = asyncio.get_event_loop()
    for _ in range(times):
        await loop.getaddrinfo(HOST, 80, type=socket.SOCK_STREAM)
    return times


def use_named_pool(pool, workers=3):
    release = threading.Event()
    futures = []
    for _ in range(workers):
        futures.append(pool.submit(release.wait))
    release.set()
    for future in futures:
        future.result()


ANYIO_WORKERS = 4
ANYIO_WORKER_NAME = "AnyIO worker thread"


async def block_in_anyio_worker(stop):
    """AnyIO's to_thread.run_sync, as FastAPI's sync endpoints use it: the worker stays busy
    (alive) until the process ends."""
    import anyio

    await anyio.to_thread.run_sync(stop.wait)


async def use_anyio_pool(stop, ready, workers=ANYIO_WORKERS):
    import anyio

    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(block_in_anyio_worker, stop)
        while len([t for t in threading.enumerate() if t.name == ANYIO_WORKER_NAME]) < workers:
            await anyio.sleep(0.01)
        ready.set()


def start_anyio_pool(stop):
    """AnyIO's workers, made from a loop of their own on a thread; None without AnyIO."""
    try:
        import anyio
    except ImportError:
        return None
    ready = threading.Event()
    thread = threading.Thread(target=anyio.run, args=(use_anyio_pool, stop, ready), daemon=True)
    thread.start()
    ready.wait()
    return thread


def recurse(depth):
    if depth:
        return recurse(depth - 1)
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    socket.getaddrinfo(HOST, 80)


def start_and_resolve():
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    socket.getaddrinfo(HOST, 80)


def renamed(function, qualname):
    """The same function under a hostile qualname (and name), as code objects may have."""
    if hasattr(function.__code__, "co_qualname"):
        function.__code__ = function.__code__.replace(co_qualname=qualname, co_name=qualname)
    else:
        function.__code__ = function.__code__.replace(co_name=qualname)
    return function


KEPT_ALIVE: list = []  # code objects the observer may still read


def hostile():
    """Deep and badly named stacks, run on a thread that never waits in epoll."""
    # Kept alive for the process's life: the observer names stacks when it reads them, and a
    # freed code object's memory may by then hold something else (it is named <unknown>).
    renamed_functions = [
        renamed(_copy(start_and_resolve), "q" * 300),
        renamed(_copy(start_and_resolve), 'na\u00efve_\u2603_\n"\\_\x7f'),
    ]
    KEPT_ALIVE.extend(renamed_functions)

    def run():
        recurse(1000)
        for function in renamed_functions:
            function()

    sys.setrecursionlimit(5000)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


def _copy(function):
    return type(function)(function.__code__, function.__globals__, function.__name__)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()
    begin(args, SCENARIO)
    recorder = SiteRecorder().install()
    if hasattr(asyncio, "run"):
        asyncio.run(asyncio.sleep(0))
        sync_lookups_after_asyncio_run()
    spawn_plain_threads()
    selecting = threading.Thread(target=lookups_between_selects)
    selecting.start()
    selecting.join()
    keep_idle_threads(stop)
    loop = new_event_loop(args.loop)
    # Made here only to count its threads afterwards (uvloop hides its own): its threads are
    # still started by run_in_executor, as the loop's default executor's are.
    default = concurrent.futures.ThreadPoolExecutor()
    loop.set_default_executor(default)
    asyncio.set_event_loop(loop)
    loop.run_until_complete(blocking_lookup_in_coroutine())
    loop.run_until_complete(run_plain_callback())
    loop.run_until_complete(grow_default_executor())
    native_calls = 0
    if args.loop == "uvloop":
        native_calls = loop.run_until_complete(resolve_with_libuv())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="named")
    use_named_pool(pool)
    start_anyio_pool(stop)
    if args.hostile:
        hostile()
    recorder.uninstall()
    print(
        json.dumps(
            {
                "scenario": SCENARIO,
                "loop": args.loop,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "threads_started": sum(e["event"] == "thread" for e in recorder.events),
                "events": recorder.events,
                "executor_threads": {
                    "default": len(default._threads),
                    "thread_pool": len(pool._threads),
                    "anyio": sum(t.name == ANYIO_WORKER_NAME for t in threading.enumerate()),
                },
                "executor_max_workers": default._max_workers,
                "native_getaddrinfo_calls": native_calls,
            }
        ),
        flush=True,
    )
    if args.linger > 0:
        stop.wait(args.linger)
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())

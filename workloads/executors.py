"""Thread pools held in a known state: the loop's default executor full with work queued behind
it, an explicit executor passed to run_in_executor partly busy, and an idle one; the workload
reports each executor's own numbers (its _threads, _max_workers, work queue), then holds them
until a line on stdin releases the work.

The default executor is the one asyncio makes itself at the first run_in_executor(None, ...),
as in a service; uvloop keeps its own out of Python's reach, so there the workload sets one
(loop.set_default_executor, as a service that sizes it does). With --stopped-loop the loop is
not running while the pools are held (run_until_complete has returned, as in a program that
runs its loop in steps); else the loop runs, waiting for the release.

    python -m workloads.executors [--loop asyncio|uvloop] [--stopped-loop] [--wait-stdin]

Works on CPython 3.8 and later (stdlib only, uvloop when asked for).
"""

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import threading
import time

QUEUED_BEHIND_DEFAULT = 2
EXPLICIT_WORKERS, EXPLICIT_BUSY = 3, 2
IDLE_WORKERS, IDLE_ITEMS = 4, 3


class Work:
    """Work items that block until released, counting how many run."""

    def __init__(self):
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0

    def block(self):
        with self.lock:
            self.running += 1
        self.release.wait()

    def wait_running(self, count, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.running == count:
                    return
            time.sleep(0.01)
        raise SystemExit(f"{self.running} work items running, expected {count}")


def new_loop(kind):
    """The loop and its default executor (None: asyncio makes it at the first use)."""
    if kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
        default = concurrent.futures.ThreadPoolExecutor()
        loop.set_default_executor(default)
        return loop, default
    return asyncio.new_event_loop(), None


class Pools:
    """The three executors, the default one known once made."""

    def __init__(self, loop, default):
        self.loop = loop
        self.default = default
        self.explicit = concurrent.futures.ThreadPoolExecutor(EXPLICIT_WORKERS, "explicit")
        self.idle = concurrent.futures.ThreadPoolExecutor(IDLE_WORKERS, "idle")

    def truth(self):
        return {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "executors": [
                describe("default", self.default, self.default._max_workers),
                # The wait in fill runs in the explicit pool too: it ended before this is read.
                describe("thread_pool", self.explicit, EXPLICIT_BUSY),
                describe("thread_pool", self.idle, 0),
            ],
        }

    def shutdown(self):
        for executor in (self.explicit, self.idle, self.default):
            executor.shutdown(wait=True)


async def fill(pools, work):
    """Fills the pools; returns the futures of the blocked items."""
    loop = pools.loop
    for _ in range(IDLE_ITEMS):  # one after the other: the idle pool reuses its threads
        await loop.run_in_executor(pools.idle, int)
    blocked = [loop.run_in_executor(pools.explicit, work.block) for _ in range(EXPLICIT_BUSY)]
    # The first item makes asyncio's default executor: its cap is known after it.
    blocked.append(loop.run_in_executor(None, work.block))
    pools.default = pools.default or loop._default_executor
    cap = pools.default._max_workers
    blocked += [
        loop.run_in_executor(None, work.block) for _ in range(cap - 1 + QUEUED_BEHIND_DEFAULT)
    ]
    await loop.run_in_executor(pools.explicit, work.wait_running, cap + EXPLICIT_BUSY)
    return blocked


def describe(pool, executor, busy):
    return {
        "pool": pool,
        "threads": len(executor._threads),
        "busy": busy,
        "max_workers": executor._max_workers,
        "queued": executor._work_queue.qsize(),
    }


async def held_until_released(pools, work):
    blocked = await fill(pools, work)
    print(json.dumps(pools.truth()), flush=True)
    released = asyncio.Event()
    call = pools.loop.call_soon_threadsafe
    waiter = threading.Thread(target=read_line_then, args=(call, released.set))
    waiter.start()
    await released.wait()
    work.release.set()
    await asyncio.gather(*blocked)
    waiter.join()


def read_line_then(call, then):
    sys.stdin.readline()
    call(then)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--stopped-loop", action="store_true")
    parser.add_argument("--wait-stdin", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    if args.wait_stdin:
        sys.stdin.readline()
    loop, default = new_loop(args.loop)
    pools, work = Pools(loop, default), Work()
    if args.stopped_loop:
        blocked = loop.run_until_complete(fill(pools, work))
        print(json.dumps(pools.truth()), flush=True)
        sys.stdin.readline()  # the loop stands still meanwhile
        work.release.set()
        loop.run_until_complete(asyncio.gather(*blocked))
    else:
        loop.run_until_complete(held_until_released(pools, work))
    pools.shutdown()
    loop.close()
    print(json.dumps({"released": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

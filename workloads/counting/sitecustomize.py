"""Ground truth for servers whose processes the tests do not start themselves.

Python loads this module at start-up when its folder is on PYTHONPATH, so every process of a
server (its workers, however they start: fork, spawn, exec) counts its own ``Thread.start``
and ``socket.getaddrinfo`` calls into ``$THREAD_OBSERVER_COUNTS/PID.json``, rewritten at each
one. A forked child starts again from zero under its own PID.
"""

import json
import os
import socket
import threading

_FOLDER = os.environ.get("THREAD_OBSERVER_COUNTS")


def _install(folder):
    counts = {"threads": 0, "getaddrinfo": 0}
    lock = [threading.Lock()]

    def record(key):
        with lock[0]:
            counts[key] += 1
            path = os.path.join(folder, f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as out:
                json.dump(counts, out)
            os.replace(path + ".tmp", path)

    def after_fork():
        lock[0] = threading.Lock()
        counts.update(threads=0, getaddrinfo=0)

    real_getaddrinfo, real_start = socket.getaddrinfo, threading.Thread.start

    def getaddrinfo(*args, **kwargs):
        record("getaddrinfo")
        return real_getaddrinfo(*args, **kwargs)

    def start(thread, *args, **kwargs):
        real_start(thread, *args, **kwargs)
        record("threads")

    os.register_at_fork(after_in_child=after_fork)
    socket.getaddrinfo = getaddrinfo
    threading.Thread.start = start


if _FOLDER:
    _install(_FOLDER)

"""Ground truth for servers whose processes the tests do not start themselves.

Python loads this module at start-up when its folder is on PYTHONPATH, so every process of a
server (its workers, however they start: fork, spawn, exec) counts its own ``Thread.start``
and ``socket.getaddrinfo`` calls (and those made on an event-loop thread) into
``$THREAD_OBSERVER_COUNTS/PID.json`` (``workloads.truth.count_into_folder``: a trace function,
no frame of its own on the stacks the observer reads).
"""

import os

_FOLDER = os.environ.get("THREAD_OBSERVER_COUNTS")

if _FOLDER:
    from workloads.truth import count_into_folder

    count_into_folder(_FOLDER)

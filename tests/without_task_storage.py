"""``python tests/without_task_storage.py PYTHON -m thread_observer ARGS``: the observer as on a
kernel without BPF task storage (before 5.15, or without BTF), where the probes keep their
per-thread state in maps. A prefix for tests.harness's observer command."""

import sys
from pathlib import Path

# This checkout's observer, as `python -m thread_observer` run from it would import (a script's own
# folder comes first on its path, not the working directory).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thread_observer import bpf_backend  # noqa: E402
from thread_observer.cli import main  # noqa: E402

bpf_backend.has_task_storage = lambda: False
sys.exit(main(sys.argv[4:]))

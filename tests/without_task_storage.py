"""``python tests/without_task_storage.py PYTHON -m observer ARGS``: the observer as on a
kernel without BPF task storage (before 5.15, or without BTF), where the probes keep their
per-thread state in maps. A prefix for tests.harness's observer command."""

import sys

from observer import bpf_backend
from observer.cli import main

bpf_backend.has_task_storage = lambda: False
sys.exit(main(sys.argv[4:]))

"""Process tree: a parent whose workers (forked, spawned or pooled) do all the work.

Each worker starts ``--threads`` threads and makes ``--lookups`` calls of
``socket.getaddrinfo("localhost")``, then ends at once: a worker lives a few milliseconds, as
pre-fork servers' and task pools' recycled workers may. The parent does no work of its own
beyond starting them; the ground truth (``threads_started``, ``getaddrinfo_calls``) sums what
every worker counted itself and the parent's own threads (a pool's handler threads, also given
as ``parent_threads_started``).

How the workers start (``--start``):
  fork        os.fork() from the parent, all at once, then waited for
  spawn       multiprocessing's spawn (a new interpreter whose command line names neither this
              module nor its options), one task per worker
  forkserver  multiprocessing's forkserver, one task per worker
  pool        multiprocessing.Pool(maxtasksperchild=1) (fork) running ``--workers`` tasks

``--parent-threads N`` keeps N threads of the parent alive (waiting) while it starts the
workers, as a server's own threads would be: a fork copies their thread states into the child,
whose interpreter drops them only once the child runs.

``--rename TITLE`` sets the process title (setproctitle) before anything else, as gunicorn
does: then no later read of /proc/PID/cmdline shows the command line it was started with.

examples:
  python -m workloads.process_tree --workers 3 --threads 10 --lookups 7
  python -m workloads.process_tree --start spawn --workers 2
  python -m workloads.process_tree --start pool --workers 200 --threads 1 --lookups 1
  python -m workloads.process_tree --parent-threads 8 --workers 100 --threads 1 --lookups 1
"""

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading

from workloads.lifecycle import add_lifecycle_arguments, begin, finish, scenario_parser
from workloads.truth import GroundTruth

SCENARIO = "process_tree"
STARTS = ("fork", "spawn", "forkserver", "pool")


def build_parser():
    parser = scenario_parser(SCENARIO, __doc__)
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--threads", type=int, default=10, help="threads per worker (default 10)")
    parser.add_argument(
        "--lookups",
        type=int,
        default=7,
        help="getaddrinfo('localhost') calls per worker (default 7)",
    )
    parser.add_argument(
        "--start", choices=STARTS, default="fork", help="how workers start (default fork)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=0, help="forked workers alive at once (default all)"
    )
    parser.add_argument(
        "--keep-workers",
        action="store_true",
        help="spawn, forkserver: the workers live until the parent exits",
    )
    parser.add_argument(
        "--executable", metavar="PATH", help="spawn, forkserver: the Python that runs the workers"
    )
    parser.add_argument(
        "--parent-threads",
        type=int,
        default=0,
        help="threads of the parent alive while it starts the workers (default 0)",
    )
    parser.add_argument(
        "--rename", metavar="TITLE", help="set this process title first thing (setproctitle)"
    )
    add_lifecycle_arguments(parser)
    return parser


def work(threads, lookups) -> dict:
    """One worker's work, counted by itself."""
    truth = GroundTruth().install()
    started = [threading.Thread(target=lambda: None) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    for _ in range(lookups):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
    truth.uninstall()
    return {"threads_started": truth.threads_started, "getaddrinfo_calls": truth.getaddrinfo_calls}


def pool_task(sizes) -> dict:
    return work(*sizes)


def forked_workers(args, stack) -> list:
    """Forks the workers, at most ``--concurrency`` alive at once; each appends its counts
    as one line to a shared file (one small O_APPEND write: lines never interleave)."""
    with tempfile.TemporaryFile("a+b") as results_file:
        alive = 0
        for _ in range(args.workers):
            if alive >= args.concurrency:
                os.wait()
                alive -= 1
            if os.fork() == 0:
                line = json.dumps(work(args.threads, args.lookups)) + "\n"
                os.write(results_file.fileno(), line.encode())
                os._exit(0)
            alive += 1
        for _ in range(alive):
            os.wait()
        results_file.seek(0)
        return [json.loads(line) for line in results_file.read().splitlines()]


def pooled_workers(args, stack) -> list:
    """With ``--keep-workers`` the pool's workers live on until the process exits."""
    import multiprocessing

    start_method = "fork" if args.start == "pool" else args.start
    context = multiprocessing.get_context(start_method)
    if args.executable:
        context.set_executable(args.executable)
    tasks = [(args.threads, args.lookups)] * args.workers
    if args.start == "pool":
        pool = context.Pool(2, maxtasksperchild=1)
    else:
        pool = context.Pool(args.workers)
    if args.keep_workers:
        stack.callback(pool.terminate)
        return pool.map(pool_task, tasks, chunksize=1)
    with pool:
        return pool.map(pool_task, tasks, chunksize=1)


@contextlib.contextmanager
def waiting_threads(count):
    """``count`` threads alive (waiting) until the block ends, then ended."""
    done = threading.Event()
    threads = [threading.Thread(target=done.wait) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.rename:
        import setproctitle

        setproctitle.setproctitle(args.rename)
    args.concurrency = args.concurrency or args.workers
    parent = GroundTruth().install()
    with contextlib.ExitStack() as stack:
        begin(args, SCENARIO)
        start_workers = forked_workers if args.start == "fork" else pooled_workers
        with waiting_threads(args.parent_threads):
            results = start_workers(args, stack)
        worker_threads = sum(r["threads_started"] for r in results)
        worker_calls = sum(r["getaddrinfo_calls"] for r in results)
        # The counts are the whole tree's: the parent's own and every worker's.
        finish(
            parent,
            args,
            scenario=SCENARIO,
            start=args.start,
            workers=len(results),
            threads_started=parent.threads_started + worker_threads,
            getaddrinfo_calls=parent.getaddrinfo_calls + worker_calls,
            parent_threads_started=parent.threads_started,
            worker_threads=worker_threads,
            worker_getaddrinfo_calls=worker_calls,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

// Processes starting programs: the command line each one starts with, and what exec does to
// its watch.
//
// A process may rename itself as soon as it runs (setproctitle, as gunicorn does), so
// /proc/PID/cmdline read later may no longer show what it was started as. The arguments
// given to execve are kept here, per thread, and reported with the exec that succeeds
// (sched:sched_process_exec), through a ring buffer, before the process is marked pending:
// when user space sees the pending state, the report is already in the buffer.
//
// Events become (observer/bpf_backend.py):
//   exec_reports            ring buffer: {tgid, generation, arguments}, read at every poll
//   exec_reports_lost_total reports dropped because the ring buffer was full
//
// Parameters (-D cflags from observer/constants.py): MAX_ARGS, ARG_LENGTH,
// EXEC_RINGBUF_PAGES, MAX_THREADS, plus watched.h's.
#include "watched.h"
#include "python_stack.h"
#include "thread_state.h"

#ifndef MAX_ARGS
#error "MAX_ARGS must be defined (observer/constants.py MapSize)"
#endif
#ifndef ARG_LENGTH
#error "ARG_LENGTH must be defined (observer/constants.py MapSize)"
#endif
#ifndef EXEC_RINGBUF_PAGES
#error "EXEC_RINGBUF_PAGES must be defined (observer/constants.py MapSize)"
#endif
#ifndef MAX_THREADS
#error "MAX_THREADS must be defined (observer/constants.py MapSize)"
#endif

// Slot i holds argument i, truncated to ARG_LENGTH - 1 bytes; an empty slot ends the list.
struct exec_arguments {
    char args[MAX_ARGS * ARG_LENGTH];
};

struct exec_report {
    u32 tgid;
    u32 target;  // the target it had before the exec, 0 for none
    u64 generation;
    char args[MAX_ARGS * ARG_LENGTH];
};

// Host thread id -> the arguments of the execve it is in (the thread may be any of its
// process's: exec makes it the main thread, and sched_process_exec names it by old_pid).
BPF_TABLE("lru_hash", u32, struct exec_arguments, exec_arguments_by_thread, MAX_THREADS);
// Where the arguments are gathered: too large for the BPF stack.
BPF_PERCPU_ARRAY(exec_arguments_scratch, struct exec_arguments, 1);
BPF_RINGBUF_OUTPUT(exec_reports, EXEC_RINGBUF_PAGES);
BPF_ARRAY(exec_reports_lost_total, u64, 1);

static __always_inline int interested_in_exec(void)
{
    u32 tgid = current_pid_tgid() >> 32;  // 0 outside our PID namespace
    return tgid && (TRACK_NEW_PROCESSES || is_watched(tgid));
}

static __always_inline int keep_arguments(const char *const *argv)
{
    if (!interested_in_exec())
        return 0;
    u32 zero = 0;
    struct exec_arguments *gathered = exec_arguments_scratch.lookup(&zero);
    if (!gathered)
        return 0;
    int ended = 0;
    for (int i = 0; i < MAX_ARGS; i++) {
        char *slot = gathered->args + i * ARG_LENGTH;
        const char *arg = 0;
        if (!ended && bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) == 0 && arg) {
            if (bpf_probe_read_user_str(slot, ARG_LENGTH, arg) <= 0)
                slot[0] = 0;
        } else {
            ended = 1;
            slot[0] = 0;
        }
    }
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_arguments_by_thread.update(&tid, gathered);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return keep_arguments(args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return keep_arguments(args->argv);
}

static __always_inline void report_exec(u32 tgid, struct watched_process *process,
                                        struct exec_arguments *arguments)
{
    struct exec_report *report = exec_reports.ringbuf_reserve(sizeof(struct exec_report));
    if (!report) {
        u32 zero = 0;
        u64 *lost = exec_reports_lost_total.lookup(&zero);
        if (lost)
            __sync_fetch_and_add(lost, 1);
        return;
    }
    report->tgid = tgid;
    report->target = process->target;
    report->generation = process->generation;
    if (arguments)
        bpf_probe_read_kernel(report->args, sizeof(report->args), arguments->args);
    else
        report->args[0] = 0;  // not caught at execve: user space reads /proc instead
    exec_reports.ringbuf_submit(report, 0);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    // A new program: counted from here, classified by its command line in user space. A
    // watched process keeps its target (a child stays in its parent's) and its generation
    // until user space has seen what it became.
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32;
    u32 old_tid = args->old_pid;  // the host's id of the thread that called execve
    struct exec_arguments *arguments = exec_arguments_by_thread.lookup(&old_tid);
    struct watched_process *old = tgid ? watched_tgids.lookup(&tgid) : 0;
    if (old)
        forget_python_process(tgid);  // a new image: its interpreter is found again
    // Its process's generation may change below: the thread's copy is dropped (no process
    // has id 0), whatever the epoch, so that its next event looks it up again; and so is its
    // PyThreadState, of the old image.
    struct thread_state *state = this_thread((u32)id, 0);
    if (state) {
        state->tgid = 0;
        state->python_thread_state = 0;
    }
    if (tgid && (old || TRACK_NEW_PROCESSES)) {
        struct watched_process process = {.state = STATE_PENDING};
        if (old && old->state != STATE_EXITED) {
            process.target = old->target;
            process.generation = old->generation;
            process.parent = old->parent;
        } else {
            process.generation = bpf_ktime_get_ns();
        }
        report_exec(tgid, &process, arguments);
        watched_tgids.update(&tgid, &process);
    }
    if (arguments)
        exec_arguments_by_thread.delete(&old_tid);
    return 0;
}

#ifdef PIDNS_INO
// A forked child's first return to user space, from the clone, clone3, fork or vfork it was
// created by (it returns 0 there, before running any code of its own): it takes the watch its
// parent handed it, under its id in our namespace. Attached in a PID namespace only.
struct syscall_exit {
    u64 common;
    s32 syscall_nr;
    u32 padding;
    s64 ret;
};

int adopt_forked_child(struct syscall_exit *ctx)
{
    if (ctx->ret != 0)
        return 0;
    u64 host = bpf_get_current_pid_tgid();
    if ((u32)host != host >> 32)
        return 0;  // a new thread, not a new process
    u32 host_tgid = host >> 32;
    struct watched_process *child = forked_children.lookup(&host_tgid);
    if (!child)
        return 0;
    u32 tgid = current_pid_tgid() >> 32;
    if (tgid && watched_tgids.update(&tgid, child))
        count_child_not_watched();
    forked_children.delete(&host_tgid);
    return 0;
}
#endif

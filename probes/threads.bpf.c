// Threads: every thread created (task:task_newtask with CLONE_THREAD, so threads made without
// pthread_create count too), attributed to the start routine that pthread_create was given,
// and every thread that ended (sched:sched_process_exit). Counted in the kernel.
//
// Maps become metrics (thread_observer/bpf_backend.py):
//   threads_created_total  {process, start_routine} -> count  thread_observer_threads_created_total
//   process_totals (thread_state.h) {process} -> threads ended thread_observer_threads_exited_total
//   threads_created_by_site_total {process, stack} -> count (python_stack.h)
//                         thread_observer_threads_created_by_site_total
#include "watched.h"
#include "python_stack.h"
#include "thread_state.h"

#ifndef MAX_CREATORS
#error "MAX_CREATORS must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef RAW_TASK_EVENTS
#error "RAW_TASK_EVENTS must be given as a -D cflag by thread_observer/bpf_backend.py"
#endif
#ifndef CLONE_THREAD
#define CLONE_THREAD 0x00010000
#endif

struct creator_key {
    u32 tgid;
    u32 reserved;
    u64 generation;
    u64 start_routine;  // 0: the thread was not made by pthread_create
};

BPF_HASH(threads_created_total, struct creator_key, u64, MAX_CREATORS);

// bcc's increment() is not atomic, and two CPUs that find a key missing both store 1:
// lookup_or_try_init inserts only if absent, then the add is atomic. (It gives NULL when the
// map is full: that one count is lost, the other maps still count.)
static __always_inline int add_created(struct creator_key *key)
{
    u64 zero = 0, *count = threads_created_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

static __always_inline int pthread_create_entry_body(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    u64 routine = PT_REGS_PARM3(ctx), generation;
    struct thread_state *state = watched_thread(tgid, tid, &generation);
    if (!state)
        return 0;
    state->start_routine = routine;
    return 0;
}
UPROBE_PROGRAM(pthread_create_entry, pthread_create_entry_body)

static __always_inline void count_new_thread(u32 tgid, u32 tid, u64 generation,
                                             struct thread_state *state)
{
    struct creator_key key = {.tgid = tgid, .generation = generation};
    u64 *tstate_cache = 0;
    if (state) {
        key.start_routine = state->start_routine;
        state->start_routine = 0;
        tstate_cache = &state->python_thread_state;
    }
    count_thread_site(tgid, tid, generation, key.start_routine, tstate_cache);
    add_created(&key);
}

static __always_inline int new_task(u32 child, u64 clone_flags)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (clone_flags & CLONE_THREAD) {
        // A thread made by pthread_create has a state, with its process's generation.
        struct thread_state *state = this_thread(tid, 0);
        u64 generation = state ? thread_generation(state, tgid) : watched_generation(tgid);
        if (generation)
            count_new_thread(tgid, tid, generation, state);
        return 0;
    }
    struct watched_process *process = watched_tgids.lookup(&tgid);
    if (!process)
        return 0;
    if (!inherit_watch(tgid, process, child)) {
#ifndef PIDNS_INO
        // A fork of a process not yet matched: same command line, classified in user space.
        // (In a PID namespace the child's id here is the host's: the periodic scan finds it.)
        if (TRACK_NEW_PROCESSES)
            mark_pending(child, 1);
#endif
    }
#ifndef PIDNS_INO
    else {
        struct watched_process *watched_child = watched_tgids.lookup(&child);
        if (watched_child)
            inherit_python_process(tgid, process->generation, child, watched_child->generation);
    }
#endif
    return 0;
}

// Every thread that ends on the host comes here, once: what the probes keep of a thread is
// forgotten (a new thread may get its id), and a watched process's thread is counted.
static __always_inline int task_exit(int group_dead)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    forget_this_thread(tid);
    struct watched_process *process = watched_tgids.lookup(&tgid);
    if (!process)
        return 0;
    // The main thread ends with its process; counting only the others keeps
    // live = 1 + created - exited for a process watched from its start.
    if (tid != tgid) {
        struct process_totals *totals = totals_of(tgid, process->generation);
        if (totals)
            __sync_fetch_and_add(&totals->threads_exited, 1);
    }
    if (group_dead)
        process->state = STATE_EXITED;
    return 0;
}

// At the raw tracepoints where the kernel's BTF gives the task's pid offset: a tracepoint
// program does not run while another kprobe or tracepoint program holds its CPU's
// bpf_prog_active, as a map syscall of the observer's does (bpf_disable_instrumentation) for
// its whole length, which a kernel that preempts kernel code (PREEMPT_LAZY) can stretch over a
// thread's creation or end on that CPU: such events would be skipped (counted in
// bpf_program_misses_total). A raw tracepoint program only skips a run of itself.
#if RAW_TASK_EVENTS
RAW_TRACEPOINT_PROBE(task_newtask)
{
    u32 child = 0;  // args: the new task, its clone flags
    bpf_probe_read_kernel(&child, sizeof(child), (void *)(ctx->args[0] + NEWTASK_PID_OFFSET));
    return new_task(child, ctx->args[1]);
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
#if EXIT_GROUP_DEAD_FIELD
    return task_exit((int)(u8)ctx->args[1]);  // args: the task, group_dead
#else
    return task_exit(GROUP_DEAD(0));
#endif
}
#else
TRACEPOINT_PROBE(task, task_newtask)
{
    return new_task((u32)args->pid, args->clone_flags);
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    return task_exit(GROUP_DEAD(args));
}
#endif

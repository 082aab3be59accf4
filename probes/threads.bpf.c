// Threads: every thread created (task:task_newtask with CLONE_THREAD, so threads made without
// pthread_create count too), attributed to the start routine that pthread_create was given,
// and every thread that ended (sched:sched_process_exit). Counted in the kernel.
//
// Maps become metrics (observer/bpf_backend.py):
//   threads_created_total  {tgid, start_routine} -> count   thread_observer_threads_created_total
//   threads_exited_total   {tgid} -> count                  thread_observer_threads_exited_total
#include "watched.h"

#ifndef MAX_THREADS
#define MAX_THREADS 65536
#endif
#ifndef MAX_CREATORS
#define MAX_CREATORS 16384
#endif
#ifndef CLONE_THREAD
#define CLONE_THREAD 0x00010000
#endif

struct creator_key {
    u32 tgid;
    u32 reserved;
    u64 start_routine;  // 0: the thread was not made by pthread_create
};

BPF_HASH(threads_created_total, struct creator_key, u64, MAX_CREATORS);
BPF_HASH(threads_exited_total, u32, u64, MAX_PROCESSES);
// Creating thread -> the start routine it passed to pthread_create, until its clone happens.
BPF_TABLE("lru_hash", u32, u64, pending_start_routine, MAX_THREADS);

int pthread_create_entry(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_watched(tgid))
        return 0;
    u64 routine = PT_REGS_PARM3(ctx);
    pending_start_routine.update(&tid, &routine);
    return 0;
}

static __always_inline void count_new_thread(u32 tgid, u32 tid)
{
    struct creator_key key = {.tgid = tgid};
    u64 *routine = pending_start_routine.lookup(&tid);
    if (routine) {
        key.start_routine = *routine;
        pending_start_routine.delete(&tid);
    }
    threads_created_total.increment(key);
}

TRACEPOINT_PROBE(task, task_newtask)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_watched(tgid))
        return 0;
    if (args->clone_flags & CLONE_THREAD)
        count_new_thread(tgid, tid);
#ifndef PIDNS_INO
    // A fork of a watched process: same command line. (In a PID namespace the child's id
    // here is the host's, so forks are found by the periodic scan instead.)
    else if (TRACK_NEW_PROCESSES)
        mark_pending((u32)args->pid);
#endif
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    // A new program: counted from here, classified by its command line in user space.
    u32 tgid = current_pid_tgid() >> 32;
    if (TRACK_NEW_PROCESSES && tgid)
        mark_pending(tgid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_watched(tgid))
        return 0;
    // The main thread ends with its process; counting only the others keeps
    // live = 1 + created - exited for a process watched from its start.
    if (tid != tgid)
        threads_exited_total.increment(tgid);
    if (args->group_dead) {
        u32 state = STATE_EXITED;
        watched_tgids.update(&tgid, &state);
    }
    return 0;
}

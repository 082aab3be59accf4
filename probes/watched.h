// The set of watched processes, shared by every probe: filtering happens here, in the kernel,
// so events of other processes cost one hash lookup and nothing in user space.
//
// Every watched process has a generation (the time it was first seen, never 0), and every
// counter's key carries it: when a PID is reused, the new process's counts never mix with the
// old one's, even before user space has noticed the old one is gone.
//
// Parameters (-D cflags): STATE_PENDING, STATE_WATCHED, STATE_EXITED, MAX_PROCESSES and
// TRACK_NEW_PROCESSES from observer/constants.py (bpf_cflags), and PIDNS_DEV/PIDNS_INO from
// observer/bpf_backend.py (pid_namespace_cflags) when the observer runs in a PID namespace of
// its own (a container), so that ids match what it sees in /proc.
#ifndef THREAD_OBSERVER_WATCHED_H
#define THREAD_OBSERVER_WATCHED_H

#include <uapi/linux/ptrace.h>

#ifndef MAX_PROCESSES
#error "MAX_PROCESSES must be given as a -D cflag by observer/constants.py"
#endif
#ifndef STATE_PENDING
#error "STATE_PENDING must be given as a -D cflag by observer/constants.py"
#endif
#ifndef STATE_WATCHED
#error "STATE_WATCHED must be given as a -D cflag by observer/constants.py"
#endif
#ifndef STATE_EXITED
#error "STATE_EXITED must be given as a -D cflag by observer/constants.py"
#endif
#ifndef TRACK_NEW_PROCESSES
#error "TRACK_NEW_PROCESSES must be given as a -D cflag by observer/constants.py"
#endif

struct watched_process {
    u32 state;  // PENDING: counted from its start, until user space has read its command
                // line and decided whether a target matches it
    u32 reserved;
    u64 generation;
};

// The key of per-process counters.
struct process_key {
    u32 tgid;
    u32 reserved;
    u64 generation;
};

BPF_HASH(watched_tgids, u32, struct watched_process, MAX_PROCESSES);

// Process and thread ids as the observer sees them: 0 for tasks outside its PID namespace.
static __always_inline u64 current_pid_tgid(void)
{
#ifdef PIDNS_INO
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns)))
        return 0;
    return ((u64)ns.tgid << 32) | ns.pid;
#else
    return bpf_get_current_pid_tgid();
#endif
}

// The process's generation, or 0 when it is not watched.
static __always_inline u64 watched_generation(u32 tgid)
{
    struct watched_process *process = watched_tgids.lookup(&tgid);
    return process ? process->generation : 0;
}

static __always_inline int is_watched(u32 tgid)
{
    return watched_generation(tgid) != 0;
}

// A process that starts a program (or is forked from a watched one) becomes pending. A new
// process, or one whose PID belonged to an exited process, gets a new generation.
static __always_inline void mark_pending(u32 tgid, int new_process)
{
    struct watched_process *old = watched_tgids.lookup(&tgid);
    struct watched_process process = {.state = STATE_PENDING};
    if (old && !new_process && old->state != STATE_EXITED)
        process.generation = old->generation;
    else
        process.generation = bpf_ktime_get_ns();
    watched_tgids.update(&tgid, &process);
}

#endif

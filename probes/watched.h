// The set of watched processes (tgids), shared by every probe: filtering happens here, in the
// kernel, so events of other processes cost one hash lookup and nothing in user space.
//
// Parameters (-D cflags from observer/constants.py): STATE_PENDING, STATE_WATCHED,
// STATE_EXITED, MAX_PROCESSES, TRACK_NEW_PROCESSES, and PIDNS_DEV/PIDNS_INO when the observer
// runs in a PID namespace of its own (a container), so that ids match what it sees in /proc.
#ifndef THREAD_OBSERVER_WATCHED_H
#define THREAD_OBSERVER_WATCHED_H

#include <uapi/linux/ptrace.h>

#ifndef MAX_PROCESSES
#define MAX_PROCESSES 16384
#endif
#ifndef STATE_PENDING
#define STATE_PENDING 1
#define STATE_WATCHED 2
#define STATE_EXITED 3
#endif
#ifndef TRACK_NEW_PROCESSES
#define TRACK_NEW_PROCESSES 0
#endif

// tgid -> STATE_*. PENDING: a new process counted from its first instruction until user space
// has read its command line and decided whether a target matches it.
BPF_HASH(watched_tgids, u32, u32, MAX_PROCESSES);

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

static __always_inline int is_watched(u32 tgid)
{
    return watched_tgids.lookup(&tgid) != 0;
}

static __always_inline void mark_pending(u32 tgid)
{
    u32 state = STATE_PENDING;
    watched_tgids.update(&tgid, &state);
}

#endif

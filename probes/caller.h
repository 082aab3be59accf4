// Who makes a resolver call: the `caller` label of getaddrinfo_calls_total and
// resolver_calls_total, decided in one place for both.
//
// A thread that has waited in epoll_wait/epoll_pwait/epoll_pwait2 (syscall tracepoints) is an
// event-loop thread: a blocking resolver call there stalls its loop.
//
// Parameters (-D cflags from observer/constants.py): CALLER_OTHER, CALLER_EVENT_LOOP,
// MAX_THREADS.
#ifndef THREAD_OBSERVER_CALLER_H
#define THREAD_OBSERVER_CALLER_H

#include "watched.h"

#if !defined(CALLER_OTHER) || !defined(CALLER_EVENT_LOOP)
#error "CALLER_OTHER and CALLER_EVENT_LOOP come from observer/constants.py"
#endif
#ifndef MAX_THREADS
#error "MAX_THREADS comes from observer/constants.py"
#endif

// tids that have waited in epoll: event-loop threads
BPF_TABLE("lru_hash", u32, u8, event_loop_threads, MAX_THREADS);

int mark_event_loop_thread(void *ctx)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!watched_generation(id >> 32))
        return 0;
    // Loops wait thousands of times a second: look before writing.
    if (event_loop_threads.lookup(&tid))
        return 0;
    u8 yes = 1;
    event_loop_threads.update(&tid, &yes);
    return 0;
}

// The caller label of a call made now by thread `tid`.
static __always_inline u32 thread_caller(u32 tid)
{
    return event_loop_threads.lookup(&tid) ? CALLER_EVENT_LOOP : CALLER_OTHER;
}

#endif

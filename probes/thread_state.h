// What the probes keep per thread and per process, each in one place, so that an event costs
// as few map operations as possible.
//
// Per thread (a watched process's threads only): the getaddrinfo call in progress, the
// outermost resolver call in progress, the start routine handed to pthread_create until its
// clone, whether the thread has waited in epoll (an event loop), and its PyThreadState once
// found (python_stack.h: a site's read then looks nothing else up for the thread). With
// TASK_STORAGE (Linux 5.11+ with BTF) this lives in the task itself: found without hashing,
// and freed by the kernel with the thread, so no thread id is ever reused with a stale record.
// Without it, an LRU hash by thread id stands in, and the exit program deletes a thread's
// record.
//
// A thread's state also keeps its process's generation, so that an event of a watched thread
// needs no lookup in the watched set: the copy is good while the watch epoch is the one it was
// read in, and for the process it was read for (a state in a map by thread id may outlive an
// exec). User space sets a new epoch after every change it makes to the watched set; the one
// change the kernel makes to a running process (an exec) drops the exec'ing thread's copy,
// and every other one gives a new task, which has no state yet.
//
// Per process (keyed like every counter by tgid and generation): getaddrinfo calls by caller,
// the latency histogram and its sum, and threads ended, in one value: a return adds to three
// fields of one entry instead of three maps.
//
// Parameters (-D cflags from thread_observer/constants.py): TASK_STORAGE, MAX_THREADS, CALLERS,
// DURATION_SLOTS, MAX_PROCESSES.
#ifndef THREAD_OBSERVER_THREAD_STATE_H
#define THREAD_OBSERVER_THREAD_STATE_H

#include "watched.h"

#ifndef TASK_STORAGE
#error "TASK_STORAGE must be given as a -D cflag (0 or 1) by thread_observer/bpf_backend.py"
#endif
#ifndef MAX_THREADS
#error "MAX_THREADS must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef CALLERS
#error "CALLERS must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef DURATION_SLOTS
#error "DURATION_SLOTS must be given as a -D cflag by thread_observer/constants.py"
#endif
#if (CALLERS & (CALLERS - 1)) != 0
#error "CALLERS must be a power of two (it masks the index for the verifier)"
#endif

struct thread_state {
    u64 call_started_ns;      // getaddrinfo in progress since then; 0: none
    u64 call_generation;      // its process's generation at the call
    u64 start_routine;        // handed to pthread_create, until its clone; 0: none
    u64 resolver_returns_to;  // stack pointer the outermost resolver call returns to; 0: none
    u64 generation;           // its process's generation (0: not watched) ...
    u64 epoch;                // ... as of this watch epoch
    u64 python_thread_state;  // its PyThreadState once found (python_stack.h); 0: not known
    u32 tgid;                 // ... for this process; 0 (fresh, or through an exec): none
    u32 call_caller;          // decided at entry, where the frames are read
    u32 event_loop;           // the thread has waited in epoll
    u32 reserved;
};

struct process_totals {
    u64 calls[CALLERS];  // getaddrinfo calls by Caller
    u64 duration_ns_sum;
    u64 threads_exited;
    // Slot s counts calls of <= 2^s ns; the last slot every longer one (the histogram's
    // buckets end below it, thread_observer/histogram.py).
    u64 duration_slots[DURATION_SLOTS];
};

BPF_HASH(process_totals, struct process_key, struct process_totals, MAX_PROCESSES);
// A zeroed value to insert from: the struct is too big for the BPF stack next to the rest.
BPF_ARRAY(empty_process_totals, struct process_totals, 1);

#if TASK_STORAGE
BPF_TASK_STORAGE(thread_states, struct thread_state);

static __always_inline struct thread_state *this_thread(u32 tid, int create)
{
    return thread_states.task_storage_get(bpf_get_current_task_btf(), 0,
                                          create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline void forget_this_thread(u32 tid) {}
#else
BPF_TABLE("lru_hash", u32, struct thread_state, thread_states, MAX_THREADS);

static __always_inline struct thread_state *this_thread(u32 tid, int create)
{
    struct thread_state *state = thread_states.lookup(&tid);
    if (state || !create)
        return state;
    struct thread_state fresh = {};
    thread_states.update(&tid, &fresh);
    return thread_states.lookup(&tid);
}

static __always_inline void forget_this_thread(u32 tid)
{
    // Every exit on the host comes here: a lookup that misses (the usual case) is cheaper
    // than a delete, which takes the bucket's lock.
    if (thread_states.lookup(&tid))
        thread_states.delete(&tid);
}
#endif

// Written by user space only (thread_observer/bpf_backend.py), after each change to the watched set.
BPF_ARRAY(watch_epoch, u64, 1);

// The generation of the process of a thread that has a state (0: not watched now).
static __always_inline u64 thread_generation(struct thread_state *state, u32 tgid)
{
    u32 zero = 0;
    // Not named "current": the kernel's headers define that as a macro (6.12's
    // asm/current.h reaches this file, and "u64 *current" would declare get_current()).
    u64 *latest = watch_epoch.lookup(&zero);
    if (!latest)
        return watched_generation(tgid);
    // The epoch is read before the lookup: a change made meanwhile comes with a newer epoch,
    // which sends the next event to the watched set again.
    u64 epoch = *latest;
    if (state->epoch == epoch && state->tgid == tgid)
        return state->generation;
    state->generation = watched_generation(tgid);
    state->epoch = epoch;
    state->tgid = tgid;
    return state->generation;
}

// The state and process generation of the current thread of a watched process (NULL and 0
// otherwise); its state is made on its first event.
static __always_inline struct thread_state *watched_thread(u32 tgid, u32 tid, u64 *generation)
{
    struct thread_state *state = this_thread(tid, 0);
    if (state) {
        *generation = thread_generation(state, tgid);
        return *generation ? state : NULL;
    }
    *generation = watched_generation(tgid);
    if (!*generation)
        return NULL;
    return this_thread(tid, 1);  // its copy is made at its next event
}

// The process's totals, created on its first event (NULL only when the map is full).
static __always_inline struct process_totals *totals_of(u32 tgid, u64 generation)
{
    struct process_key key = {.tgid = tgid, .generation = generation};
    struct process_totals *totals = process_totals.lookup(&key);
    if (totals)
        return totals;
    u32 zero = 0;
    struct process_totals *empty = empty_process_totals.lookup(&zero);
    if (!empty)
        return NULL;
    // Two CPUs may both miss: only one insert wins, and both add to the winner.
    process_totals.insert(&key, empty);
    return process_totals.lookup(&key);
}

#endif

// Timeline: one record per event (thread created, renamed, exited; getaddrinfo started and
// ended; process exec, fork and exit), in order, for `thread-observer timeline`. This is the
// one probe that cannot aggregate in the kernel: a picture of lifetimes needs every instant.
//
// Records go through a BPF ring buffer (timeline_events). When it is full the record is
// counted in lost_events instead, so the picture can say how much it misses.
//
// Parameters (-D cflags from thread_observer/timeline/recorder.py): EVENT_* kinds, SERVICE_LEN,
// RINGBUF_PAGES, FOLLOW_CHILDREN; MAX_THREADS and HOST_LENGTH from thread_observer/constants.py, plus
// watched.h's, and python_stack.h's (SITES=1): a thread's creation and a lookup carry the
// Python stack at the call, its code objects decoded in user space.
#include "watched.h"
#include "python_stack.h"
#if !SITES
#error "the timeline reads Python stacks: SITES=1"
#endif

#ifndef MAX_THREADS
#error "MAX_THREADS must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef HOST_LENGTH
#error "HOST_LENGTH must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef RINGBUF_PAGES
#error "RINGBUF_PAGES must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef FOLLOW_CHILDREN
#error "FOLLOW_CHILDREN must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef SERVICE_LEN
#error "SERVICE_LEN must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_THREAD_CREATED
#error "EVENT_THREAD_CREATED must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_THREAD_RENAMED
#error "EVENT_THREAD_RENAMED must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_THREAD_EXITED
#error "EVENT_THREAD_EXITED must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_GETADDRINFO_START
#error "EVENT_GETADDRINFO_START must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_GETADDRINFO_END
#error "EVENT_GETADDRINFO_END must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_PROCESS_EXEC
#error "EVENT_PROCESS_EXEC must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_PROCESS_FORK
#error "EVENT_PROCESS_FORK must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef EVENT_PROCESS_EXIT
#error "EVENT_PROCESS_EXIT must be given as a -D cflag by thread_observer/timeline/recorder.py"
#endif
#ifndef CLONE_THREAD
#define CLONE_THREAD 0x00010000
#endif

struct timeline_event {
    u64 time_ns;   // bpf_ktime_get_ns: CLOCK_MONOTONIC
    u64 value;     // start routine (thread created), return code (getaddrinfo end)
    u32 kind;      // EVENT_*
    u32 tgid;      // as the observer sees it
    u32 tid;       // as the observer sees it; 0 when unknown (a new thread in a PID namespace)
    u32 task;      // the kernel's id of the thread the record is about: pairs its records
    u32 other;     // creating thread (thread created, process fork); old pid (exec)
    u32 reserved;
    char comm[16];
    char text[HOST_LENGTH];        // host name (getaddrinfo start), file name (exec)
    char service[SERVICE_LEN];  // service (getaddrinfo start)
    u32 stack_depth;            // code objects in stack (thread created, getaddrinfo start)
    u32 stack_flags;            // STACK_* bits
    u64 stack[STACK_DEPTH];     // the caller's code objects, innermost first
};

BPF_RINGBUF_OUTPUT(timeline_events, RINGBUF_PAGES);
BPF_ARRAY(lost_events, u64, 1);
// Creating thread -> the start routine it passed to pthread_create, until its clone happens.
BPF_TABLE("lru_hash", u32, u64, timeline_start_routine, MAX_THREADS);
// Thread -> its PyThreadState, once found by walking the interpreter's thread list
// (python_stack.h's find_thread_state); dropped at exec.
BPF_TABLE("lru_hash", u32, u64, python_thread_states, MAX_THREADS);

static __always_inline struct timeline_event *new_event(u32 kind, u64 id)
{
    struct timeline_event *event = timeline_events.ringbuf_reserve(sizeof(*event));
    if (!event) {
        u32 zero = 0;
        u64 *lost = lost_events.lookup(&zero);
        if (lost)
            __sync_fetch_and_add(lost, 1);
        return 0;
    }
    // Reserved memory is not zeroed: every field is set, so no stale bytes reach user space.
    event->time_ns = bpf_ktime_get_ns();
    event->value = 0;
    event->kind = kind;
    event->tgid = id >> 32;
    event->tid = (u32)id;
    event->task = (u32)bpf_get_current_pid_tgid();
    event->other = 0;
    event->reserved = 0;
    __builtin_memset(event->comm, 0, sizeof(event->comm));
    event->text[0] = 0;
    event->service[0] = 0;
    event->stack_depth = 0;
    event->stack_flags = 0;
    __builtin_memset(event->stack, 0, sizeof(event->stack));
    return event;
}

// The calling thread's Python stack into the event, where the process's frames are read.
static __always_inline void add_python_stack(struct timeline_event *event, u64 id)
{
    u32 tgid = id >> 32, tid = (u32)id;
    struct site_key *key = site_scratch_key();
    if (!key)
        return;
    u64 *cached = python_thread_states.lookup(&tid);
    u64 tstate = cached ? *cached : 0;
    int read = read_python_stack(tgid, tid, &tstate, watched_generation(tgid), key, 0);
    if (cached)
        *cached = tstate;
    else if (tstate)
        python_thread_states.update(&tid, &tstate);
    if (!read)
        return;
    event->stack_depth = key->depth;
    event->stack_flags = key->flags | STACK_PROCESS_READ;
    __builtin_memcpy(event->stack, key->code, sizeof(event->stack));
}

static __always_inline int timeline_pthread_create_body(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!is_watched(id >> 32))
        return 0;
    u64 routine = PT_REGS_PARM3(ctx);
    timeline_start_routine.update(&tid, &routine);
    return 0;
}
UPROBE_PROGRAM(timeline_pthread_create, timeline_pthread_create_body)

static __always_inline void thread_created(u64 id, u32 new_task, char *comm)
{
    struct timeline_event *event = new_event(EVENT_THREAD_CREATED, id);
    if (!event)
        return;
    u32 creator = (u32)id;
    u64 *routine = timeline_start_routine.lookup(&creator);
    if (routine) {
        event->value = *routine;
        timeline_start_routine.delete(&creator);
    }
    event->task = new_task;
#ifdef PIDNS_INO
    event->tid = 0;  // the new thread's id in our namespace is learnt from its own records
#else
    event->tid = new_task;
#endif
    event->other = creator;
    bpf_probe_read_kernel(event->comm, sizeof(event->comm), comm);
    // In the creator's clone: the frames that asked for the thread (Thread.start holds the GIL).
    add_python_stack(event, id);
    timeline_events.ringbuf_submit(event, 0);
}

static __always_inline void process_forked(u64 id, u32 child, char *comm)
{
#ifndef PIDNS_INO
    // In a PID namespace the child's id here is the host's: children are not followed there.
    if (!FOLLOW_CHILDREN)
        return;
    // Recorded from here; user space marks it watched when it reads this record.
    mark_pending(child, 1);
    struct timeline_event *event = new_event(EVENT_PROCESS_FORK, id);
    if (!event)
        return;
    event->task = child;
    event->other = (u32)id;
    bpf_probe_read_kernel(event->comm, sizeof(event->comm), comm);
    timeline_events.ringbuf_submit(event, 0);
#endif
}

TRACEPOINT_PROBE(task, task_newtask)
{
    u64 id = current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    // args->comm is the creator's name at clone time: the new thread's until it renames.
    if (args->clone_flags & CLONE_THREAD)
        thread_created(id, (u32)args->pid, args->comm);
    else
        process_forked(id, (u32)args->pid, args->comm);
    return 0;
}

TRACEPOINT_PROBE(task, task_rename)
{
    u64 id = current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    struct timeline_event *event = new_event(EVENT_THREAD_RENAMED, id);
    if (!event)
        return 0;
    // Another thread may do the renaming (pthread_setname_np writes /proc/self/task/TID/comm).
    if ((u32)args->pid != event->task) {
        event->task = args->pid;
        event->tid = 0;
    }
    bpf_probe_read_kernel(event->comm, sizeof(event->comm), args->newcomm);
    timeline_events.ringbuf_submit(event, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32;
    if (!tgid)
        return 0;
    if (!is_watched(tgid)) {
        if (!TRACK_NEW_PROCESSES)
            return 0;
        // A new program: recorded from here, kept or dropped by its command line in user space.
        mark_pending(tgid, 0);
    }
    forget_python_process(tgid);  // a new image: its interpreter is found again
    u32 tid = (u32)id;
    if (python_thread_states.lookup(&tid))
        python_thread_states.delete(&tid);
    struct timeline_event *event = new_event(EVENT_PROCESS_EXEC, id);
    if (!event)
        return 0;
    event->other = args->old_pid;
    bpf_get_current_comm(event->comm, sizeof(event->comm));
    TP_DATA_LOC_READ_STR(event->text, filename, sizeof(event->text));
    timeline_events.ringbuf_submit(event, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_watched(tgid))
        return 0;
    // Thread ids are reused: a new thread must not inherit a start routine left behind.
    u32 tid = (u32)id;
    timeline_start_routine.delete(&tid);
    struct timeline_event *event = new_event(EVENT_THREAD_EXITED, id);
    if (event) {
        // The name at exit is the thread's last one.
        bpf_probe_read_kernel(event->comm, sizeof(event->comm), args->comm);
        timeline_events.ringbuf_submit(event, 0);
    }
    if (GROUP_DEAD(args)) {
        event = new_event(EVENT_PROCESS_EXIT, id);
        if (event) {
            bpf_probe_read_kernel(event->comm, sizeof(event->comm), args->comm);
            timeline_events.ringbuf_submit(event, 0);
        }
        // Its id may be reused by an unrelated process.
        watched_tgids.delete(&tgid);
    }
    return 0;
}

static __always_inline int timeline_getaddrinfo_entry_body(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    struct timeline_event *event = new_event(EVENT_GETADDRINFO_START, id);
    if (!event)
        return 0;
    // Either may be NULL (getaddrinfo(NULL, "80", ...)); a failed read leaves "".
    const char *host = (const char *)PT_REGS_PARM1(ctx);
    const char *service = (const char *)PT_REGS_PARM2(ctx);
    if (!host || bpf_probe_read_user_str(event->text, sizeof(event->text), host) < 0)
        event->text[0] = 0;
    if (!service || bpf_probe_read_user_str(event->service, sizeof(event->service), service) < 0)
        event->service[0] = 0;
    bpf_get_current_comm(event->comm, sizeof(event->comm));
    add_python_stack(event, id);
    timeline_events.ringbuf_submit(event, 0);
    return 0;
}
UPROBE_PROGRAM(timeline_getaddrinfo_entry, timeline_getaddrinfo_entry_body)

static __always_inline int timeline_getaddrinfo_return_body(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    struct timeline_event *event = new_event(EVENT_GETADDRINFO_END, id);
    if (!event)
        return 0;
    event->value = (u64)(s64)(int)PT_REGS_RC(ctx);
    timeline_events.ringbuf_submit(event, 0);
    return 0;
}
UPROBE_PROGRAM(timeline_getaddrinfo_return, timeline_getaddrinfo_return_body)

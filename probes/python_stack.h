// Python call sites: the code objects on the calling thread's CPython frame chain, read at the
// call (a thread's creation at its clone, inside pthread_create, which runs with the GIL held;
// getaddrinfo with it released, but the caller's frames stay put until it returns, which is
// what sys._current_frames relies on too).
//
// User space finds the interpreter (_PyRuntime), checks the offsets against live memory, and
// writes one python_processes entry per process: where the thread list starts and the struct
// offsets of that interpreter version. Without that entry nothing here runs for the process.
//
// Layouts read (CPython 3.8-3.14; offsets come from the entry, never from here):
//   PyThreadState      prev, next, native_thread_id (the kernel tid, in the target's PID namespace;
//                      3.8-3.10: thread_id, a pthread_t, whose struct pthread holds the tid),
//                      cframe (3.11-3.12) -> _PyCFrame.current_frame, or current_frame (3.13+),
//                      or frame (3.8-3.10)
//   _PyInterpreterFrame previous, f_code (3.13+: f_executable; 3.14: a _PyStackRef, its low
//                      bits a tag), owner (3.12+: 3 = the C stack's entry frame, 3.14: 3 =
//                      the interpreter's entry frame, 4 = a C stack's frame: none holds Python
//                      code of its own); 3.8-3.10:
//                      PyFrameObject f_back, f_code (owner: the low byte of the aligned f_code)
//   PyCodeObject       co_flags (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR)
//   PyThreadState      datastack_chunk, datastack_top (3.11+): the data stack's part in use,
//                      where the thread's own frames lie, each older one lower
//
// Each bpf_probe_read_user costs about as much as a few map operations, whatever its size (up
// to a few KiB): a thread state is read at once, and the frames of the data stack a window of
// it at a time, so a stack of ordinary calls takes a handful of reads, not one or two a frame.
// A coroutine runs in a frame its generator owns (3.11+): only those frames have their code's
// co_flags read.
//
// Parameters (-D cflags from thread_observer/constants.py): SITES, STACK_DEPTH, MAX_FRAMES_WALKED,
// MAX_THREADS_WALKED, MAX_SITE_STACKS, FRAME_HEADER_SIZE,
// FRAME_READ_SIZE, FRAME_OWNED_BY_CSTACK, FRAME_OWNED_BY_CSTACK_3_14, FRAME_CODE_TAG_BITS,
// FRAME_OWNED_BY_GENERATOR, TSTATE_READ_SIZE,
// FRAME_WINDOW_SIZE, CO_COROUTINE_FLAGS, STACK_FRAMES_READ, STACK_COROUTINE, STACK_TRUNCATED,
// STACK_EVENT_LOOP, STACK_NO_THREAD_STATE.
#ifndef THREAD_OBSERVER_PYTHON_STACK_H
#define THREAD_OBSERVER_PYTHON_STACK_H

#include "watched.h"

#ifndef SITES
#error "SITES must be defined (thread_observer/constants.py bpf_cflags)"
#endif
#if SITES
#if !defined(STACK_DEPTH) || !defined(MAX_FRAMES_WALKED) || !defined(MAX_THREADS_WALKED) || \
    !defined(MAX_SITE_STACKS) || !defined(FRAME_OWNED_BY_CSTACK) || \
    !defined(FRAME_OWNED_BY_CSTACK_3_14) || \
    !defined(FRAME_CODE_TAG_BITS) || !defined(CO_COROUTINE_FLAGS) || \
    !defined(STACK_FRAMES_READ) || !defined(STACK_COROUTINE) || !defined(STACK_TRUNCATED) || \
    !defined(STACK_EVENT_LOOP) || !defined(STACK_NO_THREAD_STATE) || \
    !defined(CALLER_EVENT_LOOP) || !defined(FRAME_HEADER_SIZE) || \
    !defined(FRAME_READ_SIZE) || !defined(FRAME_OWNED_BY_GENERATOR) || \
    !defined(TSTATE_READ_SIZE) || !defined(FRAME_WINDOW_SIZE)
#error "python_stack.h needs the SITES parameters from thread_observer/constants.py"
#endif
#if (FRAME_HEADER_SIZE & (FRAME_HEADER_SIZE - 1)) != 0
#error "FRAME_HEADER_SIZE must be a power of two (it masks offsets for the verifier)"
#endif
#if (TSTATE_READ_SIZE & (TSTATE_READ_SIZE - 1)) != 0 || \
    (FRAME_WINDOW_SIZE & (FRAME_WINDOW_SIZE - 1)) != 0
#error "TSTATE_READ_SIZE and FRAME_WINDOW_SIZE must be powers of two (they mask offsets)"
#endif
#if (STACK_DEPTH & (STACK_DEPTH - 1)) != 0
#error "STACK_DEPTH must be a power of two (it masks the index for the verifier)"
#endif

struct python_process {
    u64 generation;    // the watched generation this entry was written for
    u64 threads_head;  // address of interp->threads.head
    u16 tstate_next;
    u16 tstate_native_thread_id;
    u16 tstate_frame;          // cframe (3.11-3.12) or current_frame (3.13+)
    s16 cframe_current_frame;  // -1: tstate_frame is the frame itself
    u16 frame_previous;
    u16 frame_code;
    u16 frame_owner;
    u16 code_flags;
    u16 tstate_prev;
    // -1: tstate_native_thread_id is the kernel's tid (3.11+). Else (3.8-3.10) that field is
    // thread_id, a pthread_t: the address of glibc's struct pthread, whose tid lies here.
    s16 pthread_tid;
    u32 frame_read_size;  // bytes of a frame up to its last field read
    u64 text_start;  // the interpreter's code (executable or libpython): a start routine
    u64 text_end;    // outside it is not a Python thread's, whoever asked for it
    // The target's PID namespace (st_dev, st_ino of /proc/PID/ns/pid) when it differs from the
    // observer's: its thread states hold ids of that namespace. 0: the observer's own.
    u64 pidns_dev;
    u64 pidns_ino;
    u16 tstate_read_size;  // bytes of a thread state read at once: up to its last field used
    s16 tstate_datastack;  // datastack_chunk, datastack_top follows (3.11+); -1: none
    // 1: a coroutine's frame is one its generator owns (3.11+); 0: any frame may run one.
    u16 owner_tells_generators;
    u16 reserved;
};

// A stack with what was learnt reading it: the key of the by-site counters.
struct site_key {
    u32 tgid;
    u32 flags;   // STACK_* bits; in the getaddrinfo map also STACK_EVENT_LOOP, the caller
    u64 generation;
    u32 depth;   // code objects kept (at most STACK_DEPTH)
    u32 reserved;
    u64 code[STACK_DEPTH];  // code objects, innermost first; 0 past the last frame
};

BPF_HASH(python_processes, u32, struct python_process, MAX_PROCESSES);
// Threads created by each stack.
BPF_HASH(threads_created_by_site_total, struct site_key, u64, MAX_SITE_STACKS);
BPF_HASH(getaddrinfo_calls_by_site_total, struct site_key, u64, MAX_SITE_STACKS);
// Events whose stack found the by-site map full, counted as <other>: kind 0 for threads,
// 1 + caller for getaddrinfo calls.
struct dropped_key {
    u32 tgid;
    u32 kind;
    u64 generation;
};
BPF_HASH(site_stacks_dropped_total, struct dropped_key, u64, MAX_PROCESSES);
// A stack is too big for the BPF stack next to the rest: built here, one per CPU.
BPF_PERCPU_ARRAY(site_scratch, struct site_key, 1);
// What one stack read reads at once, one per CPU: the thread state's first bytes, and a
// window of its data stack, from window_base up to window_end (an older frame lower in the
// part in use, stack_low to stack_high, has the window moved down to it).
struct frame_scratch {
    u64 tstate[TSTATE_READ_SIZE / 8];
    u64 stack_low;
    u64 stack_high;
    u64 window_base;
    u64 window_end;
    u8 window[FRAME_WINDOW_SIZE];
};
BPF_PERCPU_ARRAY(python_frame_scratch, struct frame_scratch, 1);

static __always_inline u64 read_u64(u64 address)
{
    u64 value = 0;
    bpf_probe_read_user(&value, sizeof(value), (void *)address);
    return value;
}

// A thread state's first bytes into the scratch, in one read: its links, id, frame and data
// stack. 0 when unreadable.
static __always_inline int read_thread_state(struct python_process *py,
                                             struct frame_scratch *scratch, u64 tstate)
{
    // Below TSTATE_READ_SIZE (checked in user space): the mask restates it for the verifier.
    u32 size = py->tstate_read_size & (TSTATE_READ_SIZE - 1);
    if (!size)
        return 0;
    return bpf_probe_read_user(scratch->tstate, size, (void *)tstate) == 0;
}

// A pointer-sized field of the thread state last read (offsets checked 8-aligned in user space).
static __always_inline u64 tstate_field(struct frame_scratch *scratch, u32 offset)
{
    return scratch->tstate[(offset >> 3) & (TSTATE_READ_SIZE / 8 - 1)];
}

// The innermost frame of the thread state last read (0: none).
static __always_inline u64 current_frame(struct python_process *py,
                                         struct frame_scratch *scratch)
{
    u64 frame = tstate_field(scratch, py->tstate_frame);
    if (py->cframe_current_frame >= 0 && frame)
        frame = read_u64(frame + py->cframe_current_frame);
    return frame;
}

// The kernel thread id of the thread state last read.
static __always_inline u64 thread_tid(struct python_process *py, struct frame_scratch *scratch)
{
    u64 id = tstate_field(scratch, py->tstate_native_thread_id);
    if (py->pthread_tid < 0 || !id)
        return id;
    u32 tid = 0;
    bpf_probe_read_user(&tid, sizeof(tid), (void *)(id + py->pthread_tid));
    return tid;
}

// The calling thread's id as its own PID namespace sees it (what its thread state holds);
// 0 when the namespace is not the thread's (never a thread state's id).
static __always_inline u32 target_tid(struct python_process *py, u32 tid)
{
    if (!py->pidns_ino)
        return tid;
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(py->pidns_dev, py->pidns_ino, &ns, sizeof(ns)))
        return 0;
    return ns.pid;
}

// The calling thread's PyThreadState, or 0 when it has none (a native thread); its first
// bytes are left in the scratch. *cached is where the calling thread keeps the one found last
// (0: none), which the includer keeps with its other per-thread state (thread_state.h): found
// once by walking the interpreter's thread list. ns_tid is matched against the thread states.
static __always_inline u64 find_thread_state(struct python_process *py,
                                             struct frame_scratch *scratch, u64 *cached,
                                             u32 ns_tid, volatile u32 *flags)
{
    // The cached state is checked: still this thread's, and still linked in the list (a
    // thread may delete a thread state and go on with another: freed memory keeps its
    // thread id, but its neighbour no longer points at it).
    if (*cached) {
        u64 tstate = *cached;
        if (read_thread_state(py, scratch, tstate)) {
            u64 prev = tstate_field(scratch, py->tstate_prev);
            u64 linked = prev ? read_u64(prev + py->tstate_next) : read_u64(py->threads_head);
            if (linked == tstate && thread_tid(py, scratch) == ns_tid)
                return tstate;
        }
    }
    // Two states may carry this thread's id: _thread.start_new_thread allocates the new
    // thread's state in the parent, with the parent's id, just before pthread_create (the
    // child puts its own id in once it runs). That one has no frame yet: the state with a
    // frame is the caller's. A thread whose states have no frame has no Python caller:
    // treated as native (0).
    if (!ns_tid)
        return 0;
    u64 tstate = read_u64(py->threads_head);
    for (int i = 0; i < MAX_THREADS_WALKED && tstate; i++) {
        if (!read_thread_state(py, scratch, tstate))
            return 0;
        if (thread_tid(py, scratch) == ns_tid && current_frame(py, scratch)) {
            *cached = tstate;
            return tstate;
        }
        tstate = tstate_field(scratch, py->tstate_next);
    }
    // The list's end reached: not a Python thread (a list longer than the walk says nothing).
    if (!tstate)
        *flags |= STACK_NO_THREAD_STATE;
    return 0;
}

// The part of the data stack in use, from the thread state last read: where the thread's own
// frames lie (3.11+). Frames elsewhere (a generator's, an entry frame on the C stack, one in
// an older chunk) are read one by one.
static __always_inline void find_data_stack(struct python_process *py,
                                            struct frame_scratch *scratch)
{
    scratch->stack_low = scratch->stack_high = 0;
    scratch->window_base = scratch->window_end = 0;
    if (py->tstate_datastack < 0)
        return;
    u64 low = tstate_field(scratch, py->tstate_datastack);
    u64 high = tstate_field(scratch, py->tstate_datastack + 8);
    if (low && !(low & 7) && high > low) {
        scratch->stack_low = low;
        scratch->stack_high = high;
    }
}

// Whether the window holds a frame's header, reading the data stack below and up to the
// frame's header when it lies there: the older frames usually come next, lower down. A window
// that cannot be read (a page not present) leaves the frames to be read one by one.
static __always_inline int frame_in_window(struct frame_scratch *scratch, u64 frame, u32 size)
{
    u64 end = (frame + size + 7) & ~7ULL;  // 8-aligned: fields are found by masked offsets
    if (frame & 7)
        return 0;
    if (frame >= scratch->window_base && end <= scratch->window_end)
        return 1;
    if (frame < scratch->stack_low || end > scratch->stack_high)
        return 0;
    // At most FRAME_WINDOW_SIZE - 8 bytes: the mask then bounds the length for the verifier.
    u64 base = end - scratch->stack_low > FRAME_WINDOW_SIZE - 8 ? end - (FRAME_WINDOW_SIZE - 8)
                                                                : scratch->stack_low;
    u32 length = (end - base) & (FRAME_WINDOW_SIZE - 1);
    if (!length)
        return 0;
    if (bpf_probe_read_user(scratch->window, length, (void *)base)) {
        scratch->stack_high = 0;
        return 0;
    }
    scratch->window_base = base;
    scratch->window_end = end;
    return 1;
}

static __always_inline void clear_stack(struct site_key *key, u32 tgid, u64 generation)
{
    key->tgid = tgid;
    key->generation = generation;
    key->flags = 0;
    key->depth = 0;
    key->reserved = 0;
    __builtin_memset(key->code, 0, sizeof(key->code));
}

// A frame's header fields, from the window or read on their own.
struct frame_fields {
    u64 previous;
    u64 code;
    u32 owner;
    u32 read;  // 0: the frame could not be read
};

static __always_inline void read_frame(struct python_process *py, struct frame_scratch *scratch,
                                       u64 frame, u32 size, struct frame_fields *fields)
{
    // Offsets were checked by user space (pointer fields 8-aligned, all within
    // FRAME_READ_SIZE); the masks restate it for the verifier.
    fields->read = 0;
    if (size == 0 || size > FRAME_READ_SIZE)
        return;
    if (frame_in_window(scratch, frame, size)) {
        u32 at = frame - scratch->window_base;  // 8-aligned, as the frame and the window
        fields->previous =
            *(u64 *)(scratch->window + ((at + py->frame_previous) & (FRAME_WINDOW_SIZE - 8)));
        fields->code =
            *(u64 *)(scratch->window + ((at + py->frame_code) & (FRAME_WINDOW_SIZE - 8))) &
            ~(u64)FRAME_CODE_TAG_BITS;
        fields->owner = scratch->window[(at + py->frame_owner) & (FRAME_WINDOW_SIZE - 1)];
        fields->read = 1;
        return;
    }
    // One read for the frame's header rather than one per field. The read stops at the last
    // field: the page after a frame at the top of the data stack may not be present, and the
    // read cannot fault it in.
    u64 header[FRAME_HEADER_SIZE / 8] = {};
    if (bpf_probe_read_user(header, size, (void *)frame))
        return;
    fields->owner = ((u8 *)header)[py->frame_owner & (FRAME_HEADER_SIZE - 1)];
    fields->code =
        header[(py->frame_code >> 3) & (FRAME_HEADER_SIZE / 8 - 1)] & ~(u64)FRAME_CODE_TAG_BITS;
    fields->previous = header[(py->frame_previous >> 3) & (FRAME_HEADER_SIZE / 8 - 1)];
    fields->read = 1;
}

// Whether a code object is a coroutine's (or an async generator's). Only a frame its
// generator owns can run one where the owner byte tells (3.11+): the others are not read.
static __always_inline int is_coroutine(struct python_process *py, struct frame_fields *fields)
{
    if (py->owner_tells_generators && fields->owner != FRAME_OWNED_BY_GENERATOR)
        return 0;
    u32 co_flags = 0;
    bpf_probe_read_user(&co_flags, sizeof(co_flags), (void *)(fields->code + py->code_flags));
    return (co_flags & CO_COROUTINE_FLAGS) != 0;
}

// Fills key->code and key->flags from the calling thread's frames, with the process's
// interpreter entry and the thread's cached PyThreadState (find_thread_state). Only a
// lookup's caller needs the coroutine search: a thread's creation stops at STACK_DEPTH frames.
static __always_inline int read_stack(struct python_process *py, u32 tgid, u32 tid,
                                      u64 *tstate_cache, u64 generation, struct site_key *key,
                                      int find_coroutine)
{
    int zero = 0;
    struct frame_scratch *scratch = python_frame_scratch.lookup(&zero);
    if (!scratch)
        return 0;
    clear_stack(key, tgid, generation);
    u64 tstate = find_thread_state(py, scratch, tstate_cache, target_tid(py, tid), &key->flags);
    if (!tstate)
        return 1;  // no Python frame: <native>
    key->flags |= STACK_FRAMES_READ;
    u64 frame = current_frame(py, scratch);
    find_data_stack(py, scratch);
    // The depth and flags live in the map value, not in registers: the verifier then does
    // not tell apart the paths of each frame (shim or not, coroutine or not) at every step,
    // which would multiply its states past its 1M-instruction limit (E2BIG).
    volatile u32 *depth = &key->depth;
    volatile u32 *flags = &key->flags;
    *depth = 0;
    u32 size = py->frame_read_size & (FRAME_HEADER_SIZE - 1);
    for (int i = 0; i < MAX_FRAMES_WALKED; i++) {
        if (!frame)
            return 1;
        if (*depth >= STACK_DEPTH && (!find_coroutine || (*flags & STACK_COROUTINE)))
            return 1;  // nothing more to learn
        struct frame_fields fields;
        read_frame(py, scratch, frame, size, &fields);
        if (!fields.read)
            break;
        if (fields.owner != FRAME_OWNED_BY_CSTACK && fields.owner != FRAME_OWNED_BY_CSTACK_3_14) {
            u32 at = *depth;
            if (at < STACK_DEPTH) {
                key->code[at & (STACK_DEPTH - 1)] = fields.code;
                *depth = at + 1;
            }
            if (find_coroutine && !(*flags & STACK_COROUTINE) && is_coroutine(py, &fields))
                *flags |= STACK_COROUTINE;
        }
        frame = fields.previous;
    }
    if (frame)
        key->flags |= STACK_TRUNCATED;
    return 1;
}

// The same, finding the interpreter entry: 0 when the process has none (sites unavailable:
// nothing is counted by site).
static __always_inline int read_python_stack(u32 tgid, u32 tid, u64 *tstate_cache,
                                             u64 generation, struct site_key *key,
                                             int find_coroutine)
{
    struct python_process *py = python_processes.lookup(&tgid);
    if (!py || py->generation != generation)
        return 0;
    return read_stack(py, tgid, tid, tstate_cache, generation, key, find_coroutine);
}

static __always_inline struct site_key *site_scratch_key(void)
{
    int zero = 0;
    return site_scratch.lookup(&zero);
}

static __always_inline int add_dropped_site(u32 tgid, u64 generation, u32 kind)
{
    struct dropped_key key = {.tgid = tgid, .kind = kind, .generation = generation};
    u64 zero = 0, *count = site_stacks_dropped_total.lookup_or_try_init(&key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

// The stack's threads, with this one counted (NULL when the map is full: counted as dropped).
static __always_inline void add_thread_site(struct site_key *key)
{
    u64 zero = 0, *count = threads_created_by_site_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        add_dropped_site(key->tgid, key->generation, 0);
}

static __always_inline int add_call_site(struct site_key *key, u32 caller)
{
    if (caller == CALLER_EVENT_LOOP)
        key->flags |= STACK_EVENT_LOOP;
    u64 zero = 0, *count = getaddrinfo_calls_by_site_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        add_dropped_site(key->tgid, key->generation, 1 + caller);
    return 0;
}

// task_newtask, in the creating thread: still in pthread_create, whose caller's frames are on
// its stack as they were at the call (it holds the GIL). The new thread's site is counted (how
// many threads a pool has now is read from the pool itself, in user space). A thread whose
// start routine is not the
// interpreter's (libuv's pool, started while Python code called into uvloop), or that
// pthread_create did not make (routine 0), is native: <native>, whatever Python frames asked
// for it. tstate_cache: the creating thread's cached PyThreadState (NULL: it has no state).
static __always_inline void count_thread_site(u32 tgid, u32 tid, u64 generation, u64 routine,
                                              u64 *tstate_cache)
{
    struct python_process *py = python_processes.lookup(&tgid);
    if (!py || py->generation != generation)
        return;
    struct site_key *key = site_scratch_key();
    if (!key)
        return;
    if (!tstate_cache || routine < py->text_start || routine >= py->text_end)
        clear_stack(key, tgid, generation);
    else if (!read_stack(py, tgid, tid, tstate_cache, generation, key, 0))
        return;
    add_thread_site(key);
}

// The caller of a getaddrinfo call: a coroutine on the stack decides; a thread with no Python
// frame at all runs no event loop of this interpreter's (grpcio's native threads sleep in epoll:
// their mark says nothing); where the frames could not be read to the end without finding a
// coroutine, the thread's epoll mark decides.
static __always_inline u32 caller_from_stack(struct site_key *key, int epoll_marked)
{
    if (key->flags & STACK_COROUTINE)
        return CALLER_EVENT_LOOP;
    if (key->flags & STACK_NO_THREAD_STATE)
        return CALLER_OTHER;
    if ((key->flags & STACK_FRAMES_READ) && !(key->flags & STACK_TRUNCATED))
        return CALLER_OTHER;
    return epoll_marked ? CALLER_EVENT_LOOP : CALLER_OTHER;
}

// fork: the child's address space is its parent's, and so is its interpreter, at the same
// addresses (CPython sets the child's native_thread_id after the fork). Inherited here, a
// child that lives milliseconds (a worker recycled by its server) has its frames read, and
// its caller told from them, before user space could find its interpreter. exec forgets it.
static __always_inline void inherit_python_process(u32 parent_tgid, u64 parent_generation,
                                                   u32 child_tgid, u64 child_generation)
{
    struct python_process *parent = python_processes.lookup(&parent_tgid);
    if (!parent || parent->generation != parent_generation)
        return;
    struct python_process child = *parent;
    child.generation = child_generation;
    python_processes.update(&child_tgid, &child);
}

// exec: a new program image, whose interpreter (if any) user space has yet to find (the
// exec'ing thread's cached PyThreadState is its includer's to drop).
static __always_inline void forget_python_process(u32 tgid)
{
    python_processes.delete(&tgid);
}

#else  // !SITES

static __always_inline void count_thread_site(u32 tgid, u32 tid, u64 generation, u64 routine,
                                              u64 *tstate_cache) {}
static __always_inline void forget_python_process(u32 tgid) {}
static __always_inline void inherit_python_process(u32 parent_tgid, u64 parent_generation,
                                                   u32 child_tgid, u64 child_generation) {}

#endif  // SITES
#endif

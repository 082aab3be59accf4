// DNS queries on the wire: every message a watched process sends to port 53, whoever sends it
// (glibc, musl, c-ares, any code), over UDP and TCP, from syscall tracepoints only.
//
// Only the sends of watched processes run more than a lookup in the watched set. At a send the
// kernel is asked what the fd is: the task's fd table gives the file, the file its socket, and
// the socket its family, type and peer (port 53 or not). So nothing needs to be learned from
// socket(), connect() or close(), and a socket opened before its process was watched is known
// as well as any other. A send is looked at on entry (the buffers, the destination) and counted
// on exit, once the kernel has said how much it sent: a failed send is no query.
// - UDP: one query per send/sendto/write/writev/sendmsg to port 53 (the socket's peer, or the
//   address given), one per message that sendmmsg sent (glibc sends A and AAAA in one). No
//   state is kept per socket.
// - TCP: DNS messages carry a 2-byte length prefix; the bytes written to a port-53 peer are
//   followed through those prefixes, so each message counts once however it is split into
//   writes and iovecs (glibc writes length and message as separate iovecs). Where a stream is
//   in its messages is kept per socket, keyed by the socket's inode number, which no later
//   socket reuses (unlike its fd, or its struct sock's address). A stream is followed from its
//   first byte only: one first seen after bytes were written to it has no known boundary.
//
// The kernel structs are read at offsets found in the running kernel's BTF
// (observer/kernel_btf.py), given as -D flags: the installed headers may be another kernel's.
//
// Maps become metrics (observer/bpf_backend.py):
//   dns_queries_total  {process, transport} -> count  thread_observer_dns_queries_total
//   dns_unknown_socket_sends_total [0] -> count        thread_observer_dns_unknown_socket_sends_total
//       (writes to TCP streams to port 53 first seen mid-stream, opened and written before
//       their process was watched: their messages are not counted above)
#include "watched.h"

#if !defined(TRANSPORT_UDP) || !defined(TRANSPORT_TCP)
#error "TRANSPORT_UDP and TRANSPORT_TCP come from observer/constants.py"
#endif
#ifndef MAX_SOCKETS
#error "MAX_SOCKETS comes from observer/constants.py"
#endif
#ifndef MAX_KEYS
#error "MAX_KEYS comes from observer/constants.py"
#endif
#ifndef TCP_SOCK_SND_NXT
#error "the kernel struct offsets come from observer/bpf_backend.py (DNS_KERNEL_FIELDS)"
#endif

#define DNS_PORT 53
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define PROTOCOL_TCP 6          // IPPROTO_TCP
#define MODE_TYPE_MASK 0170000  // S_IFMT
#define MODE_SOCKET 0140000     // S_IFSOCK
#define MAX_STEPS 32        // TCP: prefixes and bodies followed per write
#define MAX_MESSAGES 8     // sendmmsg messages looked at per call (glibc sends 2)

// How the buffers of a send are described; internal to this file.
#define SEND_PLAIN 1   // write, send, sendto: one buffer
#define SEND_IOVEC 2   // writev: an iovec array
#define SEND_MSG 3     // sendmsg: one msghdr
#define SEND_MMSG 4    // sendmmsg: an mmsghdr array

struct dns_stream {
    u8 in_prefix;    // between the two bytes of a length prefix
    u8 prefix_high;  // the first byte of that prefix
    u16 reserved;
    u32 body_left;   // bytes of the current message still to come
};

struct transport_key {
    u32 tgid;
    u32 transport;
    u64 generation;
};

struct send_call {
    u64 buffer;      // user pointer: the data, iovecs, msghdr or mmsghdrs
    u64 count;       // bytes, iovecs or messages
    u64 stream;      // TCP: the socket's inode number, its key in dns_streams
    u32 kind;        // SEND_*
    u32 transport;   // TRANSPORT_UDP or TRANSPORT_TCP
    u32 to_dns;      // UDP: the destination is port 53 (for SEND_MMSG: the socket's peer is)
    u32 reserved;
};

// What a send's fd is, when it is a socket.
struct socket_facts {
    u64 inode_number;
    u64 sock;         // kernel address of its struct sock
    u16 family;
    u16 type;
    u16 protocol;
    u16 peer_port;    // network order; 0 when not connected
};

// What user space passes (uapi layouts, stable across kernels).
struct user_iovec {
    u64 base;
    u64 len;
};

struct user_msghdr_head {
    u64 name;
    u32 namelen;
    u32 pad;
    u64 iov;
    u64 iovlen;
};

#define MMSGHDR_SIZE 64  // struct mmsghdr: a 56-byte msghdr, then msg_len, padded

BPF_HASH(dns_queries_total, struct transport_key, u64, MAX_KEYS);
BPF_ARRAY(dns_unknown_socket_sends_total, u64, 1);
// socket inode number -> where its TCP stream to port 53 is in its messages
BPF_TABLE("lru_hash", u64, struct dns_stream, dns_streams, MAX_SOCKETS);
// tid -> the send call in progress
BPF_TABLE("lru_hash", u32, struct send_call, dns_send_calls, MAX_THREADS);

// Insert-if-absent, then an atomic add (bcc's increment() is not atomic).
static __always_inline int add_queries(struct transport_key *key, u64 queries)
{
    if (!queries)
        return 0;
    u64 zero = 0, *count = dns_queries_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, queries);
    return 0;
}

static __always_inline void add_unknown_socket_send(void)
{
    int index = 0;
    u64 *count = dns_unknown_socket_sends_total.lookup(&index);
    if (count)
        __sync_fetch_and_add(count, 1);
}

// Whether a user sockaddr is an INET or INET6 address with port 53.
static __always_inline int is_dns_address(u64 address)
{
    u16 head[2] = {};  // family, port (network order): the same place in both families
    if (!address || bpf_probe_read_user(head, sizeof(head), (void *)address))
        return 0;
    return (head[0] == AF_INET || head[0] == AF_INET6) &&
           head[1] == __builtin_bswap16(DNS_PORT);
}

// The socket behind a fd of the current process: task->files->fdt->fd[fd] is the file; a
// socket's inode is a socket's (S_IFSOCK), and its private_data the struct socket that points
// back to the file (a socket file opened by path with O_PATH has none). Returns 0 if the fd is
// no socket.
static __always_inline int find_socket(u32 fd, struct socket_facts *facts)
{
    u64 files = kernel_pointer(bpf_get_current_task() + TASK_STRUCT_FILES);
    u64 table = files ? kernel_pointer(files + FILES_STRUCT_FDT) : 0;
    u32 max_fds = 0;
    if (!table || bpf_probe_read_kernel(&max_fds, sizeof(max_fds),
                                        (void *)(table + FDTABLE_MAX_FDS)) || fd >= max_fds)
        return 0;
    u64 file = kernel_pointer(kernel_pointer(table + FDTABLE_FD) + (u64)fd * sizeof(u64));
    u64 inode = file ? kernel_pointer(file + FILE_F_INODE) : 0;
    u16 mode = 0;
    if (!inode || bpf_probe_read_kernel(&mode, sizeof(mode), (void *)(inode + INODE_I_MODE)) ||
        (mode & MODE_TYPE_MASK) != MODE_SOCKET)
        return 0;
    u64 socket = kernel_pointer(file + FILE_PRIVATE_DATA);
    if (!socket || kernel_pointer(socket + SOCKET_FILE) != file)
        return 0;
    u64 sock = kernel_pointer(socket + SOCKET_SK);
    if (!sock)
        return 0;
    facts->inode_number = kernel_pointer(inode + INODE_I_INO);
    facts->sock = sock;
    bpf_probe_read_kernel(&facts->family, 2, (void *)(sock + SOCK_FAMILY));
    bpf_probe_read_kernel(&facts->type, 2, (void *)(sock + SOCK_TYPE));
    bpf_probe_read_kernel(&facts->protocol, 2, (void *)(sock + SOCK_PROTOCOL));
    bpf_probe_read_kernel(&facts->peer_port, 2, (void *)(sock + SOCK_PEER_PORT));
    return 1;
}

// Whether nothing was ever written to a TCP socket: no byte sent (bytes_sent counts payload,
// not the SYN), and none waiting in its send queue (write_seq is the sequence number after the
// last byte written, snd_nxt after the last one sent).
static __always_inline int stream_untouched(u64 sock)
{
    u64 bytes_sent = 1;
    u32 write_seq = 0, snd_nxt = 1;
    bpf_probe_read_kernel(&bytes_sent, sizeof(bytes_sent), (void *)(sock + TCP_SOCK_BYTES_SENT));
    bpf_probe_read_kernel(&write_seq, sizeof(write_seq), (void *)(sock + TCP_SOCK_WRITE_SEQ));
    bpf_probe_read_kernel(&snd_nxt, sizeof(snd_nxt), (void *)(sock + TCP_SOCK_SND_NXT));
    return bytes_sent == 0 && write_seq == snd_nxt;
}

// A TCP stream to port 53 from its first byte on; 0 for one first seen mid-stream.
static __always_inline int follow_stream(struct socket_facts *facts)
{
    if (dns_streams.lookup(&facts->inode_number))
        return 1;
    if (!stream_untouched(facts->sock)) {
        add_unknown_socket_send();
        return 0;
    }
    struct dns_stream fresh = {};
    dns_streams.insert(&facts->inode_number, &fresh);
    return 1;
}

// Entry of every send: keep what the exit needs when the socket may carry DNS queries.
static __always_inline int enter_send(u32 fd, u32 kind, u64 buffer, u64 count, u64 address)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!is_watched(id >> 32))
        return 0;
    struct socket_facts facts = {};
    if (!find_socket(fd, &facts) || (facts.family != AF_INET && facts.family != AF_INET6))
        return 0;
    int peer_is_dns = facts.peer_port == __builtin_bswap16(DNS_PORT);
    struct send_call call = {.buffer = buffer, .count = count, .kind = kind};
    if (facts.type == SOCK_DGRAM) {
        if (kind == SEND_MSG && buffer) {
            struct user_msghdr_head head = {};
            if (bpf_probe_read_user(&head, sizeof(head), (void *)buffer) == 0)
                address = head.name;
        }
        // An address given to a connected UDP socket is where the datagram goes.
        call.to_dns = kind == SEND_MMSG || !address ? peer_is_dns : is_dns_address(address);
        if (kind != SEND_MMSG && !call.to_dns)
            return 0;
        call.transport = TRANSPORT_UDP;
    } else if (facts.type == SOCK_STREAM && facts.protocol == PROTOCOL_TCP) {
        // An address given to a connected TCP socket is ignored.
        if (!peer_is_dns || !follow_stream(&facts))
            return 0;
        call.transport = TRANSPORT_TCP;
        call.stream = facts.inode_number;
    } else {
        return 0;
    }
    dns_send_calls.update(&tid, &call);
    return 0;
}

// UDP messages of a sendmmsg that went to port 53: the first `sent` ones were sent.
static __always_inline u64 mmsg_queries(struct send_call *call, long sent)
{
    u64 queries = 0;
    // No early exit: a loop whose trip count depends on `sent` is runtime-unrolled by clang
    // into a shape the verifier follows without bound ("sequence of 8193 jumps").
#pragma unroll
    for (int i = 0; i < MAX_MESSAGES; i++) {
        u64 name = 0;
        if (i >= sent ||
            bpf_probe_read_user(&name, sizeof(name), (void *)(call->buffer + i * MMSGHDR_SIZE)))
            continue;
        queries += name ? is_dns_address(name) : call->to_dns;
    }
    return queries;
}

// Follows `sent` bytes of a TCP stream through DNS length prefixes; returns the messages that
// begin in them. The bytes are in `count` iovecs at `iov`, or at `iov` itself when `plain`.
// One step is one length prefix, one piece of one, or the part of a message body within one
// iovec: steps run out only for writes of more than MAX_STEPS / 2 messages.
static __always_inline u64 stream_messages(struct dns_stream *stream, u64 iov, u64 count,
                                           u64 sent, int plain)
{
    u64 messages = 0, index = 0, offset = 0;
    struct user_iovec vec = {};
    int loaded = 0;
    for (int step = 0; step < MAX_STEPS; step++) {
        if (!loaded) {
            if (!sent || index >= count)
                break;
            if (plain) {
                vec.base = iov;
                vec.len = sent;
            } else if (bpf_probe_read_user(&vec, sizeof(vec),
                                           (void *)(iov + index * sizeof(vec)))) {
                break;
            }
            vec.len = vec.len < sent ? vec.len : sent;
            sent -= vec.len;
            offset = 0;
            loaded = 1;
        }
        u64 left = vec.len - offset;
        if (!left) {
            index++;
            loaded = 0;
            continue;
        }
        u8 bytes[2] = {};
        if (stream->body_left) {
            u64 take = left < stream->body_left ? left : stream->body_left;
            stream->body_left -= take;
            offset += take;
        } else if (stream->in_prefix) {  // the prefix's second byte, split from its first
            bpf_probe_read_user(bytes, 1, (void *)(vec.base + offset));
            offset += 1;
            stream->in_prefix = 0;
            stream->body_left = ((u32)stream->prefix_high << 8) | bytes[0];
        } else if (left < 2) {
            messages++;  // a message begins with its length prefix
            bpf_probe_read_user(bytes, 1, (void *)(vec.base + offset));
            offset += 1;
            stream->in_prefix = 1;
            stream->prefix_high = bytes[0];
        } else {
            messages++;
            bpf_probe_read_user(bytes, 2, (void *)(vec.base + offset));
            offset += 2;
            stream->body_left = ((u32)bytes[0] << 8) | bytes[1];
        }
    }
    return messages;
}

static __always_inline u64 tcp_messages(struct send_call *call, struct dns_stream *stream,
                                        u64 sent)
{
    if (call->kind == SEND_PLAIN)
        return stream_messages(stream, call->buffer, 1, sent, 1);
    if (call->kind == SEND_IOVEC)
        return stream_messages(stream, call->buffer, call->count, sent, 0);
    if (call->kind == SEND_MSG) {
        struct user_msghdr_head head = {};
        if (bpf_probe_read_user(&head, sizeof(head), (void *)call->buffer))
            return 0;
        return stream_messages(stream, head.iov, head.iovlen, sent, 0);
    }
    return 0;  // sendmmsg on a stream socket: no DNS library does it
}

// Exit of every send: count what was sent.
static __always_inline int exit_send(long ret)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    struct send_call *found = dns_send_calls.lookup(&tid);
    if (!found)
        return 0;
    struct send_call call = *found;
    dns_send_calls.delete(&tid);
    if (ret < 0)
        return 0;
    u64 generation = watched_generation(tgid);
    if (!generation)
        return 0;
    u64 queries;
    if (call.transport == TRANSPORT_UDP) {
        queries = call.kind == SEND_MMSG ? mmsg_queries(&call, ret) : call.to_dns;
    } else {
        struct dns_stream *stream = dns_streams.lookup(&call.stream);
        if (!stream)
            return 0;
        queries = tcp_messages(&call, stream, ret);
    }
    struct transport_key counter = {.tgid = tgid, .transport = call.transport,
                                    .generation = generation};
    add_queries(&counter, queries);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    return enter_send(args->fd, SEND_PLAIN, (u64)args->buff, args->len, (u64)args->addr);
}
TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    return enter_send(args->fd, SEND_PLAIN, (u64)args->buf, args->count, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
    return enter_send(args->fd, SEND_IOVEC, (u64)args->vec, args->vlen, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    return enter_send(args->fd, SEND_MSG, (u64)args->msg, 1, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
    return enter_send(args->fd, SEND_MMSG, (u64)args->mmsg, args->vlen, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return exit_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return exit_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return exit_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return exit_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return exit_send(args->ret); }

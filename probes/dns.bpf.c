// DNS queries on the wire: every message a watched process sends to port 53, whoever sends it
// (glibc, musl, c-ares, any code), over UDP and TCP, from syscall tracepoints only.
//
// The kernel keeps a little state per socket of a watched process, learned from socket()
// (its type) and connect() (whether its peer is port 53), and forgotten at close(). A send is
// looked at on entry (the buffers, the destination) and counted on exit, once the kernel has
// said how much it sent: a failed send is no query.
// - UDP: one query per send/sendto/write/writev/sendmsg to port 53 (the socket's peer, or the
//   address given), one per message that sendmmsg sent (glibc sends A and AAAA in one).
// - TCP: DNS messages carry a 2-byte length prefix; the bytes written to a port-53 peer are
//   followed through those prefixes, so each message counts once however it is split into
//   writes and iovecs (glibc writes length and message as separate iovecs).
//
// Maps become metrics (observer/bpf_backend.py):
//   dns_queries_total  {process, transport} -> count  thread_observer_dns_queries_total
//   dns_unknown_socket_sends_total [0] -> count        thread_observer_dns_unknown_socket_sends_total
//       (sends to port 53 on sockets opened before the process was watched: not counted above)
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

#define DNS_PORT 53
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_TYPE_MASK 0xf  // SOCK_NONBLOCK and SOCK_CLOEXEC share the type argument
#define MAX_STEPS 32        // TCP: prefixes and bodies followed per write
#define MAX_MESSAGES 8     // sendmmsg messages looked at per call (glibc sends 2)

// How the buffers of a send are described; internal to this file.
#define SEND_PLAIN 1   // write, send, sendto: one buffer
#define SEND_IOVEC 2   // writev: an iovec array
#define SEND_MSG 3     // sendmsg: one msghdr
#define SEND_MMSG 4    // sendmmsg: an mmsghdr array

struct socket_key {
    u32 tgid;
    u32 fd;
};

struct dns_socket {
    u8 transport;    // TRANSPORT_UDP or TRANSPORT_TCP
    u8 peer_is_dns;  // connected to port 53
    u8 in_prefix;    // TCP: between the two bytes of a length prefix
    u8 prefix_high;  // TCP: the first byte of that prefix
    u32 body_left;   // TCP: bytes of the current message still to come
};

struct transport_key {
    u32 tgid;
    u32 transport;
    u64 generation;
};

struct send_call {
    u32 fd;
    u32 kind;        // SEND_*
    u64 buffer;      // user pointer: the data, iovecs, msghdr or mmsghdrs
    u64 count;       // bytes, iovecs or messages
    u32 to_dns;      // UDP: the destination is port 53 (not used for SEND_MMSG)
    u32 reserved;
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
// (tgid, fd) -> what the socket is; only INET datagram and stream sockets of watched processes
BPF_TABLE("lru_hash", struct socket_key, struct dns_socket, dns_sockets, MAX_SOCKETS);
// tid -> the socket() call in progress (its type), or the send call in progress
BPF_TABLE("lru_hash", u32, u32, dns_socket_calls, MAX_THREADS);
BPF_TABLE("lru_hash", u32, struct send_call, dns_send_calls, MAX_THREADS);

// Insert-if-absent, then an atomic add (bcc's increment() is not atomic).
static __always_inline int add_queries(struct transport_key *key, u64 queries)
{
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

static __always_inline int enter_socket(u64 family, u64 type_argument)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!is_watched(id >> 32))
        return 0;
    u32 type = type_argument & SOCK_TYPE_MASK;
    if ((family != AF_INET && family != AF_INET6) || (type != SOCK_DGRAM && type != SOCK_STREAM))
        return 0;
    dns_socket_calls.update(&tid, &type);
    return 0;
}

static __always_inline int exit_socket(long ret)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    u32 *type = dns_socket_calls.lookup(&tid);
    if (!type)
        return 0;
    struct dns_socket socket = {
        .transport = *type == SOCK_STREAM ? TRANSPORT_TCP : TRANSPORT_UDP,
    };
    dns_socket_calls.delete(&tid);
    if (ret < 0)
        return 0;
    struct socket_key key = {.tgid = id >> 32, .fd = ret};
    dns_sockets.update(&key, &socket);  // a new socket on a reused fd starts afresh
    return 0;
}

static __always_inline int enter_connect(u64 fd, u64 address)
{
    u64 id = current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    struct socket_key key = {.tgid = id >> 32, .fd = fd};
    struct dns_socket *socket = dns_sockets.lookup(&key);
    int to_dns = is_dns_address(address);
    if (!socket) {
        if (to_dns)
            add_unknown_socket_send();
        return 0;
    }
    // A UDP socket may be connected again elsewhere (or dissolved with AF_UNSPEC).
    socket->peer_is_dns = to_dns;
    socket->in_prefix = 0;
    socket->body_left = 0;
    return 0;
}

static __always_inline int enter_close(u64 fd)
{
    u64 id = current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    // Most closes are of files and other sockets: a lookup that misses is cheaper than a
    // delete, which takes the bucket's lock.
    struct socket_key key = {.tgid = id >> 32, .fd = fd};
    if (dns_sockets.lookup(&key))
        dns_sockets.delete(&key);
    return 0;
}

// Entry of every send: keep what the exit needs when the socket may carry DNS queries.
static __always_inline int enter_send(u32 fd, u32 kind, u64 buffer, u64 count, u64 address)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!is_watched(id >> 32))
        return 0;
    struct socket_key key = {.tgid = id >> 32, .fd = fd};
    struct dns_socket *socket = dns_sockets.lookup(&key);
    if (kind == SEND_MSG && buffer) {
        struct user_msghdr_head head = {};
        if (bpf_probe_read_user(&head, sizeof(head), (void *)buffer) == 0)
            address = head.name;
    }
    int to_dns = address ? is_dns_address(address) : 0;
    if (!socket) {
        if (to_dns)
            add_unknown_socket_send();
        return 0;
    }
    if (socket->transport == TRANSPORT_UDP) {
        if (kind != SEND_MMSG && !(address ? to_dns : socket->peer_is_dns))
            return 0;
    } else if (!socket->peer_is_dns) {
        return 0;  // TCP to another port (an address given to a connected socket is ignored)
    }
    struct send_call call = {.fd = fd, .kind = kind, .buffer = buffer, .count = count,
                             .to_dns = to_dns || (!address && socket->peer_is_dns)};
    dns_send_calls.update(&tid, &call);
    return 0;
}

// UDP messages of a sendmmsg that went to port 53: the first `sent` ones were sent.
static __always_inline u64 mmsg_queries(struct send_call *call, struct dns_socket *socket,
                                        long sent)
{
    u64 queries = 0;
    for (int i = 0; i < MAX_MESSAGES; i++) {
        if (i >= sent)
            break;
        u64 name = 0;
        bpf_probe_read_user(&name, sizeof(name), (void *)(call->buffer + i * MMSGHDR_SIZE));
        queries += name ? is_dns_address(name) : socket->peer_is_dns;
    }
    return queries;
}

// Follows `sent` bytes of a TCP stream through DNS length prefixes; returns the messages that
// begin in them. The bytes are in `count` iovecs at `iov`, or at `iov` itself when `plain`.
// One step is one length prefix, one piece of one, or the part of a message body within one
// iovec: steps run out only for writes of more than MAX_STEPS / 2 messages.
static __always_inline u64 stream_messages(struct dns_socket *socket, u64 iov, u64 count,
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
        if (socket->body_left) {
            u64 take = left < socket->body_left ? left : socket->body_left;
            socket->body_left -= take;
            offset += take;
        } else if (socket->in_prefix) {  // the prefix's second byte, split from its first
            bpf_probe_read_user(bytes, 1, (void *)(vec.base + offset));
            offset += 1;
            socket->in_prefix = 0;
            socket->body_left = ((u32)socket->prefix_high << 8) | bytes[0];
        } else if (left < 2) {
            messages++;  // a message begins with its length prefix
            bpf_probe_read_user(bytes, 1, (void *)(vec.base + offset));
            offset += 1;
            socket->in_prefix = 1;
            socket->prefix_high = bytes[0];
        } else {
            messages++;
            bpf_probe_read_user(bytes, 2, (void *)(vec.base + offset));
            offset += 2;
            socket->body_left = ((u32)bytes[0] << 8) | bytes[1];
        }
    }
    return messages;
}

static __always_inline u64 tcp_messages(struct send_call *call, struct dns_socket *socket,
                                        u64 sent)
{
    if (call->kind == SEND_PLAIN)
        return stream_messages(socket, call->buffer, 1, sent, 1);
    if (call->kind == SEND_IOVEC)
        return stream_messages(socket, call->buffer, call->count, sent, 0);
    if (call->kind == SEND_MSG) {
        struct user_msghdr_head head = {};
        if (bpf_probe_read_user(&head, sizeof(head), (void *)call->buffer))
            return 0;
        return stream_messages(socket, head.iov, head.iovlen, sent, 0);
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
    struct socket_key key = {.tgid = tgid, .fd = call.fd};
    struct dns_socket *socket = dns_sockets.lookup(&key);
    u64 generation = watched_generation(tgid);
    if (!socket || !generation)
        return 0;
    u64 queries;
    if (socket->transport == TRANSPORT_UDP)
        queries = call.kind == SEND_MMSG ? mmsg_queries(&call, socket, ret) : call.to_dns;
    else
        queries = tcp_messages(&call, socket, ret);
    if (!queries)
        return 0;
    struct transport_key counter = {.tgid = tgid, .transport = socket->transport,
                                    .generation = generation};
    add_queries(&counter, queries);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_socket) { return enter_socket(args->family, args->type); }
TRACEPOINT_PROBE(syscalls, sys_exit_socket) { return exit_socket(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    return enter_connect(args->fd, (u64)args->uservaddr);
}
TRACEPOINT_PROBE(syscalls, sys_enter_close) { return enter_close(args->fd); }
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

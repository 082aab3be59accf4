// LD_PRELOAD ground truth: counts every getaddrinfo call the process makes through the
// dynamic linker (Python's socket module, grpcio's native resolver), whichever thread makes it,
// and hands each on to libc's. getaddrinfo_calls() reads the count (ctypes.CDLL(None)).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

static unsigned long calls;

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static getaddrinfo_fn real;
    if (!real)
        real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
    return real(node, service, hints, res);
}

unsigned long getaddrinfo_calls(void)
{
    return __atomic_load_n(&calls, __ATOMIC_RELAXED);
}

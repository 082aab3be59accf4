/* A native thread, as an extension's own (grpcio's pollers), that sleeps in epoll between
 * getaddrinfo calls: started from Python through ctypes, it never has a Python thread state.
 * resolve_on_native_thread(n) makes n lookups of "localhost" on a new thread, each after an
 * epoll wait that times out, and returns how many it made. Built with gcc -shared. */
#include <netdb.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <unistd.h>

#define WAIT_MS 5

static void *resolve(void *argument)
{
    int *lookups = argument, wanted = *lookups;
    struct epoll_event event;
    struct addrinfo *info;
    int poll = epoll_create1(0);
    *lookups = 0;
    for (int i = 0; i < wanted; i++) {
        epoll_wait(poll, &event, 1, WAIT_MS);
        if (getaddrinfo("localhost", "80", NULL, &info) == 0)
            freeaddrinfo(info);
        *lookups += 1;
    }
    close(poll);
    return NULL;
}

int resolve_on_native_thread(int wanted)
{
    pthread_t thread;
    int lookups = wanted;
    if (pthread_create(&thread, NULL, resolve, &lookups) != 0)
        return -1;
    pthread_join(thread, NULL);
    return lookups;
}

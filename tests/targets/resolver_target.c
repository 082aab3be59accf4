/* Calls each libc resolver entry point a known number of times (counts given in argv, in the
 * order of FUNCTIONS), after a ready line and a line on stdin; then prints what it called as
 * JSON and waits for stdin to close. Names and addresses come from argv: run it with a
 * private resolver configuration. Built with gcc (glibc) and musl-gcc. */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *FUNCTIONS[] = {"getaddrinfo", "gethostbyname", "gethostbyname_r",
                                  "gethostbyname2", "gethostbyname2_r", "gethostbyaddr",
                                  "gethostbyaddr_r", "getnameinfo", "res_query", "res_search"};
#define FUNCTION_COUNT (sizeof(FUNCTIONS) / sizeof(FUNCTIONS[0]))

static void call(int function, const char *name, struct in_addr *address)
{
    struct hostent entry, *result;
    unsigned char answer[512];
    char buffer[2048], host[256];
    int error;
    struct addrinfo *info;
    struct sockaddr_in socket_address = {.sin_family = AF_INET, .sin_addr = *address};
    switch (function) {
    case 0:
        if (getaddrinfo(name, NULL, NULL, &info) == 0)
            freeaddrinfo(info);
        break;
    case 1: gethostbyname(name); break;
    case 2: gethostbyname_r(name, &entry, buffer, sizeof(buffer), &result, &error); break;
    case 3: gethostbyname2(name, AF_INET); break;
    case 4: gethostbyname2_r(name, AF_INET, &entry, buffer, sizeof(buffer), &result, &error);
        break;
    case 5: gethostbyaddr(address, sizeof(*address), AF_INET); break;
    case 6:
        gethostbyaddr_r(address, sizeof(*address), AF_INET, &entry, buffer, sizeof(buffer),
                        &result, &error);
        break;
    case 7:
        getnameinfo((struct sockaddr *)&socket_address, sizeof(socket_address), host,
                    sizeof(host), NULL, 0, 0);
        break;
    case 8: res_query(name, C_IN, T_A, answer, sizeof(answer)); break;
    case 9: res_search(name, C_IN, T_A, answer, sizeof(answer)); break;
    }
}

int main(int argc, char **argv)
{
    char line[64];
    struct in_addr address;
    if (argc != 3 + FUNCTION_COUNT || inet_pton(AF_INET, argv[2], &address) != 1) {
        fprintf(stderr, "usage: %s NAME ADDRESS COUNT... (one count per function)\n", argv[0]);
        return 2;
    }
    printf("{\"ready\": true, \"pid\": %d}\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    printf("{\"threads_started\": 0");
    for (unsigned f = 0; f < FUNCTION_COUNT; f++) {
        int count = atoi(argv[3 + f]);
        for (int i = 0; i < count; i++)
            call(f, argv[1], &address);
        printf(", \"%s\": %d", FUNCTIONS[f], count);
    }
    printf("}\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin))
        ;
    return 0;
}

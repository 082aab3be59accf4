/* One thread through three programs by exec, for the watch a thread keeps across an exec:
 *   exec_phases first TAG FOLDER    resolves 13 times, creates FOLDER/first, waits for
 *                                   FOLDER/attached, then becomes "between"
 *   exec_phases between TAG FOLDER  creates FOLDER/between, waits for FOLDER/forgotten,
 *                                   resolves 7 times, then becomes "last"
 *   exec_phases last TAG FOLDER     resolves LAST_CALLS times at once (well before any poll
 *                                   can have seen the new program), creates FOLDER/done and
 *                                   sleeps until killed.
 * Every lookup is getaddrinfo("localhost"), answered from /etc/hosts. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LAST_CALLS 2000

static void resolve(int count)
{
    struct addrinfo hints, *result;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    for (int i = 0; i < count; i++)
        if (getaddrinfo("localhost", "80", &hints, &result) == 0)
            freeaddrinfo(result);
}

static void touch(const char *folder, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", folder, name);
    FILE *file = fopen(path, "w");
    if (file)
        fclose(file);
}

static int exists(const char *folder, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", folder, name);
    return access(path, F_OK) == 0;
}

static void become(char **argv, char *phase)
{
    char *args[] = {argv[0], phase, argv[2], argv[3], NULL};
    execv("/proc/self/exe", args);
    perror("execv");
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    if (strcmp(argv[1], "first") == 0) {
        resolve(13);
        touch(argv[3], "first");
        while (!exists(argv[3], "attached"))
            usleep(10000);
        become(argv, "between");
    } else if (strcmp(argv[1], "between") == 0) {
        touch(argv[3], "between");
        while (!exists(argv[3], "forgotten"))
            usleep(10000);
        resolve(7);
        become(argv, "last");
    } else {
        resolve(LAST_CALLS);
        touch(argv[3], "done");
        pause();
    }
    return 1;
}

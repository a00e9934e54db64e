/* SPDX-License-Identifier: MIT */
/*
 * pgproxy.h - starting and steering tests/fault/pgproxy.py, the fault-injecting proxy, from a C
 * test: pgp_start runs it in front of a PostgreSQL port and reads its two ports, pgp_cmd sends one
 * control command and returns its answer, pgp_stat reads one counter, pgp_stop ends it.
 *
 * The proxy's stdin is a pipe from the test: however the test ends, the proxy sees EOF and exits.
 * Control commands are blocking round trips on loopback; the proxy answers at once.
 */
#ifndef HS_TEST_PGPROXY_H
#define HS_TEST_PGPROXY_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef HS_SOURCE_DIR
#error "define HS_SOURCE_DIR (the proxy script lives in tests/fault/)"
#endif

typedef struct pgp {
    pid_t pid;
    int stdin_fd;
    int port;    /* clients connect here */
    int control; /* control port */
} pgp;

/* Starts the proxy in front of 127.0.0.1:upstream_port. Returns 0, or -1 with a message. */
static inline int pgp_start(pgp *p, int upstream_port)
{
    int in[2];
    int out[2];
    char up[16];
    char line[128];
    size_t n = 0;

    memset(p, 0, sizeof(*p));
    if (pipe(in) != 0 || pipe(out) != 0)
        return -1;
    snprintf(up, sizeof(up), "%d", upstream_port);
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        /* Debian's interpreter first (it starts fastest), then whichever is on PATH. */
        execl("/usr/bin/python3", "python3", HS_SOURCE_DIR "/tests/fault/pgproxy.py",
              "--upstream-port", up, (char *)NULL);
        execlp("python3", "python3", HS_SOURCE_DIR "/tests/fault/pgproxy.py", "--upstream-port", up,
               (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    p->stdin_fd = in[1];
    while (n + 1 < sizeof(line)) {
        ssize_t r = read(out[0], line + n, 1);

        if (r <= 0)
            break;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(out[0]);
    if (sscanf(line, "pgproxy %d %d", &p->port, &p->control) != 2) {
        fprintf(stderr, "pgproxy did not start: '%s'\n", line);
        return -1;
    }
    return 0;
}

/* Sends one command; copies the answer line (without "\n") into out. Returns 0 when it was "ok". */
static inline int pgp_cmd_out(const pgp *p, const char *cmd, char *out, size_t outlen)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    size_t n = 0;
    char msg[256];

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)p->control);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    snprintf(msg, sizeof(msg), "%s\n", cmd);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg)) {
        close(fd);
        return -1;
    }
    while (n + 1 < outlen) {
        ssize_t r = read(fd, out + n, 1);

        if (r <= 0 || out[n] == '\n')
            break;
        n++;
    }
    out[n] = '\0';
    close(fd);
    return strncmp(out, "ok", 2) == 0 ? 0 : -1;
}

static inline int pgp_cmd(const pgp *p, const char *cmd)
{
    char out[1024];

    return pgp_cmd_out(p, cmd, out, sizeof(out));
}

/* One counter of `stats` (see pgproxy.py), or -1. */
static inline long pgp_stat(const pgp *p, const char *name)
{
    char out[1024];
    char key[64];
    const char *at;

    if (pgp_cmd_out(p, "stats", out, sizeof(out)) != 0)
        return -1;
    snprintf(key, sizeof(key), "\"%s\":", name);
    at = strstr(out, key);
    return at != NULL ? strtol(at + strlen(key), NULL, 10) : -1;
}

static inline void pgp_stop(pgp *p)
{
    int st;

    if (p->pid <= 0)
        return;
    close(p->stdin_fd);
    if (waitpid(p->pid, &st, 0) < 0)
        kill(p->pid, SIGKILL);
    p->pid = 0;
}

/*
 * A libpq URL that reaches `url`'s database through the proxy: the same user and database, host
 * 127.0.0.1, the proxy's port, and no TLS (the proxy parses the protocol). Returns 0 or -1.
 */
static inline int pgp_url(const pgp *p, const char *url, char *out, size_t outlen)
{
    PQconninfoOption *o = PQconninfoParse(url, NULL);
    const char *user = "postgres";
    const char *dbname = "postgres";

    if (o == NULL)
        return -1;
    for (PQconninfoOption *i = o; i->keyword != NULL; i++) {
        if (i->val == NULL)
            continue;
        if (strcmp(i->keyword, "user") == 0)
            user = i->val;
        else if (strcmp(i->keyword, "dbname") == 0)
            dbname = i->val;
    }
    snprintf(out, outlen, "postgresql://%s@127.0.0.1:%d/%s?sslmode=disable", user, p->port, dbname);
    PQconninfoFree(o);
    return 0;
}

/* The port of `url` (libpq's default 5432 when it names none). */
static inline int pgp_url_port(const char *url)
{
    PQconninfoOption *o = PQconninfoParse(url, NULL);
    int port = 5432;

    if (o == NULL)
        return -1;
    for (PQconninfoOption *i = o; i->keyword != NULL; i++) {
        if (i->val != NULL && strcmp(i->keyword, "port") == 0)
            port = atoi(i->val);
    }
    PQconninfoFree(o);
    return port;
}

#endif /* HS_TEST_PGPROXY_H */

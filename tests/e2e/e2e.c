/* SPDX-License-Identifier: MIT */
/*
 * e2e.c - process control and HTTP helpers for the end-to-end tests (see e2e.h).
 */
#include "e2e.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

uint64_t e2e_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void e2e_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int e2e_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port;

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Every child started, so that e2e_kill_all can find the ones a failed test left running. */
#define MAX_CHILDREN 64
static pid_t children[MAX_CHILDREN];
static size_t nchildren;

static void forget_child(pid_t pid)
{
    for (size_t i = 0; i < nchildren; i++) {
        if (children[i] == pid)
            children[i] = 0;
    }
}

void e2e_kill_all(void)
{
    for (size_t i = 0; i < nchildren; i++) {
        int status;

        if (children[i] > 0 && waitpid(children[i], &status, WNOHANG) == 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], &status, 0);
        }
        children[i] = 0;
    }
    nchildren = 0;
}

int e2e_library_major(void)
{
    static int major = -1;
    const char *bin = getenv("HINDSIGHT_BIN");
    char cmd[4200], line[256];
    FILE *f;

    if (major >= 0)
        return major;
    assert_non_null(bin);
    snprintf(cmd, sizeof(cmd), "'%s' --version", bin);
    f = popen(cmd, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "libmicrohttpd %d.", &major) == 1)
            break;
    pclose(f);
    assert_true(major >= 0);
    return major;
}

void e2e_start(e2e_proc *p, const char *const *env, const char *const *args, bool wait_ready)
{
    static int started;
    const char *bin = getenv("HINDSIGHT_BIN");
    const char *db = getenv("TEST_DATABASE_URL");
    char port[16];
    pid_t pid;

    assert_non_null(bin);
    p->port = e2e_free_port();
    snprintf(port, sizeof(port), "%d", p->port);
    snprintf(p->log_path, sizeof(p->log_path), "/tmp/hs-e2e-%d-%d.log", (int)getpid(), ++started);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const char *argv[32] = {bin};
        int n = 1;
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        if (fd < 0)
            _exit(127);
        dup2(fd, STDERR_FILENO);
        close(fd);
        fd = open("/dev/null", O_WRONLY);
        dup2(fd, STDOUT_FILENO);
        close(fd);
        setenv("PORT", port, 1);
        setenv("LOG_LEVEL", "info", 1);
        unsetenv("DATABASE_URL");
        if (db != NULL && db[0] != '\0')
            setenv("DATABASE_URL", db, 1);
        for (size_t i = 0; env != NULL && env[i] != NULL; i++)
            putenv(strdup(env[i]));
        for (size_t i = 0; args != NULL && args[i] != NULL && n < 31; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv(bin, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    p->pid = pid;
    if (nchildren < MAX_CHILDREN)
        children[nchildren++] = pid;
    if (!wait_ready)
        return;
    for (uint64_t until = e2e_now_ms() + 60000; e2e_now_ms() < until;) {
        e2e_resp r;
        int status;

        if (waitpid(pid, &status, WNOHANG) == pid) {
            char *log = e2e_log(p);

            forget_child(pid);
            fprintf(stderr, "service exited during startup; log:\n%s\n", log);
            free(log);
            fail();
        }
        e2e_get(p, "/healthz", &r);
        if (r.status == 200) {
            e2e_resp_free(&r);
            return;
        }
        e2e_resp_free(&r);
        e2e_sleep_ms(50);
    }
    fail_msg("the service did not answer /healthz within 60 s");
}

void e2e_signal(e2e_proc *p, int sig)
{
    assert_int_equal(kill(p->pid, sig), 0);
}

int e2e_wait_exit(e2e_proc *p, int timeout_ms)
{
    uint64_t until = e2e_now_ms() + (uint64_t)timeout_ms;
    int status;

    while (e2e_now_ms() < until) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);

        if (r == p->pid) {
            forget_child(p->pid);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        e2e_sleep_ms(5);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    forget_child(p->pid);
    return -1;
}

void e2e_stop(e2e_proc *p)
{
    e2e_signal(p, SIGTERM);
    assert_int_equal(e2e_wait_exit(p, 15000), 0);
    unlink(p->log_path);
}

char *e2e_log(const e2e_proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    char *buf;
    long n;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

char *e2e_request_line(const e2e_proc *p, const char *rid, int timeout_ms)
{
    uint64_t until = e2e_now_ms() + (uint64_t)timeout_ms;
    char needle[160];

    snprintf(needle, sizeof(needle), "\"event\":\"request\",\"request_id\":\"%s\"", rid);
    for (;;) {
        char *log = e2e_log(p);
        char *line = strstr(log, needle);
        char *copy = NULL;

        if (line != NULL) {
            while (line > log && line[-1] != '\n')
                line--;
            copy = strndup(line, strcspn(line, "\n"));
            assert_non_null(copy);
        }
        free(log);
        if (copy != NULL || e2e_now_ms() >= until)
            return copy;
        e2e_sleep_ms(25);
    }
}

typedef struct sink {
    char *p;
    size_t len;
} sink;

static size_t on_data(char *data, size_t size, size_t n, void *arg)
{
    sink *s = arg;
    char *p = realloc(s->p, s->len + size * n + 1);

    if (p == NULL)
        return 0;
    memcpy(p + s->len, data, size * n);
    s->len += size * n;
    p[s->len] = '\0';
    s->p = p;
    return size * n;
}

void e2e_request(const e2e_proc *p, const char *method, const char *path, const char *body,
                 const char *const *headers, e2e_resp *r)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    sink b = {calloc(1, 1), 0};
    sink hd = {calloc(1, 1), 0};
    char url[512];

    assert_non_null(c);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", p->port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        h = curl_slist_append(h, headers[i]);
    /* curl would wait a second for "100 Continue" on larger bodies. */
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hd);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    memset(r, 0, sizeof(*r));
    r->curl_error = (int)curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &r->total_s);
    r->body = b.p;
    r->body_len = b.len;
    r->headers = hd.p;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
}

void e2e_get(const e2e_proc *p, const char *path, e2e_resp *r)
{
    e2e_request(p, "GET", path, NULL, NULL, r);
}

long long e2e_metric(const e2e_proc *p, const char *name)
{
    size_t n = strlen(name);
    long long v = -1;
    e2e_resp r;

    e2e_get(p, "/metrics", &r);
    for (const char *at = r.status == 200 ? r.body : NULL; at != NULL; at = strstr(at + 1, name)) {
        if ((at == r.body || at[-1] == '\n') && at[n] == ' ') {
            v = strtoll(at + n + 1, NULL, 10);
            break;
        }
    }
    e2e_resp_free(&r);
    return v;
}

long long e2e_wait_metric(const e2e_proc *p, const char *name, long long want, int timeout_ms)
{
    uint64_t until = e2e_now_ms() + (uint64_t)timeout_ms;
    long long v;

    while ((v = e2e_metric(p, name)) != want && e2e_now_ms() < until)
        e2e_sleep_ms(20);
    return v;
}

bool e2e_header(const e2e_resp *r, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);

    for (const char *line = r->headers; line != NULL && *line != '\0';) {
        const char *end = strstr(line, "\r\n");
        size_t len = end ? (size_t)(end - line) : strlen(line);

        if (len > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            size_t vlen;

            while (*v == ' ')
                v++;
            vlen = len - (size_t)(v - line);
            snprintf(out, cap, "%.*s", (int)vlen, v);
            return true;
        }
        line = end ? end + 2 : NULL;
    }
    return false;
}

void e2e_resp_free(e2e_resp *r)
{
    free(r->body);
    free(r->headers);
    r->body = r->headers = NULL;
}

int e2e_connect(const e2e_proc *p)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)p->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int e2e_wait_closed(int fd, int timeout_ms)
{
    uint64_t start = e2e_now_ms();
    uint64_t until = start + (uint64_t)timeout_ms;
    char buf[4096];

    while (e2e_now_ms() < until) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int left = (int)(until - e2e_now_ms());

        if (poll(&pfd, 1, left > 0 ? left : 0) > 0) {
            ssize_t n = read(fd, buf, sizeof(buf));

            if (n <= 0)
                return (int)(e2e_now_ms() - start);
        }
    }
    return -1;
}

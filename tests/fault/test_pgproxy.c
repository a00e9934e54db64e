/* SPDX-License-Identifier: MIT */
/*
 * test_pgproxy.c - the fault-injecting proxy (pgproxy.py) does what the fault tests rely on:
 * passes through, delays, black-holes and heals, resets, kills connections after a delay,
 * swallows the answer to a COMMIT that still commits, and swallows a cancel request.
 *
 * Plain blocking libpq against TEST_DATABASE_URL through the proxy; waits are poll() on the
 * connection's socket, and every "nothing came" check is a lower bound (a busy machine can only
 * make nothing come later).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <stdbool.h>
#include <time.h>

#include <libpq-fe.h>

#include "fault/pgproxy.h"

static pgp proxy;
static char url[256];
static char direct[256];

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int group_setup(void **state)
{
    const char *u = getenv("TEST_DATABASE_URL");

    (void)state;
    snprintf(direct, sizeof(direct), "%s",
             u != NULL && *u ? u : "postgresql://postgres@127.0.0.1:54329/hindsight");
    if (pgp_start(&proxy, pgp_url_port(direct)) != 0)
        fail_msg("cannot start the proxy");
    pgp_url(&proxy, direct, url, sizeof(url));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pgp_stop(&proxy);
    return 0;
}

static int reset_proxy(void **state)
{
    (void)state;
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    assert_int_equal(pgp_cmd(&proxy, "delay 0"), 0);
    assert_int_equal(pgp_cmd(&proxy, "drop_commit 0"), 0);
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang off"), 0);
    assert_int_equal(pgp_cmd(&proxy, "kill_after 0"), 0);
    return 0;
}

static PGconn *connect_ok(const char *to)
{
    PGconn *c = PQconnectdb(to);

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect %s: %s", to, PQerrorMessage(c));
    return c;
}

/* Waits up to ms for the result of what was sent; true when it is complete (or the link broke). */
static bool answer_within(PGconn *c, int ms)
{
    uint64_t until = now_ms() + (uint64_t)ms;

    while (PQisBusy(c)) {
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        int left = (int)(until - now_ms());

        if (left <= 0 || poll(&p, 1, left) <= 0)
            return !PQisBusy(c);
        if (!PQconsumeInput(c))
            return true;
    }
    return true;
}

/* The status of the first result, the rest drained. */
static ExecStatusType first_status(PGconn *c)
{
    ExecStatusType st = PGRES_FATAL_ERROR;
    bool first = true;
    PGresult *r;

    while ((r = PQgetResult(c)) != NULL) {
        if (first)
            st = PQresultStatus(r);
        first = false;
        PQclear(r);
    }
    return st;
}

static void test_pass_through(void **state)
{
    PGconn *c;

    (void)state;
    c = connect_ok(url);
    assert_int_equal(PQsendQuery(c, "SELECT 1"), 1);
    assert_true(answer_within(c, 30000));
    assert_int_equal(first_status(c), PGRES_TUPLES_OK);
    PQfinish(c);
    assert_true(pgp_stat(&proxy, "accepted") >= 1);
}

static void test_delay(void **state)
{
    PGconn *c;
    uint64_t t0;

    (void)state;
    c = connect_ok(url);
    assert_int_equal(pgp_cmd(&proxy, "delay 300"), 0);
    t0 = now_ms();
    assert_int_equal(PQsendQuery(c, "SELECT 1"), 1);
    assert_true(answer_within(c, 30000));
    /* 300 ms each way. */
    assert_true(now_ms() - t0 >= 550);
    assert_int_equal(first_status(c), PGRES_TUPLES_OK);
    PQfinish(c);
}

static void test_blackhole_and_heal(void **state)
{
    PGconn *c;

    (void)state;
    c = connect_ok(url);
    assert_int_equal(pgp_cmd(&proxy, "blackhole"), 0);
    assert_int_equal(PQsendQuery(c, "SELECT 1"), 1);
    assert_false(answer_within(c, 1000));
    assert_int_equal(PQstatus(c), CONNECTION_OK); /* the socket is still open */
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    assert_true(answer_within(c, 30000));
    assert_int_equal(first_status(c), PGRES_TUPLES_OK);
    PQfinish(c);
}

static void test_reset(void **state)
{
    PGconn *c;
    PGconn *d;
    PGresult *r;

    (void)state;
    c = connect_ok(url);
    assert_int_equal(pgp_cmd(&proxy, "reset"), 0);
    r = PQexec(c, "SELECT 1");
    assert_int_not_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    d = PQconnectdb(url);
    assert_int_equal(PQstatus(d), CONNECTION_BAD);
    PQfinish(d);
    PQfinish(c);
    assert_true(pgp_stat(&proxy, "resets") >= 2);
}

static void test_kill_after(void **state)
{
    PGconn *c;
    uint64_t t0;

    (void)state;
    /* Long enough for the connection to be set up first on a loaded machine under ASan (500 ms
     * was not), far shorter than the query it cuts. */
    assert_int_equal(pgp_cmd(&proxy, "kill_after 3000"), 0);
    c = connect_ok(url);
    t0 = now_ms();
    assert_int_equal(PQsendQuery(c, "SELECT pg_sleep(20)"), 1);
    assert_true(answer_within(c, 15000));
    assert_int_not_equal(first_status(c), PGRES_TUPLES_OK);
    assert_true(now_ms() - t0 < 15000);
    PQfinish(c);
    assert_true(pgp_stat(&proxy, "killed") >= 1);
}

static void test_drop_commit(void **state)
{
    PGconn *c;
    PGconn *d;
    PGresult *r;
    bool seen = false;

    (void)state;
    d = connect_ok(direct);
    PQclear(PQexec(d, "DROP TABLE IF EXISTS pgproxy_t"));
    r = PQexec(d, "CREATE TABLE pgproxy_t (x int)");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    c = connect_ok(url);
    assert_int_equal(pgp_cmd(&proxy, "drop_commit 1"), 0);
    r = PQexec(c, "BEGIN");
    PQclear(r);
    r = PQexec(c, "INSERT INTO pgproxy_t VALUES (7)");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    assert_int_equal(PQsendQuery(c, "COMMIT"), 1);
    assert_false(answer_within(c, 1000));
    /* The COMMIT reached the server and committed. */
    for (int i = 0; i < 300 && !seen; i++) {
        r = PQexec(d, "SELECT count(*) FROM pgproxy_t WHERE x = 7");
        seen = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "1") == 0;
        PQclear(r);
        if (!seen)
            usleep(100 * 1000);
    }
    assert_true(seen);
    assert_int_equal(pgp_stat(&proxy, "commit_answers_dropped"), 1);
    PQfinish(c);
    PQclear(PQexec(d, "DROP TABLE pgproxy_t"));
    PQfinish(d);
}

/* Sends a raw CancelRequest for a backend that does not exist; true when the proxy (or the
 * postmaster behind it) closed the socket within ms. */
static bool cancel_closed_within(int ms)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint32_t pkt[4] = {htonl(16), htonl(80877102), htonl(1), htonl(2)};
    struct pollfd p;
    char b;
    bool closed;

    assert_true(fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)proxy.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(write(fd, pkt, sizeof(pkt)), (ssize_t)sizeof(pkt));
    p.fd = fd;
    p.events = POLLIN;
    closed = poll(&p, 1, ms) == 1 && read(fd, &b, 1) <= 0;
    close(fd);
    return closed;
}

static void test_cancel_hang(void **state)
{
    (void)state;
    assert_true(cancel_closed_within(30000)); /* forwarded: the postmaster closes it */
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang on"), 0);
    assert_false(cancel_closed_within(1000));
    assert_int_equal(pgp_stat(&proxy, "cancels_swallowed"), 1);
    assert_true(pgp_stat(&proxy, "cancels_seen") >= 2);
}

static void test_bad_command(void **state)
{
    (void)state;
    assert_int_not_equal(pgp_cmd(&proxy, "delay many"), 0);
    assert_int_not_equal(pgp_cmd(&proxy, "explode"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_pass_through, reset_proxy),
        cmocka_unit_test_setup(test_delay, reset_proxy),
        cmocka_unit_test_setup(test_blackhole_and_heal, reset_proxy),
        cmocka_unit_test_setup(test_reset, reset_proxy),
        cmocka_unit_test_setup(test_kill_after, reset_proxy),
        cmocka_unit_test_setup(test_drop_commit, reset_proxy),
        cmocka_unit_test_setup(test_cancel_hang, reset_proxy),
        cmocka_unit_test_setup(test_bad_command, reset_proxy),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

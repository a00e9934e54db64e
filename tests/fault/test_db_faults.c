/* SPDX-License-Identifier: MIT */
/*
 * test_db_faults.c - the driver under network faults injected by tests/fault/pgproxy.py between
 * the pool and TEST_DATABASE_URL's server: cancel requests that never return, pipelined
 * statements of a cancelled request, a silent partition of an idle pool, a server that drops
 * every connection shortly after accepting it, a server that refuses for being full, and (from a
 * fake server, without the proxy) a handshake whose last answer arrives together with a reset.
 *
 * Every bound checked here is wide relative to the delay injected (a busy machine can only make
 * things slower, and each check is either a lower bound or a bound many times the expected time).
 */
#include "db_test.h"

#include "fault/pgproxy.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

static pgp proxy;
static char proxied[256];

static int group_setup(void **state)
{
    (void)state;
    if (pgp_start(&proxy, pgp_url_port(dbt_url())) != 0)
        fail_msg("cannot start the proxy");
    pgp_url(&proxy, dbt_url(), proxied, sizeof(proxied));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pgp_stop(&proxy);
    return 0;
}

static void proxy_heal(void)
{
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    assert_int_equal(pgp_cmd(&proxy, "delay 0"), 0);
    assert_int_equal(pgp_cmd(&proxy, "drop_commit 0"), 0);
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang off"), 0);
    assert_int_equal(pgp_cmd(&proxy, "kill_after 0"), 0);
}

static int setup(void **state)
{
    proxy_heal();
    return dbt_setup(state);
}

/* The proxy heals first, so that whatever a failed test left hanging can end. */
static int teardown(void **state)
{
    proxy_heal();
    return dbt_teardown(state);
}

#define FAULT_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static bool db_closed(void *arg)
{
    return ((dbt_fixture *)arg)->db_closed > 0;
}

/* Closes the pool and requires it to be closed within ms. */
static void close_within(dbt_fixture *fx, uint64_t ms)
{
    rt_db_close(fx->db, dbt_db_closed, fx);
    fx->db = NULL;
    if (!dbt_run_until(fx, db_closed, fx, ms))
        fail_msg("the pool did not close within %llu ms", (unsigned long long)ms);
}

static int count_active(PGconn *c, const char *app, const char *like)
{
    char sql[512];

    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
             "AND state = 'active' AND query LIKE '%s'",
             app, like);
    return (int)dbt_scalar(c, sql);
}

/*
 * A cancel request that never returns (the proxy swallows it) must not wedge the pool: pool of 4,
 * four statements cancelled while the cancel requests hang. Within a bound, new work runs again,
 * readiness tells the truth, and the pool closes.
 */
static void test_hanging_cancel_does_not_wedge(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(4, 1);
    dbt_query slow[4];
    dbt_query fast[8];
    int done = 0;
    uint64_t t0;

    cfg.conninfo = proxied;
    cfg.cancel_timeout_ms = 1000;
    dbt_open(fx, &cfg);
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang on"), 0);
    for (int i = 0; i < 4; i++)
        dbt_query_start(&slow[i], fx->db, "SELECT pg_sleep(20)", 0, NULL, NULL);
    dbt_run_for(fx, 200);
    for (int i = 0; i < 4; i++)
        rt_task_cancel(&slow[i].q.task, UV_ETIMEDOUT);
    for (int i = 0; i < 4; i++) {
        dbt_wait_query(fx, &slow[i], 1000);
        rt_task_release(&slow[i].q.task);
    }
    t0 = dbt_now(fx);
    for (int i = 0; i < 8; i++) {
        dbt_query_start(&fast[i], fx->db, "SELECT 1", 0, NULL, NULL);
        fast[i].counter = &done;
    }
    /* Bound: the cancel timeout (1 s), a reconnect, and a wide margin. */
    dbt_wait_count(fx, &done, 8, 15000);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(fast[i].status, 0);
        rt_task_release(&fast[i].q.task);
    }
    print_message("fresh work answered %llu ms after the hung cancels\n",
                  (unsigned long long)(dbt_now(fx) - t0));
    assert_true(pgp_stat(&proxy, "cancels_swallowed") >= 1);
    assert_true(rt_db_is_up(fx->db));
    {
        rt_db_stats st;

        rt_db_stats_get(fx->db, &st);
        assert_true(st.cancels_sent >= 1);
        assert_true(st.cancels_timed_out >= 1);
    }
    /* Another round of hanging cancels, then the pool closes within a bound. */
    for (int i = 0; i < 4; i++)
        dbt_query_start(&slow[i], fx->db, "SELECT pg_sleep(20)", 0, NULL, NULL);
    dbt_run_for(fx, 200);
    for (int i = 0; i < 4; i++)
        rt_task_cancel(&slow[i].q.task, UV_ETIMEDOUT);
    close_within(fx, 15000);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(slow[i].delivered, 1);
        rt_task_release(&slow[i].q.task);
    }
}

/*
 * Pool of one, three statements pipelined on it, all cancelled: every one of them stops on the
 * server within a bound, not only the first (pg_stat_activity shows what still runs).
 */
static void test_every_pipelined_cancelled_statement_stops(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    dbt_query q[3];
    dbt_query fast;
    PGconn *d = dbt_plain();
    uint64_t t0;
    uint64_t stopped = 0;

    cfg.application_name = "hs-test-pipecancel";
    cfg.pipeline_stall_us = 1000 * 1000; /* let all three pipeline on the one connection */
    dbt_open(fx, &cfg);
    for (int i = 0; i < 3; i++)
        dbt_query_start(&q[i], fx->db, "SELECT pg_sleep(20)", 0, NULL, NULL);
    dbt_run_for(fx, 300);
    t0 = dbt_now(fx);
    for (int i = 0; i < 3; i++)
        rt_task_cancel(&q[i].q.task, UV_ETIMEDOUT);
    dbt_query_start(&fast, fx->db, "SELECT 1", 0, NULL, NULL);
    /* Each statement stops within a cancel round trip of its start: 8 s is wide against that and
     * far below the 20 s any of them would run uncancelled. */
    while (dbt_now(fx) - t0 < 8000) {
        dbt_run_for(fx, 100);
        if (count_active(d, "hs-test-pipecancel", "SELECT pg_sleep%") == 0) {
            stopped = dbt_now(fx) - t0;
            break;
        }
    }
    if (stopped == 0)
        fail_msg("a cancelled pipelined statement still runs 8 s after the cancel");
    print_message("all three stopped %llu ms after the cancel\n", (unsigned long long)stopped);
    dbt_wait_query(fx, &fast, 8000);
    assert_int_equal(fast.status, 0);
    rt_task_release(&fast.q.task);
    for (int i = 0; i < 3; i++)
        rt_task_release(&q[i].q.task);
    PQfinish(d);
}

/*
 * An idle pool behind a silent partition (the proxy stops forwarding, sockets stay open) finds
 * out within 30 s, with no traffic of its own; once the partition heals, it is up again within a
 * few seconds.
 */
static void test_idle_partition_is_noticed(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(2, 1);
    uint64_t t0;
    uint64_t down_ms;
    uint64_t up_ms;

    cfg.conninfo = proxied;
    dbt_open(fx, &cfg);
    assert_int_equal(pgp_cmd(&proxy, "blackhole"), 0);
    t0 = dbt_now(fx);
    while (rt_db_is_up(fx->db) && dbt_now(fx) - t0 < 40000)
        dbt_run_for(fx, 100);
    down_ms = dbt_now(fx) - t0;
    if (rt_db_is_up(fx->db))
        fail_msg("still up 40 s into a silent partition");
    print_message("down %llu ms into the partition\n", (unsigned long long)down_ms);
    assert_true(down_ms < 30000);
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    t0 = dbt_now(fx);
    if (!dbt_run_until(fx, dbt_is_up, fx, 20000))
        fail_msg("not up 20 s after the partition healed");
    up_ms = dbt_now(fx) - t0;
    print_message("up %llu ms after healing\n", (unsigned long long)up_ms);
    /* The backoff cap plus one handshake; wide for a busy machine. */
    assert_true(up_ms < 10000);
}

/*
 * A server that drops every connection 100 ms after accepting it (a flapping database): a pool of
 * 16 makes at most about 10 attempts per second, because each connection backs off on its own.
 */
static void test_flapping_server_bounded_attempts(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(16, 1);
    long a0;
    long a1;
    uint64_t t0;
    uint64_t t1;
    double rate;

    cfg.conninfo = proxied;
    dbt_open(fx, &cfg);
    assert_int_equal(pgp_cmd(&proxy, "kill_after 100"), 0);
    assert_int_equal(pgp_cmd(&proxy, "reset"), 0);
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    /* Warm-up: the backoffs grow to their cap. */
    dbt_run_for(fx, 5000);
    a0 = pgp_stat(&proxy, "accepted");
    t0 = dbt_now(fx);
    dbt_run_for(fx, 6000);
    a1 = pgp_stat(&proxy, "accepted");
    t1 = dbt_now(fx);
    rate = (double)(a1 - a0) * 1000.0 / (double)(t1 - t0);
    print_message("%.1f connection attempts per second with a pool of 16\n", rate);
    assert_true(rate <= 12.0);
}

typedef struct changes {
    int failing;
    int recovered;
    char why[256];
} changes;

static void on_change(void *arg, bool failing, const char *why)
{
    changes *ch = arg;

    if (failing) {
        ch->failing++;
        snprintf(ch->why, sizeof(ch->why), "%s", why);
    } else {
        ch->recovered++;
    }
}

/*
 * A server with fewer connections to give than the pool wants (here a role's CONNECTION LIMIT,
 * the same refusal, SQLSTATE 53300, as max_connections): the connections it refuses back off far
 * longer than for an outage, and the refusal is reported once, not once per attempt.
 */
static void test_full_server_backs_off_and_reports_once(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(6, 1);
    PGconn *d = dbt_plain();
    char url[512];
    changes ch;
    rt_db_stats st;
    uint64_t f0;
    uint64_t t0;
    double rate;

    memset(&ch, 0, sizeof(ch));
    dbt_exec(d, "SET client_min_messages = warning");
    dbt_exec(d, "DROP ROLE IF EXISTS hs_fault_limited");
    dbt_exec(d, "CREATE ROLE hs_fault_limited LOGIN CONNECTION LIMIT 2");
    snprintf(url, sizeof(url), "postgresql://hs_fault_limited@127.0.0.1:%d/%s",
             pgp_url_port(dbt_url()), PQdb(d));
    cfg.conninfo = url;
    cfg.backoff_min_ms = 250;
    cfg.backoff_max_ms = 1000;
    cfg.on_change = on_change;
    cfg.on_change_arg = &ch;
    assert_int_equal(rt_db_open(&fx->db, &fx->rt, &cfg), 0);
    if (!dbt_run_until(fx, dbt_is_up, fx, 10000))
        fail_msg("the pool did not connect");
    /* Warm-up: the refused connections' backoffs grow. */
    dbt_run_for(fx, 4000);
    rt_db_stats_get(fx->db, &st);
    f0 = st.connects_failed;
    t0 = dbt_now(fx);
    dbt_run_for(fx, 8000);
    rt_db_stats_get(fx->db, &st);
    rate = (double)(st.connects_failed - f0) * 1000.0 / (double)(dbt_now(fx) - t0);
    print_message("%.2f refused attempts per second for 4 connections; reported %d time(s): %s\n",
                  rate, ch.failing, ch.why);
    assert_int_equal(st.conns_idle + st.conns_busy, 2);
    /* An outage's cap (1 s here, jitter from half) would be over 5 per second for four. */
    assert_true(rate < 2.0);
    assert_true(st.connects_refused > 0);
    assert_int_equal(ch.failing, 1);
    assert_int_equal(ch.recovered, 0);
    assert_non_null(strstr(ch.why, "too many"));
    dbt_close_db(fx);
    dbt_exec(d, "DROP ROLE hs_fault_limited");
    PQfinish(d);
}

/* --- a handshake that ends as the connection breaks ----------------------------------------- */

/*
 * A one-shot fake server on loopback, stepped from the test's own loop between iterations: it
 * accepts one connection, reads the startup packet, and answers the handshake (authentication
 * OK, the backend's key, ready for query) followed at once by a reset. Both land while the
 * driver's loop is not polling, so its next poll sees the answer and the reset together.
 */
typedef struct fake_server {
    int listener;
    int conn;
    int port;
    unsigned char in[512];
    size_t got;
    bool answered;
} fake_server;

static void fake_server_open(fake_server *f)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);

    memset(f, 0, sizeof(*f));
    f->conn = -1;
    f->listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(f->listener >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(f->listener, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(f->listener, 8), 0);
    assert_int_equal(getsockname(f->listener, (struct sockaddr *)&a, &len), 0);
    f->port = ntohs(a.sin_port);
}

static void put32(unsigned char *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

/* One step; true once the answer and the reset have been sent. */
static bool fake_server_step(void *arg)
{
    fake_server *f = arg;
    unsigned char out[64];
    size_t n = 0;
    struct linger reset = {1, 0};
    uint32_t want;
    ssize_t r;

    if (f->answered)
        return true;
    if (f->conn < 0) {
        f->conn = accept(f->listener, NULL, NULL);
        if (f->conn < 0)
            return false;
        assert_int_equal(fcntl(f->conn, F_SETFL, O_NONBLOCK), 0);
    }
    r = recv(f->conn, f->in + f->got, sizeof(f->in) - f->got, 0);
    if (r > 0)
        f->got += (size_t)r;
    if (f->got < 4)
        return false;
    memcpy(&want, f->in, 4);
    if (f->got < ntohl(want))
        return false; /* the startup packet is not all there yet */
    /* AuthenticationOk, BackendKeyData, ReadyForQuery (idle). */
    out[n++] = 'R';
    put32(out + n, 8);
    put32(out + n + 4, 0);
    n += 8;
    out[n++] = 'K';
    put32(out + n, 12);
    put32(out + n + 4, 4242);
    put32(out + n + 8, 1);
    n += 12;
    out[n++] = 'Z';
    put32(out + n, 5);
    out[n + 4] = 'I';
    n += 5;
    assert_int_equal(send(f->conn, out, n, MSG_NOSIGNAL), (ssize_t)n);
    assert_int_equal(setsockopt(f->conn, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)), 0);
    close(f->conn);
    f->conn = -1;
    /* Later attempts are refused. */
    close(f->listener);
    f->listener = -1;
    f->answered = true;
    return true;
}

/*
 * The server's last handshake message and a reset arrive together. libuv reports the reset as
 * an error on the socket and stops watching it; libpq still reads the buffered messages and
 * says the connection is up. A statement sent on it must fail at once (the connection is gone),
 * not wait forever on a socket nobody watches.
 */
static void test_handshake_ending_in_a_reset(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    fake_server f;
    char conninfo[160];
    static dbt_query q; /* outlives a failed test: the pool's close still delivers to it */

    fake_server_open(&f);
    snprintf(conninfo, sizeof(conninfo),
             "host=127.0.0.1 port=%d user=hs dbname=hs sslmode=disable gssencmode=disable", f.port);
    cfg.conninfo = conninfo;
    assert_int_equal(rt_db_open(&fx->db, &fx->rt, &cfg), 0);
    /* No deadline: nothing but the connection's own fate can end it. */
    dbt_query_start(&q, fx->db, "SELECT 1", 0, NULL, NULL);
    if (!dbt_run_until(fx, fake_server_step, &f, 10000))
        fail_msg("the pool never reached the fake server");
    dbt_wait_query(fx, &q, 10000);
    print_message("the statement ended with %s\n", uv_err_name(q.status));
    assert_int_not_equal(q.status, 0);
    rt_task_release(&q.q.task);
    close_within(fx, 10000);
}

/* --- one Sync per round trip ------------------------------------------------------------------ */

/* A transaction of two statements pipelined behind BEGIN and a third, with COMMIT behind it,
 * chosen by the step callback once those are back. */
typedef struct sync_tx {
    rt_db_tx tx;
    const char *const *stmts; /* three */
    int delivered;
    int status;
} sync_tx;

static void sync_tx_step(rt_db_tx *tx)
{
    sync_tx *x = rt_container_of(tx, sync_tx, tx);

    if (rt_db_tx_queued(tx) > 0)
        return; /* the next result comes by itself */
    rt_db_tx_exec(tx, NULL, x->stmts[2], 0, NULL);
    rt_db_tx_commit(tx);
}

static void sync_tx_cb(rt_task *t, int status)
{
    sync_tx *x = rt_container_of(t, sync_tx, tx.task);

    x->delivered++;
    x->status = status;
}

static bool sync_tx_delivered(void *arg)
{
    return ((sync_tx *)arg)->delivered > 0;
}

/* Runs the transaction on fx's pool and waits until it completed and the pool is idle again
 * (its cleanup, if any, done). Returns the Syncs the server was sent meanwhile. */
static long sync_tx_run(dbt_fixture *fx, sync_tx *x, const char *const *stmts)
{
    long before = pgp_stat(&proxy, "syncs_seen");

    memset(x, 0, sizeof(*x));
    x->stmts = stmts;
    rt_db_tx_init(&x->tx, fx->db, NULL, sync_tx_step, NULL);
    rt_db_tx_pipeline(&x->tx, NULL, stmts[0], 0, NULL);
    rt_db_tx_pipeline(&x->tx, NULL, stmts[1], 0, NULL);
    rt_task_start(&x->tx.task, NULL, sync_tx_cb);
    if (!dbt_run_until(fx, sync_tx_delivered, x, 10000))
        fail_msg("the transaction did not complete within 10 s");
    if (!dbt_run_until(fx, dbt_all_ready, fx, 10000))
        fail_msg("the connection was not idle again within 10 s");
    return pgp_stat(&proxy, "syncs_seen") - before;
}

/*
 * The statements a transaction sends in one go wait for the server once: one Sync behind the
 * last of them, not one each (the proxy counts the Syncs on the wire). [BEGIN, 1, 2] and
 * [3, COMMIT] are two. One statement at a time (pipeline_depth 1), each is its own. A statement
 * that fails takes the rest of its group with it, as it would take the rest of the transaction:
 * the error reported is its own, and the connection comes back clean for the next user.
 */
static void test_tx_round_trip_is_one_sync(void **state)
{
    dbt_fixture *fx = *state;
    static const char *const ok[] = {"SELECT 1", "SELECT 2", "SELECT 3"};
    static const char *const bad[] = {"SELECT 1/0", "SELECT 2", "SELECT 3"};

    for (size_t depth = 1; depth <= 8; depth += 7) {
        rt_db_config cfg = dbt_config(1, depth);
        bool one_at_a_time = depth == 1 || cfg.transaction_pooler;
        dbt_query after;
        sync_tx x;
        long syncs;

        cfg.conninfo = proxied;
        cfg.idle_check_ms = 0; /* no Syncs of the pool's own */
        dbt_open(fx, &cfg);

        syncs = sync_tx_run(fx, &x, ok);
        assert_int_equal(x.status, 0);
        assert_int_equal(x.tx.outcome, RT_DB_TX_COMMITTED);
        assert_int_equal(x.tx.step, 3);
        print_message("depth %zu: %ld Syncs for a committed transaction\n", depth, syncs);
        assert_int_equal(syncs, one_at_a_time ? 5 : 2);
        rt_task_release(&x.tx.task);

        /* With everything in one group, the failure and then the pool's ROLLBACK. */
        syncs = sync_tx_run(fx, &x, bad);
        assert_int_equal(x.status, RT_DB_ESQL);
        assert_string_equal(x.tx.result.sqlstate, "22012");
        assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
        print_message("depth %zu: %ld Syncs for a failed transaction\n", depth, syncs);
        assert_int_equal(syncs, one_at_a_time ? 3 : 2);
        rt_task_release(&x.tx.task);

        dbt_query_start(&after, fx->db, "SELECT 1", 0, NULL, NULL);
        dbt_wait_query(fx, &after, 10000);
        assert_int_equal(after.status, 0);
        rt_task_release(&after.q.task);
        dbt_close_db(fx);
        fx->db_closed = 0;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        FAULT_TEST(test_hanging_cancel_does_not_wedge),
        FAULT_TEST(test_every_pipelined_cancelled_statement_stops),
        FAULT_TEST(test_idle_partition_is_noticed),
        FAULT_TEST(test_flapping_server_bounded_attempts),
        FAULT_TEST(test_full_server_backs_off_and_reports_once),
        FAULT_TEST(test_handshake_ending_in_a_reset),
        FAULT_TEST(test_tx_round_trip_is_one_sync),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

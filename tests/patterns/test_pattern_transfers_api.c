/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_transfers_api.c - pattern 4's contract: validation, 404 and 409 refusals,
 * idempotency keys (replay, reuse with another body, a key still in use), opposite transfers
 * that must not deadlock, how many times a transfer waits on the database, and
 * GET /accounts/invariant; on a database of its own.
 *
 * Money is checked in the database after each step, not only in the responses: a replay that
 * answered correctly but moved the money twice must fail.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "pattern_fault.h"
#include "pgproxy.h"

typedef struct fixture {
    e2e_proc p;
    pf_db d;
    pgp proxy; /* running while proxy.pid > 0 (one test), stopped by teardown if it failed */
} fixture;

static int setup(void **state)
{
    static fixture fx;

    pf_db_create(&fx.d, "transfers_api");
    pf_start(&fx.p, &fx.d, NULL);
    *state = &fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;

    e2e_stop(&fx->p);
    e2e_kill_all();
    if (fx->proxy.pid > 0)
        pgp_stop(&fx->proxy);
    pf_db_drop(&fx->d);
    return 0;
}

static int64_t balance(const fixture *fx, int id)
{
    char sql[80];

    snprintf(sql, sizeof(sql), "SELECT balance FROM accounts WHERE id = %d", id);
    return pf_db_int(&fx->d, sql);
}

static int64_t transfers_from(const fixture *fx, int id)
{
    char sql[96];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM transfers WHERE from_account = %d", id);
    return pf_db_int(&fx->d, sql);
}

/* POST path with body and an optional Idempotency-Key (NULL for none). */
static void post(const fixture *fx, const char *path, const char *body, const char *key,
                 e2e_resp *r)
{
    char header[200];
    const char *headers[2] = {header, NULL};

    if (key != NULL)
        snprintf(header, sizeof(header), "Idempotency-Key: %s", key);
    e2e_request(&fx->p, "POST", path, body, key != NULL ? headers : NULL, r);
}

static void expect_error(const fixture *fx, const char *path, const char *body, const char *key,
                         long status, const char *code)
{
    char needle[64];
    e2e_resp r;

    post(fx, path, body, key, &r);
    snprintf(needle, sizeof(needle), "\"code\":\"%s\"", code);
    if (r.status != status || strstr(r.body, needle) == NULL)
        fail_msg("%s %s (key %s): expected %ld %s, got %ld %s", path, body ? body : "(none)",
                 key ? key : "-", status, code, r.status, r.body);
    e2e_resp_free(&r);
}

static void test_refusals_move_nothing(void **state)
{
    static const char *const routes[] = {"/before/transfers", "/after/transfers"};
    static const char *const bad_bodies[] = {
        "{\"from\":1,\"to\":1,\"amount\":5}",
        "{\"from\":1,\"to\":2,\"amount\":0}",
        "{\"from\":1,\"to\":2,\"amount\":1000001}",
        "{\"from\":1,\"to\":2,\"amount\":\"5\"}",
        "{\"from\":1,\"to\":2}",
        "{\"to\":2,\"amount\":5}",
        "{\"from\":1,\"to\":0,\"amount\":5}",
        "{\"from\":1,\"to\":2,\"amount\":5,\"delay_ms\":5001}",
        "{\"from\":1,\"to\":2,\"amount\":5,\"delay_ms\":-1}",
        "{\"from\":1,",
        NULL,
    };
    char long_key[140];
    fixture *fx = *state;

    memset(long_key, 'k', 129);
    long_key[129] = '\0';
    for (int v = 0; v < 2; v++) {
        for (size_t i = 0; i < sizeof(bad_bodies) / sizeof(bad_bodies[0]); i++)
            expect_error(fx, routes[v], bad_bodies[i], NULL, 400, "bad_request");
        expect_error(fx, routes[v], "{\"from\":1,\"to\":2,\"amount\":5}", "has space", 400,
                     "bad_request");
        expect_error(fx, routes[v], "{\"from\":1,\"to\":2,\"amount\":5}", long_key, 400,
                     "bad_request");
        expect_error(fx, routes[v], "{\"from\":999999,\"to\":2,\"amount\":5}", NULL, 404,
                     "not_found");
        expect_error(fx, routes[v], "{\"from\":1,\"to\":999999,\"amount\":5}", NULL, 404,
                     "not_found");
        expect_error(fx, routes[v], "{\"from\":11,\"to\":12,\"amount\":1001}", NULL, 409,
                     "insufficient_funds");
    }
    assert_int_equal(pf_db_int(&fx->d, "SELECT count(*) FROM transfers"), 0);
    assert_int_equal(balance(fx, 1), 1000);
    assert_int_equal(balance(fx, 11), 1000);
    assert_int_equal(balance(fx, 12), 1000);
}

static void test_idempotent_replay(void **state)
{
    static const char body[] = "{\"from\":21,\"to\":22,\"amount\":100}";
    fixture *fx = *state;
    char replayed[16];
    e2e_resp first;
    e2e_resp again;

    post(fx, "/after/transfers", body, "order-21.a", &first);
    assert_int_equal(first.status, 200);
    assert_non_null(strstr(first.body, "\"status\":\"committed\""));
    assert_false(e2e_header(&first, "Idempotent-Replayed", replayed, sizeof(replayed)));
    post(fx, "/after/transfers", body, "order-21.a", &again);
    assert_int_equal(again.status, 200);
    assert_string_equal(again.body, first.body);
    assert_true(e2e_header(&again, "Idempotent-Replayed", replayed, sizeof(replayed)));
    assert_string_equal(replayed, "true");
    e2e_resp_free(&first);
    e2e_resp_free(&again);
    /* The money moved once. */
    assert_int_equal(balance(fx, 21), 900);
    assert_int_equal(balance(fx, 22), 1100);
    assert_int_equal(transfers_from(fx, 21), 1);

    /* The same key with another body is refused, and moves nothing. */
    expect_error(fx, "/after/transfers", "{\"from\":21,\"to\":22,\"amount\":101}", "order-21.a",
                 422, "idempotency_key_reused");
    assert_int_equal(balance(fx, 21), 900);
    assert_int_equal(transfers_from(fx, 21), 1);
}

static void test_key_in_use_is_a_conflict(void **state)
{
    fixture *fx = *state;
    pf_req reqs[2];
    size_t ok;
    e2e_resp r;

    /* Both at once: one claims the key and runs for a while, the other is told so at once. */
    for (int i = 0; i < 2; i++) {
        memset(&reqs[i], 0, sizeof(reqs[i]));
        reqs[i].method = "POST";
        snprintf(reqs[i].path, sizeof(reqs[i].path), "/after/transfers");
        snprintf(reqs[i].body, sizeof(reqs[i].body),
                 "{\"from\":31,\"to\":32,\"amount\":50,\"delay_ms\":1500}");
        snprintf(reqs[i].key, sizeof(reqs[i].key), "slow-31");
    }
    pf_burst(&fx->p, reqs, 2, -1, 0);
    ok = reqs[0].status == 200 ? 0 : 1;
    assert_int_equal(reqs[ok].status, 200);
    assert_false(reqs[ok].replayed);
    assert_int_equal(reqs[1 - ok].status, 409);
    assert_non_null(strstr(reqs[1 - ok].resp, "\"code\":\"idempotency_in_progress\""));
    /* The refusal came while the first was still running. */
    assert_true(reqs[1 - ok].elapsed_ms < reqs[ok].elapsed_ms);

    post(fx, "/after/transfers", reqs[ok].body, "slow-31", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, reqs[ok].resp);
    e2e_resp_free(&r);
    assert_int_equal(balance(fx, 31), 950);
    assert_int_equal(transfers_from(fx, 31), 1);
}

/* before has no idempotency: a retry moves the money again. That is its documented flaw. */
static void test_before_ignores_keys(void **state)
{
    static const char body[] = "{\"from\":41,\"to\":42,\"amount\":10}";
    fixture *fx = *state;
    char replayed[16];
    e2e_resp r;

    for (int i = 0; i < 2; i++) {
        post(fx, "/before/transfers", body, "retry-41", &r);
        assert_int_equal(r.status, 200);
        assert_false(e2e_header(&r, "Idempotent-Replayed", replayed, sizeof(replayed)));
        e2e_resp_free(&r);
    }
    assert_int_equal(balance(fx, 41), 980);
    assert_int_equal(transfers_from(fx, 41), 2);
}

/* Transfers both ways between the same two accounts all complete: rows are locked in id order. */
static void test_opposite_transfers_never_deadlock(void **state)
{
    enum { PAIRS = 30 };
    fixture *fx = *state;
    pf_req reqs[2 * PAIRS];

    for (int i = 0; i < 2 * PAIRS; i++) {
        memset(&reqs[i], 0, sizeof(reqs[i]));
        reqs[i].method = "POST";
        snprintf(reqs[i].path, sizeof(reqs[i].path), "/after/transfers");
        snprintf(reqs[i].body, sizeof(reqs[i].body),
                 "{\"from\":%d,\"to\":%d,\"amount\":7,\"delay_ms\":20}", i % 2 ? 52 : 51,
                 i % 2 ? 51 : 52);
    }
    pf_burst(&fx->p, reqs, 2 * PAIRS, -1, 0);
    for (int i = 0; i < 2 * PAIRS; i++) {
        if (reqs[i].status != 200)
            fail_msg("transfer %d: %ld %s", i, reqs[i].status, reqs[i].resp);
    }
    assert_int_equal(balance(fx, 51), 1000);
    assert_int_equal(balance(fx, 52), 1000);
    assert_int_equal(transfers_from(fx, 51), PAIRS);
    assert_int_equal(transfers_from(fx, 52), PAIRS);
}

typedef struct posted {
    const fixture *fx;
    const char *path;
    const char *body;
    e2e_resp r;
    volatile bool done;
} posted;

static void *post_main(void *arg)
{
    posted *p = arg;

    post(p->fx, p->path, p->body, NULL, &p->r);
    p->done = true;
    return NULL;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/*
 * The rows another transaction has only referenced stay free for a transfer. Inserting a row
 * whose foreign key names an account (a `before` transfer's transfers row and ledger legs, or
 * any other client's) takes FOR KEY SHARE on the account row. A transfer only changes balances,
 * so it locks with FOR NO KEY UPDATE, which such a reference does not block; with FOR UPDATE it
 * would, and two accounts referenced in the other order than the transfer's id order make a
 * deadlock, whose victim (the transfer, which waited first) used to answer 500.
 */
static void test_references_do_not_block_a_transfer(void **state)
{
    fixture *fx = *state;
    posted after = {fx, "/after/transfers", "{\"from\":71,\"to\":72,\"amount\":7}", {0}, false};
    PGconn *other = PQconnectdb(fx->d.url);
    PGresult *res;
    pthread_t th;
    int64_t waiting = 0;

    if (PQstatus(other) != CONNECTION_OK)
        fail_msg("%s", PQerrorMessage(other));
    exec_ok(other, "BEGIN");
    exec_ok(other, "SELECT 1 FROM accounts WHERE id = 72 FOR KEY SHARE");
    assert_int_equal(pthread_create(&th, NULL, post_main, &after), 0);
    /* Either the transfer is done, or it waits for a lock (72, after taking 71). */
    for (uint64_t until = e2e_now_ms() + 30000; !after.done && waiting == 0; e2e_sleep_ms(10)) {
        assert_true(e2e_now_ms() < until);
        waiting = pf_db_int(&fx->d, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND wait_event_type = 'Lock'");
    }
    /* The other transaction now references 71 too. */
    res = PQexec(other, "SELECT 1 FROM accounts WHERE id = 71 FOR KEY SHARE");
    fprintf(stderr, "  the transfer waited for a lock: %s; the other reference: %s\n",
            waiting > 0 ? "yes" : "no", PQresultErrorField(res, PG_DIAG_SQLSTATE) ?: "ok");
    PQclear(res);
    exec_ok(other, "ROLLBACK");
    PQfinish(other);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (after.r.status != 200)
        fail_msg("the transfer: %ld %s", after.r.status, after.r.body);
    assert_int_equal(waiting, 0);
    assert_int_equal(balance(fx, 71), 993);
    assert_int_equal(balance(fx, 72), 1007);
    e2e_resp_free(&after.r);
}

/*
 * A real deadlock, with a client that locks rows for update in the opposite order: PostgreSQL
 * aborts the transfer (it waited first), which wrote nothing. The client is told to retry (503
 * with Retry-After), not that the server failed (500).
 */
static void test_deadlock_victim_is_told_to_retry(void **state)
{
    fixture *fx = *state;
    posted after = {fx, "/after/transfers", "{\"from\":81,\"to\":82,\"amount\":7}", {0}, false};
    PGconn *other = PQconnectdb(fx->d.url);
    PGresult *res;
    pthread_t th;
    char retry[16];

    if (PQstatus(other) != CONNECTION_OK)
        fail_msg("%s", PQerrorMessage(other));
    exec_ok(other, "BEGIN");
    exec_ok(other, "SELECT 1 FROM accounts WHERE id = 82 FOR UPDATE");
    assert_int_equal(pthread_create(&th, NULL, post_main, &after), 0);
    /* The transfer holds 81 and waits for 82. */
    for (uint64_t until = e2e_now_ms() + 30000;
         pf_db_int(&fx->d, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND wait_event_type = 'Lock'") == 0;
         e2e_sleep_ms(10))
        assert_true(e2e_now_ms() < until && !after.done);
    /* Blocks on 81 until a deadlock check (deadlock_timeout, 1 s, after each one began to wait)
     * aborts one side: the transfer's runs first, by the 300 ms it waited longer. */
    e2e_sleep_ms(300);
    res = PQexec(other, "SELECT 1 FROM accounts WHERE id = 81 FOR UPDATE");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    exec_ok(other, "ROLLBACK");
    PQfinish(other);
    assert_int_equal(pthread_join(th, NULL), 0);
    fprintf(stderr, "  the deadlock's victim: %ld %s\n", after.r.status, after.r.body);
    assert_int_equal(after.r.status, 503);
    assert_non_null(strstr(after.r.body, "\"code\":\"unavailable\""));
    assert_true(e2e_header(&after.r, "Retry-After", retry, sizeof(retry)));
    assert_int_equal(balance(fx, 81), 1000);
    assert_int_equal(transfers_from(fx, 81), 0);
    e2e_resp_free(&after.r);
}

/*
 * An answer decided while the key's lock is held (here a replay) reaches the client only once
 * the lock is free again: a client that sends the same key right after is never told that a
 * request with it is still running. The proxy holds every packet 300 ms, so that a ROLLBACK the
 * service sent only after answering would still be on its way when the answer arrives; the
 * locks are read on a direct connection, past the proxy.
 */
static void test_answer_comes_after_the_key_is_free(void **state)
{
    static const char body[] = "{\"from\":91,\"to\":92,\"amount\":3}";
    /* This database's only: other tests' services hold advisory locks of their own. */
    static const char sql_locks[] =
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())";
    fixture *fx = *state;
    pf_db via = fx->d;
    e2e_proc p = {0};
    pgp *proxy = &fx->proxy;
    e2e_resp r;
    char replayed[16];
    int64_t held;

    assert_int_equal(pgp_start(proxy, pgp_url_port(fx->d.url)), 0);
    assert_int_equal(pgp_url(proxy, fx->d.url, via.url, sizeof(via.url)), 0);
    via.watch = NULL;
    pf_start(&p, &via, NULL);
    e2e_request(&p, "POST", "/after/transfers", body,
                (const char *[]){"Idempotency-Key: free-91", NULL}, &r);
    assert_int_equal(r.status, 200);
    e2e_resp_free(&r);
    assert_int_equal(pgp_cmd(proxy, "delay 300"), 0);
    e2e_request(&p, "POST", "/after/transfers", body,
                (const char *[]){"Idempotency-Key: free-91", NULL}, &r);
    held = pf_db_int(&fx->d, sql_locks);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "Idempotent-Replayed", replayed, sizeof(replayed)));
    e2e_resp_free(&r);
    fprintf(stderr, "  advisory locks held when the replay was answered: %lld\n", (long long)held);
    assert_int_equal(held, 0);
    e2e_stop(&p);
    pgp_stop(proxy);
    assert_int_equal(balance(fx, 91), 997);
}

static double round_trips(const fixture *fx)
{
    e2e_resp r;
    double v;

    e2e_get(&fx->p, "/metrics", &r);
    assert_int_equal(r.status, 200);
    v = pf_metric(r.body, "hs_db_transaction_round_trips_total");
    e2e_resp_free(&r);
    return v;
}

/*
 * A transfer waits on the database twice: BEGIN with the whole transfer pipelined behind it,
 * then COMMIT (or ROLLBACK for a refusal, which is the pool's, not the transfer's). A key adds
 * one: BEGIN with the key's lock and lookup, the transfer, then the stored response with COMMIT.
 * One statement at a time (DB_TRANSACTION_POOLER=on), it is one wait per statement.
 */
static void test_round_trips(void **state)
{
    static const struct {
        const char *body;
        const char *key;
        long status;
        int pipelined;
        int one_at_a_time;
    } cases[] = {
        {"{\"from\":61,\"to\":62,\"amount\":5}", NULL, 200, 2, 3},
        {"{\"from\":61,\"to\":62,\"amount\":6}", "trips-61", 200, 3, 6},
        /* A replay: the lookup, then the COMMIT that frees the key before the answer. */
        {"{\"from\":61,\"to\":62,\"amount\":6}", "trips-61", 200, 2, 4},
        {"{\"from\":61,\"to\":62,\"amount\":5000}", NULL, 409, 1, 2},
        {"{\"from\":61,\"to\":99999999,\"amount\":5}", NULL, 404, 1, 2},
    };
    const char *pooler = getenv("DB_TRANSACTION_POOLER");
    bool one_at_a_time = pooler != NULL && strcmp(pooler, "on") == 0;
    fixture *fx = *state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int want = one_at_a_time ? cases[i].one_at_a_time : cases[i].pipelined;
        double before = round_trips(fx);
        e2e_resp r;

        post(fx, "/after/transfers", cases[i].body, cases[i].key, &r);
        if (r.status != cases[i].status)
            fail_msg("%s: %ld %s", cases[i].body, r.status, r.body);
        e2e_resp_free(&r);
        if (round_trips(fx) - before != want)
            fail_msg("%s (key %s): %.0f round trips, expected %d", cases[i].body,
                     cases[i].key ? cases[i].key : "-", round_trips(fx) - before, want);
    }
    assert_int_equal(balance(fx, 61), 989);
    assert_int_equal(balance(fx, 62), 1011);
}

/* Runs last: everything above left the books balanced. */
static void test_invariant_route(void **state)
{
    fixture *fx = *state;
    e2e_resp r;

    e2e_get(&fx->p, "/accounts/invariant", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"accounts\":10000,\"total\":10000000,\"expected\":10000000,"
                                "\"ok\":true,\"partial_transfers\":0}");
    e2e_resp_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals_move_nothing),
        cmocka_unit_test(test_idempotent_replay),
        cmocka_unit_test(test_key_in_use_is_a_conflict),
        cmocka_unit_test(test_before_ignores_keys),
        cmocka_unit_test(test_opposite_transfers_never_deadlock),
        cmocka_unit_test(test_references_do_not_block_a_transfer),
        cmocka_unit_test(test_deadlock_victim_is_told_to_retry),
        cmocka_unit_test(test_answer_comes_after_the_key_is_free),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_invariant_route),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}

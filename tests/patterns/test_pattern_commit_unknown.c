/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_commit_unknown.c - pattern 4: a transfer whose deadline passes after COMMIT was
 * sent is answered with what is known about the COMMIT, never as a cancellation.
 *
 * The test makes COMMIT itself wait on something it controls: a deferred constraint trigger on
 * transfers (fired at COMMIT, never before) takes an advisory lock that the test holds from its
 * own session. So COMMIT is sent, then blocks; the request's deadline (2 s) passes while it
 * blocks; then the pool's bound on COMMIT's answer (5 s) expires and the connection is discarded.
 * The client must get 503 commit_outcome_unknown, counted as unknown and not as a rollback.
 *
 * Then the database is asked what happened: the blocked COMMIT is seen waiting on the lock
 * (pg_stat_activity), the lock is released, the transfer commits, and a retry with the same
 * Idempotency-Key learns the outcome: the stored 200, replayed. Every step waits on state it
 * can observe; the only timing assumption is that BEGIN..COMMIT of one transfer takes less than
 * the 2 s deadline, and the test says so if it ever did not.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pattern_fault.h"

#define DEADLINE_MS  2000
#define COMMIT_BOUND 5000 /* the pool's default commit_timeout_ms */
#define LOCK_KEY     "424242"

static const char body[] = "{\"from\":1,\"to\":2,\"amount\":7}";

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/* Polls sql (an integer) on d until it equals want, or fails after timeout_ms. */
static void wait_for_int(const pf_db *d, const char *sql, int64_t want, int timeout_ms)
{
    int64_t v = -1;

    for (uint64_t until = e2e_now_ms() + (uint64_t)timeout_ms; e2e_now_ms() < until;) {
        v = pf_db_int(d, sql);
        if (v == want)
            return;
        e2e_sleep_ms(50);
    }
    fail_msg("%s stayed %lld, not %lld, for %d ms", sql, (long long)v, (long long)want, timeout_ms);
}

static void post(const e2e_proc *p, e2e_resp *r)
{
    const char *headers[] = {"Idempotency-Key: unknown-commit-1", NULL};

    e2e_request(p, "POST", "/after/transfers", body, headers, r);
}

static void test_deadline_after_commit_is_not_a_cancellation(void **state)
{
    const char *env[] = {"REQUEST_TIMEOUT_MS=2000", "DB_POOL_SIZE=2", NULL};
    e2e_proc p;
    e2e_resp r;
    pf_db d;
    PGconn *holder;
    char *log;
    char replayed[16];
    uint64_t t0, elapsed;

    (void)state;
    pf_db_create(&d, "commit_unknown");
    pf_start(&p, &d, env);

    /* COMMIT of a transfer waits for the test's advisory lock. */
    holder = PQconnectdb(d.url);
    if (PQstatus(holder) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", d.url, PQerrorMessage(holder));
    exec_ok(holder, "CREATE FUNCTION hs_test_hold_commit() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$BEGIN PERFORM pg_advisory_xact_lock(" LOCK_KEY "); RETURN NULL; END$$");
    exec_ok(holder, "CREATE CONSTRAINT TRIGGER hs_test_hold_commit AFTER INSERT ON transfers "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                    "EXECUTE FUNCTION hs_test_hold_commit()");
    exec_ok(holder, "SELECT pg_advisory_lock(" LOCK_KEY ")");

    t0 = e2e_now_ms();
    post(&p, &r);
    elapsed = e2e_now_ms() - t0;
    print_message("first answer after %llu ms: %ld %s\n", (unsigned long long)elapsed, r.status,
                  r.body);
    /* The blocked COMMIT is still there, waiting on the lock: COMMIT was sent (and the
     * connection that sent it is gone, so nobody will ever read its answer). */
    assert_int_equal(pf_db_int(&d, "SELECT count(*) FROM pg_stat_activity WHERE query = 'COMMIT' "
                                   "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"),
                     1);
    /* The deadline passed before the answer: this is the case being tested. */
    assert_true(elapsed >= DEADLINE_MS);
    if (r.status == 504)
        fail_msg("a transfer whose COMMIT was sent was answered as cancelled: %s", r.body);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "\"commit_outcome_unknown\""));
    assert_non_null(strstr(r.body, "Idempotency-Key"));
    assert_true(elapsed < DEADLINE_MS + COMMIT_BOUND + 20000);
    e2e_resp_free(&r);

    e2e_get(&p, "/metrics", &r);
    assert_int_equal(r.status, 200);
    assert_true(pf_metric(r.body, "hs_commits_outcome_unknown_total") == 1);
    assert_true(pf_metric(r.body, "hs_transfers_cancelled_total{variant=\"after\","
                                  "effect=\"rolled_back\"}") == 0);
    assert_true(pf_metric(r.body, "hs_db_transactions_total{outcome=\"unknown\"}") == 1);
    e2e_resp_free(&r);

    /* The outcome, once the lock is released: the transfer committed after all. */
    exec_ok(holder, "SELECT pg_advisory_unlock(" LOCK_KEY ")");
    wait_for_int(&d, "SELECT count(*) FROM transfers WHERE amount = 7", 1, 30000);

    /* The retry the 503 asked for learns it: the stored answer, replayed; no money moves. */
    post(&p, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"status\":\"committed\""));
    assert_true(e2e_header(&r, "Idempotent-Replayed", replayed, sizeof(replayed)));
    assert_string_equal(replayed, "true");
    e2e_resp_free(&r);
    assert_int_equal(pf_db_int(&d, "SELECT count(*) FROM transfers"), 1);
    assert_int_equal(pf_db_int(&d, "SELECT 1000 * count(*) - sum(balance) FROM accounts"), 0);

    e2e_signal(&p, SIGTERM);
    assert_int_equal(e2e_wait_exit(&p, 15000), 0);
    log = e2e_log(&p);
    {
        const char *unknown[] = {"\"transfer_outcome_unknown\"", NULL};
        const char *cancelled[] = {"\"transfer_cancelled\"", NULL};

        assert_int_equal(pf_log_count(log, unknown), 1);
        assert_int_equal(pf_log_count(log, cancelled), 0);
    }
    free(log);
    unlink(p.log_path);
    PQfinish(holder);
    pf_db_drop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deadline_after_commit_is_not_a_cancellation),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_transfers.c - pattern 4, cancellation-aware writes, under deadlines and SIGTERM.
 *
 * Each variant gets the same two blows on a database of its own. First a burst of transfers
 * with a long delay between debit and credit, and a request deadline far shorter than the queue
 * they form (504s). Then a second burst on other accounts, with SIGTERM sent while it is in
 * flight and a short grace period (503s, and refused connections once the server stops
 * accepting). The signal goes once SIGNAL_AT transfers sit in pg_sleep between debit and credit
 * (pg_stat_activity), not after a fixed time: on a busy machine the burst may take long to get
 * going, and a signal before any debit proves nothing. After the process exits, the database is
 * read directly:
 *
 *  - before: money has vanished (total < 1000 x accounts) and transfers lack a ledger leg, after
 *    each blow separately;
 *  - after: the total is intact, no transfer lacks a leg, every account's balance is 1000 plus
 *    its ledger, and exactly as many transfers exist as 200 responses were sent: a cancelled
 *    transfer left nothing, and a committed one was reported.
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

#include "pattern_fault.h"

#define N        200 /* transfers per burst */
#define AMOUNT   10
#define DELAY_MS 400
/* Transfers between debit and credit when SIGTERM goes: a quarter of the pool (DB_POOL_SIZE 16). */
#define SIGNAL_AT 4

static const char sql_total_missing[] = "SELECT 1000 * count(*) - sum(balance) FROM accounts";
static const char sql_partial[] =
    "SELECT count(*) FROM transfers t LEFT JOIN "
    "(SELECT transfer_id, count(*) AS n, sum(delta) AS s FROM ledger GROUP BY transfer_id) l "
    "ON l.transfer_id = t.id WHERE l.n IS DISTINCT FROM 2 OR l.s IS DISTINCT FROM 0";
/* The second burst moves money among accounts 401..800 only. */
static const char sql_partial_second[] =
    "SELECT count(*) FROM transfers t WHERE t.from_account > 400 AND "
    "(SELECT count(*) FROM ledger l WHERE l.transfer_id = t.id) <> 2";
static const char sql_missing_second[] =
    "SELECT 1000 * count(*) - sum(balance) FROM accounts WHERE id BETWEEN 401 AND 800";
static const char sql_ledger_mismatch[] =
    "SELECT count(*) FROM accounts a WHERE a.balance <> 1000 + "
    "coalesce((SELECT sum(delta) FROM ledger l WHERE l.account_id = a.id), 0)";

typedef struct outcome {
    size_t ok;        /* 200 */
    size_t timed_out; /* 504 */
    size_t shut;      /* 503 */
    size_t refused;   /* no response: the server had stopped accepting */
    size_t other;
    int64_t missing_first; /* money gone after the deadline burst (via /accounts/invariant) */
    int64_t partial_first;
    int64_t partial_second; /* from the database, after exit */
    int64_t missing_second;
    int64_t missing_total;
    int64_t partial_total;
    int64_t transfers;
    int64_t ledger_mismatch;
    size_t cancel_lines;
} outcome;

static void tally(outcome *o, const pf_req *reqs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (reqs[i].status) {
        case 200:
            o->ok++;
            break;
        case 504:
            o->timed_out++;
            break;
        case 503:
            o->shut++;
            break;
        case 0:
            o->refused++;
            break;
        default:
            print_message("unexpected %ld: %s\n", reqs[i].status, reqs[i].resp);
            o->other++;
            break;
        }
    }
}

static void fill(pf_req *reqs, const char *variant, int first_from, int first_to)
{
    for (int i = 0; i < N; i++) {
        memset(&reqs[i], 0, sizeof(reqs[i]));
        reqs[i].method = "POST";
        snprintf(reqs[i].path, sizeof(reqs[i].path), "/%s/transfers", variant);
        snprintf(reqs[i].body, sizeof(reqs[i].body),
                 "{\"from\":%d,\"to\":%d,\"amount\":%d,\"delay_ms\":%d}", first_from + i,
                 first_to + i, AMOUNT, DELAY_MS);
    }
}

static int64_t json_field(const char *body, const char *key)
{
    char pattern[64];
    const char *at;

    snprintf(pattern, sizeof(pattern), "\"%s\":", key);
    at = strstr(body, pattern);
    assert_non_null(at);
    return strtoll(at + strlen(pattern), NULL, 10);
}

static bool transfers_sleeping(void *arg)
{
    return pf_db_sleeping(arg) >= SIGNAL_AT;
}

/* The two blows, then the reading of the database. */
static void run(const char *variant, outcome *o)
{
    const char *env[] = {"REQUEST_TIMEOUT_MS=1000", "SHUTDOWN_GRACE_MS=200", NULL};
    const char *cancel_line[] = {"\"transfer_cancelled\"", NULL};
    static pf_req reqs[N];
    e2e_proc p;
    e2e_resp r;
    pf_db d;
    char *log;
    uint64_t give_up;

    memset(o, 0, sizeof(*o));
    pf_db_create(&d, variant);
    pf_start(&p, &d, env);
    e2e_get(&p, "/accounts/invariant", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"ok\":true"));
    e2e_resp_free(&r);

    /* Blow 1: deadlines. */
    fill(reqs, variant, 1, 1 + N);
    pf_burst(&p, reqs, N, -1, 0);
    tally(o, reqs, N);
    e2e_get(&p, "/accounts/invariant", &r);
    assert_int_equal(r.status, 200);
    o->missing_first = json_field(r.body, "expected") - json_field(r.body, "total");
    o->partial_first = json_field(r.body, "partial_transfers");
    e2e_resp_free(&r);

    /* Blow 2: SIGTERM while the second burst is in flight. Whatever blow 1 left running in the
     * database finishes first, so that the signal's condition counts blow 2's transfers only. */
    give_up = e2e_now_ms() + 60000;
    while (pf_db_sleeping(&d) > 0) {
        if (e2e_now_ms() > give_up)
            fail_msg("the deadline burst's statements were still running after 60 s");
        e2e_sleep_ms(10);
    }
    fill(reqs, variant, 1 + 2 * N, 1 + 3 * N);
    pf_burst_when(&p, reqs, N, SIGTERM, transfers_sleeping, &d);
    tally(o, reqs, N);
    assert_int_equal(e2e_wait_exit(&p, 15000), 0);
    log = e2e_log(&p);
    o->cancel_lines = pf_log_count(log, cancel_line);
    free(log);
    unlink(p.log_path);

    o->missing_second = pf_db_int(&d, sql_missing_second);
    o->partial_second = pf_db_int(&d, sql_partial_second);
    o->missing_total = pf_db_int(&d, sql_total_missing);
    o->partial_total = pf_db_int(&d, sql_partial);
    o->transfers = pf_db_int(&d, "SELECT count(*) FROM transfers");
    o->ledger_mismatch = pf_db_int(&d, sql_ledger_mismatch);
    pf_db_drop(&d);
    print_message("%s: 200=%zu 504=%zu 503=%zu refused=%zu other=%zu; deadline burst: %lld "
                  "missing, %lld partial; SIGTERM burst: %lld missing, %lld partial; total "
                  "missing %lld, partial %lld, transfers %lld, cancellations logged %zu\n",
                  variant, o->ok, o->timed_out, o->shut, o->refused, o->other,
                  (long long)o->missing_first, (long long)o->partial_first,
                  (long long)o->missing_second, (long long)o->partial_second,
                  (long long)o->missing_total, (long long)o->partial_total, (long long)o->transfers,
                  o->cancel_lines);
}

static void test_before_breaks_the_invariant(void **state)
{
    const char *pooler = getenv("HS_TEST_TRANSACTION_POOLER");
    outcome o;

    (void)state;
    /* Behind a pooler in transaction mode (tests/db/pgbouncer.sh) statements go one at a time
     * through one more hop, and the SIGTERM 150 ms into the second burst may come before any
     * debit landed: the anti-pattern's damage is shown directly; here only `after` matters. */
    if (pooler != NULL && strcmp(pooler, "1") == 0)
        skip();
    /* The demonstration of the damage runs on one loop, as deploy/demo.sh runs it: its SIGTERM
     * blow is timed against one loop's burst (with WORKERS=2 it did not always land). The
     * `after` test below keeps whatever WORKERS the suite runs with. */
    {
        char *workers = getenv("WORKERS") != NULL ? strdup(getenv("WORKERS")) : NULL;

        setenv("WORKERS", "1", 1);
        run("before", &o);
        if (workers != NULL)
            setenv("WORKERS", workers, 1);
        else
            unsetenv("WORKERS");
        free(workers);
    }
    assert_int_equal(o.other, 0);
    /* Each blow on its own leaves money debited and never credited. */
    assert_true(o.timed_out > 0);
    assert_true(o.missing_first > 0);
    assert_true(o.partial_first > 0);
    assert_true(o.missing_second > 0);
    assert_true(o.partial_second > 0);
    assert_true(o.missing_total > 0);
    assert_true(o.cancel_lines > 0);
}

static void test_after_keeps_the_invariant(void **state)
{
    outcome o;

    (void)state;
    run("after", &o);
    assert_int_equal(o.other, 0);
    /* Both blows struck (otherwise nothing was proven) ... */
    assert_true(o.timed_out > 0);
    assert_true(o.shut + o.refused > 0);
    assert_true(o.cancel_lines > 0);
    /* ... and nothing is half-done, and what was reported committed is exactly what exists. */
    assert_int_equal(o.missing_first, 0);
    assert_int_equal(o.partial_first, 0);
    assert_int_equal(o.missing_second, 0);
    assert_int_equal(o.partial_second, 0);
    assert_int_equal(o.missing_total, 0);
    assert_int_equal(o.partial_total, 0);
    assert_int_equal(o.ledger_mismatch, 0);
    assert_true(o.ok > 0);
    assert_int_equal(o.transfers, (int64_t)o.ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_before_breaks_the_invariant),
        cmocka_unit_test(test_after_keeps_the_invariant),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

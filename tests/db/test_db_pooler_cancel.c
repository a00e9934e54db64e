/* SPDX-License-Identifier: MIT */
/*
 * test_db_pooler_cancel.c - a cancel request through PgBouncer is never hung up on while the
 * pooler forwards it, even when the pool that sent it closes at once.
 *
 * PgBouncer answers a cancel request by forwarding it on a connection of its own to the server;
 * PgBouncer 1.18 dies ("bad client state") when that forward completes after the client that
 * sent the request has hung up. So a driver that closes its cancel request's socket when its
 * connection ends takes the pooler down with it.
 *
 * Run by tests/db/pgbouncer.sh only, which provides (beside PgBouncer in transaction mode):
 *   HS_TEST_PROXIED_URL      a database of that PgBouncer whose server connections go through the
 *                            fault-injecting proxy (tests/fault/pgproxy.py)
 *   HS_TEST_PGPROXY_CONTROL  the proxy's control port
 *   HS_TEST_PGBOUNCER_LOG    PgBouncer's log file
 *   TEST_DATABASE_URL        a database of that PgBouncer going straight to the server
 *   HS_TEST_SERVER_URL       the server itself
 *
 * The proxy holds the forwarded cancel request (cancel_hang), which keeps PgBouncer's forward
 * open as long as the test wants; the statement it was for ends by itself meanwhile, the pool is
 * closed, and then the proxy lets the forward end. PgBouncer must still be serving afterwards.
 */
#include "db_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fault/pgproxy.h"

static const char *need_env(const char *name)
{
    const char *v = getenv(name);

    if (v == NULL || *v == '\0')
        fail_msg("%s is not set: this test is run by tests/db/pgbouncer.sh", name);
    return v;
}

/* How many times PgBouncer has logged that a client hung up on it. */
static int pooler_client_eofs(const char *log)
{
    FILE *f = fopen(log, "r");
    char line[2048];
    int n = 0;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, "closing because: client unexpected eof") != NULL)
            n++;
    fclose(f);
    return n;
}

typedef struct watch {
    dbt_fixture *fx;
    const char *log;
    int eofs_before;
} watch;

static bool pool_closed(void *arg)
{
    return ((dbt_fixture *)arg)->db_closed > 0;
}

static bool pool_closed_or_hung_up(void *arg)
{
    watch *w = arg;

    return w->fx->db_closed > 0 || pooler_client_eofs(w->log) > w->eofs_before;
}

static bool hung_up(void *arg)
{
    watch *w = arg;

    return pooler_client_eofs(w->log) > w->eofs_before;
}

/* The server (not PgBouncer, which pools) runs no pg_sleep(1.5) any more. */
static bool sleep_ended(void *arg)
{
    PGconn *c = PQconnectdb(need_env("HS_TEST_SERVER_URL"));
    PGresult *r;
    bool ended = false;

    (void)arg;
    if (PQstatus(c) == CONNECTION_OK) {
        r = PQexec(c, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                      "query = 'SELECT pg_sleep(1.5)'");
        ended = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "0") == 0;
        PQclear(r);
    }
    PQfinish(c);
    return ended;
}

typedef struct swallowed {
    pgp *proxy;
    long target;
} swallowed;

static bool cancel_held(void *arg)
{
    swallowed *s = arg;

    return pgp_stat(s->proxy, "cancels_swallowed") >= s->target;
}

static void test_closing_the_pool_does_not_hang_up_on_a_forwarded_cancel(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    pgp proxy = {.pid = 0};
    swallowed held = {.proxy = &proxy};
    watch w = {.fx = fx};
    dbt_query slow;
    dbt_query probe;
    uint64_t t0;

    w.log = need_env("HS_TEST_PGBOUNCER_LOG");
    proxy.control = atoi(need_env("HS_TEST_PGPROXY_CONTROL"));
    cfg.conninfo = need_env("HS_TEST_PROXIED_URL");
    /* Far beyond every wait below: the bound is not what ends the request here. */
    cfg.cancel_timeout_ms = 60000;
    held.target = pgp_stat(&proxy, "cancels_swallowed") + 1;
    assert_true(held.target >= 1);
    dbt_open(fx, &cfg);

    assert_int_equal(pgp_cmd(&proxy, "cancel_hang on"), 0);
    /* A statement that ends by itself 1.5 s after it starts, cancelled once it runs. */
    dbt_query_start(&slow, fx->db, "SELECT pg_sleep(1.5)", 0, NULL, NULL);
    dbt_run_for(fx, 200);
    rt_task_cancel(&slow.q.task, UV_ETIMEDOUT);
    dbt_wait_query(fx, &slow, 1000);
    rt_task_release(&slow.q.task);
    /* PgBouncer forwarded the request and waits for the server (the proxy) to close it. */
    if (!dbt_run_until(fx, cancel_held, &held, 10000))
        fail_msg("PgBouncer did not forward the cancel request");

    /* The statement ends by itself (the server says so), and its answer reaches the pool; the
     * request is still in flight. Closing the pool now ends its connection at once. */
    if (!dbt_run_until(fx, sleep_ended, NULL, 10000))
        fail_msg("the statement did not end on the server");
    dbt_run_for(fx, 500);
    w.eofs_before = pooler_client_eofs(w.log);
    assert_true(w.eofs_before >= 0);
    rt_db_close(fx->db, dbt_db_closed, fx);
    fx->db = NULL;
    t0 = dbt_now(fx);
    /* A hang-up shows in PgBouncer's log at once; only time tells that none comes: 5 s. */
    dbt_run_until(fx, pool_closed_or_hung_up, &w, 5000);
    if (fx->db_closed > 0)
        dbt_run_until(fx, hung_up, &w, 5000);
    fprintf(stderr, "pool closed after %llu ms: %s; PgBouncer saw %d client hang-ups\n",
            (unsigned long long)(dbt_now(fx) - t0), fx->db_closed > 0 ? "yes" : "not yet",
            pooler_client_eofs(w.log) - w.eofs_before);

    /* The server side of the forward ends: PgBouncer completes it and closes the request. */
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang off"), 0);
    if (!dbt_run_until(fx, pool_closed, fx, 10000))
        fail_msg("the pool did not close once the pooler closed the cancel request");
    assert_int_equal(fx->db_closed, 1);
    assert_int_equal(pooler_client_eofs(w.log), w.eofs_before);

    /* PgBouncer still serves. */
    fx->db_closed = 0;
    cfg = dbt_config(1, 1);
    dbt_open(fx, &cfg);
    dbt_query_start(&probe, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_wait_query(fx, &probe, 10000);
    assert_int_equal(probe.status, 0);
    rt_task_release(&probe.q.task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_closing_the_pool_does_not_hang_up_on_a_forwarded_cancel),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_db_query.c - the pool and its queries against a real PostgreSQL: concurrency across
 * connections, the bounded queue, cancellation while queued and while running, pipelining with
 * a failure in the middle, prepared statements, statement_timeout, name resolution, and a
 * database that is not there.
 */
#include "db_test.h"

#include "runtime/cancel.h"

#include <netdb.h>
#include <sys/socket.h>

/* Queries run on different connections at once: four 300 ms sleeps on four connections take
 * about 300 ms, not 1200, and report four different backends. */
static void test_concurrent_queries_across_pool(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(4, 1);
    dbt_query q[4];
    int done = 0;
    uint64_t t0;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    t0 = dbt_now(fx);
    for (int i = 0; i < 4; i++) {
        dbt_query_start(&q[i], fx->db, "SELECT pg_backend_pid(), pg_sleep(0.3)", 0, NULL, NULL);
        q[i].counter = &done;
    }
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.conns_busy, 4);
    assert_int_equal(st.queue_depth, 0);
    dbt_wait_count(fx, &done, 4, 5000);
    assert_true(dbt_now(fx) - t0 < 1100);
    for (int i = 0; i < 4; i++) {
        int64_t pid_i;

        assert_int_equal(q[i].status, 0);
        assert_int_equal(rt_db_result_rows(&q[i].q.result), 1);
        assert_int_equal(rt_db_result_int64(&q[i].q.result, 0, 0, &pid_i), 0);
        /* Behind a pooler in transaction mode a backend is the pooler's: one that freed up may
         * serve a second connection while the pooler is still opening more. */
        for (int j = 0; j < i && !dbt_behind_pooler(); j++) {
            int64_t pid_j;

            assert_int_equal(rt_db_result_int64(&q[j].q.result, 0, 0, &pid_j), 0);
            assert_true(pid_i != pid_j);
        }
    }
    for (int i = 0; i < 4; i++)
        rt_task_release(&q[i].q.task);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queries_ok, 4);
    assert_int_equal(st.wait_count, 4);
    assert_int_equal(st.in_flight, 0);
}

/* A connection busy with a slow statement takes no pipelined work: the query waits in the queue
 * and goes to whichever connection frees up first. */
static void test_no_pipelining_behind_a_slow_statement(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(2, 8);
    dbt_query slow_a, slow_b, quick;
    int done = 0;
    rt_db_stats st;

    cfg.pipeline_stall_us = 5000;
    dbt_open(fx, &cfg);
    dbt_query_start(&slow_a, fx->db, "SELECT pg_sleep(1)", 0, NULL, NULL);
    dbt_query_start(&slow_b, fx->db, "SELECT pg_sleep(0.2)", 0, NULL, NULL);
    slow_a.counter = slow_b.counter = &done;
    dbt_run_for(fx, 50);
    dbt_query_start(&quick, fx->db, "SELECT 3", 0, NULL, NULL);
    quick.counter = &done;
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queue_depth, 1);
    assert_int_equal(st.pipelined, 0);
    dbt_wait_count(fx, &done, 2, 3000);
    /* It ran on the connection that freed up first, long before the 1 s sleep ended. */
    assert_int_equal(quick.delivered, 1);
    assert_int_equal(quick.status, 0);
    assert_int_equal(slow_a.delivered, 0);
    dbt_wait_count(fx, &done, 3, 3000);
    rt_task_release(&slow_a.q.task);
    rt_task_release(&slow_b.q.task);
    rt_task_release(&quick.q.task);
}

/* Parameters are bound, never interpolated; results come back typed through the getters. */
static void test_parameters_and_getters(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    const char *params[3] = {"41", "it's; DROP TABLE x", NULL};
    dbt_query q;
    int64_t v;
    bool b;

    dbt_open(fx, &cfg);
    dbt_query_start(&q, fx->db, "SELECT $1::bigint + 1, $2::text, $3::text IS NULL, true, NULL", 3,
                    params, NULL);
    dbt_wait_query(fx, &q, 5000);
    assert_int_equal(q.status, 0);
    assert_int_equal(rt_db_result_cols(&q.q.result), 5);
    assert_int_equal(rt_db_result_int64(&q.q.result, 0, 0, &v), 0);
    assert_int_equal(v, 42);
    assert_string_equal(rt_db_result_text(&q.q.result, 0, 1), "it's; DROP TABLE x");
    assert_int_equal(rt_db_result_bool(&q.q.result, 0, 2, &b), 0);
    assert_true(b);
    assert_true(rt_db_result_is_null(&q.q.result, 0, 4));
    assert_int_equal(rt_db_result_int64(&q.q.result, 0, 4, &v), UV_EINVAL);
    assert_int_equal(rt_db_result_int64(&q.q.result, 0, 1, &v), UV_EINVAL);
    assert_null(rt_db_result_text(&q.q.result, 1, 0));
    assert_null(rt_db_result_text(&q.q.result, 0, 5));
    rt_task_release(&q.q.task);
}

/* queue_limit requests may wait; the next one fails at once with UV_EBUSY. */
static void test_queue_overflow(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    dbt_query q[4];
    int done = 0;
    rt_db_stats st;

    cfg.queue_limit = 2;
    dbt_open(fx, &cfg);
    for (int i = 0; i < 4; i++) {
        dbt_query_start(&q[i], fx->db, "SELECT pg_sleep(0.1)", 0, NULL, NULL);
        q[i].counter = &done;
    }
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queue_depth, 2);
    assert_int_equal(st.rejected_busy, 1);
    dbt_wait_count(fx, &done, 1, 5000);
    /* The overflow is reported first, long before the sleeps end. */
    assert_int_equal(q[3].delivered, 1);
    assert_int_equal(q[3].status, RT_DB_EQUEUE_FULL);
    assert_int_equal(q[0].delivered, 0);
    dbt_wait_count(fx, &done, 4, 5000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(q[i].status, 0);
    for (int i = 0; i < 4; i++)
        rt_task_release(&q[i].q.task);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queue_depth, 0);
}

/* A waiter whose signal fires leaves the queue at once; those behind it keep their turn. */
static void test_waiter_cancelled_while_queued(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    rt_cancel sig;
    dbt_query slow, waiter, after;
    int done = 0;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    dbt_query_start(&slow, fx->db, "SELECT pg_sleep(0.3)", 0, NULL, NULL);
    dbt_query_start(&waiter, fx->db, "SELECT 1", 0, NULL, &sig);
    dbt_query_start(&after, fx->db, "SELECT 2", 0, NULL, NULL);
    slow.counter = waiter.counter = after.counter = &done;
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queue_depth, 2);
    dbt_run_for(fx, 20);
    rt_cancel_fire(&sig, UV_ECANCELED);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queue_depth, 1);
    dbt_wait_count(fx, &done, 1, 5000);
    assert_int_equal(waiter.delivered, 1);
    assert_int_equal(waiter.status, UV_ECANCELED);
    assert_int_equal(slow.delivered, 0);
    dbt_wait_count(fx, &done, 3, 5000);
    assert_int_equal(slow.status, 0);
    assert_int_equal(after.status, 0);
    assert_string_equal(rt_db_result_text(&after.q.result, 0, 0), "2");
    rt_task_release(&slow.q.task);
    rt_task_release(&waiter.q.task);
    rt_task_release(&after.q.task);
    rt_cancel_close(&sig);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.errors_cancelled, 1);
}

/* Five queries pipelined on one connection, the middle one failing: only it fails (each has its
 * own sync point), and the results come back in order. */
static void test_pipeline_one_failure_in_the_middle(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 8);
    static const char *const sql[5] = {"SELECT 1", "SELECT 2", "SELECT 1/0", "SELECT 4",
                                       "SELECT 5"};
    dbt_query q[5];
    int done = 0;
    rt_db_stats st;

    /* Pipeline however the machine paces the five starts (a 5 ms stall between two of them would
     * otherwise queue the rest). */
    cfg.pipeline_stall_us = 0;
    dbt_open(fx, &cfg);
    for (int i = 0; i < 5; i++) {
        dbt_query_start(&q[i], fx->db, sql[i], 0, NULL, NULL);
        q[i].counter = &done;
    }
    rt_db_stats_get(fx->db, &st);
    /* Behind a pooler in transaction mode the pool does not pipeline: the same results come,
     * one statement at a time. */
    assert_int_equal(st.pipelined, dbt_behind_pooler() ? 0 : 4);
    assert_int_equal(st.queue_depth, dbt_behind_pooler() ? 4 : 0);
    dbt_wait_count(fx, &done, 5, 5000);
    for (int i = 0; i < 5; i++) {
        if (i == 2) {
            assert_int_equal(q[i].status, RT_DB_ESQL);
            assert_string_equal(q[i].q.result.sqlstate, "22012");
            assert_non_null(strstr(rt_db_result_error(&q[i].q.result), "division by zero"));
        } else {
            char want[2] = {(char)('1' + i), '\0'};

            assert_int_equal(q[i].status, 0);
            assert_string_equal(rt_db_result_text(&q[i].q.result, 0, 0), want);
        }
    }
    for (int i = 0; i < 5; i++)
        rt_task_release(&q[i].q.task);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.queries_ok, 4);
    assert_int_equal(st.errors_sql, 1);
}

/* A named statement is prepared once per connection and reused; a name whose preparation failed
 * is not remembered, so the next use reports the real error again, not "already exists". */
static void test_prepared_statements(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    char bufs[4][16];
    char buf[16];
    dbt_query q[6];
    int done = 0;

    dbt_open(fx, &cfg);
    for (int i = 0; i < 4; i++) {
        const char *p[1] = {bufs[i]};

        snprintf(bufs[i], sizeof(bufs[i]), "%d", i);
        memset(&q[i], 0, sizeof(q[i]));
        rt_db_query_init(&q[i].q, fx->db, "SELECT $1::int * 10", 1, p, NULL);
        rt_db_query_prepare_as(&q[i].q, "times_ten");
        q[i].counter = &done;
        rt_task_start(&q[i].q.task, NULL, dbt_query_cb);
    }
    for (int i = 4; i < 6; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        rt_db_query_init(&q[i].q, fx->db, "SELEKT nonsense", 0, NULL, NULL);
        rt_db_query_prepare_as(&q[i].q, "broken");
        q[i].counter = &done;
        rt_task_start(&q[i].q.task, NULL, dbt_query_cb);
        dbt_wait_count(fx, &done, i + 1, 5000);
    }
    dbt_wait_count(fx, &done, 6, 5000);
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof(buf), "%d", i * 10);
        assert_int_equal(q[i].status, 0);
        assert_string_equal(rt_db_result_text(&q[i].q.result, 0, 0), buf);
    }
    for (int i = 4; i < 6; i++) {
        assert_int_equal(q[i].status, RT_DB_ESQL);
        assert_string_equal(q[i].q.result.sqlstate, "42601");
    }
    for (int i = 0; i < 6; i++)
        rt_task_release(&q[i].q.task);
}

/*
 * A statement pipelined behind the first use of a name must not depend on that first Parse: if
 * it fails, only its own query fails. Three queries on one connection, in this order: the first
 * use of "late_count" (its table does not exist yet, so its Parse fails), the CREATE TABLE, and
 * a second use of "late_count", which was sent before the first Parse's error came back. The
 * second must see the table, not "prepared statement does not exist"; and the name, never
 * prepared, is prepared by the next use.
 */
static void test_failed_parse_spares_pipelined_neighbour(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    static const char count_sql[] = "SELECT count(*) FROM hs_test_parse.late";
    PGconn *plain = dbt_schema_new("hs_test_parse");
    dbt_query q[4];
    int done = 0;
    rt_db_stats st;

    PQfinish(plain);
    cfg.pipeline_stall_us = 0; /* pipeline whatever the machine's pace: the order is the test */
    dbt_open(fx, &cfg);
    for (int i = 0; i < 3; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        if (i == 1) {
            rt_db_query_init(&q[i].q, fx->db, "CREATE TABLE hs_test_parse.late (x int)", 0, NULL,
                             NULL);
        } else {
            rt_db_query_init(&q[i].q, fx->db, count_sql, 0, NULL, NULL);
            rt_db_query_prepare_as(&q[i].q, "late_count");
        }
        q[i].counter = &done;
        rt_task_start(&q[i].q.task, NULL, dbt_query_cb);
    }
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.pipelined, dbt_behind_pooler() ? 0 : 2); /* no pipelining behind one */
    dbt_wait_count(fx, &done, 3, 5000);
    assert_int_equal(q[0].status, RT_DB_ESQL);
    assert_string_equal(q[0].q.result.sqlstate, "42P01");
    assert_int_equal(q[1].status, 0);
    if (q[2].status != 0)
        fail_msg("the neighbour failed with %s: %s (SQLSTATE %s)", uv_err_name(q[2].status),
                 rt_db_result_error(&q[2].q.result), q[2].q.result.sqlstate);
    assert_string_equal(rt_db_result_text(&q[2].q.result, 0, 0), "0");
    for (int i = 0; i < 3; i++)
        rt_task_release(&q[i].q.task);

    /* The connection is fine, and the name works from now on. */
    memset(&q[3], 0, sizeof(q[3]));
    rt_db_query_init(&q[3].q, fx->db, count_sql, 0, NULL, NULL);
    rt_db_query_prepare_as(&q[3].q, "late_count");
    rt_task_start(&q[3].q.task, NULL, dbt_query_cb);
    dbt_wait_query(fx, &q[3], 5000);
    assert_int_equal(q[3].status, 0);
    assert_string_equal(rt_db_result_text(&q[3].q.result, 0, 0), "0");
    rt_task_release(&q[3].q.task);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.conns_lost, 0);
    dbt_close_db(fx);
    dbt_schema_drop("hs_test_parse");
}

/* Cancelling a long statement completes the query at once and frees its connection quickly:
 * PQcancel (on the thread pool) interrupts it on the server. */
static void test_cancel_long_statement_frees_connection(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    rt_cancel sig;
    dbt_query slow, next;
    uint64_t t0;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    dbt_query_start(&slow, fx->db, "SELECT pg_sleep(30)", 0, NULL, &sig);
    dbt_run_for(fx, 100);
    t0 = dbt_now(fx);
    rt_cancel_fire(&sig, UV_ETIMEDOUT);
    dbt_query_start(&next, fx->db, "SELECT 'next'", 0, NULL, NULL);
    dbt_wait_query(fx, &slow, 1000);
    assert_int_equal(slow.status, UV_ETIMEDOUT);
    dbt_wait_query(fx, &next, 3000);
    assert_int_equal(next.status, 0);
    assert_string_equal(rt_db_result_text(&next.q.result, 0, 0), "next");
    assert_true(next.done_at - t0 < 1500);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.cancels_sent, 1);
    assert_int_equal(st.conns_lost, 0); /* interrupted, not discarded */
    rt_task_release(&slow.q.task);
    rt_task_release(&next.q.task);
    rt_cancel_close(&sig);
}

/* A pipelined query cancelled between live neighbours completes at once; no PQcancel is sent
 * (it could hit a neighbour), and the neighbours get their own results. */
static void test_cancel_pipelined_query_spares_neighbours(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    rt_cancel sig;
    dbt_query q[3];
    int done = 0;
    rt_db_stats st;

    cfg.pipeline_stall_us = 0; /* the three pipeline, however the machine paces their starts */
    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    dbt_query_start(&q[0], fx->db, "SELECT pg_sleep(0.3), 1", 0, NULL, NULL);
    dbt_query_start(&q[1], fx->db, "SELECT pg_sleep(0.3), 2", 0, NULL, &sig);
    dbt_query_start(&q[2], fx->db, "SELECT pg_sleep(0.3), 3", 0, NULL, NULL);
    for (int i = 0; i < 3; i++)
        q[i].counter = &done;
    dbt_run_for(fx, 100);
    rt_cancel_fire(&sig, UV_ECANCELED);
    dbt_wait_count(fx, &done, 1, 1000);
    assert_int_equal(q[1].status, UV_ECANCELED);
    dbt_wait_count(fx, &done, 3, 5000);
    assert_int_equal(q[0].status, 0);
    assert_int_equal(q[2].status, 0);
    assert_string_equal(rt_db_result_text(&q[2].q.result, 0, 1), "3");
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.cancels_sent, 0);
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, 3000));
    for (int i = 0; i < 3; i++)
        rt_task_release(&q[i].q.task);
    rt_cancel_close(&sig);
}

/* Closing with several long statements pipelined on one connection: once all are orphans the
 * connection is cancelled, so the close takes about a round trip, not the statements' time. */
static void test_close_cancels_pipelined_statements(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    dbt_query q[3];
    uint64_t t0;

    /* The three pipeline, however the machine paces their starts: with the default 5 ms bound,
     * a stall between two starts left one queued (RT_DB_ESHUTDOWN at close). */
    cfg.pipeline_stall_us = 0;
    dbt_open(fx, &cfg);
    for (int i = 0; i < 3; i++)
        dbt_query_start(&q[i], fx->db, "SELECT pg_sleep(10)", 0, NULL, NULL);
    dbt_run_for(fx, 100);
    t0 = dbt_now(fx);
    dbt_close_db(fx);
    assert_true(dbt_now(fx) - t0 < 3000);
    for (int i = 0; i < 3; i++) {
        /* Behind a pooler in transaction mode only the first was sent; the others waited. */
        assert_int_equal(q[i].status,
                         i > 0 && dbt_behind_pooler() ? RT_DB_ESHUTDOWN : UV_ECANCELED);
        rt_task_release(&q[i].q.task);
    }
}

/* statement_timeout is set on every connection: a statement running past it fails with
 * UV_ETIMEDOUT and SQLSTATE 57014, and the connection stays usable. (Behind a pooler in
 * transaction mode the driver sends no session settings: that is the pooler's business.) */
static void test_statement_timeout(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    dbt_query q, show;

    if (dbt_behind_pooler())
        skip();
    cfg.statement_timeout_ms = 200;
    cfg.idle_in_tx_timeout_ms = 1500;
    dbt_open(fx, &cfg);
    dbt_query_start(&q, fx->db, "SELECT pg_sleep(5)", 0, NULL, NULL);
    dbt_wait_query(fx, &q, 3000);
    assert_int_equal(q.status, UV_ETIMEDOUT);
    assert_string_equal(q.q.result.sqlstate, "57014");
    dbt_query_start(&show, fx->db,
                    "SELECT current_setting('statement_timeout'), "
                    "current_setting('idle_in_transaction_session_timeout'), "
                    "current_setting('application_name')",
                    0, NULL, NULL);
    dbt_wait_query(fx, &show, 3000);
    assert_int_equal(show.status, 0);
    assert_string_equal(rt_db_result_text(&show.q.result, 0, 0), "200ms");
    assert_string_equal(rt_db_result_text(&show.q.result, 0, 1), "1500ms");
    assert_string_equal(rt_db_result_text(&show.q.result, 0, 2), "hindsight-test");
    rt_task_release(&q.q.task);
    rt_task_release(&show.q.task);
}

/* A host name is resolved with uv_getaddrinfo and every address handed to libpq, so
 * "localhost" works even where it resolves to ::1 first and the server listens on IPv4 only. */
static void test_host_name_resolution(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(2, 1);
    char url[512];
    const char *at;
    dbt_query q;

    /* The test URL with its host replaced by "localhost". */
    at = strstr(dbt_url(), "127.0.0.1");
    if (at == NULL)
        fail_msg("expected 127.0.0.1 in %s", dbt_url());
    snprintf(url, sizeof(url), "%.*slocalhost%s", (int)(at - dbt_url()), dbt_url(),
             at + strlen("127.0.0.1"));
    cfg.conninfo = url;
    dbt_open(fx, &cfg);
    dbt_query_start(&q, fx->db, "SELECT inet_server_addr()::text", 0, NULL, NULL);
    dbt_wait_query(fx, &q, 3000);
    assert_int_equal(q.status, 0);
    rt_task_release(&q.q.task);
}

static void keep_why(void *arg, bool failing, const char *why)
{
    if (failing)
        snprintf(arg, 512, "%s", why);
}

/* A host name none of whose addresses works: the attempt fails with a message naming the host
 * and every address tried (each one that the system resolves "localhost" to). */
static void test_host_name_no_working_address(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    char why[512] = "";
    struct addrinfo hints;
    struct addrinfo *res;
    int n = 0;

    cfg.conninfo = "postgresql://postgres@localhost:1/none";
    cfg.on_change = keep_why;
    cfg.on_change_arg = why;
    assert_int_equal(rt_db_open(&fx->db, &fx->rt, &cfg), 0);
    while (why[0] == '\0' && n++ < 100)
        dbt_run_for(fx, 50);
    print_message("%s\n", why);
    assert_non_null(strstr(why, "localhost"));
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    assert_int_equal(getaddrinfo("localhost", NULL, &hints, &res), 0);
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        char addr[INET6_ADDRSTRLEN];

        if (ai->ai_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)ai->ai_addr, addr, sizeof(addr));
        else
            uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, addr, sizeof(addr));
        if (strstr(why, addr) == NULL)
            fail_msg("%s is not named in: %s", addr, why);
    }
    freeaddrinfo(res);
}

/* No server: the pool keeps trying, reports down, and fails requests fast with RT_DB_EDOWN. */
static void test_database_down_fails_fast(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(2, 1);
    dbt_query queued, late;
    uint64_t t0;
    rt_db_stats st;

    cfg.conninfo = "postgresql://postgres@127.0.0.1:1/none";
    assert_int_equal(rt_db_open(&fx->db, &fx->rt, &cfg), 0);
    assert_false(rt_db_is_up(fx->db));
    /* Whether it comes before the first refusal (and waits) or after it, it fails. */
    dbt_query_start(&queued, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_wait_query(fx, &queued, 3000);
    assert_int_equal(queued.status, RT_DB_EDOWN);
    t0 = dbt_now(fx);
    dbt_query_start(&late, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_wait_query(fx, &late, 1000);
    assert_int_equal(late.status, RT_DB_EDOWN);
    assert_true(late.done_at - t0 < 300);
    dbt_run_for(fx, 300);
    rt_db_stats_get(fx->db, &st);
    assert_true(st.connects_failed >= 3); /* it keeps retrying, with backoff */
    assert_int_equal(st.connects_ok, 0);
    assert_int_equal(st.rejected_down, 2);
    assert_false(rt_db_is_up(fx->db));
    rt_task_release(&queued.q.task);
    rt_task_release(&late.q.task);
}

/* Bad configurations are refused up front, with nothing left open. */
static void test_open_rejects_bad_config(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    rt_db *db = NULL;

    cfg.conninfo = "host=a,b dbname=x";
    assert_int_equal(rt_db_open(&db, &fx->rt, &cfg), UV_EINVAL);
    cfg.conninfo = "this is = not a conninfo '";
    assert_int_equal(rt_db_open(&db, &fx->rt, &cfg), UV_EINVAL);
    cfg = dbt_config(0, 1);
    assert_int_equal(rt_db_open(&db, &fx->rt, &cfg), UV_EINVAL);
    assert_null(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_concurrent_queries_across_pool),
        DBT_TEST(test_parameters_and_getters),
        DBT_TEST(test_queue_overflow),
        DBT_TEST(test_waiter_cancelled_while_queued),
        DBT_TEST(test_pipeline_one_failure_in_the_middle),
        DBT_TEST(test_prepared_statements),
        DBT_TEST(test_failed_parse_spares_pipelined_neighbour),
        DBT_TEST(test_no_pipelining_behind_a_slow_statement),
        DBT_TEST(test_cancel_long_statement_frees_connection),
        DBT_TEST(test_cancel_pipelined_query_spares_neighbours),
        DBT_TEST(test_close_cancels_pipelined_statements),
        DBT_TEST(test_statement_timeout),
        DBT_TEST(test_host_name_resolution),
        DBT_TEST(test_host_name_no_working_address),
        DBT_TEST(test_database_down_fails_fast),
        DBT_TEST(test_open_rejects_bad_config),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

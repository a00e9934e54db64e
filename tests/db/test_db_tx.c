/* SPDX-License-Identifier: MIT */
/*
 * test_db_tx.c - transactions: committed; cancelled before COMMIT (no row, checked from a second
 * plain connection); failed statement; the caller's rollback; cancellation after COMMIT was
 * sent (ignored); COMMIT whose answer does not come in time (outcome unknown); a transaction
 * cancelled while queued; closing the pool with work in flight; and statements pipelined behind
 * BEGIN and COMMIT pipelined behind the last statement (round trips, a failure among them, a
 * cancellation while several are in flight), pipelined and one at a time.
 *
 * Each test works in the schema test_db_tx, created and dropped by the group, so the service's
 * tables are never touched.
 */
#include "db_test.h"

#include "runtime/cancel.h"

typedef struct ttx {
    rt_db_tx tx;
    const char *const *stmts; /* run in order, one per step */
    int nstmts;
    int ahead;           /* the first `ahead` statements go behind BEGIN (rt_db_tx_pipeline) */
    bool commit_behind;  /* COMMIT goes right behind the last statement */
    int waited;          /* results seen with more of the transaction still to come */
    int rollback_status; /* after the statements: rt_db_tx_rollback with this, if set */
    rt_cancel *fire_after_commit; /* fired 100 ms after COMMIT is sent, if set */
    uv_timer_t commit_timer;
    bool timer_open;
    int delivered;
    int status;
    int *counter;
    uint64_t done_at;
} ttx;

static void ttx_fire(uv_timer_t *t)
{
    ttx *x = rt_container_of(t, ttx, commit_timer);

    rt_cancel_fire(x->fire_after_commit, UV_ECANCELED);
    uv_close((uv_handle_t *)t, NULL);
}

static void ttx_step(rt_db_tx *tx)
{
    ttx *x = rt_container_of(tx, ttx, tx);

    if (rt_db_tx_queued(tx) > 0) {
        x->waited++; /* the next result comes by itself */
    } else if ((int)tx->step < x->nstmts) {
        rt_db_tx_exec(tx, NULL, x->stmts[tx->step], 0, NULL);
        if (x->commit_behind && (int)tx->step + 1 == x->nstmts)
            rt_db_tx_commit(tx);
    } else if (x->rollback_status != 0) {
        rt_db_tx_rollback(tx, x->rollback_status);
    } else {
        rt_db_tx_commit(tx);
        if (x->fire_after_commit != NULL) {
            uv_timer_init(tx->task.rt->loop, &x->commit_timer);
            uv_timer_start(&x->commit_timer, ttx_fire, 100, 0);
        }
    }
}

static void ttx_cb(rt_task *t, int status)
{
    ttx *x = rt_container_of(t, ttx, tx.task);

    x->delivered++;
    x->status = status;
    x->done_at = uv_now(t->rt->loop);
    if (x->counter != NULL)
        (*x->counter)++;
}

static void ttx_start(ttx *x, rt_db *db, const char *const *stmts, int n, rt_cancel *signal)
{
    memset(x, 0, sizeof(*x));
    x->stmts = stmts;
    x->nstmts = n;
    rt_db_tx_init(&x->tx, db, NULL, ttx_step, NULL);
    rt_task_start(&x->tx.task, signal, ttx_cb);
}

/* As ttx_start, with the first `ahead` statements pipelined behind BEGIN. */
static void ttx_start_ahead(ttx *x, rt_db *db, const char *const *stmts, int n, int ahead,
                            bool commit_behind, rt_cancel *signal)
{
    memset(x, 0, sizeof(*x));
    x->stmts = stmts;
    x->nstmts = n;
    x->ahead = ahead;
    x->commit_behind = commit_behind;
    rt_db_tx_init(&x->tx, db, NULL, ttx_step, NULL);
    for (int i = 0; i < ahead; i++)
        rt_db_tx_pipeline(&x->tx, NULL, stmts[i], 0, NULL);
    rt_task_start(&x->tx.task, signal, ttx_cb);
}

static bool ttx_delivered(void *arg)
{
    return ((ttx *)arg)->delivered > 0;
}

static void ttx_wait(dbt_fixture *fx, ttx *x, uint64_t timeout_ms)
{
    if (!dbt_run_until(fx, ttx_delivered, x, timeout_ms))
        fail_msg("transaction not delivered within %llu ms", (unsigned long long)timeout_ms);
    assert_int_equal(x->delivered, 1);
}

static int64_t rows_with_id(int id)
{
    PGconn *c = dbt_plain();
    char sql[128];
    int64_t n;

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM test_db_tx.items WHERE id = %d", id);
    n = dbt_scalar(c, sql);
    PQfinish(c);
    return n;
}

static int group_setup(void **state)
{
    PGconn *c = dbt_schema_new("test_db_tx");

    (void)state;
    dbt_exec(c, "CREATE TABLE test_db_tx.items (id int PRIMARY KEY, note text NOT NULL)");
    /* A COMMIT that takes a while: a deferred constraint trigger sleeps at commit time. */
    dbt_exec(c, "CREATE TABLE test_db_tx.slow_commit (sleep_s float8 NOT NULL)");
    dbt_exec(c, "CREATE FUNCTION test_db_tx.sleep_at_commit() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN PERFORM pg_sleep(NEW.sleep_s); RETURN NULL; END $$");
    dbt_exec(c, "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON test_db_tx.slow_commit "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                "EXECUTE FUNCTION test_db_tx.sleep_at_commit()");
    PQfinish(c);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    dbt_schema_drop("test_db_tx");
    return 0;
}

static void test_tx_committed(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(2, 1);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (1, 'one')",
        "INSERT INTO test_db_tx.items VALUES (2, 'two')",
    };
    ttx x;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    ttx_start(&x, fx->db, stmts, 2, NULL);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.tx.outcome, RT_DB_TX_COMMITTED);
    assert_int_equal(x.tx.step, 2);
    assert_int_equal(rows_with_id(1), 1);
    assert_int_equal(rows_with_id(2), 1);
    rt_task_release(&x.tx.task);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.tx_committed, 1);
    assert_int_equal(st.in_flight, 0);
}

/* The step callback reads the previous result and passes a value from it as a parameter: the
 * statement is sent before the old result is freed. */
static void chain_step(rt_db_tx *tx)
{
    const char *p[1];

    switch (tx->step) {
    case 0:
        rt_db_tx_exec(tx, NULL, "INSERT INTO test_db_tx.items VALUES (5, 'five') RETURNING id", 0,
                      NULL);
        break;
    case 1:
        p[0] = rt_db_result_text(&tx->result, 0, 0);
        rt_db_tx_exec(tx, "items_note", "SELECT note FROM test_db_tx.items WHERE id = $1", 1, p);
        break;
    default:
        rt_db_tx_commit(tx);
        break;
    }
}

static void test_tx_step_uses_previous_result(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    ttx x;

    dbt_open(fx, &cfg);
    memset(&x, 0, sizeof(x));
    rt_db_tx_init(&x.tx, fx->db, "BEGIN ISOLATION LEVEL REPEATABLE READ", chain_step, NULL);
    rt_task_start(&x.tx.task, NULL, ttx_cb);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.tx.outcome, RT_DB_TX_COMMITTED);
    /* The COMMIT's own result replaced the SELECT's; the row is there. */
    assert_int_equal(rows_with_id(5), 1);
    rt_task_release(&x.tx.task);
}

/* Cancelled while its second statement runs: the task completes at once, nothing is visible
 * from another connection, and the pool rolls back and frees the connection quickly. */
static void test_tx_cancelled_before_commit_leaves_no_row(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (10, 'ten')",
        "SELECT pg_sleep(30)",
    };
    static const char *const again[] = {"INSERT INTO test_db_tx.items VALUES (10, 'again')"};
    rt_cancel sig;
    ttx x, y;
    uint64_t t0;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    ttx_start(&x, fx->db, stmts, 2, &sig);
    dbt_run_for(fx, 150);
    assert_int_equal(x.delivered, 0);
    t0 = dbt_now(fx);
    rt_cancel_fire(&sig, UV_ECANCELED);
    ttx_wait(fx, &x, 1000);
    assert_int_equal(x.status, UV_ECANCELED);
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_true(x.done_at - t0 < 300);
    assert_int_equal(rows_with_id(10), 0);
    /* The same key inserted again succeeds: the first transaction's lock is gone, so it was
     * rolled back, on the one connection of the pool, within the cancel bound. */
    ttx_start(&y, fx->db, again, 1, NULL);
    ttx_wait(fx, &y, 3000);
    assert_int_equal(y.status, 0);
    assert_true(y.done_at - t0 < 1500);
    assert_int_equal(rows_with_id(10), 1);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.rollbacks_cancel, 1);
    assert_int_equal(st.cancels_sent, 1);
    assert_int_equal(st.conns_lost, 0);
    rt_task_release(&x.tx.task);
    rt_task_release(&y.tx.task);
    rt_cancel_close(&sig);
}

static void test_tx_statement_error_rolls_back(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (20, 'a')",
        "INSERT INTO test_db_tx.items VALUES (20, 'duplicate')",
    };
    ttx x;
    dbt_query after;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    ttx_start(&x, fx->db, stmts, 2, NULL);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, RT_DB_ESQL);
    assert_string_equal(x.tx.result.sqlstate, "23505");
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_int_equal(x.tx.step, 1);
    assert_int_equal(rows_with_id(20), 0);
    /* The connection was rolled back before reuse: a query on it is not in a failed tx. */
    dbt_query_start(&after, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_wait_query(fx, &after, 3000);
    assert_int_equal(after.status, 0);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.rollbacks_error, 1);
    rt_task_release(&x.tx.task);
    rt_task_release(&after.q.task);
}

static void test_tx_user_rollback(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    static const char *const stmts[] = {"INSERT INTO test_db_tx.items VALUES (30, 'no')"};
    ttx x;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    memset(&x, 0, sizeof(x));
    x.stmts = stmts;
    x.nstmts = 1;
    x.rollback_status = UV_EEXIST;
    rt_db_tx_init(&x.tx, fx->db, NULL, ttx_step, NULL);
    rt_task_start(&x.tx.task, NULL, ttx_cb);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, UV_EEXIST);
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, 3000));
    assert_int_equal(rows_with_id(30), 0);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.rollbacks_user, 1);
    rt_task_release(&x.tx.task);
}

/* The step callback itself triggers the cancellation (as a handler whose deadline fires while it
 * runs would): the statement it chose is sent, then abandoned, and nothing is committed. */
static void cancel_inside_step(rt_db_tx *tx)
{
    rt_cancel *sig = tx->task.data;

    if (tx->step == 0) {
        rt_db_tx_exec(tx, NULL, "INSERT INTO test_db_tx.items VALUES (70, 'x')", 0, NULL);
        return;
    }
    rt_cancel_fire(sig, UV_ETIMEDOUT);
    rt_db_tx_exec(tx, NULL, "INSERT INTO test_db_tx.items VALUES (71, 'y')", 0, NULL);
}

static void test_tx_cancelled_inside_step(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    rt_cancel sig;
    ttx x;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    memset(&x, 0, sizeof(x));
    rt_db_tx_init(&x.tx, fx->db, NULL, cancel_inside_step, NULL);
    x.tx.task.data = &sig;
    rt_task_start(&x.tx.task, &sig, ttx_cb);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, UV_ETIMEDOUT);
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, 3000));
    assert_int_equal(rows_with_id(70), 0);
    assert_int_equal(rows_with_id(71), 0);
    rt_task_release(&x.tx.task);
    rt_cancel_close(&sig);
}

/* Once COMMIT is sent, cancellation no longer strikes: the outcome is awaited and reported. */
static void test_tx_cancel_after_commit_sent_is_ignored(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (40, 'committed anyway')",
        "INSERT INTO test_db_tx.slow_commit VALUES (0.4)",
    };
    rt_cancel sig;
    ttx x;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    memset(&x, 0, sizeof(x));
    x.stmts = stmts;
    x.nstmts = 2;
    x.fire_after_commit = &sig;
    rt_db_tx_init(&x.tx, fx->db, NULL, ttx_step, NULL);
    rt_task_start(&x.tx.task, &sig, ttx_cb);
    ttx_wait(fx, &x, 5000);
    assert_true(rt_cancel_is_fired(&sig));
    assert_int_equal(x.status, 0);
    assert_int_equal(x.tx.outcome, RT_DB_TX_COMMITTED);
    assert_int_equal(rows_with_id(40), 1);
    rt_task_release(&x.tx.task);
    rt_cancel_close(&sig);
}

/* COMMIT's answer does not come within commit_timeout_ms: the outcome is unknown, reported as
 * such, and the connection (in an unknown state) is replaced, not reused. */
static void test_tx_commit_timeout_is_unknown(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 1);
    static const char *const stmts[] = {"INSERT INTO test_db_tx.slow_commit VALUES (1.0)"};
    ttx x;
    rt_db_stats st;

    cfg.commit_timeout_ms = 200;
    dbt_open(fx, &cfg);
    ttx_start(&x, fx->db, stmts, 1, NULL);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, UV_ETIMEDOUT);
    assert_int_equal(x.tx.outcome, RT_DB_TX_UNKNOWN);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.tx_unknown, 1);
    assert_int_equal(st.conns_lost, 1);
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, 3000));
    rt_task_release(&x.tx.task);
}

/* A transaction waits for an idle connection in FIFO order; cancelled while waiting, it leaves
 * the queue having done nothing. */
static void test_tx_cancelled_while_queued(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 4);
    static const char *const slow[] = {"SELECT pg_sleep(0.3)"};
    static const char *const ins[] = {"INSERT INTO test_db_tx.items VALUES (50, 'x')"};
    rt_cancel sig;
    ttx a, b, c;
    dbt_query q;
    int done = 0;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    ttx_start(&a, fx->db, slow, 1, NULL);
    ttx_start(&b, fx->db, ins, 1, &sig);
    ttx_start(&c, fx->db, slow, 1, NULL);
    /* A query behind the queued transactions waits too, though the connection could take it
     * in its pipeline: the queue is FIFO. */
    dbt_query_start(&q, fx->db, "SELECT 1", 0, NULL, NULL);
    a.counter = b.counter = c.counter = q.counter = &done;
    dbt_run_for(fx, 50);
    rt_cancel_fire(&sig, UV_ECANCELED);
    dbt_wait_count(fx, &done, 1, 1000);
    assert_int_equal(b.delivered, 1);
    assert_int_equal(b.status, UV_ECANCELED);
    assert_int_equal(b.tx.outcome, RT_DB_TX_NONE);
    dbt_wait_count(fx, &done, 4, 5000);
    assert_int_equal(a.status, 0);
    assert_int_equal(c.status, 0);
    assert_int_equal(q.status, 0);
    assert_true(q.done_at >= c.done_at);
    assert_int_equal(rows_with_id(50), 0);
    rt_task_release(&a.tx.task);
    rt_task_release(&b.tx.task);
    rt_task_release(&c.tx.task);
    rt_task_release(&q.q.task);
    rt_cancel_close(&sig);
}

/* Closing with a statement and a transaction running and requests queued: the queued fail with
 * RT_DB_ESHUTDOWN, the running are cancelled, and the close completes quickly. */
static void test_close_with_work_in_flight(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(2, 1);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (60, 'x')",
        "SELECT pg_sleep(30)",
    };
    dbt_query running, queued1, queued2;
    ttx x;
    uint64_t t0;

    dbt_open(fx, &cfg);
    dbt_query_start(&running, fx->db, "SELECT pg_sleep(30)", 0, NULL, NULL);
    ttx_start(&x, fx->db, stmts, 2, NULL);
    dbt_query_start(&queued1, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_query_start(&queued2, fx->db, "SELECT 2", 0, NULL, NULL);
    dbt_run_for(fx, 150);
    t0 = dbt_now(fx);
    dbt_close_db(fx);
    assert_true(dbt_now(fx) - t0 < 3000);
    assert_int_equal(running.status, UV_ECANCELED);
    assert_int_equal(x.status, UV_ECANCELED);
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_int_equal(queued1.status, RT_DB_ESHUTDOWN);
    assert_int_equal(queued2.status, RT_DB_ESHUTDOWN);
    assert_int_equal(rows_with_id(60), 0);
    rt_task_release(&running.q.task);
    rt_task_release(&x.tx.task);
    rt_task_release(&queued1.q.task);
    rt_task_release(&queued2.q.task);
}

/* Two statements behind BEGIN, a third chosen by the step callback with COMMIT behind it: two
 * waits on the server; one statement at a time, one wait per statement. Every result reached
 * the callback in order. */
static void test_tx_pipelined(void **state)
{
    dbt_fixture *fx = *state;
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (130, 'a')",
        "INSERT INTO test_db_tx.items VALUES (131, 'b')",
        "INSERT INTO test_db_tx.items VALUES (132, 'c')",
    };

    for (size_t depth = 1; depth <= 8; depth += 7) {
        rt_db_config cfg = dbt_config(1, depth);
        bool one_at_a_time = depth == 1 || cfg.transaction_pooler;
        rt_db_stats st;
        PGconn *c;
        ttx x;

        dbt_open(fx, &cfg);
        ttx_start_ahead(&x, fx->db, stmts, 3, 2, true, NULL);
        ttx_wait(fx, &x, 5000);
        assert_int_equal(x.status, 0);
        assert_int_equal(x.tx.outcome, RT_DB_TX_COMMITTED);
        assert_true(x.tx.commit_sent);
        assert_int_equal(x.tx.step, 3);
        assert_int_equal(x.waited, 1); /* 130's result, with 131 still to come */
        assert_int_equal(x.tx.round_trips, one_at_a_time ? 5 : 2);
        assert_int_equal(rows_with_id(130) + rows_with_id(131) + rows_with_id(132), 3);
        rt_db_stats_get(fx->db, &st);
        assert_int_equal(st.tx_round_trips, x.tx.round_trips);
        rt_task_release(&x.tx.task);
        dbt_close_db(fx);
        fx->db_closed = 0;
        c = dbt_plain();
        dbt_exec(c, "DELETE FROM test_db_tx.items WHERE id BETWEEN 130 AND 132");
        PQfinish(c);
    }
}

/* A pipelined statement fails: the transaction completes with its error, the statements behind
 * it are dropped, nothing is written, and the connection is clean for the next user. */
static void test_tx_pipelined_failure(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 8);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (170, 'a')",
        "INSERT INTO test_db_tx.items VALUES (170, 'duplicate')",
        "INSERT INTO test_db_tx.items VALUES (171, 'never')",
    };
    ttx x;
    dbt_query after;

    dbt_open(fx, &cfg);
    ttx_start_ahead(&x, fx->db, stmts, 3, 3, false, NULL);
    ttx_wait(fx, &x, 5000);
    assert_int_equal(x.status, RT_DB_ESQL);
    assert_string_equal(x.tx.result.sqlstate, "23505");
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_false(x.tx.commit_sent);
    dbt_query_start(&after, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_wait_query(fx, &after, 3000);
    assert_int_equal(after.status, 0);
    assert_int_equal(rows_with_id(170) + rows_with_id(171), 0);
    rt_task_release(&x.tx.task);
    rt_task_release(&after.q.task);
}

/* The statement COMMIT was pipelined behind fails: the server rolls the COMMIT back, and the
 * transaction says so (rolled back, not unknown, not committed). */
static void test_tx_commit_behind_failed_statement(void **state)
{
    dbt_fixture *fx = *state;
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (150, 'a')",
        "INSERT INTO test_db_tx.items VALUES (150, 'duplicate')",
    };

    for (size_t depth = 1; depth <= 8; depth += 7) {
        rt_db_config cfg = dbt_config(1, depth);
        bool one_at_a_time = depth == 1 || cfg.transaction_pooler;
        ttx x;
        dbt_query after;

        dbt_open(fx, &cfg);
        ttx_start_ahead(&x, fx->db, stmts, 2, 1, true, NULL);
        ttx_wait(fx, &x, 5000);
        assert_int_equal(x.status, RT_DB_ESQL);
        assert_string_equal(x.tx.result.sqlstate, "23505");
        assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
        /* One at a time, COMMIT waited for the statement and was never sent. */
        assert_int_equal(x.tx.commit_sent, !one_at_a_time);
        dbt_query_start(&after, fx->db, "SELECT 1", 0, NULL, NULL);
        dbt_wait_query(fx, &after, 3000);
        assert_int_equal(after.status, 0);
        assert_int_equal(rows_with_id(150), 0);
        rt_task_release(&x.tx.task);
        rt_task_release(&after.q.task);
        dbt_close_db(fx);
        fx->db_closed = 0;
    }
}

/* Cancelled with a write and a long statement pipelined behind BEGIN: rolled back at once, the
 * long statement interrupted, the row never visible, and the connection soon reusable. */
static void test_tx_pipelined_cancelled(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(1, 8);
    static const char *const stmts[] = {
        "INSERT INTO test_db_tx.items VALUES (160, 'sixty')",
        "SELECT pg_sleep(30)",
    };
    static const char *const again[] = {"INSERT INTO test_db_tx.items VALUES (160, 'again')"};
    rt_cancel sig;
    ttx x, y;
    uint64_t t0;

    dbt_open(fx, &cfg);
    rt_cancel_init(&sig, NULL);
    ttx_start_ahead(&x, fx->db, stmts, 2, 2, false, &sig);
    dbt_run_for(fx, 300);
    assert_int_equal(x.delivered, 0);
    t0 = dbt_now(fx);
    rt_cancel_fire(&sig, UV_ECANCELED);
    ttx_wait(fx, &x, 1000);
    assert_int_equal(x.status, UV_ECANCELED);
    assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
    assert_int_equal(rows_with_id(160), 0);
    ttx_start(&y, fx->db, again, 1, NULL);
    ttx_wait(fx, &y, 5000);
    assert_int_equal(y.status, 0);
    assert_true(y.done_at - t0 < 5000);
    assert_int_equal(rows_with_id(160), 1);
    rt_task_release(&x.tx.task);
    rt_task_release(&y.tx.task);
    rt_cancel_close(&sig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_tx_committed),
        DBT_TEST(test_tx_step_uses_previous_result),
        DBT_TEST(test_tx_cancelled_before_commit_leaves_no_row),
        DBT_TEST(test_tx_statement_error_rolls_back),
        DBT_TEST(test_tx_user_rollback),
        DBT_TEST(test_tx_cancelled_inside_step),
        DBT_TEST(test_tx_cancel_after_commit_sent_is_ignored),
        DBT_TEST(test_tx_commit_timeout_is_unknown),
        DBT_TEST(test_tx_cancelled_while_queued),
        DBT_TEST(test_close_with_work_in_flight),
        DBT_TEST(test_tx_pipelined),
        DBT_TEST(test_tx_pipelined_failure),
        DBT_TEST(test_tx_commit_behind_failed_statement),
        DBT_TEST(test_tx_pipelined_cancelled),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

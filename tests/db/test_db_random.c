/* SPDX-License-Identifier: MIT */
/*
 * test_db_random.c - thousands of randomized operations interleaving transfers, reads, failing
 * and abandoned transactions and cancellations at random moments, checked against a bank
 * invariant.
 *
 * Sixteen accounts hold 1000 each. A transfer locks both accounts, debits, maybe sleeps, credits
 * and commits; any of these steps may be cut by a deadline. Invariants checked:
 *  R1. Every operation completes exactly once.
 *  R2. Every read of the total, taken at any moment, sees 16000 (no partial transfer is ever
 *      visible: cancellation before COMMIT rolls back).
 *  R3. With no fault injected, no outcome is unknown, and the final balances equal the initial
 *      ones plus exactly the transfers reported committed (none lost, none applied twice).
 *  R4. Afterwards the pool is quiet: nothing in flight, nothing queued, every connection idle.
 *
 * The seed is printed; HS_TEST_SEED replays a run.
 */
#include "db_test.h"

#include "runtime/cancel.h"

#define ACCOUNTS 16
#define OPS      5000
#define PARALLEL 24

enum op_kind { OP_TRANSFER, OP_READ, OP_FAILING, OP_ABANDONED };

typedef struct bank bank;

typedef struct op {
    bank *b;
    int kind;
    int from;
    int to;
    int amount;
    bool sleeps;
    char p_from[16];
    char p_to[16];
    char p_amount[16];
    rt_deadline deadline;
    union {
        rt_db_tx tx;
        rt_db_query q;
    } u;
    rt_task *task;
    int delivered;
} op;

struct bank {
    dbt_fixture *fx;
    uint64_t rng;
    int started;
    int finished;
    int64_t expected[ACCOUNTS + 1];
    int committed;
    int cancelled;
    int sql_errors;
    int reads_ok;
    int bad_reads;
    int unknown;
    int other;
};

static uint64_t next_rand(bank *b)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return b->rng;
}

static void op_start_next(bank *b);

static void op_deadline_closed(rt_deadline *d)
{
    free(rt_container_of(d, op, deadline));
}

static void op_done(rt_task *t, int status)
{
    op *o = t->data;
    bank *b = o->b;

    o->delivered++;
    assert_int_equal(o->delivered, 1); /* R1 */
    if (o->kind == OP_READ) {
        if (status == 0) {
            int64_t total = -1;

            assert_int_equal(rt_db_result_int64(&o->u.q.result, 0, 0, &total), 0);
            if (total == ACCOUNTS * 1000)
                b->reads_ok++;
            else
                b->bad_reads++;
        } else if (status == UV_ETIMEDOUT) {
            b->cancelled++;
        } else {
            b->other++;
        }
    } else {
        if (o->u.tx.outcome == RT_DB_TX_COMMITTED) {
            assert_int_equal(status, 0);
            assert_int_equal(o->kind, OP_TRANSFER);
            b->expected[o->from] -= o->amount;
            b->expected[o->to] += o->amount;
            b->committed++;
        } else if (o->u.tx.outcome == RT_DB_TX_UNKNOWN) {
            b->unknown++;
        } else if (status == UV_ETIMEDOUT) {
            b->cancelled++;
        } else if (status == RT_DB_ESQL || status == UV_EAGAIN) {
            b->sql_errors++;
        } else {
            b->other++;
        }
    }
    rt_task_release(t);
    rt_deadline_close(&o->deadline, op_deadline_closed);
    b->finished++;
    op_start_next(b);
}

static void transfer_step(rt_db_tx *tx)
{
    op *o = rt_container_of(tx, op, u.tx);
    const char *lock[2] = {o->p_from, o->p_to};
    const char *move[2] = {o->p_amount, o->p_from};
    const char *credit[2] = {o->p_amount, o->p_to};
    const char *nap[1] = {"0.002"};
    unsigned step = tx->step;

    if (step == 2 && o->kind == OP_ABANDONED) {
        rt_db_tx_rollback(tx, UV_EAGAIN);
        return;
    }
    /* The optional sleep sits between debit and credit, where a cut would hurt most. */
    if (step >= 2 && !o->sleeps)
        step++;
    switch (step) {
    case 0:
        rt_db_tx_exec(tx, "bank_lock",
                      "SELECT id, balance FROM test_db_random.accounts "
                      "WHERE id IN ($1::int, $2::int) ORDER BY id FOR UPDATE",
                      2, lock);
        break;
    case 1:
        rt_db_tx_exec(tx, "bank_debit",
                      "UPDATE test_db_random.accounts SET balance = balance - $1::bigint "
                      "WHERE id = $2::int",
                      2, o->kind == OP_FAILING ? (const char *[]){"1000000", o->p_from} : move);
        break;
    case 2:
        rt_db_tx_exec(tx, NULL, "SELECT pg_sleep($1::float8)", 1, nap);
        break;
    case 3:
        rt_db_tx_exec(tx, "bank_credit",
                      "UPDATE test_db_random.accounts SET balance = balance + $1::bigint "
                      "WHERE id = $2::int",
                      2, credit);
        break;
    default:
        rt_db_tx_commit(tx);
        break;
    }
}

static void op_start_next(bank *b)
{
    dbt_fixture *fx = b->fx;
    op *o;
    uint64_t r;
    uint64_t at = RT_NO_DEADLINE;

    if (b->started == OPS)
        return;
    b->started++;
    o = calloc(1, sizeof(*o));
    assert_non_null(o);
    o->b = b;
    r = next_rand(b) % 100;
    o->kind = r < 55 ? OP_TRANSFER : r < 80 ? OP_READ : r < 90 ? OP_FAILING : OP_ABANDONED;
    o->from = 1 + (int)(next_rand(b) % ACCOUNTS);
    o->to = 1 + (int)((o->from + next_rand(b) % (ACCOUNTS - 1)) % ACCOUNTS);
    o->amount = 1 + (int)(next_rand(b) % 50);
    o->sleeps = next_rand(b) % 4 == 0;
    snprintf(o->p_from, sizeof(o->p_from), "%d", o->from);
    snprintf(o->p_to, sizeof(o->p_to), "%d", o->to);
    snprintf(o->p_amount, sizeof(o->p_amount), "%d", o->amount);
    /* A third of the operations get a deadline somewhere inside their likely duration. */
    if (next_rand(b) % 3 == 0)
        at = uv_now(&fx->loop) + next_rand(b) % 8;
    assert_int_equal(rt_deadline_init(&o->deadline, &fx->rt, NULL, at), 0);
    if (o->kind == OP_READ) {
        rt_db_query_init(&o->u.q, fx->db, "SELECT sum(balance) FROM test_db_random.accounts", 0,
                         NULL, NULL);
        o->task = &o->u.q.task;
    } else {
        rt_db_tx_init(&o->u.tx, fx->db, NULL, transfer_step, NULL);
        o->task = &o->u.tx.task;
    }
    o->task->data = o;
    rt_task_start(o->task, &o->deadline.signal, op_done);
}

static int group_setup(void **state)
{
    PGconn *c = dbt_schema_new("test_db_random");

    (void)state;
    dbt_exec(c, "CREATE TABLE test_db_random.accounts "
                "(id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))");
    dbt_exec(c, "INSERT INTO test_db_random.accounts SELECT g, 1000 FROM generate_series(1, 16) g");
    PQfinish(c);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    dbt_schema_drop("test_db_random");
    return 0;
}

static bool bank_finished(void *arg)
{
    bank *b = arg;

    return b->finished == OPS;
}

static void test_random_operations_keep_the_bank_invariant(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(4, 4);
    const char *seed_env = getenv("HS_TEST_SEED");
    bank b;
    PGconn *c;
    rt_db_stats st;

    memset(&b, 0, sizeof(b));
    b.fx = fx;
    b.rng = seed_env != NULL ? strtoull(seed_env, NULL, 10) : uv_hrtime();
    if (b.rng == 0)
        b.rng = 1;
    fprintf(stderr, "test_db_random: HS_TEST_SEED=%llu\n", (unsigned long long)b.rng);
    for (int i = 1; i <= ACCOUNTS; i++)
        b.expected[i] = 1000;
    cfg.queue_limit = OPS;
    dbt_open(fx, &cfg);
    for (int i = 0; i < PARALLEL; i++)
        op_start_next(&b);
    if (!dbt_run_until(fx, bank_finished, &b, 120000))
        fail_msg("only %d of %d operations finished", b.finished, OPS);
    fprintf(stderr,
            "test_db_random: committed %d, cancelled %d, refused %d, reads %d, unknown %d, "
            "other %d\n",
            b.committed, b.cancelled, b.sql_errors, b.reads_ok, b.unknown, b.other);
    assert_int_equal(b.bad_reads, 0); /* R2 */
    assert_int_equal(b.unknown, 0);   /* R3 */
    assert_int_equal(b.other, 0);
    /* The mix really exercised both paths. */
    assert_true(b.committed > OPS / 10);
    assert_true(b.cancelled > OPS / 20);
    c = dbt_plain();
    for (int i = 1; i <= ACCOUNTS; i++) {
        char sql[96];

        snprintf(sql, sizeof(sql), "SELECT balance FROM test_db_random.accounts WHERE id = %d", i);
        assert_int_equal(dbt_scalar(c, sql), b.expected[i]); /* R3 */
    }
    assert_int_equal(dbt_scalar(c, "SELECT sum(balance) FROM test_db_random.accounts"),
                     ACCOUNTS * 1000);
    PQfinish(c);
    /* R4: the cleanups (rollbacks after cancellation) finish shortly after the last task. */
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, 5000));
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.queue_depth, 0);
    assert_int_equal(st.conns_lost, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_random_operations_keep_the_bank_invariant),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

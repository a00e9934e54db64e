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
 *  R4. Afterwards the pool is quiet: nothing in flight, nothing queued, every connection idle,
 *      and no connection was lost except those discarded on purpose because an awaited answer
 *      outlasted its bound (a cancel or a ROLLBACK on a busy machine may: that is the pool
 *      refusing to reuse a connection in an unknown state, not a connection breaking).
 *
 * With --faults (ctest's test_db_random_faults) the pool reaches the server through the
 * fault-injecting proxy (tests/fault/pgproxy.py), which black-holes, resets every connection,
 * delays, and swallows COMMIT answers at random moments. Then outcomes may be unknown and
 * operations may fail with a lost connection, and the invariant is checked against a ledger
 * each transfer writes inside its own transaction:
 *  F1. Every operation completes exactly once (R1), and every successful read sees 16000 (R2).
 *  F2. A transfer reported committed is in the ledger; one reported rolled back, cancelled or
 *      failed is not; one whose outcome is unknown may be either.
 *  F3. Every balance equals 1000 plus what the ledger says moved in and out of it.
 *  F4. Once the faults stop, the pool recovers: every connection idle, nothing in flight.
 *
 * The seed is printed; HS_TEST_SEED replays a run.
 */
#include "db_test.h"

#include "runtime/cancel.h"

#include "fault/pgproxy.h"

#define ACCOUNTS 16
#define OPS      5000
#define PARALLEL 24

enum op_kind { OP_TRANSFER, OP_READ, OP_FAILING, OP_ABANDONED };

/* What each operation was told (index: its id). */
enum op_told { TOLD_NONE = 0, TOLD_COMMITTED, TOLD_NOT_COMMITTED, TOLD_UNKNOWN };

static bool faults; /* --faults: through the proxy */
static pgp proxy;
static int ops = OPS; /* operations in this run */

typedef struct bank bank;

typedef struct op {
    bank *b;
    int id;
    int kind;
    int from;
    int to;
    int amount;
    bool sleeps;
    char p_from[16];
    char p_to[16];
    char p_amount[16];
    char p_id[16];
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
    int lost; /* failed with a lost connection or while the database was down (faults only) */
    int other;
    int other_status;  /* the last of those */
    op *live[OPS + 1]; /* by id, from start to delivery: what to name when the run stalls */
    uv_timer_t pause;  /* faults only: starts the operations held back by paused */
    int paused;
    bool stopped; /* the run failed: nothing new starts while the pool closes */
    unsigned char told[OPS + 1];
};

static uint64_t next_rand(bank *b)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return b->rng;
}

static void op_start_next(bank *b);

static void count_closed(uv_handle_t *h)
{
    (*(int *)h->data)++;
}

static void ops_resume(uv_timer_t *t)
{
    bank *b = rt_container_of(t, bank, pause);

    for (; b->paused > 0; b->paused--)
        op_start_next(b);
}

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
    b->live[o->id] = NULL;
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
        } else if (faults && (status == RT_DB_ELOST || status == RT_DB_EDOWN)) {
            b->lost++;
        } else {
            b->other++;
            b->other_status = status;
        }
    } else {
        b->told[o->id] = o->u.tx.outcome == RT_DB_TX_COMMITTED ? TOLD_COMMITTED
                         : o->u.tx.outcome == RT_DB_TX_UNKNOWN ? TOLD_UNKNOWN
                                                               : TOLD_NOT_COMMITTED;
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
        } else if (faults && (status == RT_DB_ELOST || status == RT_DB_EDOWN)) {
            b->lost++;
        } else {
            b->other++;
            b->other_status = status;
        }
    }
    rt_task_release(t);
    rt_deadline_close(&o->deadline, op_deadline_closed);
    b->finished++;
    if (faults && status == RT_DB_EDOWN) {
        /* While the database is down the pool refuses at once: the next operation waits a
         * little, so that the run's operations span the faults instead of all meeting one. */
        b->paused++;
        if (!uv_is_active((uv_handle_t *)&b->pause))
            uv_timer_start(&b->pause, ops_resume, 20, 0);
        return;
    }
    op_start_next(b);
}

static void transfer_step(rt_db_tx *tx)
{
    op *o = rt_container_of(tx, op, u.tx);
    const char *lock[2] = {o->p_from, o->p_to};
    const char *move[2] = {o->p_amount, o->p_from};
    const char *credit[2] = {o->p_amount, o->p_to};
    const char *entry[4] = {o->p_id, o->p_from, o->p_to, o->p_amount};
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
    case 4:
        rt_db_tx_exec(tx, "bank_ledger",
                      "INSERT INTO test_db_random.ledger VALUES ($1::int, $2::int, $3::int, "
                      "$4::bigint)",
                      4, entry);
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

    if (b->started == ops || b->stopped)
        return;
    b->started++;
    o = calloc(1, sizeof(*o));
    assert_non_null(o);
    o->b = b;
    o->id = b->started;
    r = next_rand(b) % 100;
    o->kind = r < 55 ? OP_TRANSFER : r < 80 ? OP_READ : r < 90 ? OP_FAILING : OP_ABANDONED;
    o->from = 1 + (int)(next_rand(b) % ACCOUNTS);
    o->to = 1 + (int)((o->from + next_rand(b) % (ACCOUNTS - 1)) % ACCOUNTS);
    o->amount = 1 + (int)(next_rand(b) % 50);
    o->sleeps = next_rand(b) % 4 == 0;
    snprintf(o->p_from, sizeof(o->p_from), "%d", o->from);
    snprintf(o->p_to, sizeof(o->p_to), "%d", o->to);
    snprintf(o->p_amount, sizeof(o->p_amount), "%d", o->amount);
    snprintf(o->p_id, sizeof(o->p_id), "%d", o->id);
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
    b->live[o->id] = o;
    rt_task_start(o->task, &o->deadline.signal, op_done);
}

static int group_setup(void **state)
{
    PGconn *c = dbt_schema_new("test_db_random");

    (void)state;
    dbt_exec(c, "CREATE TABLE test_db_random.accounts "
                "(id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))");
    dbt_exec(c, "INSERT INTO test_db_random.accounts SELECT g, 1000 FROM generate_series(1, 16) g");
    dbt_exec(c, "CREATE TABLE test_db_random.ledger "
                "(op int PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount bigint NOT NULL)");
    PQfinish(c);
    if (faults && pgp_start(&proxy, pgp_url_port(dbt_url())) != 0)
        fail_msg("cannot start the proxy");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (faults)
        pgp_stop(&proxy);
    dbt_schema_drop("test_db_random");
    return 0;
}

static bool bank_finished(void *arg)
{
    bank *b = arg;

    return b->finished == ops;
}

/* --- faults at random moments ------------------------------------------------------------- */

typedef struct chaos {
    uv_timer_t timer;
    bank *b;
    bool healing; /* the next tick ends the current fault */
    int blackholes;
    int resets;
    int dropped;
    int delays;
} chaos;

static void chaos_tick(uv_timer_t *t)
{
    chaos *ch = rt_container_of(t, chaos, timer);
    bank *b = ch->b;
    uint64_t r = next_rand(b) % 100;

    /* A short run may draw only delays: after one, the next fault breaks something for sure. */
    if (ch->blackholes + ch->resets + ch->dropped == 0 && ch->delays > 0)
        r = 40; /* a reset */
    if (ch->healing) {
        assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
        assert_int_equal(pgp_cmd(&proxy, "delay 0"), 0);
        ch->healing = false;
        uv_timer_start(t, chaos_tick, 100 + next_rand(b) % 400, 0);
        return;
    }
    if (r < 30) {
        assert_int_equal(pgp_cmd(&proxy, "blackhole"), 0);
        ch->blackholes++;
        ch->healing = true;
        uv_timer_start(t, chaos_tick, 200 + next_rand(b) % 1000, 0);
        return;
    }
    if (r < 50) {
        assert_int_equal(pgp_cmd(&proxy, "reset"), 0);
        assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
        ch->resets++;
    } else if (r < 80) {
        assert_int_equal(pgp_cmd(&proxy, "drop_commit 1"), 0);
        ch->dropped++;
    } else {
        assert_int_equal(pgp_cmd(&proxy, "delay 20"), 0);
        ch->delays++;
        ch->healing = true;
        uv_timer_start(t, chaos_tick, 200 + next_rand(b) % 800, 0);
        return;
    }
    uv_timer_start(t, chaos_tick, 100 + next_rand(b) % 400, 0);
}

/* Closes the chaos timer and the pause timer. Both live in memory the test frees or returns
 * from (also when it fails): their closes must be over first. */
static void chaos_stop(dbt_fixture *fx, chaos *ch)
{
    int closed = 0;

    ch->timer.data = &closed;
    ch->b->pause.data = &closed;
    uv_close((uv_handle_t *)&ch->timer, count_closed);
    uv_close((uv_handle_t *)&ch->b->pause, count_closed);
    while (closed < 2)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
}

static void check_ledger(bank *b)
{
    PGconn *c = dbt_plain();
    PGresult *r;
    int64_t moved[ACCOUNTS + 1];
    int in_unknown = 0;

    memset(moved, 0, sizeof(moved));
    r = PQexec(c, "SELECT op, src, dst, amount FROM test_db_random.ledger");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(r); i++) {
        int id = atoi(PQgetvalue(r, i, 0));
        int src = atoi(PQgetvalue(r, i, 1));
        int dst = atoi(PQgetvalue(r, i, 2));
        int64_t amount = strtoll(PQgetvalue(r, i, 3), NULL, 10);

        assert_true(id >= 1 && id <= ops);
        if (b->told[id] == TOLD_NOT_COMMITTED || b->told[id] == TOLD_NONE)
            fail_msg("operation %d was told it did not commit, but its transfer is there", id);
        in_unknown += b->told[id] == TOLD_UNKNOWN;
        b->told[id] = b->told[id] == TOLD_COMMITTED ? TOLD_NONE : b->told[id]; /* F2: seen */
        moved[src] -= amount;
        moved[dst] += amount;
    }
    PQclear(r);
    for (int id = 1; id <= ops; id++) {
        if (b->told[id] == TOLD_COMMITTED)
            fail_msg("operation %d was told it committed, but its transfer is not there", id);
    }
    for (int i = 1; i <= ACCOUNTS; i++) {
        char sql[96];

        snprintf(sql, sizeof(sql), "SELECT balance FROM test_db_random.accounts WHERE id = %d", i);
        assert_int_equal(dbt_scalar(c, sql), 1000 + moved[i]); /* F3 */
    }
    fprintf(stderr, "test_db_random: %d transfer(s) of unknown outcome did commit\n", in_unknown);
    PQfinish(c);
}

static void test_random_operations_keep_the_bank_invariant(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(4, 4);
    const char *seed_env = getenv("HS_TEST_SEED");
    char url[256];
    bank *bp = calloc(1, sizeof(*bp));
    bank *b = bp;
    chaos ch;
    PGconn *c;
    rt_db_stats st;

    assert_non_null(bp);
    b->fx = fx;
    b->rng = seed_env != NULL ? strtoull(seed_env, NULL, 10) : uv_hrtime();
    if (b->rng == 0)
        b->rng = 1;
    fprintf(stderr, "test_db_random: HS_TEST_SEED=%llu%s\n", (unsigned long long)b->rng,
            faults ? " --faults" : "");
    for (int i = 1; i <= ACCOUNTS; i++)
        b->expected[i] = 1000;
    cfg.queue_limit = OPS;
    if (faults) {
        pgp_url(&proxy, dbt_url(), url, sizeof(url));
        cfg.conninfo = url;
        /* Short bounds keep a swallowed COMMIT answer or a hung cancel from costing seconds. */
        cfg.commit_timeout_ms = 2000;
        cfg.cancel_timeout_ms = 1000;
    }
    dbt_open(fx, &cfg);
    memset(&ch, 0, sizeof(ch));
    ch.b = b;
    if (faults) {
        uv_timer_init(&fx->loop, &ch.timer);
        uv_timer_start(&ch.timer, chaos_tick, 200, 0);
        uv_timer_init(&fx->loop, &b->pause);
    }
    for (int i = 0; i < PARALLEL; i++)
        op_start_next(b);
    if (!dbt_run_until(fx, bank_finished, b, 240000)) {
        rt_db_stats_get(fx->db, &st);
        for (int i = 1; i <= ops; i++) {
            const op *o = b->live[i];

            if (o == NULL)
                continue;
            fprintf(stderr,
                    "test_db_random: operation %d (kind %d, %s deadline) never completed: "
                    "%s, %d statement(s) done, %d round trip(s), COMMIT %s\n",
                    o->id, o->kind, o->deadline.at == RT_NO_DEADLINE ? "no" : "a",
                    o->kind == OP_READ ? "a query" : "a transaction",
                    o->kind == OP_READ ? 0 : (int)o->u.tx.step,
                    o->kind == OP_READ ? 0 : (int)o->u.tx.round_trips,
                    o->kind != OP_READ && o->u.tx.commit_sent ? "sent" : "not sent");
        }
        fprintf(stderr,
                "test_db_random: pool: %zu idle, %zu busy, %zu connecting, %zu broken; %zu "
                "queued, %zu in flight\n",
                st.conns_idle, st.conns_busy, st.conns_connecting, st.conns_broken, st.queue_depth,
                st.in_flight);
        if (faults)
            chaos_stop(fx, &ch);
        b->stopped = true;
        fail_msg("only %d of %d operations finished", b->finished, ops);
    }
    if (faults) {
        chaos_stop(fx, &ch);
        assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
        assert_int_equal(pgp_cmd(&proxy, "delay 0"), 0);
        assert_int_equal(pgp_cmd(&proxy, "drop_commit 0"), 0);
        fprintf(stderr,
                "test_db_random: faults: %d black holes, %d resets, %d COMMIT answers dropped "
                "(%ld seen), %d delays\n",
                ch.blackholes, ch.resets, ch.dropped, pgp_stat(&proxy, "commit_answers_dropped"),
                ch.delays);
    }
    fprintf(stderr,
            "test_db_random: committed %d, cancelled %d, refused %d, reads %d, unknown %d, "
            "lost %d, other %d\n",
            b->committed, b->cancelled, b->sql_errors, b->reads_ok, b->unknown, b->lost, b->other);
    assert_int_equal(b->bad_reads, 0); /* R2 */
    if (b->other > 0)
        fail_msg("%d operation(s) ended with a status the driver never gives here, the last %s",
                 b->other, uv_err_name(b->other_status));
    /* The mix really exercised both paths. */
    assert_true(b->committed > ops / 10);
    assert_true(b->cancelled > ops / 20);
    if (faults) {
        check_ledger(b); /* F2, F3 */
        assert_true(ch.blackholes + ch.resets + ch.dropped > 0);
    } else {
        assert_int_equal(b->unknown, 0); /* R3 */
        c = dbt_plain();
        for (int i = 1; i <= ACCOUNTS; i++) {
            char sql[96];

            snprintf(sql, sizeof(sql), "SELECT balance FROM test_db_random.accounts WHERE id = %d",
                     i);
            assert_int_equal(dbt_scalar(c, sql), b->expected[i]); /* R3 */
        }
        PQfinish(c);
    }
    c = dbt_plain();
    assert_int_equal(dbt_scalar(c, "SELECT sum(balance) FROM test_db_random.accounts"),
                     ACCOUNTS * 1000);
    PQfinish(c);
    /* R4, F4: the cleanups (rollbacks after cancellation, reconnections after faults) finish
     * shortly after the last task. */
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, faults ? 30000 : 5000));
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.queue_depth, 0);
    fprintf(stderr, "test_db_random: connections lost %llu (expired bounds %llu)\n",
            (unsigned long long)st.conns_lost, (unsigned long long)st.conns_expired);
    if (!faults)
        assert_int_equal(st.conns_lost, st.conns_expired); /* R4 */
    free(bp);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_random_operations_keep_the_bank_invariant),
    };

    if (argc > 1 && strcmp(argv[1], "--faults") == 0) {
        faults = true;
        ops = 2000;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

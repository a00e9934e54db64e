/* SPDX-License-Identifier: MIT */
/*
 * p4_transfers_after.c - pattern 4, `after`: POST /after/transfers, the whole transfer in one
 * transaction raced against the request's signal, with idempotency keys.
 *
 * The rt_race is the one listener of req->signal (deadline, shutdown) and forwards it to the
 * rt_db_tx: before COMMIT is sent a cancellation abandons the transaction (the pool rolls it
 * back); after, COMMIT's answer is awaited, bounded by the pool's commit timeout. On a tie the
 * signal wins, so a request that saw its deadline pass answers 504 even if a refusal or a replay
 * was decided a moment earlier; except once COMMIT is sent, when the answer is what the database
 * did: acknowledged 200, refused the refusal, unanswered 503 commit_outcome_unknown (the client
 * retries with its Idempotency-Key and gets the stored answer if it committed). Never a 504,
 * which would contradict a database that may well show the transfer.
 *
 *   no key:   [BEGIN, MOVE] -> [delay: SLEEP] -> [COMMIT]
 *   key:      [BEGIN, LOCK, LOOKUP] -> [MOVE] -> [delay: SLEEP] -> [STORE, COMMIT]
 *   replay:   [BEGIN, LOCK, LOOKUP] -> [COMMIT]   (a keyed refusal likewise ends in a COMMIT)
 *
 * Brackets are round trips (pipelined; one statement at a time with DB_TRANSACTION_POOLER=on).
 * MOVE is the whole transfer in one statement: it locks both rows in id order (FOR NO KEY UPDATE:
 * opposite transfers cannot deadlock, and the FOR KEY SHARE of a foreign key check, a `before`
 * transfer's among them, neither blocks it nor closes a cycle with it), checks both exist and
 * `from` holds enough, and only then writes; the step callback answers 404/409 (rolled back) or
 * goes on. SLEEP, the delay_ms, runs with the rows locked and nothing committed.
 *
 * LOCK (pg_try_advisory_xact_lock on the key) makes a concurrent request with the same key a 409
 * at once instead of a queue. LOOKUP replays a stored response (same body hash) or refuses the
 * key (422); pipelined behind LOCK, its snapshot is taken with the lock held, so it sees the
 * response of the key's previous holder. MOVE waits for LOOKUP: behind a failed LOCK it would
 * queue on the rows the holder has locked. STORE writes the response in the money's transaction,
 * so a stored response exists exactly when the transfer committed.
 */
#include "handlers/p4_transfers_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/race.h"
#include "service/log.h"

/* A transaction the step callback abandoned on purpose, with the response already chosen. */
#define ANSWERED UV_EALREADY

static const char sql_lock[] = "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text, 0))";
static const char sql_lookup[] =
    "SELECT request_hash = md5($2::text), response_status, response_body "
    "FROM idempotency_keys WHERE key = $1::text";
/* The whole transfer ($1 from, $2 to, $3 amount): returns `from`'s balance (NULL: no such
 * account), whether `to` exists, and the new transfer's id (NULL: nothing was moved). Every
 * part reads `acc`, so both rows are locked, in id order, before anything is written; the
 * aggregate reads all of `acc`, so both are locked even when one is missing. */
static const char sql_move[] =
    "WITH acc AS (SELECT id, balance FROM accounts WHERE id IN ($1::bigint, $2::bigint) "
    "ORDER BY id FOR NO KEY UPDATE), "
    "chk AS (SELECT max(balance) FILTER (WHERE id = $1::bigint) AS from_balance, "
    "coalesce(bool_or(id = $2::bigint), false) AS to_found FROM acc), "
    "go AS (SELECT 1 FROM chk WHERE to_found AND from_balance >= $3::bigint), "
    "debit AS (UPDATE accounts SET balance = balance - $3::bigint "
    "WHERE id = $1::bigint AND EXISTS (SELECT 1 FROM go)), "
    "credit AS (UPDATE accounts SET balance = balance + $3::bigint "
    "WHERE id = $2::bigint AND EXISTS (SELECT 1 FROM go)), "
    "xfer AS (INSERT INTO transfers (from_account, to_account, amount, variant) "
    "SELECT $1::bigint, $2::bigint, $3::bigint, 'after' FROM go RETURNING id), "
    "legs AS (INSERT INTO ledger (transfer_id, account_id, delta) "
    "SELECT id, $1::bigint, -$3::bigint FROM xfer UNION ALL SELECT id, $2::bigint, $3::bigint "
    "FROM xfer) "
    "SELECT from_balance, to_found, (SELECT id FROM xfer) FROM chk";
static const char sql_store[] =
    "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body) "
    "VALUES ($1::text, md5($2::text), 200, $3::text)";
static const char sql_sleep[] = HS_XFER_SQL_SLEEP;

/* The statement whose result the step callback sees next. */
enum after_stage { A_LOCK = 0, A_LOOKUP, A_MOVE, A_SLEEP, A_COMMIT };

typedef struct xfer_after {
    rt_task task;
    rt_race race;
    rt_db_tx tx;
    hs_xfer_state *t;
    svc_request *req;
    hs_xfer_args a;
    int stage;
    /* Parameters of the statements pipelined behind BEGIN: borrowed until completion. */
    const char *lock_p[1];
    const char *lookup_p[2];
    const char *move_p[3];
    int64_t transfer_id;
    char *body; /* the 200 body (owned), built before STORE so the stored copy is identical */
    /* What the step callback decided when it abandoned the transaction (status ANSWERED). */
    int answer_status;
    const char *answer_code;
    char answer_msg[128];
    char *replay; /* owned: a stored response body */
    bool settled; /* the answer was decided with the key's lock held (after_answer) */
    uint64_t started;
} xfer_after;

static void after_exec(xfer_after *x, int stage, const char *name, const char *sql, int n,
                       const char *const *params)
{
    x->stage = stage;
    rt_db_tx_exec(&x->tx, name, sql, n, params);
}

/*
 * Ends a transaction whose answer is already chosen and that wrote nothing. Holding the key's
 * lock, it commits (nothing to make durable) and answers once the COMMIT is back, so a client
 * that sends the same key as soon as it hears the answer finds the key free; left to the pool's
 * ROLLBACK, the lock would outlive the answer by a round trip (longer behind a pooler), and that
 * client would be told 409 idempotency_in_progress. Without the lock, the pool rolls back.
 */
static void after_answer(xfer_after *x)
{
    if (x->a.key != NULL && x->stage != A_LOCK) {
        x->settled = true;
        x->stage = A_COMMIT;
        rt_db_tx_commit(&x->tx);
    } else {
        rt_db_tx_rollback(&x->tx, ANSWERED);
    }
}

static void after_refuse(xfer_after *x, int status, const char *code, const char *msg)
{
    x->answer_status = status;
    x->answer_code = code;
    snprintf(x->answer_msg, sizeof(x->answer_msg), "%s", msg);
    after_answer(x);
}

/* The transfer is in place, the response built: COMMIT (behind STORE with a key). */
static void after_finish(xfer_after *x)
{
    if (x->a.key != NULL) {
        const char *p[3] = {x->a.key, x->a.canon, x->body};

        after_exec(x, A_COMMIT, "hs_xfer_store", sql_store, 3, p);
    }
    x->stage = A_COMMIT;
    rt_db_tx_commit(&x->tx);
}

/* MOVE came back: the rows were locked (in id order), and the money moved unless refused. */
static void after_check_move(xfer_after *x, const rt_db_result *r)
{
    int64_t from_balance = -1;
    bool to_found = false;

    if (rt_db_result_rows(r) != 1 || rt_db_result_bool(r, 0, 1, &to_found) < 0) {
        rt_db_tx_rollback(&x->tx, UV_EPROTO);
        return;
    }
    if (!rt_db_result_is_null(r, 0, 0) && rt_db_result_int64(r, 0, 0, &from_balance) < 0) {
        rt_db_tx_rollback(&x->tx, UV_EPROTO);
        return;
    }
    if (from_balance < 0 || !to_found || from_balance < x->a.amount) {
        x->answer_status = hs__xfer_refusal(&x->a, from_balance >= 0, to_found, &x->answer_code,
                                            x->answer_msg, sizeof(x->answer_msg));
        after_answer(x);
    } else if (rt_db_result_int64(r, 0, 2, &x->transfer_id) < 0) {
        rt_db_tx_rollback(&x->tx, UV_EPROTO);
    } else if ((x->body = hs__xfer_success_body(&x->a, x->transfer_id)) == NULL) {
        rt_db_tx_rollback(&x->tx, UV_ENOMEM);
    } else if (x->a.delay_ms > 0) {
        const char *p[1] = {x->a.delay_s};

        after_exec(x, A_SLEEP, "hs_xfer_sleep", sql_sleep, 1, p);
    } else {
        after_finish(x);
    }
}

/* LOOKUP came back: a stored response is replayed when the body is the same. */
static void after_check_key(xfer_after *x, const rt_db_result *r)
{
    bool same;
    int64_t status;

    if (rt_db_result_rows(r) == 0) {
        /* The key is new and now claimed: the transfer goes out. */
        after_exec(x, A_MOVE, "hs_xfer_move", sql_move, 3, x->move_p);
        return;
    }
    if (rt_db_result_bool(r, 0, 0, &same) < 0 || rt_db_result_int64(r, 0, 1, &status) < 0) {
        rt_db_tx_rollback(&x->tx, UV_EPROTO);
        return;
    }
    if (!same) {
        after_refuse(x, 422, "idempotency_key_reused",
                     "this Idempotency-Key was used with a different body");
        return;
    }
    x->replay = strdup(rt_db_result_text(r, 0, 2));
    if (x->replay == NULL) {
        rt_db_tx_rollback(&x->tx, UV_ENOMEM);
        return;
    }
    x->answer_status = (int)status;
    after_answer(x);
}

static void after_step(rt_db_tx *tx)
{
    xfer_after *x = rt_container_of(tx, xfer_after, tx);
    const rt_db_result *r = &tx->result;

    switch (x->stage) {
    case A_LOCK: {
        bool got;

        if (rt_db_result_bool(r, 0, 0, &got) < 0) {
            rt_db_tx_rollback(tx, UV_EPROTO);
        } else if (!got) {
            after_refuse(x, 409, "idempotency_in_progress",
                         "a request with this Idempotency-Key is still running");
        } else {
            x->stage = A_LOOKUP; /* pipelined behind: its result comes next */
        }
        break;
    }
    case A_LOOKUP:
        after_check_key(x, r);
        break;
    case A_MOVE:
        after_check_move(x, r);
        break;
    case A_SLEEP:
        after_finish(x);
        break;
    default:
        rt_db_tx_rollback(tx, UV_EPROTO);
        break;
    }
}

static void after_log(const xfer_after *x, svc_log_level level, const char *event, int status)
{
    static const char *const outcomes[] = {"none", "committed", "rolled_back", "unknown"};
    svc_log_line l;

    if (!svc_log_begin(&l, level, event))
        return;
    svc_request_log_ids(&l, x->req);
    svc_log_str(&l, "variant", "after");
    svc_log_str(&l, "reason", uv_err_name(status));
    svc_log_str(&l, "outcome", outcomes[x->tx.outcome]);
    svc_log_int(&l, "statements", x->tx.step);
    svc_log_int(&l, "round_trips", x->tx.round_trips);
    svc_log_end(&l);
}

/* The race has ended: turn what the database did, and what the signal did, into the answer. */
static void after_on_race(rt_task *t, int status)
{
    xfer_after *x = rt_container_of(t, xfer_after, race.task);
    svc_request *req = x->req;

    svc_request_add_db_time(req, uv_hrtime() - x->started);
    if (x->settled) {
        /* Decided before the COMMIT of a transaction that wrote nothing: the decision stands. */
        status = ANSWERED;
    } else if (x->race.signal_won && x->tx.commit_sent) {
        /* Once COMMIT is sent the transaction's own status is the answer (see the top). */
        after_log(x, SVC_LOG_INFO, "transfer_cancel_after_commit_sent", status);
        status = x->race.inner_status;
    }
    if (x->tx.outcome == RT_DB_TX_COMMITTED && !x->settled) {
        hs__xfer_respond_text(req, 200, x->body);
        x->body = NULL;
        status = 0;
    } else if (x->tx.outcome == RT_DB_TX_UNKNOWN && !x->settled) {
        (*x->t->outcome_unknown)++;
        after_log(x, SVC_LOG_ERROR, "transfer_outcome_unknown", status);
        svc_respond_error(req, 503, "commit_outcome_unknown",
                          "COMMIT was sent but its answer never came; retry with the same "
                          "Idempotency-Key to learn the outcome");
    } else if (x->race.signal_won && !x->tx.commit_sent && !x->settled) {
        (*x->t->rolled_back)++;
        after_log(x, SVC_LOG_WARN, "transfer_cancelled", status);
        svc_respond_uv_error(req, status);
    } else if (status == ANSWERED && x->replay != NULL) {
        (*x->t->replayed)++;
        hs__xfer_respond_text(req, x->answer_status, x->replay);
        x->replay = NULL;
        svc_respond_header(req, "Idempotent-Replayed", "true");
        status = 0;
    } else if (status == ANSWERED) {
        svc_respond_error(req, x->answer_status, x->answer_code, "%s", x->answer_msg);
        status = 0;
    } else if (status == RT_DB_ESQL && strncmp(x->tx.result.sqlstate, "40", 2) == 0) {
        /* SQLSTATE class 40, transaction rollback (a deadlock with another client's locks, a
         * serialization failure): the database undid the whole transaction, so nothing moved and
         * the same request can simply be sent again. */
        hs__xfer_log_db_error(req, "after", &x->tx.result);
        svc_respond_error(req, 503, "unavailable",
                          "the database rolled this transfer back to settle a conflict with "
                          "another transaction; nothing moved, retry");
        svc_respond_header(req, "Retry-After", "1");
    } else {
        if (status == RT_DB_ESQL)
            hs__xfer_log_db_error(req, "after", &x->tx.result);
        svc_respond_uv_error(req, status);
    }
    rt_task_release(&x->tx.task);
    rt_task_release(t);
    rt_task_complete(&x->task, status);
}

static int after_start(rt_task *t)
{
    xfer_after *x = rt_container_of(t, xfer_after, task);
    rt_runtime *rt = x->req->app->rt;

    rt_db_tx_init(&x->tx, x->req->app->db, NULL, after_step, NULL);
    if (x->a.key != NULL) {
        x->lock_p[0] = x->a.key;
        x->lookup_p[0] = x->a.key;
        x->lookup_p[1] = x->a.canon;
        rt_db_tx_pipeline(&x->tx, "hs_xfer_lock", sql_lock, 1, x->lock_p);
        rt_db_tx_pipeline(&x->tx, "hs_xfer_lookup", sql_lookup, 2, x->lookup_p);
        x->stage = A_LOCK;
    } else {
        rt_db_tx_pipeline(&x->tx, "hs_xfer_move", sql_move, 3, x->move_p);
        x->stage = A_MOVE;
    }
    rt_race_init(&x->race, rt, &x->tx.task, x->req->signal);
    x->started = uv_hrtime();
    rt_task_start(&x->race.task, NULL, after_on_race);
    return 0;
}

static void after_release(rt_task *t)
{
    xfer_after *x = rt_container_of(t, xfer_after, task);

    free(x->body);
    free(x->replay);
    free(x);
}

/* No cancel: the race listens to the request's signal, which is what would cancel this task. */
static const rt_task_vtable after_vt = {
    .name = "transfer.after",
    .start = after_start,
    .cancel = NULL,
    .release = after_release,
};

rt_task *hs__xfer_after_new(hs_xfer_state *t, svc_request *req, const hs_xfer_args *a)
{
    rt_task *task = NULL;
    xfer_after *x = hs__task_new(req, &after_vt, sizeof(*x), &task);

    if (x != NULL) {
        x->t = t;
        x->req = req;
        x->a = *a;
        x->move_p[0] = x->a.from_s;
        x->move_p[1] = x->a.to_s;
        x->move_p[2] = x->a.amount_s;
    }
    return task;
}

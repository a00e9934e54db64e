/* SPDX-License-Identifier: MIT */
/*
 * p4_transfers.c - pattern 4, cancellation-aware writes: POST /{before,after}/transfers (the
 * routes and their validation are the same for both) and GET /accounts/invariant. A transfer
 * (debit, credit, transfers row, two ledger legs) keeps the invariant only if all of it happens
 * or none of it does, whatever interrupts the request (deadline 504, shutdown 503).
 *
 * before sends the steps as separate autocommit statements, each listening to the request's
 * signal: a cancellation between debit and credit (the delay_ms gap) just stops, and the money
 * has left one account and never reached the other. That is the documented failure; otherwise
 * the route is careful (an unknown account is refused before anything is debited) and
 * memory-safe. after: one transaction raced against the signal (its section says how).
 */
#include "handlers/patterns.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/kit_int.h"
#include "runtime/race.h"
#include "service/log.h"
#include "service/metrics.h"

#define AMOUNT_MAX 1000000
#define KEY_MAX    128

static const char content_type_json[] = "application/json; charset=utf-8";

/* --- statements ------------------------------------------------------------------------------- */

/* before, step 1: the debit refuses an unknown destination too, so that a 404 never leaves
 * money debited: the only partial transfer this route leaves is the documented one. */
static const char sql_before_debit[] =
    "UPDATE accounts SET balance = balance - $1::bigint "
    "WHERE id = $2::bigint AND balance >= $1::bigint "
    "AND EXISTS (SELECT 1 FROM accounts WHERE id = $3::bigint) RETURNING balance";
static const char sql_exists[] = "SELECT id FROM accounts WHERE id IN ($1::bigint, $2::bigint)";
static const char sql_leg[] =
    "INSERT INTO ledger (transfer_id, account_id, delta) VALUES ($1::bigint, $2::bigint, "
    "$3::bigint)";

static const char sql_credit[] =
    "UPDATE accounts SET balance = balance + $1::bigint WHERE id = $2::bigint";
static const char sql_transfer[] =
    "INSERT INTO transfers (from_account, to_account, amount, variant) "
    "VALUES ($1::bigint, $2::bigint, $3::bigint, $4::text) RETURNING id";

/* Both variants' delay_ms: one text, so that they share a prepared name (hs_xfer_sleep). */
static const char sql_sleep[] = "SELECT pg_sleep($1::float8 / 1000)";

/* after: LOCK, LOOKUP, MOVE and STORE (see its section). */
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

/* One snapshot for all three numbers, so a transfer in flight is counted either whole or not. */
static const char sql_invariant[] =
    "SELECT (SELECT count(*) FROM accounts), (SELECT coalesce(sum(balance), 0) FROM accounts), "
    "(SELECT count(*) FROM transfers t LEFT JOIN "
    "(SELECT transfer_id, count(*) AS n, sum(delta) AS s FROM ledger GROUP BY transfer_id) l "
    "ON l.transfer_id = t.id WHERE l.n IS DISTINCT FROM 2 OR l.s IS DISTINCT FROM 0)";

/* --- shared: the request, the answers, the metrics -------------------------------------------- */

/* The rows' state: one per process, on the root scope. */
typedef struct xfer_state {
    uint64_t *cancelled_before; /* cancelled mid-way: what was done stays done */
    uint64_t *rolled_back;      /* after: cancelled before COMMIT, rolled back */
    uint64_t *outcome_unknown;  /* after: COMMIT sent, its answer never came (503) */
    uint64_t *replayed;         /* after: answered from idempotency_keys */
} xfer_state;

/* A transfer request, validated, with the text forms the statements take as parameters. */
typedef struct xfer_args {
    int64_t from;
    int64_t to;
    int64_t amount;
    int64_t delay_ms;
    const char *key; /* borrowed from the request; NULL without Idempotency-Key */
    char from_s[HS_INT_TEXT];
    char to_s[HS_INT_TEXT];
    char amount_s[HS_INT_TEXT];
    char neg_amount_s[HS_INT_TEXT];
    char delay_s[HS_INT_TEXT];
    char canon[160]; /* the body as hashed for the key: fixed key order, defaults filled in */
} xfer_args;

/* What both variants' tasks begin with, filled in by the handler. */
typedef struct xfer {
    rt_task task;
    xfer_state *t;
    svc_request *req;
    xfer_args a;
    int64_t transfer_id;
    uint64_t started; /* before: the step's send; after: the race's start */
} xfer;

/* Registers the pattern's series at startup, so they are in /metrics before the first request. */
static int counters_register(xfer_state *t, svc_app *app)
{
    static const char cancelled[] = "hs_transfers_cancelled_total";
    static const char help[] = "Transfers cancelled by their deadline or by shutdown.";
    const svc_metrics_series series[] = {
        {&t->cancelled_before, cancelled, "variant=\"before\",effect=\"left_as_is\"", help, false},
        {&t->rolled_back, cancelled, "variant=\"after\",effect=\"rolled_back\"", help, false},
        {&t->replayed, "hs_transfers_replayed_total", "",
         "Transfers answered from a stored Idempotency-Key response.", false},
        {&t->outcome_unknown, "hs_commits_outcome_unknown_total", "",
         "Transfers whose COMMIT was sent but never answered (503 commit_outcome_unknown).", false},
    };

    return SVC_METRICS_REGISTER(app->metrics, series);
}

/* The 200 body of a committed transfer, as text (new, free it): it is both sent and stored for
 * replays, byte for byte. NULL without memory. */
static char *success_body(const xfer_args *a, int64_t transfer_id)
{
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:s}", "transfer_id", (json_int_t)transfer_id,
                          "from", (json_int_t)a->from, "to", (json_int_t)a->to, "amount",
                          (json_int_t)a->amount, "status", "committed");
    char *text;

    if (o == NULL)
        return NULL;
    text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

/* The refusal of a transfer whose account is missing (404) or, both found, short (409): returns
 * the status, sets *code (a literal) and writes the message into msg (size bytes). */
static int refusal(const xfer_args *a, bool from_found, bool to_found, const char **code, char *msg,
                   size_t size)
{
    if (!from_found || !to_found) {
        *code = "not_found";
        snprintf(msg, size, "account %" PRId64 " does not exist", from_found ? a->to : a->from);
        return 404;
    }
    *code = "insufficient_funds";
    snprintf(msg, size, "account %" PRId64 " holds less than %" PRId64, a->from, a->amount);
    return 409;
}

/* Sets a JSON response from text, which it steals (even NULL, which means no memory left and
 * becomes a 503): callers hand over the body they already own instead of copying it. */
static void respond_text(svc_request *req, int status, char *text)
{
    if (text == NULL)
        svc_respond_uv_error(req, UV_ENOMEM);
    else
        svc_respond_buffer(req, status, content_type_json, text, strlen(text));
}

/* Logs a statement the server refused (SQLSTATE and message), which the client never sees. */
static void log_db_error(const svc_request *req, const char *variant, const rt_db_result *r)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_WARN, "db_error"))
        return;
    svc_request_log_ids(&l, req);
    svc_log_str(&l, "route", "transfers");
    svc_log_str(&l, "variant", variant);
    svc_log_str(&l, "sqlstate", r->sqlstate);
    svc_log_str(&l, "detail", rt_db_result_error(r));
    svc_log_end(&l);
}

/* --- before: separate autocommit statements --------------------------------------------------- */

/* The statements' parameters, by what they hold (xfer_before.v). */
enum { P_AMOUNT, P_FROM, P_TO, P_NEG_AMOUNT, P_DELAY, P_ID, P_VARIANT, P_N };

/* The chain in order; before_next branches past the check and skips the sleep. */
enum before_step { B_DEBIT, B_EXISTS, B_TRANSFER, B_LEG_FROM, B_SLEEP, B_CREDIT, B_LEG_TO, B_N };

static const struct before_stmt {
    const char *step; /* transfer_cancelled's at_step */
    const char *name; /* the prepared statement */
    const char *sql;
    int n;
    int p[4]; /* $1..$n, as P_* */
} before_stmts[B_N] = {
    {"debit", "hs_xfer_before_debit", sql_before_debit, 3, {P_AMOUNT, P_FROM, P_TO}},
    {"check", "hs_xfer_exists", sql_exists, 2, {P_FROM, P_TO}},
    {"transfer", "hs_xfer_transfer", sql_transfer, 4, {P_FROM, P_TO, P_AMOUNT, P_VARIANT}},
    {"leg_from", "hs_xfer_leg", sql_leg, 3, {P_ID, P_FROM, P_NEG_AMOUNT}},
    {"sleep", "hs_xfer_sleep", sql_sleep, 1, {P_DELAY}},
    {"credit", "hs_xfer_credit", sql_credit, 2, {P_AMOUNT, P_TO}},
    {"leg_to", "hs_xfer_leg", sql_leg, 3, {P_ID, P_TO, P_AMOUNT}},
};

typedef struct xfer_before {
    xfer x;
    rt_db_query q[B_N]; /* one per step: each is released in its own callback, never reused */
    const char *v[P_N];
    bool debited;
    char id_s[HS_INT_TEXT];
} xfer_before;

static void before_on_step(rt_task *t, int status);

static void before_send(xfer_before *b, int step)
{
    const struct before_stmt *s = &before_stmts[step];
    rt_db_query *q = &b->q[step];
    const char *params[4];

    for (int i = 0; i < s->n; i++)
        params[i] = b->v[s->p[i]];
    rt_db_query_init(q, b->x.req->app->db, s->sql, s->n, params, NULL);
    rt_db_query_prepare_as(q, s->name);
    q->task.data = b;
    b->x.started = uv_hrtime();
    /* Each statement listens to the request's signal on its own: a cancellation stops the
     * chain wherever it is, and what was already done stays done. */
    rt_task_start(&q->task, b->x.req->signal, before_on_step);
}

static void before_stopped(xfer_before *b, int step, int status)
{
    svc_log_line l;

    (*b->x.t->cancelled_before)++;
    if (svc_log_begin(&l, SVC_LOG_WARN, "transfer_cancelled")) {
        svc_request_log_ids(&l, b->x.req);
        svc_log_str(&l, "variant", "before");
        svc_log_str(&l, "reason", uv_err_name(status));
        svc_log_str(&l, "at_step", before_stmts[step].step);
        svc_log_int(&l, "transfer_id", b->x.transfer_id);
        /* Whether the statement that was interrupted took effect is unknown; what is known is
         * that a confirmed debit was never matched. */
        svc_log_str(&l, "left", b->debited ? "partial_transfer" : "no_confirmed_change");
        svc_log_end(&l);
    }
}

/* The debit changed nothing: an account is missing or short. */
static void before_respond_missing(xfer_before *b, const rt_db_result *r)
{
    bool from_found = false;
    bool to_found = false;
    const char *code;
    char msg[128];
    int status;

    for (int i = 0; i < rt_db_result_rows(r); i++) {
        int64_t id;

        if (rt_db_result_int64(r, i, 0, &id) == 0) {
            from_found = from_found || id == b->x.a.from;
            to_found = to_found || id == b->x.a.to;
        }
    }
    status = refusal(&b->x.a, from_found, to_found, &code, msg, sizeof(msg));
    svc_respond_error(b->x.req, status, code, "%s", msg);
}

/* The step after `step`, which succeeded; B_N when the chain is over and the response set. */
static int before_next(xfer_before *b, int step, const rt_db_result *r)
{
    switch (step) {
    case B_DEBIT:
        b->debited = rt_db_result_rows(r) > 0;
        return b->debited ? B_TRANSFER : B_EXISTS;
    case B_EXISTS:
        before_respond_missing(b, r);
        return B_N;
    case B_TRANSFER:
        if (rt_db_result_int64(r, 0, 0, &b->x.transfer_id) < 0) {
            svc_respond_uv_error(b->x.req, UV_EPROTO);
            return B_N;
        }
        hs__int_text(b->id_s, b->x.transfer_id);
        return B_LEG_FROM;
    case B_LEG_FROM:
        return b->x.a.delay_ms > 0 ? B_SLEEP : B_CREDIT;
    case B_LEG_TO:
        respond_text(b->x.req, 200, success_body(&b->x.a, b->x.transfer_id));
        return B_N;
    default:
        return step + 1;
    }
}

static void before_on_step(rt_task *t, int status)
{
    xfer_before *b = t->data;
    int step = (int)(rt_container_of(t, rt_db_query, task) - b->q);

    svc_request_add_db_time(b->x.req, uv_hrtime() - b->x.started);
    if (status < 0) {
        if (status == UV_ECANCELED || status == UV_ETIMEDOUT)
            before_stopped(b, step, status);
        else if (status == RT_DB_ESQL)
            log_db_error(b->x.req, "before", &b->q[step].result);
        svc_respond_uv_error(b->x.req, status);
        rt_task_complete(&b->x.task, status);
    } else if ((step = before_next(b, step, &b->q[step].result)) < B_N) {
        before_send(b, step);
    } else {
        rt_task_complete(&b->x.task, 0);
    }
    rt_task_release(t);
}

static int before_start(rt_task *t)
{
    xfer_before *b = rt_container_of(t, xfer_before, x.task);
    const xfer_args *a = &b->x.a;

    b->v[P_AMOUNT] = a->amount_s;
    b->v[P_FROM] = a->from_s;
    b->v[P_TO] = a->to_s;
    b->v[P_NEG_AMOUNT] = a->neg_amount_s;
    b->v[P_DELAY] = a->delay_s;
    b->v[P_ID] = b->id_s;
    b->v[P_VARIANT] = "before";
    before_send(b, B_DEBIT);
    return 0;
}

/* No cancel: every statement listens to the request's signal, which is also what would cancel
 * this task, and the chain ends with the statement that was stopped. */
static const rt_task_vtable before_vt = {
    .name = "transfer.before",
    .start = before_start,
    .cancel = NULL,
    .release = hs__task_free,
};

/* --- after: one transaction raced against the signal ------------------------------------------ */

/*
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
 * MOVE (sql_move) locks both rows FOR NO KEY UPDATE: opposite transfers cannot deadlock (id
 * order), and a foreign key check's FOR KEY SHARE, a `before` transfer's among them, neither
 * blocks it nor closes a cycle with it. The step callback answers 404/409 (rolled back) or goes
 * on. SLEEP, the delay_ms, runs with the rows locked and nothing committed.
 *
 * LOCK (pg_try_advisory_xact_lock on the key) makes a concurrent request with the same key a 409
 * at once instead of a queue. LOOKUP replays a stored response (same body hash) or refuses the
 * key (422); pipelined behind LOCK, its snapshot is taken with the lock held, so it sees the
 * response of the key's previous holder. MOVE waits for LOOKUP: behind a failed LOCK it would
 * queue on the rows the holder has locked. STORE writes the response in the money's transaction,
 * so a stored response exists exactly when the transfer committed.
 */

/* A transaction the step callback abandoned on purpose, with the response already chosen. */
#define ANSWERED UV_EALREADY

/* The statement whose result the step callback sees next. */
enum after_stage { A_LOCK = 0, A_LOOKUP, A_MOVE, A_SLEEP, A_COMMIT };

typedef struct xfer_after {
    xfer x;
    rt_race race;
    rt_db_tx tx;
    int stage;
    /* Parameters of the statements pipelined behind BEGIN: borrowed until completion. */
    const char *lock_p[1];
    const char *lookup_p[2];
    const char *move_p[3];
    char *body; /* the 200 body (owned), built before STORE so the stored copy is identical */
    /* What the step callback decided when it abandoned the transaction (status ANSWERED). */
    int answer_status;
    const char *answer_code;
    char answer_msg[128];
    char *replay; /* owned: a stored response body */
    bool settled; /* the answer was decided with the key's lock held (after_answer) */
} xfer_after;

static void after_exec(xfer_after *f, int stage, const char *name, const char *sql, int n,
                       const char *const *params)
{
    f->stage = stage;
    rt_db_tx_exec(&f->tx, name, sql, n, params);
}

/*
 * Ends a transaction whose answer is already chosen and that wrote nothing. Holding the key's
 * lock, it commits (nothing to make durable) and answers once the COMMIT is back, so a client
 * that sends the same key as soon as it hears the answer finds the key free; left to the pool's
 * ROLLBACK, the lock would outlive the answer by a round trip (longer behind a pooler), and that
 * client would be told 409 idempotency_in_progress. Without the lock, the pool rolls back.
 */
static void after_answer(xfer_after *f)
{
    if (f->x.a.key != NULL && f->stage != A_LOCK) {
        f->settled = true;
        f->stage = A_COMMIT;
        rt_db_tx_commit(&f->tx);
    } else {
        rt_db_tx_rollback(&f->tx, ANSWERED);
    }
}

static void after_refuse(xfer_after *f, int status, const char *code, const char *msg)
{
    f->answer_status = status;
    f->answer_code = code;
    snprintf(f->answer_msg, sizeof(f->answer_msg), "%s", msg);
    after_answer(f);
}

/* The transfer is in place, the response built: COMMIT (behind STORE with a key). */
static void after_finish(xfer_after *f)
{
    if (f->x.a.key != NULL)
        after_exec(f, A_COMMIT, "hs_xfer_store", sql_store, 3,
                   (const char *[]){f->x.a.key, f->x.a.canon, f->body});
    f->stage = A_COMMIT;
    rt_db_tx_commit(&f->tx);
}

/* MOVE came back: the rows were locked (in id order), and the money moved unless refused. */
static void after_check_move(xfer_after *f, const rt_db_result *r)
{
    int64_t from_balance = -1;
    bool to_found = false;

    if (rt_db_result_rows(r) != 1 || rt_db_result_bool(r, 0, 1, &to_found) < 0 ||
        (!rt_db_result_is_null(r, 0, 0) && rt_db_result_int64(r, 0, 0, &from_balance) < 0)) {
        rt_db_tx_rollback(&f->tx, UV_EPROTO);
    } else if (from_balance < 0 || !to_found || from_balance < f->x.a.amount) {
        f->answer_status = refusal(&f->x.a, from_balance >= 0, to_found, &f->answer_code,
                                   f->answer_msg, sizeof(f->answer_msg));
        after_answer(f);
    } else if (rt_db_result_int64(r, 0, 2, &f->x.transfer_id) < 0) {
        rt_db_tx_rollback(&f->tx, UV_EPROTO);
    } else if ((f->body = success_body(&f->x.a, f->x.transfer_id)) == NULL) {
        rt_db_tx_rollback(&f->tx, UV_ENOMEM);
    } else if (f->x.a.delay_ms > 0) {
        after_exec(f, A_SLEEP, "hs_xfer_sleep", sql_sleep, 1, (const char *[]){f->x.a.delay_s});
    } else {
        after_finish(f);
    }
}

/* LOOKUP came back: a stored response is replayed when the body is the same. */
static void after_check_key(xfer_after *f, const rt_db_result *r)
{
    bool same;
    int64_t status;

    if (rt_db_result_rows(r) == 0) {
        /* The key is new and now claimed: the transfer goes out. */
        after_exec(f, A_MOVE, "hs_xfer_move", sql_move, 3, f->move_p);
    } else if (rt_db_result_bool(r, 0, 0, &same) < 0 || rt_db_result_int64(r, 0, 1, &status) < 0) {
        rt_db_tx_rollback(&f->tx, UV_EPROTO);
    } else if (!same) {
        after_refuse(f, 422, "idempotency_key_reused",
                     "this Idempotency-Key was used with a different body");
    } else if ((f->replay = strdup(rt_db_result_text(r, 0, 2))) == NULL) {
        rt_db_tx_rollback(&f->tx, UV_ENOMEM);
    } else {
        f->answer_status = (int)status;
        after_answer(f);
    }
}

static void after_step(rt_db_tx *tx)
{
    xfer_after *f = rt_container_of(tx, xfer_after, tx);
    const rt_db_result *r = &tx->result;

    switch (f->stage) {
    case A_LOCK: {
        bool got;

        if (rt_db_result_bool(r, 0, 0, &got) < 0) {
            rt_db_tx_rollback(tx, UV_EPROTO);
        } else if (!got) {
            after_refuse(f, 409, "idempotency_in_progress",
                         "a request with this Idempotency-Key is still running");
        } else {
            f->stage = A_LOOKUP; /* pipelined behind: its result comes next */
        }
        break;
    }
    case A_LOOKUP:
        after_check_key(f, r);
        break;
    case A_MOVE:
        after_check_move(f, r);
        break;
    case A_SLEEP:
        after_finish(f);
        break;
    default:
        rt_db_tx_rollback(tx, UV_EPROTO);
        break;
    }
}

static void after_log(const xfer_after *f, svc_log_level level, const char *event, int status)
{
    static const char *const outcomes[] = {"none", "committed", "rolled_back", "unknown"};
    svc_log_line l;

    if (!svc_log_begin(&l, level, event))
        return;
    svc_request_log_ids(&l, f->x.req);
    svc_log_str(&l, "variant", "after");
    svc_log_str(&l, "reason", uv_err_name(status));
    svc_log_str(&l, "outcome", outcomes[f->tx.outcome]);
    svc_log_int(&l, "statements", f->tx.step);
    svc_log_int(&l, "round_trips", f->tx.round_trips);
    svc_log_end(&l);
}

/* The race has ended: turn what the database did, and what the signal did, into the answer. */
static void after_on_race(rt_task *t, int status)
{
    xfer_after *f = rt_container_of(t, xfer_after, race.task);
    svc_request *req = f->x.req;

    svc_request_add_db_time(req, uv_hrtime() - f->x.started);
    if (f->settled) {
        /* Decided before the COMMIT of a transaction that wrote nothing: the decision stands. */
        status = ANSWERED;
    } else if (f->race.signal_won && f->tx.commit_sent) {
        /* Once COMMIT is sent the transaction's own status is the answer (see this section). */
        after_log(f, SVC_LOG_INFO, "transfer_cancel_after_commit_sent", status);
        status = f->race.inner_status;
    }
    if (f->tx.outcome == RT_DB_TX_COMMITTED && !f->settled) {
        respond_text(req, 200, f->body);
        f->body = NULL;
        status = 0;
    } else if (f->tx.outcome == RT_DB_TX_UNKNOWN && !f->settled) {
        (*f->x.t->outcome_unknown)++;
        after_log(f, SVC_LOG_ERROR, "transfer_outcome_unknown", status);
        svc_respond_error(req, 503, "commit_outcome_unknown",
                          "COMMIT was sent but its answer never came; retry with the same "
                          "Idempotency-Key to learn the outcome");
    } else if (f->race.signal_won && !f->tx.commit_sent && !f->settled) {
        (*f->x.t->rolled_back)++;
        after_log(f, SVC_LOG_WARN, "transfer_cancelled", status);
        svc_respond_uv_error(req, status);
    } else if (status == ANSWERED && f->replay != NULL) {
        (*f->x.t->replayed)++;
        respond_text(req, f->answer_status, f->replay);
        f->replay = NULL;
        svc_respond_header(req, "Idempotent-Replayed", "true");
        status = 0;
    } else if (status == ANSWERED) {
        svc_respond_error(req, f->answer_status, f->answer_code, "%s", f->answer_msg);
        status = 0;
    } else if (status == RT_DB_ESQL && strncmp(f->tx.result.sqlstate, "40", 2) == 0) {
        /* SQLSTATE class 40, transaction rollback (a deadlock with another client's locks, a
         * serialization failure): the database undid the whole transaction, so nothing moved and
         * the same request can simply be sent again. */
        log_db_error(req, "after", &f->tx.result);
        svc_respond_error(req, 503, "unavailable",
                          "the database rolled this transfer back to settle a conflict with "
                          "another transaction; nothing moved, retry");
        svc_respond_header(req, "Retry-After", "1");
    } else {
        if (status == RT_DB_ESQL)
            log_db_error(req, "after", &f->tx.result);
        svc_respond_uv_error(req, status);
    }
    rt_task_release(&f->tx.task);
    rt_task_release(t);
    rt_task_complete(&f->x.task, status);
}

static int after_start(rt_task *t)
{
    xfer_after *f = rt_container_of(t, xfer_after, x.task);

    rt_db_tx_init(&f->tx, f->x.req->app->db, NULL, after_step, NULL);
    f->move_p[0] = f->x.a.from_s;
    f->move_p[1] = f->x.a.to_s;
    f->move_p[2] = f->x.a.amount_s;
    if (f->x.a.key != NULL) {
        f->lock_p[0] = f->x.a.key;
        f->lookup_p[0] = f->x.a.key;
        f->lookup_p[1] = f->x.a.canon;
        rt_db_tx_pipeline(&f->tx, "hs_xfer_lock", sql_lock, 1, f->lock_p);
        rt_db_tx_pipeline(&f->tx, "hs_xfer_lookup", sql_lookup, 2, f->lookup_p);
        f->stage = A_LOCK;
    } else {
        rt_db_tx_pipeline(&f->tx, "hs_xfer_move", sql_move, 3, f->move_p);
        f->stage = A_MOVE;
    }
    rt_race_init(&f->race, f->x.req->app->rt, &f->tx.task, f->x.req->signal);
    f->x.started = uv_hrtime();
    rt_task_start(&f->race.task, NULL, after_on_race);
    return 0;
}

static void after_release(rt_task *t)
{
    xfer_after *f = rt_container_of(t, xfer_after, x.task);

    free(f->body);
    free(f->replay);
    free(f);
}

/* No cancel: the race listens to the request's signal, which is what would cancel this task. */
static const rt_task_vtable after_vt = {
    .name = "transfer.after",
    .start = after_start,
    .cancel = NULL,
    .release = after_release,
};

/* --- handler: POST /{before,after}/transfers -------------------------------------------------- */

/* Reads and checks every input; on failure the 400 is set and UV_EINVAL returned. */
static int parse_args(svc_request *req, xfer_args *a)
{
    static const char key_chars[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
    const char *key = svc_request_header(req, "Idempotency-Key");
    json_t *body;
    int err;

    if (key != NULL && (key[0] == '\0' || strlen(key) > KEY_MAX || key[strspn(key, key_chars)])) {
        svc_respond_error(req, 400, "bad_request",
                          "Idempotency-Key must be 1..%d characters of A-Z a-z 0-9 . _ : -",
                          KEY_MAX);
        return UV_EINVAL;
    }
    a->key = key;
    err = svc_request_json(req, &body);
    if (err < 0)
        return err;
    err = svc_json_int_required(req, body, "from", 1, INT64_MAX, &a->from);
    if (err == 0)
        err = svc_json_int_required(req, body, "to", 1, INT64_MAX, &a->to);
    if (err == 0)
        err = svc_json_int_required(req, body, "amount", 1, AMOUNT_MAX, &a->amount);
    if (err == 0)
        err = svc_json_int(req, body, "delay_ms", 0, HS_DELAY_MAX_MS, 0, &a->delay_ms);
    json_decref(body);
    if (err < 0)
        return err;
    if (a->from == a->to) {
        svc_respond_error(req, 400, "bad_request", "from and to must be different accounts");
        return UV_EINVAL;
    }
    hs__int_text(a->from_s, a->from);
    hs__int_text(a->to_s, a->to);
    hs__int_text(a->amount_s, a->amount);
    hs__int_text(a->neg_amount_s, -a->amount);
    hs__int_text(a->delay_s, a->delay_ms);
    snprintf(a->canon, sizeof(a->canon),
             "{\"amount\":%" PRId64 ",\"delay_ms\":%" PRId64 ",\"from\":%" PRId64 ",\"to\":%" PRId64
             "}",
             a->amount, a->delay_ms, a->from, a->to);
    return 0;
}

static int transfer(svc_request *req, void *state, rt_task **task_out)
{
    xfer_args a;

    xfer *x;

    if (parse_args(req, &a) < 0 || !hs__has_db(req))
        return 0;
    if (hs__is_after(req))
        x = hs__task_new(req, &after_vt, sizeof(xfer_after), task_out);
    else
        x = hs__task_new(req, &before_vt, sizeof(xfer_before), task_out);
    if (x == NULL)
        return UV_ENOMEM;
    x->t = state;
    x->req = req;
    x->a = a;
    return 0;
}

/* --- handler: GET /accounts/invariant --------------------------------------------------------- */

static int invariant_rows(hs_query *q, const rt_db_result *r)
{
    int64_t accounts;
    int64_t total;
    int64_t partial;
    int64_t expected;

    if (rt_db_result_int64(r, 0, 0, &accounts) < 0 || rt_db_result_int64(r, 0, 1, &total) < 0 ||
        rt_db_result_int64(r, 0, 2, &partial) < 0) {
        svc_respond_uv_error(q->req, UV_EPROTO);
        return UV_EPROTO;
    }
    expected = accounts * 1000;
    hs__respond_json(q->req, 200,
                     json_pack("{s:I, s:I, s:I, s:b, s:I}", "accounts", (json_int_t)accounts,
                               "total", (json_int_t)total, "expected", (json_int_t)expected, "ok",
                               total == expected, "partial_transfers", (json_int_t)partial));
    return 0;
}

static const hs_query_spec invariant_query = {
    .vt = HS_QUERY_LISTEN("accounts.invariant"),
    .sql = sql_invariant,
    .plain_errors = true,
    .rows = invariant_rows,
};

static int invariant(svc_request *req, void *state, rt_task **task_out)
{
    (void)state;
    if (!hs__has_db(req))
        return 0;
    return hs__query_new(req, &invariant_query, sizeof(hs_query), task_out) != NULL ? 0 : UV_ENOMEM;
}

/* --- rows ------------------------------------------------------------------------------------- */

static const svc_route rows[] = {
    {"POST", "/before/transfers", SVC_VARIANT_BEFORE,
     "transfer as separate autocommit statements: a cancellation leaves it half-done "
     "(Idempotency-Key checked, not honoured)",
     transfer, NULL, 0},
    {"POST", "/after/transfers", SVC_VARIANT_AFTER,
     "transfer in one transaction raced against cancellation, with idempotency keys", transfer,
     NULL, 0},
    {"GET", "/accounts/invariant", SVC_VARIANT_NONE,
     "total balance against accounts x 1000, and transfers missing a ledger leg", invariant, NULL,
     0},
};

int hs_transfers_register(svc_router *r, svc_app *app)
{
    xfer_state *t = rt_scope_alloc(app->root_scope, sizeof(*t), NULL);
    int err;

    if (t == NULL)
        return UV_ENOMEM;
    err = counters_register(t, app);
    return err < 0 ? err : HS_ROUTES_ADD(r, rows, t);
}

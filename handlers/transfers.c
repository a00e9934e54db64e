/* SPDX-License-Identifier: MIT */
/*
 * transfers.c - pattern 4: POST /{before,after}/transfers and GET /accounts/invariant.
 *
 * A transfer is a debit, a credit, a transfers row and two ledger legs. The invariant (the sum
 * of all balances never changes; every transfer has two legs that cancel out) holds only if all
 * of that happens or none of it does, whatever interrupts the request: its deadline (504) or the
 * shutdown's cancellation (503).
 *
 * before sends the steps as separate autocommit statements, each listening to the request's
 * signal. A cancellation between the debit and the credit (the delay_ms gap) just stops: the
 * money has left one account and never reached the other. That is the documented failure; the
 * route is otherwise careful (an unknown account is refused before anything is debited) and
 * memory-safe, and the cancellation is logged and counted like any other.
 *
 * after runs everything in one rt_db_tx, wrapped in an rt_race against the request's signal
 * (deadline and shutdown both reach it). The race is the one thing listening to that signal; it
 * forwards the cancellation to the transaction, whose own rule applies: before COMMIT is sent a
 * cancellation abandons it and the pool rolls it back, after that the answer to COMMIT is awaited
 * (bounded by the pool's commit timeout). The race adds the tie rule: when the signal fires in
 * the same turn as the transaction's end, the signal wins, so a request that saw its deadline
 * pass answers 504 even if a refusal (409, 422, a replay) was decided a moment earlier. The one
 * exception is a COMMIT that was acknowledged: the money has moved, and the response says so
 * (200) rather than contradict the database.
 *
 * Inside the transaction the statements are chosen one at a time by the step callback:
 *
 *   BEGIN -> [key: LOCK -> LOOKUP] -> ACCOUNTS -> DEBIT -> [delay: SLEEP] -> CREDIT -> TRANSFER
 *         -> LEDGER -> [key: STORE] -> COMMIT
 *
 * LOCK takes pg_try_advisory_xact_lock on the key: a second request with the same key while the
 * first is running gets false and a 409 at once instead of queuing behind it. LOOKUP replays a
 * stored response (same body hash) or refuses the key (422). ACCOUNTS locks both rows in id order
 * (ORDER BY id FOR UPDATE), so two transfers in opposite directions lock in the same order and
 * cannot deadlock. STORE writes the response in the same transaction as the money, so a stored
 * response exists exactly when the transfer committed.
 */
#include "handlers/transfers.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/db.h"
#include "runtime/race.h"
#include "service/log.h"
#include "service/metrics.h"

#define AMOUNT_MAX   1000000
#define DELAY_MAX_MS 5000
#define KEY_MAX      128
#define INT_TEXT     24

/* A transaction the step callback abandoned on purpose, with the response already chosen. */
#define ANSWERED UV_EALREADY

static const char content_type_json[] = "application/json; charset=utf-8";

/* --- statements --------------------------------------------------------------------------- */

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

/* Shared by both variants. */
static const char sql_sleep[] = "SELECT pg_sleep($1::float8 / 1000)";
static const char sql_credit[] =
    "UPDATE accounts SET balance = balance + $1::bigint WHERE id = $2::bigint";
static const char sql_transfer[] =
    "INSERT INTO transfers (from_account, to_account, amount, variant) "
    "VALUES ($1::bigint, $2::bigint, $3::bigint, $4::text) RETURNING id";

/* after only. */
static const char sql_lock[] = "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text, 0))";
static const char sql_lookup[] =
    "SELECT request_hash = md5($2::text), response_status, response_body "
    "FROM idempotency_keys WHERE key = $1::text";
static const char sql_accounts[] =
    "SELECT id, balance FROM accounts WHERE id IN ($1::bigint, $2::bigint) ORDER BY id FOR UPDATE";
static const char sql_debit[] =
    "UPDATE accounts SET balance = balance - $1::bigint WHERE id = $2::bigint";
static const char sql_legs[] =
    "INSERT INTO ledger (transfer_id, account_id, delta) "
    "VALUES ($1::bigint, $2::bigint, -($4::bigint)), ($1::bigint, $3::bigint, $4::bigint)";
static const char sql_store[] =
    "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body) "
    "VALUES ($1::text, md5($2::text), 200, $3::text)";

/* One snapshot for all three numbers, so a transfer in flight is counted either whole or not. */
static const char sql_invariant[] =
    "SELECT (SELECT count(*) FROM accounts), (SELECT coalesce(sum(balance), 0) FROM accounts), "
    "(SELECT count(*) FROM transfers t LEFT JOIN "
    "(SELECT transfer_id, count(*) AS n, sum(delta) AS s FROM ledger GROUP BY transfer_id) l "
    "ON l.transfer_id = t.id WHERE l.n IS DISTINCT FROM 2 OR l.s IS DISTINCT FROM 0)";

/* --- shared state ------------------------------------------------------------------------- */

static uint64_t counter_sink;

typedef struct transfers {
    svc_app *app;
    bool registered;
    uint64_t *cancelled_before; /* cancelled mid-way: what was done stays done */
    uint64_t *rolled_back;      /* after: cancelled before COMMIT, rolled back */
    uint64_t *replayed;         /* after: answered from idempotency_keys */
    rt_guard free_guard;
} transfers;

typedef struct xfer_args {
    int64_t from;
    int64_t to;
    int64_t amount;
    int64_t delay_ms;
    const char *key; /* borrowed from the request; NULL without Idempotency-Key */
    char from_s[INT_TEXT];
    char to_s[INT_TEXT];
    char amount_s[INT_TEXT];
    char neg_amount_s[INT_TEXT];
    char delay_s[INT_TEXT];
    char canon[160]; /* the body as hashed for the key: fixed key order, defaults filled in */
} xfer_args;

static uint64_t *counter(svc_metrics *m, const char *name, const char *labels, const char *help)
{
    uint64_t *c = m != NULL ? svc_metrics_counter(m, name, labels, help) : NULL;

    return c != NULL ? c : &counter_sink;
}

/*
 * The registry is sized by the handler table and so only exists once every row is added, after
 * hs_transfers_register; the first request registers the series instead.
 */
static void counters_ensure(transfers *t)
{
    static const char help[] = "Transfers cancelled by their deadline or by shutdown.";

    if (t->registered)
        return;
    t->registered = true;
    t->cancelled_before = counter(t->app->metrics, "hs_transfers_cancelled_total",
                                  "variant=\"before\",effect=\"left_as_is\"", help);
    t->rolled_back = counter(t->app->metrics, "hs_transfers_cancelled_total",
                             "variant=\"after\",effect=\"rolled_back\"", help);
    t->replayed = counter(t->app->metrics, "hs_transfers_replayed_total", "",
                          "Transfers answered from a stored Idempotency-Key response.");
}

/* The 200 body, as text: it is both sent and stored for replays, byte for byte. */
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

static void respond_text(svc_request *req, int status, const char *text)
{
    char *copy = strdup(text);

    if (copy == NULL)
        svc_respond_uv_error(req, UV_ENOMEM);
    else
        svc_respond_buffer(req, status, content_type_json, copy, strlen(copy));
}

static void log_db_error(const svc_request *req, const char *variant, const rt_db_result *r)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_WARN, "db_error"))
        return;
    svc_log_str(&l, "request_id", req->request_id);
    svc_log_str(&l, "route", "transfers");
    svc_log_str(&l, "variant", variant);
    svc_log_str(&l, "sqlstate", r->sqlstate);
    svc_log_str(&l, "detail", rt_db_result_error(r));
    svc_log_end(&l);
}

/* --- before -------------------------------------------------------------------------------- */

enum before_step {
    B_DEBIT = 0,
    B_EXISTS,
    B_TRANSFER,
    B_LEG_FROM,
    B_SLEEP,
    B_CREDIT,
    B_LEG_TO,
    B_N
};

static const char *const before_step_names[B_N] = {"debit", "check",  "transfer", "leg_from",
                                                   "sleep", "credit", "leg_to"};

typedef struct xfer_before {
    rt_task task;
    rt_db_query q[B_N]; /* one per step: each is released in its own callback, never reused */
    transfers *t;
    svc_request *req;
    xfer_args a;
    bool debited;
    int64_t transfer_id;
    uint64_t step_started;
    char id_s[INT_TEXT];
} xfer_before;

static void before_on_step(rt_task *t, int status);

static void before_send(xfer_before *x, int step, const char *name, const char *sql, int n,
                        const char *const *params)
{
    rt_db_query *q = &x->q[step];

    rt_db_query_init(q, x->req->app->db, sql, n, params, NULL);
    rt_db_query_prepare_as(q, name);
    q->task.data = x;
    x->step_started = uv_hrtime();
    /* Each statement listens to the request's signal on its own: a cancellation stops the
     * chain wherever it is, and what was already done stays done. */
    rt_task_start(&q->task, x->req->signal, before_on_step);
}

static void before_credit(xfer_before *x)
{
    const char *p[2] = {x->a.amount_s, x->a.to_s};

    before_send(x, B_CREDIT, "hs_xfer_credit", sql_credit, 2, p);
}

static void before_stopped(xfer_before *x, int step, int status)
{
    svc_log_line l;

    (*x->t->cancelled_before)++;
    if (svc_log_begin(&l, SVC_LOG_WARN, "transfer_cancelled")) {
        svc_log_str(&l, "request_id", x->req->request_id);
        svc_log_str(&l, "variant", "before");
        svc_log_str(&l, "reason", uv_err_name(status));
        svc_log_str(&l, "at_step", before_step_names[step]);
        svc_log_int(&l, "transfer_id", x->transfer_id);
        /* Whether the statement that was interrupted took effect is unknown; what is known is
         * that a confirmed debit was never matched. */
        svc_log_str(&l, "left", x->debited ? "partial_transfer" : "no_confirmed_change");
        svc_log_end(&l);
    }
}

static void before_respond_missing(xfer_before *x, const rt_db_result *r)
{
    bool from_found = false;
    bool to_found = false;

    for (int i = 0; i < rt_db_result_rows(r); i++) {
        int64_t id;

        if (rt_db_result_int64(r, i, 0, &id) == 0) {
            from_found = from_found || id == x->a.from;
            to_found = to_found || id == x->a.to;
        }
    }
    if (!from_found)
        svc_respond_error(x->req, 404, "not_found", "account %" PRId64 " does not exist",
                          x->a.from);
    else if (!to_found)
        svc_respond_error(x->req, 404, "not_found", "account %" PRId64 " does not exist", x->a.to);
    else
        svc_respond_error(x->req, 409, "insufficient_funds",
                          "account %" PRId64 " holds less than %" PRId64, x->a.from, x->a.amount);
}

/* Runs the step after `step`, which succeeded; returns false when the chain is over. */
static bool before_advance(xfer_before *x, int step, const rt_db_result *r)
{
    switch (step) {
    case B_DEBIT: {
        if (rt_db_result_rows(r) == 0) {
            const char *p[2] = {x->a.from_s, x->a.to_s};

            before_send(x, B_EXISTS, "hs_xfer_exists", sql_exists, 2, p);
        } else {
            const char *p[4] = {x->a.from_s, x->a.to_s, x->a.amount_s, "before"};

            x->debited = true;
            before_send(x, B_TRANSFER, "hs_xfer_transfer", sql_transfer, 4, p);
        }
        return true;
    }
    case B_EXISTS:
        before_respond_missing(x, r);
        return false;
    case B_TRANSFER: {
        const char *p[3] = {x->id_s, x->a.from_s, x->a.neg_amount_s};

        if (rt_db_result_int64(r, 0, 0, &x->transfer_id) < 0) {
            svc_respond_uv_error(x->req, UV_EPROTO);
            return false;
        }
        snprintf(x->id_s, sizeof(x->id_s), "%" PRId64, x->transfer_id);
        before_send(x, B_LEG_FROM, "hs_xfer_leg", sql_leg, 3, p);
        return true;
    }
    case B_LEG_FROM:
        if (x->a.delay_ms > 0) {
            const char *p[1] = {x->a.delay_s};

            before_send(x, B_SLEEP, "hs_xfer_sleep", sql_sleep, 1, p);
        } else {
            before_credit(x);
        }
        return true;
    case B_SLEEP:
        before_credit(x);
        return true;
    case B_CREDIT: {
        const char *p[3] = {x->id_s, x->a.to_s, x->a.amount_s};

        before_send(x, B_LEG_TO, "hs_xfer_leg", sql_leg, 3, p);
        return true;
    }
    default: {
        char *body = success_body(&x->a, x->transfer_id);

        if (body == NULL)
            svc_respond_uv_error(x->req, UV_ENOMEM);
        else
            svc_respond_buffer(x->req, 200, content_type_json, body, strlen(body));
        return false;
    }
    }
}

static void before_on_step(rt_task *t, int status)
{
    xfer_before *x = t->data;
    int step = (int)(rt_container_of(t, rt_db_query, task) - x->q);

    svc_request_add_db_time(x->req, uv_hrtime() - x->step_started);
    if (status < 0) {
        if (status == UV_ECANCELED || status == UV_ETIMEDOUT)
            before_stopped(x, step, status);
        else if (status == RT_DB_ESQL)
            log_db_error(x->req, "before", &x->q[step].result);
        svc_respond_uv_error(x->req, status);
        rt_task_complete(&x->task, status);
    } else if (!before_advance(x, step, &x->q[step].result)) {
        rt_task_complete(&x->task, 0);
    }
    rt_task_release(t);
}

static int before_start(rt_task *t)
{
    xfer_before *x = rt_container_of(t, xfer_before, task);
    const char *p[3] = {x->a.amount_s, x->a.from_s, x->a.to_s};

    before_send(x, B_DEBIT, "hs_xfer_before_debit", sql_before_debit, 3, p);
    return 0;
}

static void before_release(rt_task *t)
{
    free(rt_container_of(t, xfer_before, task));
}

/* No cancel: every statement listens to the request's signal, which is also what would cancel
 * this task, and the chain ends with the statement that was stopped. */
static const rt_task_vtable before_vt = {
    .name = "transfer.before",
    .start = before_start,
    .cancel = NULL,
    .release = before_release,
};

/* --- after ---------------------------------------------------------------------------------- */

enum after_stage {
    A_BEGIN = 0,
    A_LOCK,
    A_LOOKUP,
    A_ACCOUNTS,
    A_DEBIT,
    A_SLEEP,
    A_CREDIT,
    A_TRANSFER,
    A_LEDGER,
    A_STORE,
    A_COMMIT
};

typedef struct xfer_after {
    rt_task task;
    rt_race race;
    rt_db_tx tx;
    transfers *t;
    svc_request *req;
    xfer_args a;
    int stage;
    int64_t transfer_id;
    char *body; /* the 200 body (owned), built before STORE so the stored copy is identical */
    /* What the step callback decided when it abandoned the transaction (status ANSWERED). */
    int answer_status;
    const char *answer_code;
    char answer_msg[128];
    char *replay; /* owned: a stored response body */
    uint64_t started;
    char id_s[INT_TEXT];
} xfer_after;

static void after_exec(xfer_after *x, int stage, const char *name, const char *sql, int n,
                       const char *const *params)
{
    x->stage = stage;
    rt_db_tx_exec(&x->tx, name, sql, n, params);
}

static void after_refuse(xfer_after *x, int status, const char *code, const char *msg)
{
    x->answer_status = status;
    x->answer_code = code;
    snprintf(x->answer_msg, sizeof(x->answer_msg), "%s", msg);
    rt_db_tx_rollback(&x->tx, ANSWERED);
}

static void after_accounts(xfer_after *x)
{
    const char *p[2] = {x->a.from_s, x->a.to_s};

    after_exec(x, A_ACCOUNTS, "hs_xfer_accounts", sql_accounts, 2, p);
}

static void after_credit(xfer_after *x)
{
    const char *p[2] = {x->a.amount_s, x->a.to_s};

    after_exec(x, A_CREDIT, "hs_xfer_credit", sql_credit, 2, p);
}

/* ACCOUNTS came back: both rows are locked (in id order) if they exist. */
static void after_check_accounts(xfer_after *x, const rt_db_result *r)
{
    int64_t from_balance = -1;
    bool to_found = false;
    char msg[128];

    for (int i = 0; i < rt_db_result_rows(r); i++) {
        int64_t id;
        int64_t balance;

        if (rt_db_result_int64(r, i, 0, &id) < 0 || rt_db_result_int64(r, i, 1, &balance) < 0)
            continue;
        if (id == x->a.from)
            from_balance = balance;
        else if (id == x->a.to)
            to_found = true;
    }
    if (from_balance < 0 || !to_found) {
        snprintf(msg, sizeof(msg), "account %" PRId64 " does not exist",
                 from_balance < 0 ? x->a.from : x->a.to);
        after_refuse(x, 404, "not_found", msg);
    } else if (from_balance < x->a.amount) {
        snprintf(msg, sizeof(msg), "account %" PRId64 " holds less than %" PRId64, x->a.from,
                 x->a.amount);
        after_refuse(x, 409, "insufficient_funds", msg);
    } else {
        const char *p[2] = {x->a.amount_s, x->a.from_s};

        after_exec(x, A_DEBIT, "hs_xfer_debit", sql_debit, 2, p);
    }
}

/* LOOKUP came back: a stored response is replayed when the body is the same. */
static void after_check_key(xfer_after *x, const rt_db_result *r)
{
    bool same;
    int64_t status;

    if (rt_db_result_rows(r) == 0) {
        after_accounts(x);
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
    rt_db_tx_rollback(&x->tx, ANSWERED);
}

static void after_step(rt_db_tx *tx)
{
    xfer_after *x = rt_container_of(tx, xfer_after, tx);
    const rt_db_result *r = &tx->result;

    switch (x->stage) {
    case A_BEGIN:
        if (x->a.key != NULL) {
            const char *p[1] = {x->a.key};

            after_exec(x, A_LOCK, "hs_xfer_lock", sql_lock, 1, p);
        } else {
            after_accounts(x);
        }
        break;
    case A_LOCK: {
        bool got;

        if (rt_db_result_bool(r, 0, 0, &got) < 0) {
            rt_db_tx_rollback(tx, UV_EPROTO);
        } else if (!got) {
            after_refuse(x, 409, "idempotency_in_progress",
                         "a request with this Idempotency-Key is still running");
        } else {
            const char *p[2] = {x->a.key, x->a.canon};

            after_exec(x, A_LOOKUP, "hs_xfer_lookup", sql_lookup, 2, p);
        }
        break;
    }
    case A_LOOKUP:
        after_check_key(x, r);
        break;
    case A_ACCOUNTS:
        after_check_accounts(x, r);
        break;
    case A_DEBIT:
        if (x->a.delay_ms > 0) {
            const char *p[1] = {x->a.delay_s};

            after_exec(x, A_SLEEP, "hs_xfer_sleep", sql_sleep, 1, p);
        } else {
            after_credit(x);
        }
        break;
    case A_SLEEP:
        after_credit(x);
        break;
    case A_CREDIT: {
        const char *p[4] = {x->a.from_s, x->a.to_s, x->a.amount_s, "after"};

        after_exec(x, A_TRANSFER, "hs_xfer_transfer", sql_transfer, 4, p);
        break;
    }
    case A_TRANSFER: {
        const char *p[4] = {x->id_s, x->a.from_s, x->a.to_s, x->a.amount_s};

        if (rt_db_result_int64(r, 0, 0, &x->transfer_id) < 0) {
            rt_db_tx_rollback(tx, UV_EPROTO);
            break;
        }
        snprintf(x->id_s, sizeof(x->id_s), "%" PRId64, x->transfer_id);
        after_exec(x, A_LEDGER, "hs_xfer_legs", sql_legs, 4, p);
        break;
    }
    case A_LEDGER:
        x->body = success_body(&x->a, x->transfer_id);
        if (x->body == NULL) {
            rt_db_tx_rollback(tx, UV_ENOMEM);
        } else if (x->a.key != NULL) {
            const char *p[3] = {x->a.key, x->a.canon, x->body};

            after_exec(x, A_STORE, "hs_xfer_store", sql_store, 3, p);
        } else {
            x->stage = A_COMMIT;
            rt_db_tx_commit(tx);
        }
        break;
    default:
        x->stage = A_COMMIT;
        rt_db_tx_commit(tx);
        break;
    }
}

static void after_log(const xfer_after *x, svc_log_level level, const char *event, int status)
{
    static const char *const outcomes[] = {"none", "committed", "rolled_back", "unknown"};
    svc_log_line l;

    if (!svc_log_begin(&l, level, event))
        return;
    svc_log_str(&l, "request_id", x->req->request_id);
    svc_log_str(&l, "variant", "after");
    svc_log_str(&l, "reason", uv_err_name(status));
    svc_log_str(&l, "outcome", outcomes[x->tx.outcome]);
    svc_log_int(&l, "statements", x->tx.step);
    svc_log_end(&l);
}

/* The race has ended: turn what the database did, and what the signal did, into the answer. */
static void after_on_race(rt_task *t, int status)
{
    xfer_after *x = rt_container_of(t, xfer_after, race.task);
    svc_request *req = x->req;

    svc_request_add_db_time(req, uv_hrtime() - x->started);
    if (x->tx.outcome == RT_DB_TX_COMMITTED) {
        /* COMMIT was acknowledged: whatever the signal did, the money moved, and the client is
         * told so (retrying with the same key would only replay this answer). */
        if (x->race.signal_won)
            after_log(x, SVC_LOG_INFO, "transfer_committed_despite_cancel", status);
        respond_text(req, 200, x->body);
        status = 0;
    } else if (x->race.signal_won) {
        (*x->t->rolled_back)++;
        after_log(x, SVC_LOG_WARN, "transfer_cancelled", status);
        svc_respond_uv_error(req, status);
    } else if (x->tx.outcome == RT_DB_TX_UNKNOWN) {
        after_log(x, SVC_LOG_ERROR, "transfer_outcome_unknown", status);
        svc_respond_error(req, 503, "commit_outcome_unknown",
                          "COMMIT was sent but its answer never came; retry with the same "
                          "Idempotency-Key to learn the outcome");
    } else if (status == ANSWERED && x->replay != NULL) {
        (*x->t->replayed)++;
        respond_text(req, x->answer_status, x->replay);
        svc_respond_header(req, "Idempotent-Replayed", "true");
        status = 0;
    } else if (status == ANSWERED) {
        svc_respond_error(req, x->answer_status, x->answer_code, "%s", x->answer_msg);
        status = 0;
    } else {
        if (status == RT_DB_ESQL)
            log_db_error(req, "after", &x->tx.result);
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

/* No cancel: the race listens to the request's signal, the very signal that cancels this task,
 * so the race is the transaction's single source of cancellation. */
static const rt_task_vtable after_vt = {
    .name = "transfer.after",
    .start = after_start,
    .cancel = NULL,
    .release = after_release,
};

/* --- handlers ------------------------------------------------------------------------------ */

static bool is_key_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

/* Reads and checks every input; on failure the 400 is set and UV_EINVAL returned. */
static int parse_args(svc_request *req, xfer_args *a)
{
    const char *key = svc_request_header(req, "Idempotency-Key");
    json_t *body;
    int err;

    if (key != NULL) {
        size_t n = strlen(key);
        bool ok = n >= 1 && n <= KEY_MAX;

        for (size_t i = 0; ok && i < n; i++)
            ok = is_key_char(key[i]);
        if (!ok) {
            svc_respond_error(req, 400, "bad_request",
                              "Idempotency-Key must be 1..%d characters of A-Z a-z 0-9 . _ : -",
                              KEY_MAX);
            return UV_EINVAL;
        }
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
        err = svc_json_int(req, body, "delay_ms", 0, DELAY_MAX_MS, 0, &a->delay_ms);
    json_decref(body);
    if (err < 0)
        return err;
    if (a->from == a->to) {
        svc_respond_error(req, 400, "bad_request", "from and to must be different accounts");
        return UV_EINVAL;
    }
    snprintf(a->from_s, sizeof(a->from_s), "%" PRId64, a->from);
    snprintf(a->to_s, sizeof(a->to_s), "%" PRId64, a->to);
    snprintf(a->amount_s, sizeof(a->amount_s), "%" PRId64, a->amount);
    snprintf(a->neg_amount_s, sizeof(a->neg_amount_s), "%" PRId64, -a->amount);
    snprintf(a->delay_s, sizeof(a->delay_s), "%" PRId64, a->delay_ms);
    snprintf(a->canon, sizeof(a->canon),
             "{\"amount\":%" PRId64 ",\"delay_ms\":%" PRId64 ",\"from\":%" PRId64 ",\"to\":%" PRId64
             "}",
             a->amount, a->delay_ms, a->from, a->to);
    return 0;
}

static int before_transfer(svc_request *req, void *state, rt_task **task_out)
{
    transfers *t = state;
    xfer_before *x;
    xfer_args a;

    if (parse_args(req, &a) < 0)
        return 0;
    if (t->app->db == NULL) {
        svc_respond_error(req, 503, "unavailable", "no database is configured");
        return 0;
    }
    counters_ensure(t);
    x = calloc(1, sizeof(*x));
    if (x == NULL)
        return UV_ENOMEM;
    rt_task_init(&x->task, t->app->rt, &before_vt);
    x->t = t;
    x->req = req;
    x->a = a;
    *task_out = &x->task;
    return 0;
}

static int after_transfer(svc_request *req, void *state, rt_task **task_out)
{
    transfers *t = state;
    xfer_after *x;
    xfer_args a;

    if (parse_args(req, &a) < 0)
        return 0;
    if (t->app->db == NULL) {
        svc_respond_error(req, 503, "unavailable", "no database is configured");
        return 0;
    }
    counters_ensure(t);
    x = calloc(1, sizeof(*x));
    if (x == NULL)
        return UV_ENOMEM;
    rt_task_init(&x->task, t->app->rt, &after_vt);
    x->t = t;
    x->req = req;
    x->a = a;
    x->stage = A_BEGIN;
    *task_out = &x->task;
    return 0;
}

/* --- GET /accounts/invariant --------------------------------------------------------------- */

typedef struct invariant_req {
    rt_task task;
    rt_db_query q;
    svc_request *req;
    uint64_t started;
} invariant_req;

static void invariant_on_result(rt_task *t, int status)
{
    invariant_req *v = rt_container_of(t, invariant_req, q.task);
    const rt_db_result *r = &v->q.result;
    int64_t accounts;
    int64_t total;
    int64_t partial;

    svc_request_add_db_time(v->req, uv_hrtime() - v->started);
    if (status == 0 &&
        (rt_db_result_int64(r, 0, 0, &accounts) < 0 || rt_db_result_int64(r, 0, 1, &total) < 0 ||
         rt_db_result_int64(r, 0, 2, &partial) < 0))
        status = UV_EPROTO;
    if (status < 0) {
        svc_respond_uv_error(v->req, status);
    } else {
        int64_t expected = accounts * 1000;
        json_t *body = json_pack("{s:I, s:I, s:I, s:b, s:I}", "accounts", (json_int_t)accounts,
                                 "total", (json_int_t)total, "expected", (json_int_t)expected, "ok",
                                 total == expected, "partial_transfers", (json_int_t)partial);

        if (body == NULL)
            svc_respond_uv_error(v->req, UV_ENOMEM);
        else
            svc_respond_json(v->req, 200, body);
    }
    rt_task_complete(&v->task, status);
    rt_task_release(t);
}

static int invariant_start(rt_task *t)
{
    invariant_req *v = rt_container_of(t, invariant_req, task);

    rt_db_query_init(&v->q, v->req->app->db, sql_invariant, 0, NULL, NULL);
    v->started = uv_hrtime();
    rt_task_start(&v->q.task, v->req->signal, invariant_on_result);
    return 0;
}

static void invariant_release(rt_task *t)
{
    free(rt_container_of(t, invariant_req, task));
}

static const rt_task_vtable invariant_vt = {
    .name = "accounts.invariant",
    .start = invariant_start,
    .cancel = NULL,
    .release = invariant_release,
};

static int invariant(svc_request *req, void *state, rt_task **task_out)
{
    transfers *t = state;
    invariant_req *v;

    if (t->app->db == NULL) {
        svc_respond_error(req, 503, "unavailable", "no database is configured");
        return 0;
    }
    v = calloc(1, sizeof(*v));
    if (v == NULL)
        return UV_ENOMEM;
    rt_task_init(&v->task, t->app->rt, &invariant_vt);
    v->req = req;
    *task_out = &v->task;
    return 0;
}

int hs_transfers_register(svc_router *r, svc_app *app)
{
    transfers *t = calloc(1, sizeof(*t));
    int err = 0;

    if (t == NULL)
        return UV_ENOMEM;
    t->app = app;
    /* Every request using t has been answered before the root scope closes. */
    t->free_guard.fn = free;
    t->free_guard.arg = t;
    rt_scope_defer(app->root_scope, &t->free_guard);
    const svc_route rows[] = {
        {"POST", "/before/transfers", SVC_VARIANT_BEFORE,
         "transfer as separate autocommit statements: a cancellation leaves it half-done "
         "(Idempotency-Key checked, not honoured)",
         before_transfer, t, 0},
        {"POST", "/after/transfers", SVC_VARIANT_AFTER,
         "transfer in one transaction raced against cancellation, with idempotency keys",
         after_transfer, t, 0},
        {"GET", "/accounts/invariant", SVC_VARIANT_NONE,
         "total balance against accounts x 1000, and transfers missing a ledger leg", invariant, t,
         0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]) && err == 0; i++)
        err = svc_router_add(r, &rows[i]);
    return err;
}

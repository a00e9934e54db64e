/* SPDX-License-Identifier: MIT */
/*
 * p4_transfers.c - pattern 4, cancellation-aware writes: POST /{before,after}/transfers (the
 * routes and their validation, the same for both), the `before` chain, GET /accounts/invariant.
 * A transfer (debit, credit, transfers row, two ledger legs) keeps the invariant only if all of
 * it happens or none of it does, whatever interrupts the request (deadline 504, shutdown 503).
 *
 * before sends the steps as separate autocommit statements, each listening to the request's
 * signal: a cancellation between debit and credit (the delay_ms gap) just stops, and the money
 * has left one account and never reached the other. That is the documented failure; otherwise
 * the route is careful (an unknown account is refused before anything is debited) and
 * memory-safe. after (p4_transfers_after.c): one transaction raced against the signal.
 */
#include "handlers/patterns.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/p4_transfers_int.h"
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

static const char sql_sleep[] = HS_XFER_SQL_SLEEP;
static const char sql_credit[] = HS_XFER_SQL_CREDIT;
static const char sql_transfer[] = HS_XFER_SQL_TRANSFER;

/* One snapshot for all three numbers, so a transfer in flight is counted either whole or not. */
static const char sql_invariant[] =
    "SELECT (SELECT count(*) FROM accounts), (SELECT coalesce(sum(balance), 0) FROM accounts), "
    "(SELECT count(*) FROM transfers t LEFT JOIN "
    "(SELECT transfer_id, count(*) AS n, sum(delta) AS s FROM ledger GROUP BY transfer_id) l "
    "ON l.transfer_id = t.id WHERE l.n IS DISTINCT FROM 2 OR l.s IS DISTINCT FROM 0)";

/* --- shared (with p4_transfers_after.c) ------------------------------------------------------- */

/* Registers the pattern's series at startup, so they are in /metrics before the first request. */
static int counters_register(hs_xfer_state *t)
{
    static const char help[] = "Transfers cancelled by their deadline or by shutdown.";
    svc_metrics *m = t->app->metrics;

    t->cancelled_before = svc_metrics_counter(m, "hs_transfers_cancelled_total",
                                              "variant=\"before\",effect=\"left_as_is\"", help);
    t->rolled_back = svc_metrics_counter(m, "hs_transfers_cancelled_total",
                                         "variant=\"after\",effect=\"rolled_back\"", help);
    t->replayed = svc_metrics_counter(m, "hs_transfers_replayed_total", "",
                                      "Transfers answered from a stored Idempotency-Key response.");
    t->outcome_unknown = svc_metrics_counter(
        m, "hs_commits_outcome_unknown_total", "",
        "Transfers whose COMMIT was sent but never answered (503 commit_outcome_unknown).");
    if (t->cancelled_before == NULL || t->rolled_back == NULL || t->replayed == NULL ||
        t->outcome_unknown == NULL)
        return UV_ENOMEM;
    return 0;
}

char *hs__xfer_success_body(const hs_xfer_args *a, int64_t transfer_id)
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

int hs__xfer_refusal(const hs_xfer_args *a, bool from_found, bool to_found, const char **code,
                     char *msg, size_t size)
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

void hs__xfer_respond_text(svc_request *req, int status, char *text)
{
    if (text == NULL)
        svc_respond_uv_error(req, UV_ENOMEM);
    else
        svc_respond_buffer(req, status, content_type_json, text, strlen(text));
}

void hs__xfer_log_db_error(const svc_request *req, const char *variant, const rt_db_result *r)
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

/* --- before ----------------------------------------------------------------------------------- */

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
    hs_xfer_state *t;
    svc_request *req;
    hs_xfer_args a;
    bool debited;
    int64_t transfer_id;
    uint64_t step_started;
    char id_s[HS_INT_TEXT];
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
        svc_request_log_ids(&l, x->req);
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

/* The debit changed nothing: an account is missing or short. */
static void before_respond_missing(xfer_before *x, const rt_db_result *r)
{
    bool from_found = false;
    bool to_found = false;
    const char *code;
    char msg[128];
    int status;

    for (int i = 0; i < rt_db_result_rows(r); i++) {
        int64_t id;

        if (rt_db_result_int64(r, i, 0, &id) == 0) {
            from_found = from_found || id == x->a.from;
            to_found = to_found || id == x->a.to;
        }
    }
    status = hs__xfer_refusal(&x->a, from_found, to_found, &code, msg, sizeof(msg));
    svc_respond_error(x->req, status, code, "%s", msg);
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
        hs__int_text(x->id_s, x->transfer_id);
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
    default:
        hs__xfer_respond_text(x->req, 200, hs__xfer_success_body(&x->a, x->transfer_id));
        return false;
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
            hs__xfer_log_db_error(x->req, "before", &x->q[step].result);
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

/* No cancel: every statement listens to the request's signal, which is also what would cancel
 * this task, and the chain ends with the statement that was stopped. */
static const rt_task_vtable before_vt = {
    .name = "transfer.before",
    .start = before_start,
    .cancel = NULL,
    .release = hs__task_free,
};

/* --- handler (after: p4_transfers_after.c) ---------------------------------------------------- */

static bool is_key_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

/* Reads and checks every input; on failure the 400 is set and UV_EINVAL returned. */
static int parse_args(svc_request *req, hs_xfer_args *a)
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
    hs_xfer_state *t = state;
    xfer_before *x;
    hs_xfer_args a;

    if (parse_args(req, &a) < 0 || !hs__has_db(req))
        return 0;
    if (hs__is_after(req)) {
        *task_out = hs__xfer_after_new(t, req, &a);
        return *task_out != NULL ? 0 : UV_ENOMEM;
    }
    x = hs__task_new(req, &before_vt, sizeof(*x), task_out);
    if (x == NULL)
        return UV_ENOMEM;
    x->t = t;
    x->req = req;
    x->a = a;
    return 0;
}

/* --- GET /accounts/invariant ------------------------------------------------------------------ */

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
    hs_xfer_state *t = rt_scope_alloc(app->root_scope, sizeof(*t), NULL);
    int err;

    if (t == NULL)
        return UV_ENOMEM;
    t->app = app;
    err = counters_register(t);
    return err < 0 ? err : HS_ROUTES_ADD(r, rows, t);
}

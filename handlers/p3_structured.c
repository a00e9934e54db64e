/* SPDX-License-Identifier: MIT */
/*
 * p3_structured.c - pattern 3, structured concurrency: POST /{before,after}/users/{id}/welcome,
 * background work that writes `events` rows to audit_events, one per `delay_ms`. Both variants
 * check that the user exists (404 before anything starts), hand the writing to background work
 * and answer; what differs is who owns that work.
 *
 * before: a detached chain of queries, with no scope and no signal; only a gauge sees it. At
 * shutdown nothing waits for it, the pool closes under it, and its unwritten events are silently
 * lost. It stays memory-safe while being wrong: it owns copies of everything, reaches the pool
 * only through app->db (which main clears once the pool is gone), and always has a query in the
 * pool or a post queued, so the pool's close (or the post) reaches it before the runtime closes.
 *
 * after: a `writer` task spawned into a scope: the request's with ?wait=true (the response waits
 * for it, the deadline cancels it), else the service's, which shutdown drains for
 * SHUTDOWN_GRACE_MS and then cancels. A writer in the service scope outlives its request, so it
 * copies what it needs (the event's parameters, the request's ids). Each event is its own
 * transaction (BEGIN; INSERT with its pg_sleep; COMMIT): the driver cancels a transaction only
 * before COMMIT is sent, so every event is either written or cancelled, and the cancellation's log
 * line and counters add up with the table's rows to exactly the number requested (an interrupted
 * autocommit INSERT may or may not have committed).
 */
#include "handlers/patterns.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "handlers/kit_int.h"
#include "handlers/user_row_int.h"
#include "service/log.h"
#include "service/metrics.h"

/* --- statements ------------------------------------------------------------------------------- */

#define EVENTS_DEFAULT   5
#define EVENTS_MAX       100
#define DELAY_DEFAULT_MS 50
#define TASK_ID_MAX      48

/* One event: the delay is played inside the statement, as every database step of the API. */
static const char sql_event[] = "WITH d AS (SELECT pg_sleep($4::float8 / 1000)) "
                                "INSERT INTO audit_events (task_id, user_id, seq, variant) "
                                "SELECT $1::text, $2::bigint, $3::int, $5::text FROM d";

enum { SCOPE_REQUEST = 0, SCOPE_SERVICE = 1 };

/* The pattern's own series in /metrics; pointers into the registry, which outlives the loop. */
typedef struct welcome_counters {
    uint64_t *written_before;
    uint64_t *written_after;
    uint64_t *detached_alive;      /* a gauge */
    uint64_t *tasks_cancelled[2];  /* by SCOPE_* */
    uint64_t *events_cancelled[2]; /* by SCOPE_* */
} welcome_counters;

typedef struct structured {
    welcome_counters c;
    uint64_t next_id;
    char id_prefix[17];
} structured;

typedef struct welcome_args {
    int64_t user_id;
    int events;
    int delay_ms;
    bool wait;
} welcome_args;

/* The request's own task: the user lookup, then the hand-off to background work. */
typedef struct welcome_req {
    hs_query q; /* first: the kit frees the struct */
    structured *s;
    welcome_args a;
} welcome_req;

/* One event's parameters as text, copied by both variants (see the top). */
typedef struct event_text {
    char task_id[TASK_ID_MAX];
    char user_s[HS_INT_TEXT];
    char delay_s[HS_INT_TEXT];
    char seq_s[HS_INT_TEXT];
    const char *params[5]; /* sql_event's $1..$5 */
} event_text;

/* before: the detached chain of queries. Owns copies of everything; never freed by anyone else. */
typedef struct detached {
    rt_db_query q;
    rt_post next;
    svc_app *app;
    uint64_t *written;
    uint64_t *alive;
    int events;
    int seq;
    bool stop;
    event_text ev;
} detached;

/* after: the scoped writer, one transaction per event. */
typedef struct writer {
    rt_task task;
    rt_db_tx tx;
    rt_post next;
    rt_db *db;
    svc_request *req; /* request scope only; NULL in the service scope, which outlives it */
    int scope;        /* SCOPE_* */
    const welcome_counters *c;
    int events;
    int written;
    int last_status;
    bool unknown; /* a COMMIT whose answer never came */
    uint64_t tx_started;
    event_text ev;
    /* Its log lines still belong to the trace of the request that started it. */
    char request_id[SVC_REQUEST_ID_MAX + 1];
    char trace_id[SVC_TRACE_ID_LEN + 1];
    char span_id[SVC_SPAN_ID_LEN + 1];
} writer;

static const char *const scope_names[] = {"request", "service"};

static void event_text_init(event_text *e, const char *task_id, const welcome_args *a,
                            const char *variant)
{
    snprintf(e->task_id, sizeof(e->task_id), "%s", task_id);
    hs__int_text(e->user_s, a->user_id);
    hs__int_text(e->delay_s, a->delay_ms);
    e->params[0] = e->task_id;
    e->params[1] = e->user_s;
    e->params[2] = e->seq_s;
    e->params[3] = e->delay_s;
    e->params[4] = variant;
}

/* The parameters of event number seq (1-based), borrowed until the next call. */
static const char *const *event_params(event_text *e, int seq)
{
    hs__int_text(e->seq_s, seq);
    return e->params;
}

/* --- shared: the pattern's metrics ------------------------------------------------------------ */

/* Registers the pattern's series at startup, so they are in /metrics before the first request. */
static int counters_register(structured *s, svc_metrics *m)
{
    static const char written[] = "hs_welcome_events_written_total";
    static const char written_help[] = "Audit events written by welcome tasks.";
    static const char tasks[] = "hs_welcome_cancelled_total";
    static const char tasks_help[] = "Scoped welcome tasks cancelled before writing every event.";
    static const char events[] = "hs_welcome_events_cancelled_total";
    static const char events_help[] = "Events a cancelled welcome task did not write.";
    static const char alive_help[] = "Detached welcome tasks (before) still running: nothing "
                                     "waits for them, and shutdown drops them.";
    welcome_counters *c = &s->c;
    const svc_metrics_series series[] = {
        {&c->written_before, written, "variant=\"before\"", written_help, false},
        {&c->written_after, written, "variant=\"after\"", written_help, false},
        {&c->detached_alive, "hs_welcome_detached_alive", "", alive_help, true},
        {&c->tasks_cancelled[SCOPE_REQUEST], tasks, "scope=\"request\"", tasks_help, false},
        {&c->tasks_cancelled[SCOPE_SERVICE], tasks, "scope=\"service\"", tasks_help, false},
        {&c->events_cancelled[SCOPE_REQUEST], events, "scope=\"request\"", events_help, false},
        {&c->events_cancelled[SCOPE_SERVICE], events, "scope=\"service\"", events_help, false},
    };

    return SVC_METRICS_REGISTER(m, series);
}

/* --- before: the detached chain --------------------------------------------------------------- */

static void detached_on_event(rt_task *t, int status);
static void detached_on_released(rt_db_query *q);

static void detached_send(detached *d)
{
    rt_db_query_init(&d->q, d->app->db, sql_event, 5, event_params(&d->ev, d->seq + 1),
                     detached_on_released);
    rt_db_query_prepare_as(&d->q, "hs_welcome_event");
    /* No signal: nothing can ask this chain to stop. That is the anti-pattern. */
    rt_task_start(&d->q.task, NULL, detached_on_event);
}

static void detached_free(detached *d)
{
    (*d->alive)--;
    free(d);
}

static void detached_on_next(rt_post *p)
{
    detached *d = rt_container_of(p, detached, next);

    /* main clears app->db once the pool is gone: the chain must not touch it after that. */
    if (d->app->db == NULL) {
        detached_free(d);
        return;
    }
    detached_send(d);
}

/* The query's storage is reusable only once it has been released, which happens after its
 * completion callback has returned; so the next step is decided here. */
static void detached_on_released(rt_db_query *q)
{
    detached *d = rt_container_of(q, detached, q);

    if (d->stop)
        detached_free(d);
    else
        rt_post_submit(d->app->rt, &d->next, detached_on_next);
}

static void detached_on_event(rt_task *t, int status)
{
    detached *d = rt_container_of(t, detached, q.task);

    if (status == 0) {
        d->seq++;
        (*d->written)++;
    }
    /* A failure (the pool closing at shutdown, above all) ends the chain silently: whatever was
     * not written yet is lost, and nobody is told. */
    d->stop = status < 0 || d->seq == d->events;
    rt_task_release(t);
}

/* Starts the chain. Returns 0 or UV_ENOMEM. */
static int detached_start(welcome_req *w, const char *task_id)
{
    structured *s = w->s;
    detached *d = calloc(1, sizeof(*d));

    if (d == NULL)
        return UV_ENOMEM;
    d->app = w->q.req->app;
    d->written = s->c.written_before;
    d->alive = s->c.detached_alive;
    d->events = w->a.events;
    rt_post_init(&d->next);
    event_text_init(&d->ev, task_id, &w->a, "before");
    (*d->alive)++;
    detached_send(d);
    return 0;
}

/* --- after: the scoped writer ----------------------------------------------------------------- */

static void writer_step(rt_db_tx *tx)
{
    writer *w = rt_container_of(tx, writer, tx);

    if (tx->step == 0)
        rt_db_tx_exec(tx, "hs_welcome_event", sql_event, 5, event_params(&w->ev, w->written + 1));
    else
        rt_db_tx_commit(tx);
}

static void log_writer_ids(svc_log_line *l, const writer *w)
{
    svc_log_str(l, "request_id", w->request_id);
    svc_log_str(l, "trace_id", w->trace_id);
    svc_log_str(l, "span_id", w->span_id);
}

/* Completes the writer; an early end is logged and counted, so every event is accounted for. */
static void writer_finish(writer *w, int status)
{
    int not_written = w->events - w->written - (w->unknown ? 1 : 0);
    bool cancelled = status == UV_ECANCELED || status == UV_ETIMEDOUT;
    svc_log_line l;

    if (status < 0) {
        if (cancelled) {
            (*w->c->tasks_cancelled[w->scope])++;
            (*w->c->events_cancelled[w->scope]) += (uint64_t)not_written;
        }
        if (svc_log_begin(&l, SVC_LOG_WARN, cancelled ? "task_cancelled" : "task_failed")) {
            log_writer_ids(&l, w);
            svc_log_str(&l, "task", "welcome");
            svc_log_str(&l, "task_id", w->ev.task_id);
            svc_log_str(&l, "scope", scope_names[w->scope]);
            svc_log_str(&l, "reason", uv_err_name(status));
            svc_log_int(&l, "events_written", w->written);
            svc_log_int(&l, "events_cancelled", not_written);
            if (w->unknown)
                svc_log_int(&l, "events_unknown", 1);
            svc_log_end(&l);
        }
    }
    rt_task_complete(&w->task, status);
}

static void writer_on_tx(rt_task *t, int status);
static void writer_on_released(rt_db_tx *tx);

static void writer_send(writer *w)
{
    rt_db_tx_init(&w->tx, w->db, NULL, writer_step, writer_on_released);
    w->tx_started = uv_hrtime();
    /* No signal here: the writer's own cancel forwards to the transaction, so that it has
     * exactly one source of cancellation and the writer always sees how it ended. */
    rt_task_start(&w->tx.task, NULL, writer_on_tx);
}

static void writer_on_next(rt_post *p)
{
    writer *w = rt_container_of(p, writer, next);

    if (rt_task_is_cancel_requested(&w->task))
        writer_finish(w, rt_task_cancel_reason(&w->task));
    else
        writer_send(w);
}

static void writer_on_released(rt_db_tx *tx)
{
    writer *w = rt_container_of(tx, writer, tx);

    if (w->last_status < 0 || w->written == w->events)
        writer_finish(w, w->last_status);
    else
        rt_post_submit(w->task.rt, &w->next, writer_on_next);
}

static void writer_on_tx(rt_task *t, int status)
{
    writer *w = rt_container_of(t, writer, tx.task);
    svc_log_line l;

    if (w->req != NULL)
        svc_request_add_db_time(w->req, uv_hrtime() - w->tx_started);
    if (w->tx.outcome == RT_DB_TX_COMMITTED) {
        /* Committed counts as written even when a cancellation came after COMMIT was sent. */
        w->written++;
        (*w->c->written_after)++;
        status = rt_task_is_cancel_requested(&w->task) && w->written < w->events
                     ? rt_task_cancel_reason(&w->task)
                     : 0;
    } else {
        w->unknown = w->tx.outcome == RT_DB_TX_UNKNOWN;
        if (status == 0)
            status = UV_EPROTO;
        if (status == RT_DB_ESQL && svc_log_begin(&l, SVC_LOG_WARN, "db_error")) {
            log_writer_ids(&l, w);
            svc_log_str(&l, "task_id", w->ev.task_id);
            svc_log_str(&l, "sqlstate", w->tx.result.sqlstate);
            svc_log_str(&l, "detail", rt_db_result_error(&w->tx.result));
            svc_log_end(&l);
        }
    }
    w->last_status = status;
    rt_task_release(t);
}

static int writer_start(rt_task *t)
{
    writer_send(rt_container_of(t, writer, task));
    return 0;
}

static void writer_cancel(rt_task *t, int reason)
{
    writer *w = rt_container_of(t, writer, task);

    /* Between two events (a post is queued) the post sees the request and stops. */
    if (w->tx.task.state == RT_TASK_RUNNING)
        rt_task_cancel(&w->tx.task, reason);
}

static const rt_task_vtable writer_vt = {
    .name = "welcome.writer",
    .start = writer_start,
    .cancel = writer_cancel,
    .release = hs__task_free,
};

/* The request-scope writer's end decides the response that waited for it. */
static void writer_done_in_request(rt_task *t, int status)
{
    writer *w = rt_container_of(t, writer, task);

    if (status < 0)
        svc_respond_uv_error(w->req, status);
}

/* Spawns the writer into the request scope (wait) or the service scope. Returns 0 or an error
 * (UV_ESHUTDOWN when the service scope is closing, UV_ENOMEM). */
static int writer_spawn(welcome_req *wr, const char *task_id)
{
    svc_request *req = wr->q.req;
    int scope = wr->a.wait ? SCOPE_REQUEST : SCOPE_SERVICE;
    writer *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return UV_ENOMEM;
    rt_task_init(&w->task, req->app->rt, &writer_vt);
    rt_post_init(&w->next);
    event_text_init(&w->ev, task_id, &wr->a, "after");
    w->db = req->app->db;
    w->req = scope == SCOPE_REQUEST ? req : NULL;
    w->scope = scope;
    w->c = &wr->s->c;
    w->events = wr->a.events;
    snprintf(w->request_id, sizeof(w->request_id), "%s", req->request_id);
    snprintf(w->trace_id, sizeof(w->trace_id), "%s", req->trace_id);
    snprintf(w->span_id, sizeof(w->span_id), "%s", req->span_id);
    if (scope == SCOPE_REQUEST)
        return rt_scope_spawn(req->scope, &w->task, writer_done_in_request);
    return rt_scope_spawn(req->app->service_scope, &w->task, NULL);
}

/* --- handler: the lookup, then the hand-off --------------------------------------------------- */

static int welcome_on_user(hs_query *q, const rt_db_result *r)
{
    welcome_req *w = rt_container_of(q, welcome_req, q);
    structured *s = w->s;
    char task_id[TASK_ID_MAX];
    const char *scope;
    int err;

    if (rt_db_result_rows(r) == 0) {
        hs__user_respond_missing(q->req, w->a.user_id);
        return 0;
    }
    /* The lookup may have won its race with the deadline by a hair: starting the work then would
     * only have it cancelled before its first event. */
    err = rt_cancel_is_fired(q->req->signal) ? q->req->signal->reason : 0;
    if (err == 0) {
        snprintf(task_id, sizeof(task_id), "%s-%" PRIu64, s->id_prefix, ++s->next_id);
        err = hs__is_after(q->req) ? writer_spawn(w, task_id) : detached_start(w, task_id);
    }
    if (err < 0) {
        svc_respond_uv_error(q->req, err);
        return err;
    }
    scope =
        !hs__is_after(q->req) ? "detached" : scope_names[w->a.wait ? SCOPE_REQUEST : SCOPE_SERVICE];
    hs__respond_json(
        q->req, w->a.wait ? 200 : 202,
        json_pack("{s:s, s:s, s:i}", "task_id", task_id, "scope", scope, "events", w->a.events));
    return 0;
}

/* The lookup listens to the request's signal itself, and the hand-off that follows it does not
 * wait for anything. */
static const hs_query_spec welcome_query = {
    .vt = HS_QUERY_LISTEN("welcome"),
    .sql = "SELECT 1 FROM users WHERE id = $1::bigint",
    .stmt = "hs_welcome_user",
    .nparams = 1,
    .plain_errors = true,
    .rows = welcome_on_user,
};

/* Reads and checks every input; on failure the 400 is set and UV_EINVAL returned. */
static int parse_args(svc_request *req, welcome_args *a)
{
    json_t *body = NULL;
    int64_t events = 0;
    int64_t delay = 0;
    int err = svc_request_param_id(req, "id", &a->user_id);

    a->wait = false;
    if (err == 0 && hs__is_after(req))
        err = svc_query_bool(req, "wait", false, &a->wait);
    if (err == 0)
        err = svc_request_json(req, &body);
    if (err == 0)
        err = svc_json_int(req, body, "events", 1, EVENTS_MAX, EVENTS_DEFAULT, &events);
    if (err == 0)
        err = svc_json_int(req, body, "delay_ms", 0, HS_DELAY_MAX_MS, DELAY_DEFAULT_MS, &delay);
    json_decref(body);
    a->events = (int)events;
    a->delay_ms = (int)delay;
    return err;
}

static int welcome(svc_request *req, void *state, rt_task **task_out)
{
    welcome_args a;
    welcome_req *w;

    if (parse_args(req, &a) < 0 || !hs__has_db(req))
        return 0;
    w = (welcome_req *)hs__query_new(req, &welcome_query, sizeof(*w), task_out);
    if (w == NULL)
        return UV_ENOMEM;
    w->s = state;
    w->a = a;
    hs__int_text(w->q.text[0], a.user_id);
    return 0;
}

/* --- rows ------------------------------------------------------------------------------------- */

static const svc_route rows[] = {
    {"POST", "/before/users/{id}/welcome", SVC_VARIANT_BEFORE,
     "fire-and-forget: writes audit events from a detached task that shutdown silently drops",
     welcome, NULL, 0},
    {"POST", "/after/users/{id}/welcome", SVC_VARIANT_AFTER,
     "scoped background work: ?wait=true in the request scope, else the service scope, "
     "drained then cancelled (and reported) at shutdown",
     welcome, NULL, 0},
};

int hs_structured_register(svc_router *r, svc_app *app)
{
    /* Requests and scoped writers are gone before the root scope closes; detached chains only
     * hold copies and pointers into the metrics registry, never this state. */
    structured *s = rt_scope_alloc(app->root_scope, sizeof(*s), NULL);
    int err;

    if (s == NULL)
        return UV_ENOMEM;
    /* Task ids must not repeat across restarts (audit_events keeps them), so each process
     * numbers its tasks under a random prefix. */
    if (hs__random_hex(s->id_prefix, 8) < 0)
        snprintf(s->id_prefix, sizeof(s->id_prefix), "%016" PRIx64, uv_hrtime());
    err = counters_register(s, app->metrics);
    return err < 0 ? err : HS_ROUTES_ADD(r, rows, s);
}

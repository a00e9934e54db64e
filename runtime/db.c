/* SPDX-License-Identifier: MIT */
/*
 * db.c - the pool: configuration, opening and closing, the bounded FIFO acquisition queue, where
 * each request goes, the query task, and the statistics.
 *
 * The main idea is that acquisition and sending are one step. A request never holds a
 * connection while waiting for anything but the database: it sits in the queue until a
 * connection can take it, and is then sent at once. Where it goes:
 *
 *   1. an idle connection, if there is one (no pipelining while a connection is free);
 *   2. for a query, the placeable connection with the fewest requests in flight, up to
 *      pipeline_depth, unless its oldest statement has been running for pipeline_stall_us (a
 *      slow statement would hold everything behind it, while the queue lets the query take
 *      whichever connection frees up first);
 *   3. otherwise the tail of the queue, or UV_EBUSY when queue_limit requests already wait.
 *
 * The queue is strictly FIFO: a transaction at its head (which needs an idle connection) holds
 * back the queries behind it, so a steady stream of pipelined queries cannot starve it.
 *
 * Invariants:
 *  P1. A request is in exactly one place: the queue, a connection's ring (or held connection),
 *      or completed.
 *  P2. A request is failed fast (never queued) while the pool is closing or the database is
 *      known to be down, and the queue is emptied at the moment either becomes true.
 *  P3. The pool's memory is freed only after every connection is CLOSED, every thread-pool job
 *      has come back and every handle has closed, so no libuv or runtime callback can reach it.
 */
#include "db_int.h"

#include <stdio.h>
#include <string.h>

const double rt_db_wait_bounds_s[RT_DB_WAIT_BUCKETS] = {
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
};

void rt_db_config_default(rt_db_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->pool_size = 10;
    cfg->queue_limit = 1000;
    cfg->pipeline_depth = 8;
    cfg->pipeline_stall_us = 5000;
    cfg->statement_timeout_ms = 30000;
    cfg->idle_in_tx_timeout_ms = 60000;
    cfg->connect_timeout_ms = 5000;
    cfg->commit_timeout_ms = 5000;
    cfg->cancel_timeout_ms = 2000;
    cfg->backoff_min_ms = 50;
    cfg->backoff_max_ms = 2000;
    cfg->idle_check_ms = 10000;
    cfg->idle_check_timeout_ms = 5000;
    cfg->keepalive_idle_s = 10;
    cfg->keepalive_interval_s = 5;
    cfg->keepalive_count = 3;
    cfg->tcp_user_timeout_ms = 25000;
}

char *rt__db_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *copy = rt_malloc(n);

    if (copy != NULL)
        memcpy(copy, s, n);
    return copy;
}

static db_conn *conn_of_slot(rt_db *db, const db_slot *s)
{
    return &db->conns[(size_t)(s - db->slots) / db->cfg.pipeline_depth];
}

/* --- configuration --------------------------------------------------------------------------- */

static bool is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return uv_inet_pton(AF_INET, host, buf) == 0 || uv_inet_pton(AF_INET6, host, buf) == 0;
}

static int set_copy(char **dst, const char *src)
{
    if (src == NULL)
        return 0;
    *dst = rt__db_strdup(src);
    return *dst != NULL ? 0 : UV_ENOMEM;
}

/*
 * Decides how each attempt reaches the server. A host name is resolved with uv_getaddrinfo
 * before each attempt (libpq would resolve it with a blocking getaddrinfo inside
 * PQconnectPoll); an address literal, a socket directory or an explicit hostaddr go to libpq
 * as they are.
 */
static int parse_host(rt_db *db, const char *host, const char *hostaddr)
{
    int err = 0;

    if ((host != NULL && strchr(host, ',') != NULL) ||
        (hostaddr != NULL && strchr(hostaddr, ',') != NULL))
        return UV_EINVAL;
    if (hostaddr != NULL && *hostaddr != '\0') {
        err = set_copy(&db->hostaddr, hostaddr);
        if (err == 0 && host != NULL && *host != '\0')
            err = set_copy(&db->host_literal, host);
        return err;
    }
    if (host == NULL || *host == '\0')
        return 0;
    if (host[0] == '/' || host[0] == '@')
        return set_copy(&db->host_literal, host);
    if (is_ip_literal(host)) {
        err = set_copy(&db->host_literal, host);
        if (err == 0)
            err = set_copy(&db->hostaddr, host);
        return err;
    }
    return set_copy(&db->host, host);
}

static int build_options(rt_db *db, const char *user_options)
{
    unsigned stmt = db->cfg.statement_timeout_ms;
    unsigned idle = db->cfg.idle_in_tx_timeout_ms;
    char buf[512];
    int n = 0;

    /* A pooler in transaction mode shares server sessions, so it refuses session options in
     * the startup packet ("unsupported startup parameter: options"). */
    if (db->cfg.transaction_pooler) {
        stmt = 0;
        idle = 0;
    }

    if (stmt > 0)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "-c statement_timeout=%u ", stmt);
    if (idle > 0)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n,
                      "-c idle_in_transaction_session_timeout=%u ", idle);
    if (user_options != NULL && (size_t)n + strlen(user_options) + 1 > sizeof(buf))
        return UV_EINVAL;
    snprintf(buf + n, sizeof(buf) - (size_t)n, "%s", user_options != NULL ? user_options : "");
    db->options = rt__db_strdup(buf);
    return db->options != NULL ? 0 : UV_ENOMEM;
}

/* Frees what parse_conninfo built (safe on a partly built pool). */
static void free_conninfo(rt_db *db)
{
    rt_free(db->keys);
    rt_free(db->vals);
    rt_free(db->app_name);
    rt_free(db->options);
    rt_free(db->host);
    rt_free(db->host_literal);
    rt_free(db->hostaddr);
    if (db->parsed != NULL)
        PQconninfoFree(db->parsed);
}

static bool has_key(const rt_db *db, const char *key)
{
    for (size_t i = 0; i < db->nkeys; i++) {
        if (strcmp(db->keys[i], key) == 0)
            return true;
    }
    return false;
}

/* TCP keepalive and tcp_user_timeout, where conninfo does not set them: a peer that vanished
 * without a reset is found by the kernel, and unacknowledged data gives up in bounded time. */
static void add_keepalives(rt_db *db, const rt_db_config *cfg)
{
    static const char *const keys[DB_KEEPALIVE_KEYS] = {"keepalives", "keepalives_idle",
                                                        "keepalives_interval", "keepalives_count",
                                                        "tcp_user_timeout"};
    uint32_t vals[DB_KEEPALIVE_KEYS] = {1, cfg->keepalive_idle_s, cfg->keepalive_interval_s,
                                        cfg->keepalive_count, cfg->tcp_user_timeout_ms};

    for (size_t i = 0; i < DB_KEEPALIVE_KEYS; i++) {
        if (vals[i] == 0 || has_key(db, keys[i]))
            continue;
        snprintf(db->keepalive_vals[i], sizeof(db->keepalive_vals[i]), "%u", (unsigned)vals[i]);
        db->keys[db->nkeys] = keys[i];
        db->vals[db->nkeys++] = db->keepalive_vals[i];
    }
}

static int parse_conninfo(rt_db *db, const rt_db_config *cfg)
{
    const char *host = NULL;
    const char *hostaddr = NULL;
    const char *app = NULL;
    const char *options = NULL;
    char *errmsg = NULL;
    size_t n = 0;
    int err;

    db->parsed = PQconninfoParse(cfg->conninfo, &errmsg);
    if (db->parsed == NULL) {
        /* libpq reports out-of-memory as a parse failure without a message. */
        err = errmsg != NULL ? UV_EINVAL : UV_ENOMEM;
        PQfreemem(errmsg);
        return err;
    }
    for (PQconninfoOption *o = db->parsed; o->keyword != NULL; o++)
        n++;
    db->keys = rt_calloc(n + 3 + DB_KEEPALIVE_KEYS, sizeof(*db->keys));
    db->vals = rt_calloc(n + 3 + DB_KEEPALIVE_KEYS, sizeof(*db->vals));
    if (db->keys == NULL || db->vals == NULL)
        return UV_ENOMEM;
    for (PQconninfoOption *o = db->parsed; o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "application_name") == 0)
            app = o->val;
        else if (strcmp(o->keyword, "options") == 0)
            options = o->val;
        else if (strcmp(o->keyword, "connect_timeout") != 0) {
            /* connect_timeout is replaced by the pool's own timer (it would be ignored by the
             * non-blocking handshake anyway). */
            db->keys[db->nkeys] = o->keyword;
            db->vals[db->nkeys++] = o->val;
        }
    }
    if (cfg->application_name != NULL)
        app = cfg->application_name;
    err = set_copy(&db->app_name, app != NULL ? app : "hindsight");
    if (err == 0)
        err = build_options(db, options);
    if (err == 0)
        err = parse_host(db, host, hostaddr);
    if (err < 0)
        return err;
    add_keepalives(db, cfg);
    db->keys[db->nkeys] = "application_name";
    db->vals[db->nkeys++] = db->app_name;
    db->keys[db->nkeys] = "options";
    db->vals[db->nkeys++] = db->options;
    return 0;
}

static bool config_is_valid(const rt_db_config *cfg)
{
    return cfg->conninfo != NULL && cfg->pool_size >= 1 && cfg->pool_size <= 1000 &&
           cfg->pipeline_depth >= 1 && cfg->pipeline_depth <= 1024 && cfg->connect_timeout_ms > 0 &&
           cfg->commit_timeout_ms > 0 && cfg->cancel_timeout_ms > 0 && cfg->backoff_min_ms > 0 &&
           cfg->backoff_max_ms >= cfg->backoff_min_ms &&
           (cfg->idle_check_ms == 0 || cfg->idle_check_timeout_ms > 0);
}

/* --- open and close -------------------------------------------------------------------------- */

int rt_db_open(rt_db **out, rt_runtime *rt, const rt_db_config *cfg)
{
    rt_db *db;
    int err;

    if (!config_is_valid(cfg))
        return UV_EINVAL;
    db = rt_calloc(1, sizeof(*db));
    if (db == NULL)
        return UV_ENOMEM;
    db->rt = rt;
    db->loop = rt->loop;
    db->cfg = *cfg;
    db->cfg.conninfo = NULL;         /* borrowed: only the parsed form is kept */
    db->cfg.application_name = NULL; /* likewise: db->app_name is the copy */
    /* PgBouncer 1.18 in transaction mode hands a server session back to its pool at the first
     * ReadyForQuery, even with more pipelined statements still running on it: the next client
     * would read their results as its own. One statement at a time is the only safe depth. */
    if (cfg->transaction_pooler)
        db->cfg.pipeline_depth = 1;
    rt_list_init(&db->queue);
    db->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)db;
    if (db->rng == 0)
        db->rng = 1;

    err = parse_conninfo(db, cfg);
    if (err < 0)
        goto out_free_conninfo;
    db->conns = rt_calloc(cfg->pool_size, sizeof(*db->conns));
    if (db->conns == NULL) {
        err = UV_ENOMEM;
        goto out_free_conninfo;
    }
    db->slots = rt_calloc(cfg->pool_size * db->cfg.pipeline_depth, sizeof(*db->slots));
    if (db->slots == NULL) {
        err = UV_ENOMEM;
        goto out_free_conns;
    }
    /* Nothing below can fail: from here on the pool exists and connects in the background. */
    for (size_t i = 0; i < cfg->pool_size; i++)
        rt__db_conn_init(&db->conns[i], db, &db->slots[i * db->cfg.pipeline_depth]);
    for (size_t i = 0; i < cfg->pool_size; i++)
        rt__db_conn_start(&db->conns[i]);
    *out = db;
    return 0;

out_free_conns:
    rt_free(db->conns);
out_free_conninfo:
    free_conninfo(db);
    rt_free(db);
    return err;
}

static void timer_closed(uv_handle_t *h)
{
    rt_db *db = (rt_db *)h->data;

    if (--db->timers > 0)
        return;
    if (db->close_cb != NULL)
        db->close_cb(db, db->close_arg);
    rt_free(db->slots);
    rt_free(db->conns);
    free_conninfo(db);
    rt_free(db);
}

void rt__db_maybe_closed(rt_db *db)
{
    if (!db->closing || db->finalizing || db->jobs > 0 || db->watches > 0)
        return;
    for (size_t i = 0; i < db->cfg.pool_size; i++) {
        if (db->conns[i].state != CONN_CLOSED)
            return;
    }
    /* Last step (P3): the timers close, and the last close callback frees the pool. */
    db->finalizing = true;
    for (size_t i = 0; i < db->cfg.pool_size; i++) {
        db->conns[i].timer.data = db;
        uv_close((uv_handle_t *)&db->conns[i].timer, timer_closed);
    }
}

void rt_db_close(rt_db *db, rt_db_close_cb cb, void *arg)
{
    assert(!db->closing);
    db->closing = true;
    db->close_cb = cb;
    db->close_arg = arg;
    rt__db_fail_queue(db, RT_DB_ESHUTDOWN);
    /* Work in flight is cancelled through the tasks' own cancel paths, so a transaction whose
     * COMMIT was sent is still awaited and every connection is cleaned up the usual way. */
    for (size_t i = 0; i < db->cfg.pool_size; i++) {
        db_conn *c = &db->conns[i];

        if (c->state != CONN_READY)
            continue;
        for (size_t k = 0; k < c->count; k++) {
            db_slot *s = db_conn_slot(c, k);

            if (s->kind == SLOT_QUERY)
                rt_task_cancel(&s->q->task, UV_ECANCELED);
        }
        if (c->tx != NULL)
            rt_task_cancel(&c->tx->task, UV_ECANCELED);
    }
    for (size_t i = 0; i < db->cfg.pool_size; i++)
        rt__db_conn_close(&db->conns[i]);
    rt__db_maybe_closed(db);
}

bool rt_db_is_up(const rt_db *db)
{
    return db->ready > 0;
}

void rt_db_stats_get(const rt_db *db, rt_db_stats *out)
{
    *out = db->st;
    out->pool_size = db->cfg.pool_size;
    out->queue_limit = db->cfg.queue_limit;
    out->queue_depth = db->queued;
    out->in_flight = db->in_flight;
    out->conns_idle = 0;
    out->conns_busy = 0;
    out->conns_connecting = 0;
    out->conns_broken = 0;
    for (size_t i = 0; i < db->cfg.pool_size; i++) {
        const db_conn *c = &db->conns[i];

        switch (c->state) {
        case CONN_READY:
            if (rt__db_conn_is_idle(c))
                out->conns_idle++;
            else
                out->conns_busy++;
            break;
        case CONN_RESOLVING:
        case CONN_CONNECTING:
            out->conns_connecting++;
            break;
        default:
            out->conns_broken++;
            break;
        }
    }
}

/* --- the queue ------------------------------------------------------------------------------- */

static void record_wait(rt_db *db, rt_db__wait *w)
{
    double s = (double)(uv_hrtime() - w->since) / 1e9;

    for (size_t i = 0; i < RT_DB_WAIT_BUCKETS; i++) {
        if (s <= rt_db_wait_bounds_s[i])
            db->st.wait_le[i]++;
    }
    db->st.wait_count++;
    db->st.wait_sum_s += s;
}

/* Where a request can go now (see the file comment), or NULL. */
static db_conn *pick(rt_db *db, uint8_t kind)
{
    uint64_t stall = (uint64_t)db->cfg.pipeline_stall_us * 1000;
    uint64_t now = 0;
    db_conn *best = NULL;

    for (size_t i = 0; i < db->cfg.pool_size; i++) {
        db_conn *c = &db->conns[i];

        if (!rt__db_conn_is_placeable(c))
            continue;
        if (c->count == 0)
            return c;
        if (kind != DB_WAIT_QUERY || (best != NULL && c->count >= best->count))
            continue;
        if (stall > 0) {
            if (now == 0)
                now = uv_hrtime();
            if (now - c->slots[c->head].sent_ns >= stall)
                continue;
        }
        best = c;
    }
    return best;
}

static void place(rt_db *db, rt_db__wait *w, db_conn *c)
{
    record_wait(db, w);
    db->in_flight++;
    if (w->kind == DB_WAIT_TX) {
        rt__db_tx_place(rt_container_of(w, rt_db_tx, wait), c);
        return;
    }
    rt_db_query *q = rt_container_of(w, rt_db_query, wait);

    if (c->count > 0)
        db->st.pipelined++;
    /* On a send failure the connection is discarded and q fails through its slot. */
    rt__db_conn_send(c, SLOT_QUERY, q, q->name, q->sql, q->nparams, q->params, true);
}

int rt__db_submit(rt_db *db, rt_db__wait *w)
{
    db_conn *c;

    if (db->closing)
        return RT_DB_ESHUTDOWN;
    if (db->down) {
        db->st.rejected_down++;
        return RT_DB_EDOWN;
    }
    w->since = uv_hrtime();
    if (rt_list_is_empty(&db->queue)) {
        c = pick(db, w->kind);
        if (c != NULL) {
            place(db, w, c);
            return 0;
        }
    }
    if (db->queued >= db->cfg.queue_limit) {
        db->st.rejected_busy++;
        return RT_DB_EQUEUE_FULL;
    }
    rt_list_push_back(&db->queue, &w->link);
    db->queued++;
    return 0;
}

void rt__db_unqueue(rt_db *db, rt_db__wait *w)
{
    rt_list_remove(&w->link);
    db->queued--;
}

void rt__db_dispatch(rt_db *db)
{
    while (!rt_list_is_empty(&db->queue) && !db->closing) {
        rt_db__wait *w = rt_container_of(db->queue.next, rt_db__wait, link);
        db_conn *c = pick(db, w->kind);

        if (c == NULL)
            return;
        rt__db_unqueue(db, w);
        place(db, w, c);
    }
}

void rt__db_fail_queue(rt_db *db, int err)
{
    rt_list local;

    rt_list_move(&db->queue, &local);
    db->queued = 0;
    while (!rt_list_is_empty(&local)) {
        rt_db__wait *w = rt_container_of(local.next, rt_db__wait, link);

        rt_list_remove(&w->link);
        if (err == RT_DB_EDOWN)
            db->st.rejected_down++;
        if (w->kind == DB_WAIT_TX) {
            rt_task_complete(&rt_container_of(w, rt_db_tx, wait)->task, err);
        } else {
            rt_db_query *q = rt_container_of(w, rt_db_query, wait);

            rt__db_result_set(&q->result, NULL,
                              err == RT_DB_EDOWN ? "database unavailable" : "pool closing");
            rt_task_complete(&q->task, err);
        }
    }
}

/* --- the query task -------------------------------------------------------------------------- */

void rt__db_query_finish(rt_db_query *q, PGresult *res, int err, const char *detail)
{
    rt_db *db = q->db;

    if (err == 0) {
        if (res == NULL)
            err = RT_DB_ELOST;
        else if (PQresultStatus(res) != PGRES_TUPLES_OK &&
                 PQresultStatus(res) != PGRES_COMMAND_OK &&
                 PQresultStatus(res) != PGRES_EMPTY_QUERY)
            err = rt__db_result_status(res);
    }
    if (err == 0)
        db->st.queries_ok++;
    else if (err == RT_DB_ESQL)
        db->st.errors_sql++;
    else if (err == UV_ETIMEDOUT && res != NULL)
        db->st.errors_timeout++;
    else
        db->st.errors_lost++;
    rt__db_result_set(&q->result, res, res != NULL ? NULL : detail);
    rt_task_complete(&q->task, err);
}

static int query_start(rt_task *t)
{
    rt_db_query *q = rt_container_of(t, rt_db_query, task);

    return rt__db_submit(q->db, &q->wait);
}

/* Completes at once; the connection drops the statement's result when it comes (or cancels the
 * statement, when it runs alone: see rt__db_conn_orphan). */
static void query_cancel(rt_task *t, int reason)
{
    rt_db_query *q = rt_container_of(t, rt_db_query, task);
    rt_db *db = q->db;

    db->st.errors_cancelled++;
    if (q->slot == NULL) {
        rt__db_unqueue(db, &q->wait);
    } else {
        db_slot *s = q->slot;

        q->slot = NULL;
        db->in_flight--;
        rt__db_conn_orphan(conn_of_slot(db, s), s);
    }
    rt_task_complete(t, reason);
}

static void query_release(rt_task *t)
{
    rt_db_query *q = rt_container_of(t, rt_db_query, task);

    rt__db_result_clear(&q->result);
    if (q->release_cb != NULL)
        q->release_cb(q);
}

static const rt_task_vtable query_vt = {
    .name = "db.query",
    .start = query_start,
    .cancel = query_cancel,
    .release = query_release,
};

void rt_db_query_init(rt_db_query *q, rt_db *db, const char *sql, int nparams,
                      const char *const *params, rt_db_query_release_cb release_cb)
{
    assert(nparams >= 0 && nparams <= RT_DB_MAX_PARAMS);
    rt_task_init(&q->task, db->rt, &query_vt);
    memset(&q->result, 0, sizeof(q->result));
    q->db = db;
    rt_list_init(&q->wait.link);
    q->wait.kind = DB_WAIT_QUERY;
    q->wait.since = 0;
    q->name = NULL;
    q->sql = sql;
    q->nparams = nparams;
    for (int i = 0; i < nparams; i++)
        q->params[i] = params[i];
    q->slot = NULL;
    q->release_cb = release_cb;
}

void rt_db_query_prepare_as(rt_db_query *q, const char *name)
{
    assert(q->task.state == RT_TASK_INIT);
    q->name = name;
}

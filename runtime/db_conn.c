/* SPDX-License-Identifier: MIT */
/*
 * db_conn.c - one pooled PostgreSQL connection on the loop: connecting without blocking, the
 * pipeline of requests in flight, loss detection, PQcancel and PQfinish on the thread pool, and
 * reconnection with exponential backoff and jitter.
 *
 * The main idea: a connection is a small state machine driven by three event sources (its
 * socket's uv_poll, its one timer, and the getaddrinfo answer), and every request on it is a
 * slot in a FIFO ring that mirrors libpq's own command queue one to one: each slot is
 * [Parse] + Bind/Execute + Sync, so each has exactly one PGRES_PIPELINE_SYNC that ends it, and an
 * error in one slot aborts nothing but that slot.
 *
 *   state        what holds                                         left by
 *   BACKOFF      no PGconn, no watch; timer armed (or stopped while  conn_on_timer -> attempt
 *                closing)
 *   RESOLVING    no PGconn; c->resolve in flight; timer = deadline   conn_on_resolved
 *   CONNECTING   PGconn handshaking; watch on its current socket     conn_on_poll (OK / FAILED),
 *                                                                    conn_on_timer (timeout)
 *   READY        PGconn in pipeline mode, non-blocking; watch        rt__db_conn_discard,
 *                readable (and writable while libpq has output)      conn_finish (pool closing)
 *   CLOSED       nothing left but the timer, closed with the pool    (final)
 *
 * Connections in unknown state are never reused: any surprise (a failed send or flush, a poll
 * error, libpq and the ring out of step, a ROLLBACK that fails, a bound that expires) goes
 * through rt__db_conn_discard, which fails what was on the connection and starts over.
 *
 * What it deliberately does not do: choose which request goes where (db.c does), or know what a
 * transaction is beyond handing its slots' results to db_tx.c.
 */
#include "db_int.h"

#include <stdio.h>
#include <string.h>

/* A connection that dies sooner than this after it came up counts as a failed attempt, so a
 * server that accepts and then drops every connection does not get a tight reconnect loop. */
#define DB_MIN_HEALTHY_MS 1000

static void conn_on_poll(uv_poll_t *h, int status, int events);
static void conn_on_timer(uv_timer_t *t);
static void conn_attempt(db_conn *c);
static void conn_attempt_failed(db_conn *c, int err);

static size_t conn_cap(const db_conn *c)
{
    return c->db->cfg.pipeline_depth;
}

static void silent_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* --- the socket watch ------------------------------------------------------------------------ */

static void watch_closed(uv_handle_t *h)
{
    db_watch *w = rt_container_of((uv_poll_t *)h, db_watch, poll);
    rt_db *db = (rt_db *)h->data;

    rt_free(w);
    db->watches--;
    rt__db_maybe_closed(db);
}

/* Detaches and closes the watch. uv_close stops polling at once, so libpq may close the socket
 * right after this returns. */
static void conn_unwatch(db_conn *c)
{
    db_watch *w = c->watch;

    if (w == NULL)
        return;
    w->conn = NULL;
    uv_close((uv_handle_t *)&w->poll, watch_closed);
    c->watch = NULL;
    c->events = 0;
}

/*
 * Watches PQsocket for events. libpq may switch sockets between handshake steps (another address
 * of the host, or the SSL/GSS negotiation falling back), so the socket is re-read every time. A
 * new socket may even reuse the old descriptor number, which epoll would no longer know: `fresh`
 * (set during the handshake) stops and restarts the watch so that libuv registers it again.
 */
static int conn_watch(db_conn *c, int events, bool fresh)
{
    int fd = PQsocket(c->pg);
    db_watch *w;
    int err;

    if (fd < 0)
        return UV_EBADF;
    if (c->watch != NULL && c->watch->fd != fd)
        conn_unwatch(c);
    w = c->watch;
    if (w == NULL) {
        w = rt_malloc(sizeof(*w));
        if (w == NULL)
            return UV_ENOMEM;
        err = uv_poll_init(c->db->loop, &w->poll, fd);
        if (err < 0) {
            rt_free(w);
            return err;
        }
        w->poll.data = c->db;
        w->conn = c;
        w->fd = fd;
        c->watch = w;
        c->events = 0;
        c->db->watches++;
    } else if (fresh && c->events != 0) {
        uv_poll_stop(&w->poll);
        c->events = 0;
    }
    if (events == c->events)
        return 0;
    err = uv_poll_start(&w->poll, events, conn_on_poll);
    if (err < 0)
        return err;
    c->events = events;
    return 0;
}

/* --- blocking libpq calls on the thread pool ------------------------------------------------ */

static int job_cancel_fn(rt_work *w)
{
    db_job *j = w->arg;
    char errbuf[256];

    return PQcancel(j->cancel, errbuf, sizeof(errbuf)) ? 0 : UV_EIO;
}

static int job_finish_fn(rt_work *w)
{
    db_job *j = w->arg;

    PQfinish(j->pg);
    return 0;
}

static void job_done(rt_task *t, int status)
{
    db_job *j = rt_container_of(t, db_job, work.task);
    db_conn *c = j->conn;
    rt_db *db = c->db;
    bool was_cancel = j->cancel != NULL;

    (void)status;
    if (j->cancel != NULL)
        PQfreeCancel(j->cancel);
    j->cancel = NULL;
    j->pg = NULL;
    j->busy = false;
    rt_task_release(t);
    db->jobs--;
    /* The connection was not placeable while its cancel was in flight; it may be now. */
    if (was_cancel && c->state == CONN_READY)
        rt__db_conn_settle(c);
    rt__db_maybe_closed(db);
}

static void job_start(db_conn *c, db_job *j, rt_work_fn fn)
{
    j->conn = c;
    j->busy = true;
    rt_work_init(&j->work, c->db->rt, fn, j);
    c->db->jobs++;
    rt_task_start(&j->work.task, NULL, job_done);
}

/*
 * Ends a PGconn. One that never reached CONNECTION_OK (or has broken) sends nothing on PQfinish,
 * so that runs here; a live one sends a Terminate message, which goes to the thread pool. When
 * the connection's finish job is still busy with the previous PGconn (a connection that flaps),
 * the non-blocking flag set on every live connection makes libpq's flush give up rather than
 * wait, so PQfinish on the loop is the bounded fallback.
 */
static void conn_finish_pg(db_conn *c, PGconn *pg)
{
    if (PQstatus(pg) != CONNECTION_OK || c->finish_job.busy) {
        PQfinish(pg);
        return;
    }
    c->finish_job.pg = pg;
    job_start(c, &c->finish_job, job_finish_fn);
}

/* Interrupts the statement running on c with PQcancel, off the loop, bounded by cancel_timeout. */
void rt__db_conn_cancel_running(db_conn *c)
{
    PGcancel *pc;

    assert(c->state == CONN_READY);
    if (c->cancel_job.busy)
        return;
    pc = PQgetCancel(c->pg);
    if (pc == NULL)
        return; /* out of memory: the bound below still discards the connection in time */
    c->cancel_job.cancel = pc;
    job_start(c, &c->cancel_job, job_cancel_fn);
    c->db->st.cancels_sent++;
    rt__db_conn_arm_bound(c, BOUND_CANCEL, c->db->cfg.cancel_timeout_ms);
}

/* --- prepared statement names ---------------------------------------------------------------- */

static char *conn_find_name(const db_conn *c, const char *name)
{
    for (size_t i = 0; i < c->nnames; i++) {
        if (strcmp(c->names[i], name) == 0)
            return c->names[i];
    }
    return NULL;
}

static char *conn_add_name(db_conn *c, const char *name)
{
    char *copy;

    if (c->nnames == c->names_cap) {
        size_t cap = c->names_cap ? c->names_cap * 2 : 8;
        char **grown = rt_malloc(cap * sizeof(*grown));

        if (grown == NULL)
            return NULL;
        if (c->nnames > 0)
            memcpy(grown, c->names, c->nnames * sizeof(*grown));
        rt_free(c->names);
        c->names = grown;
        c->names_cap = cap;
    }
    copy = rt__db_strdup(name);
    if (copy == NULL)
        return NULL;
    c->names[c->nnames++] = copy;
    return copy;
}

static void conn_forget_name(db_conn *c, const char *name)
{
    for (size_t i = 0; i < c->nnames; i++) {
        if (c->names[i] == name) {
            rt_free(c->names[i]);
            c->names[i] = c->names[--c->nnames];
            return;
        }
    }
}

static void conn_forget_names(db_conn *c)
{
    for (size_t i = 0; i < c->nnames; i++)
        rt_free(c->names[i]);
    rt_free(c->names);
    c->names = NULL;
    c->nnames = 0;
    c->names_cap = 0;
}

/* --- connecting ------------------------------------------------------------------------------ */

static uint64_t conn_backoff_ms(db_conn *c)
{
    rt_db *db = c->db;
    uint64_t d;
    unsigned shift;

    if (c->failures == 0)
        return 0;
    shift = c->failures - 1 > 16 ? 16 : c->failures - 1;
    d = (uint64_t)db->cfg.backoff_min_ms << shift;
    if (d > db->cfg.backoff_max_ms)
        d = db->cfg.backoff_max_ms;
    /* Jitter in [d/2, d], so connections that failed together do not retry together. */
    db->rng ^= db->rng << 13;
    db->rng ^= db->rng >> 7;
    db->rng ^= db->rng << 17;
    return d / 2 + db->rng % (d / 2 + 1);
}

static void conn_schedule(db_conn *c)
{
    c->state = CONN_BACKOFF;
    uv_timer_start(&c->timer, conn_on_timer, conn_backoff_ms(c), 0);
}

static void conn_closed(db_conn *c)
{
    c->state = CONN_CLOSED;
    rt__db_maybe_closed(c->db);
}

static void conn_ready(db_conn *c)
{
    rt_db *db = c->db;

    assert(c->state == CONN_CONNECTING);
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        conn_attempt_failed(c, UV_EPROTO);
        return;
    }
    uv_timer_stop(&c->timer);
    if (conn_watch(c, UV_READABLE, false) < 0) {
        conn_attempt_failed(c, UV_ENOMEM);
        return;
    }
    c->state = CONN_READY;
    c->bound = BOUND_NONE;
    c->ready_at = uv_now(db->loop);
    db->ready++;
    db->down = false;
    db->st.connects_ok++;
    /* The database answers again: whoever is waiting out a backoff tries now. */
    for (size_t i = 0; i < db->cfg.pool_size; i++) {
        db_conn *o = &db->conns[i];

        if (o->state == CONN_BACKOFF && o->failures > 0) {
            o->failures = 0;
            uv_timer_start(&o->timer, conn_on_timer, 0, 0);
        }
    }
    rt__db_dispatch(db);
}

static void conn_connect(db_conn *c, const char *host, const char *hostaddr)
{
    rt_db *db = c->db;
    const char *keys[64];
    const char *vals[64];
    size_t n = db->nkeys;

    assert(n + 3 <= sizeof(keys) / sizeof(keys[0]));
    memcpy(keys, db->keys, n * sizeof(*keys));
    memcpy(vals, db->vals, n * sizeof(*vals));
    if (host != NULL) {
        keys[n] = "host";
        vals[n++] = host;
    }
    if (hostaddr != NULL) {
        keys[n] = "hostaddr";
        vals[n++] = hostaddr;
    }
    keys[n] = NULL;
    vals[n] = NULL;

    c->pg = PQconnectStartParams(keys, vals, 0);
    if (c->pg == NULL) {
        conn_attempt_failed(c, UV_ENOMEM);
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_attempt_failed(c, UV_ECONNREFUSED);
        return;
    }
    PQsetNoticeProcessor(c->pg, silent_notice, NULL);
    c->state = CONN_CONNECTING;
    /* libpq's rule: after PQconnectStart, act as if PQconnectPoll had asked for writability. */
    if (conn_watch(c, UV_WRITABLE, true) < 0)
        conn_attempt_failed(c, UV_ENOMEM);
}

/*
 * Gives libpq every address of the host at once (host and hostaddr as parallel lists), so it
 * tries them in turn inside the handshake: `localhost` may answer ::1 first where the server
 * listens on 127.0.0.1 only.
 */
static void conn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    db_conn *c = rt_container_of(req, db_conn, resolve);
    rt_db *db = c->db;
    char hosts[1024];
    char addrs[8 * (INET6_ADDRSTRLEN + 1)];
    size_t hl = 0;
    size_t al = 0;
    size_t hostlen = strlen(db->host);

    assert(c->state == CONN_RESOLVING);
    if (db->closing) {
        uv_freeaddrinfo(res);
        uv_timer_stop(&c->timer);
        conn_closed(c);
        return;
    }
    if (status < 0) {
        uv_freeaddrinfo(res);
        conn_attempt_failed(c, status == UV_ECANCELED ? UV_ETIMEDOUT : status);
        return;
    }
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        char one[INET6_ADDRSTRLEN];
        int err;

        if (ai->ai_family == AF_INET)
            err = uv_ip4_name((struct sockaddr_in *)ai->ai_addr, one, sizeof(one));
        else if (ai->ai_family == AF_INET6)
            err = uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, one, sizeof(one));
        else
            continue;
        if (err < 0 || al + strlen(one) + 2 > sizeof(addrs) || hl + hostlen + 2 > sizeof(hosts))
            break;
        al += (size_t)snprintf(addrs + al, sizeof(addrs) - al, "%s%s", al ? "," : "", one);
        hl += (size_t)snprintf(hosts + hl, sizeof(hosts) - hl, "%s%s", hl ? "," : "", db->host);
    }
    uv_freeaddrinfo(res);
    if (al == 0) {
        conn_attempt_failed(c, UV_EAI_NONAME);
        return;
    }
    conn_connect(c, hosts, addrs);
}

static void conn_attempt(db_conn *c)
{
    rt_db *db = c->db;
    struct addrinfo hints;
    int err;

    assert(c->state == CONN_BACKOFF);
    uv_timer_start(&c->timer, conn_on_timer, db->cfg.connect_timeout_ms, 0);
    if (db->host == NULL) {
        c->state = CONN_CONNECTING;
        conn_connect(c, db->host_literal, db->hostaddr);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->state = CONN_RESOLVING;
    err = uv_getaddrinfo(db->loop, &c->resolve, conn_on_resolved, db->host, NULL, &hints);
    if (err < 0)
        conn_attempt_failed(c, err);
}

static void conn_attempt_failed(db_conn *c, int err)
{
    rt_db *db = c->db;

    (void)err;
    uv_timer_stop(&c->timer);
    conn_unwatch(c);
    if (c->pg != NULL) {
        PQfinish(c->pg); /* never established: sends nothing, cannot block */
        c->pg = NULL;
    }
    db->st.connects_failed++;
    c->failures++;
    if (db->closing) {
        conn_closed(c);
        return;
    }
    /* No connection works and the database just refused another one: it is down. Waiting
     * requests fail now rather than at their deadlines, and new ones fail at once. */
    if (db->ready == 0 && !db->down) {
        db->down = true;
        rt__db_fail_queue(db, RT_DB_EDOWN);
    }
    conn_schedule(c);
}

void rt__db_conn_init(db_conn *c, rt_db *db, db_slot *slots)
{
    memset(c, 0, sizeof(*c));
    c->db = db;
    c->slots = slots;
    c->state = CONN_BACKOFF;
    /* Cannot fail on Linux; the pool counts the handle so that its close is awaited. */
    uv_timer_init(db->loop, &c->timer);
    db->timers++;
}

void rt__db_conn_start(db_conn *c)
{
    conn_attempt(c);
}

/* --- requests in flight ---------------------------------------------------------------------- */

bool rt__db_conn_is_placeable(const db_conn *c)
{
    const db_slot *head = &c->slots[c->head];

    return c->state == CONN_READY && !c->held && !c->cancel_job.busy &&
           c->count < conn_cap(c) && !(c->count > 0 && head->kind == SLOT_ORPHAN);
}

bool rt__db_conn_is_idle(const db_conn *c)
{
    return rt__db_conn_is_placeable(c) && c->count == 0;
}

void rt__db_conn_arm_bound(db_conn *c, uint8_t bound, uint32_t ms)
{
    c->bound = bound;
    uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

static int conn_flush(db_conn *c)
{
    int r = PQflush(c->pg);

    if (r < 0) {
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
        return -1;
    }
    if (conn_watch(c, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE, false) < 0) {
        rt__db_conn_discard(c, RT_DB_ELOST, "cannot watch the socket");
        return -1;
    }
    return 0;
}

db_slot *rt__db_conn_send(db_conn *c, uint8_t kind, rt_db_query *q, const char *name,
                          const char *sql, int nparams, const char *const *params)
{
    db_slot *s;
    const char *prepared = NULL;
    int ok;

    assert(c->state == CONN_READY && c->count < conn_cap(c));
    s = &c->slots[(c->head + c->count) % conn_cap(c)];
    s->kind = kind;
    s->q = q;
    s->res = NULL;
    s->prepare = false;
    s->prep_name = NULL;
    c->count++;
    if (q != NULL)
        q->slot = s;

    if (name != NULL) {
        prepared = conn_find_name(c, name);
        /* Reserve the name before sending Parse: if the copy cannot be made, run the statement
         * unnamed rather than risk preparing the same name twice on this connection. */
        if (prepared == NULL && (s->prep_name = conn_add_name(c, name)) != NULL) {
            s->prepare = true;
            prepared = s->prep_name;
        }
    }
    ok = 1;
    if (s->prepare)
        ok = PQsendPrepare(c->pg, prepared, sql, nparams, NULL);
    if (ok && prepared != NULL)
        ok = PQsendQueryPrepared(c->pg, prepared, nparams, params, NULL, NULL, 0);
    else if (ok)
        ok = PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    if (ok)
        ok = PQpipelineSync(c->pg);
    if (!ok) {
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
        return NULL;
    }
    if (conn_flush(c) < 0)
        return NULL;
    return s;
}

/* The query in s completed early (cancelled): its result will be read and dropped. */
void rt__db_conn_orphan(db_conn *c, db_slot *s)
{
    assert(s->kind == SLOT_QUERY);
    s->kind = SLOT_ORPHAN;
    s->q = NULL;
    /* PQcancel interrupts whatever the backend runs when the request lands, so it is sent only
     * when the orphan is the one statement on the connection; an orphan with neighbours runs to
     * its end (statement_timeout bounds it) and takes no new work behind it. */
    if (c->count == 1 && s == &c->slots[c->head])
        rt__db_conn_cancel_running(c);
}

/*
 * The connection has nothing the pool must wait for: decide what it does next. With an open
 * transaction left behind (cancelled, failed, abandoned by rt_db_tx_rollback), it rolls back
 * before anyone else may use it; in an unknown state it is discarded; otherwise it takes work.
 */
void rt__db_conn_settle(db_conn *c)
{
    rt_db *db = c->db;
    PGTransactionStatusType ts;

    if (c->state != CONN_READY || c->tx != NULL)
        return;
    if (c->count > 0) {
        if (!c->held && db->queued > 0)
            rt__db_dispatch(db);
        return;
    }
    if (c->bound != BOUND_NONE) {
        uv_timer_stop(&c->timer);
        c->bound = BOUND_NONE;
    }
    ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
        if (db->closing) {
            /* The server rolls back a transaction whose session ends. */
            rt__db_conn_close(c);
            return;
        }
        c->held = true;
        if (rt__db_conn_send(c, SLOT_ROLLBACK, NULL, NULL, "ROLLBACK", 0, NULL) != NULL)
            rt__db_conn_arm_bound(c, BOUND_ROLLBACK, db->cfg.commit_timeout_ms);
        return;
    }
    if (ts != PQTRANS_IDLE) {
        rt__db_conn_discard(c, RT_DB_ELOST, "connection in an unknown state");
        return;
    }
    c->held = false;
    if (db->closing) {
        if (!c->cancel_job.busy)
            rt__db_conn_close(c);
        return;
    }
    if (db->queued > 0)
        rt__db_dispatch(db);
}

/* Keeps the first error of a slot (a Parse error outranks the Execute it aborted); a success is
 * kept only when nothing else was. */
static void slot_keep(db_slot *s, PGresult *res, bool is_error)
{
    if (s->res == NULL) {
        s->res = res;
        s->res_is_error = is_error;
        return;
    }
    if (is_error && !s->res_is_error) {
        PQclear(s->res);
        s->res = res;
        s->res_is_error = true;
        return;
    }
    PQclear(res);
}

static void conn_slot_done(db_conn *c)
{
    db_slot s = c->slots[c->head];
    db_slot *next;

    memset(&c->slots[c->head], 0, sizeof(db_slot));
    c->head = (c->head + 1) % conn_cap(c);
    c->count--;
    switch (s.kind) {
    case SLOT_QUERY:
        s.q->slot = NULL;
        c->db->in_flight--;
        rt__db_query_finish(s.q, s.res, 0, NULL);
        break;
    case SLOT_BEGIN:
    case SLOT_STMT:
    case SLOT_COMMIT:
        rt__db_tx_on_result(c, &s);
        return;
    case SLOT_ROLLBACK:
        if (s.res == NULL || s.res_is_error) {
            PQclear(s.res);
            rt__db_conn_discard(c, RT_DB_ELOST, "ROLLBACK failed");
            return;
        }
        PQclear(s.res);
        break;
    default: /* SLOT_ORPHAN, SLOT_DROPPED */
        PQclear(s.res);
        break;
    }
    next = &c->slots[c->head];
    if (c->count == 1 && next->kind == SLOT_ORPHAN)
        rt__db_conn_cancel_running(c);
    rt__db_conn_settle(c);
}

/* Reads every result libpq has complete, slot by slot. User code may run inside (a transaction's
 * step callback), so the connection is re-checked after each slot. */
static void conn_read(db_conn *c)
{
    uint64_t gen = c->gen;
    int nulls = 0;

    while (c->state == CONN_READY && c->gen == gen && c->count > 0) {
        db_slot *s = &c->slots[c->head];
        PGresult *res;

        if (PQstatus(c->pg) == CONNECTION_BAD) {
            rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
            return;
        }
        if (PQisBusy(c->pg))
            return;
        res = PQgetResult(c->pg);
        if (res == NULL) {
            /* One NULL ends each statement's results; a second one in a row while a slot is
             * still open means libpq's queue and the ring disagree. */
            if (++nulls > 1) {
                rt__db_conn_discard(c, RT_DB_ELOST, "pipeline out of step");
                return;
            }
            continue;
        }
        nulls = 0;
        switch (PQresultStatus(res)) {
        case PGRES_PIPELINE_SYNC:
            PQclear(res);
            conn_slot_done(c);
            break;
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK:
        case PGRES_EMPTY_QUERY:
            if (s->prepare) {
                s->prepare = false;
                PQclear(res);
                break;
            }
            slot_keep(s, res, false);
            break;
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
        case PGRES_BAD_RESPONSE:
        case PGRES_PIPELINE_ABORTED:
            if (s->prepare) {
                s->prepare = false;
                conn_forget_name(c, s->prep_name);
            }
            slot_keep(s, res, true);
            break;
        default:
            /* COPY and single-row results are never asked for: the protocol state is unknown. */
            PQclear(res);
            rt__db_conn_discard(c, RT_DB_ELOST, "unexpected result from the server");
            return;
        }
    }
}

static void conn_on_poll(uv_poll_t *h, int status, int events)
{
    db_watch *w = rt_container_of(h, db_watch, poll);
    db_conn *c = w->conn;

    if (c == NULL)
        return;
    if (c->state == CONN_CONNECTING) {
        PostgresPollingStatusType r;
        int err;

        if (status < 0) {
            conn_attempt_failed(c, status);
            return;
        }
        r = PQconnectPoll(c->pg);
        if (r == PGRES_POLLING_OK) {
            conn_ready(c);
            return;
        }
        if (r == PGRES_POLLING_FAILED) {
            conn_attempt_failed(c, UV_ECONNREFUSED);
            return;
        }
        err = conn_watch(c, r == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, true);
        if (err < 0)
            conn_attempt_failed(c, err);
        return;
    }
    assert(c->state == CONN_READY);
    if (status < 0) {
        rt__db_conn_discard(c, RT_DB_ELOST, uv_strerror(status));
        return;
    }
    if ((events & UV_READABLE) && !PQconsumeInput(c->pg)) {
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
        return;
    }
    /* libpq's rule for non-blocking sends: after reading, try the flush again. */
    if ((c->events & UV_WRITABLE) && conn_flush(c) < 0)
        return;
    if (c->count > 0)
        conn_read(c);
    else if (PQstatus(c->pg) == CONNECTION_BAD)
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
}

static void conn_on_timer(uv_timer_t *t)
{
    db_conn *c = rt_container_of(t, db_conn, timer);

    switch (c->state) {
    case CONN_BACKOFF:
        conn_attempt(c);
        break;
    case CONN_RESOLVING:
        /* The answer still comes (with UV_ECANCELED when this worked) and ends the attempt. */
        uv_cancel((uv_req_t *)&c->resolve);
        break;
    case CONN_CONNECTING:
        conn_attempt_failed(c, UV_ETIMEDOUT);
        break;
    case CONN_READY:
        rt__db_conn_discard(c, UV_ETIMEDOUT,
                            c->bound == BOUND_COMMIT ? "no answer to COMMIT in time"
                                                     : "no answer after cancel or ROLLBACK");
        break;
    default:
        break;
    }
}

/* --- losing and closing ---------------------------------------------------------------------- */

/* Empties the ring: queries fail with err, the transaction learns it lost its connection. */
static void conn_fail_slots(db_conn *c, int err, const char *detail)
{
    size_t n = c->count;
    size_t head = c->head;

    c->count = 0;
    c->head = 0;
    for (size_t i = 0; i < n; i++) {
        db_slot *s = &c->slots[(head + i) % conn_cap(c)];
        db_slot copy = *s;

        memset(s, 0, sizeof(*s));
        if (copy.kind == SLOT_QUERY) {
            copy.q->slot = NULL;
            c->db->in_flight--;
            rt__db_query_finish(copy.q, copy.res, err, detail);
        } else {
            PQclear(copy.res);
        }
    }
    if (c->tx != NULL)
        rt__db_tx_on_lost(c, err, detail);
}

void rt__db_conn_discard(db_conn *c, int err, const char *detail)
{
    rt_db *db = c->db;
    PGconn *pg = c->pg;
    uint64_t now = uv_now(db->loop);

    assert(c->state == CONN_READY);
    c->gen++;
    c->state = CONN_BACKOFF;
    db->ready--;
    db->st.conns_lost++;
    uv_timer_stop(&c->timer);
    c->bound = BOUND_NONE;
    conn_unwatch(c);
    /* detail may point into pg's error buffer: fail the slots before finishing pg. */
    conn_fail_slots(c, err, detail);
    c->pg = NULL;
    c->held = false;
    conn_forget_names(c);
    conn_finish_pg(c, pg);
    if (db->closing) {
        conn_closed(c);
        return;
    }
    if (now - c->ready_at < DB_MIN_HEALTHY_MS)
        c->failures++;
    conn_schedule(c);
}

/* Closing the pool: stop whatever c is doing; READY connections close once they are idle. */
void rt__db_conn_close(db_conn *c)
{
    rt_db *db = c->db;

    assert(db->closing);
    switch (c->state) {
    case CONN_BACKOFF:
        uv_timer_stop(&c->timer);
        conn_closed(c);
        break;
    case CONN_RESOLVING:
        uv_cancel((uv_req_t *)&c->resolve); /* conn_on_resolved closes it */
        break;
    case CONN_CONNECTING:
        conn_attempt_failed(c, UV_ECANCELED);
        break;
    case CONN_READY:
        if (c->count > 0 || c->tx != NULL || c->cancel_job.busy)
            break; /* rt__db_conn_settle comes back here once they are done */
        uv_timer_stop(&c->timer);
        conn_unwatch(c);
        c->state = CONN_CLOSED;
        db->ready--;
        conn_forget_names(c);
        conn_finish_pg(c, c->pg);
        c->pg = NULL;
        rt__db_maybe_closed(db);
        break;
    default:
        break;
    }
}

/* SPDX-License-Identifier: MIT */
/*
 * db_conn.c - one pooled PostgreSQL connection's life on the loop: connecting without blocking,
 * loss, cancel requests (sent by db_cancel.c), PQfinish on the thread pool, reconnection with
 * exponential backoff and jitter, and closing. What happens to requests while it is READY is
 * db_pipe.c's.
 *
 * The main idea: a connection is a small state machine driven by three event sources (its
 * socket's uv_poll, its one timer, and the getaddrinfo answer). Every transition asserts its
 * source state; the timer means "start the next attempt" in BACKOFF, "give up this attempt" in
 * RESOLVING and CONNECTING, and "the awaited answer is late" (rt__db_conn_arm_bound) in READY.
 *
 *   state        what holds                                         left by
 *   BACKOFF      no PGconn, no watch; timer armed (or stopped while  conn_on_timer -> attempt
 *                closing)
 *   RESOLVING    no PGconn; c->resolve in flight; timer = deadline   conn_on_resolved
 *   CONNECTING   PGconn handshaking; watch on its current socket     conn_on_poll (OK / FAILED),
 *                                                                    conn_on_timer (timeout)
 *   READY        PGconn in pipeline mode, non-blocking; watch        rt__db_conn_discard,
 *                readable (and writable while libpq has output)      rt__db_conn_close
 *   CLOSED       nothing left but the timer, closed with the pool    (final)
 *
 * Connections in unknown state are never reused: any surprise (a failed send or flush, a poll
 * error, libpq and the ring out of step, a ROLLBACK that fails, a bound that expires) goes
 * through rt__db_conn_discard, which fails what was on the connection and starts over.
 *
 * What it deliberately does not do: choose which request goes where (db.c does), or read
 * results (db_pipe.c does).
 */
#include "db_int.h"

#include <stdio.h>
#include <string.h>

/* A connection that dies sooner than this after it came up counts as a failed attempt, so a
 * server that accepts and then drops every connection does not get a tight reconnect loop. */
#define DB_MIN_HEALTHY_MS 1000

/* A connection refused while others work backs off up to this many times backoff_max_ms. */
#define DB_CROWDED_BACKOFF 8

static void conn_on_poll(uv_poll_t *h, int status, int events);
static void conn_on_timer(uv_timer_t *t);
static void conn_attempt(db_conn *c);
static void conn_attempt_failed(db_conn *c, int err);
static void conn_report(rt_db *db, const char *why);

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
int rt__db_conn_watch(db_conn *c, int events, bool fresh)
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

static int job_finish_fn(rt_work *w)
{
    db_job *j = w->arg;

    PQfinish(j->pg);
    return 0;
}

static void job_after(rt_post *p)
{
    db_job *j = rt_container_of(p, db_job, after);
    rt_db *db = j->conn->db;

    j->pg = NULL;
    j->busy = false;
    db->jobs--;
    rt__db_maybe_closed(db);
}

/* The job's task may be started again only once its delivery has returned (its storage is
 * reused), so the rest of the job's end runs from a post on a later turn. */
static void job_done(rt_task *t, int status)
{
    db_job *j = rt_container_of(t, db_job, work.task);

    (void)status;
    rt_task_release(t);
    rt_post_submit(t->rt, &j->after, job_after);
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

/*
 * Interrupts the statement running on c with a cancel request sent from the loop (db_cancel.c),
 * bounded by cancel_timeout_ms: if the cancelled work has not ended by then, c is discarded,
 * and the request, detached, is hung up on. While it is in flight c takes no new work.
 */
void rt__db_conn_cancel_running(db_conn *c)
{
    assert(c->state == CONN_READY);
    if (c->cancel != NULL)
        return;
    /* Armed first: when no request can be sent, the bound still ends the wait. */
    rt__db_conn_arm_bound(c, BOUND_CANCEL, c->db->cfg.cancel_timeout_ms);
    c->cancelled_seq = c->count > 0 ? db_conn_slot(c, 0)->seq : c->seq;
    if (rt__db_cancel_start(c) == 0)
        c->db->st.cancels_sent++;
}

void rt__db_conn_cancel_done(db_conn *c, bool landed)
{
    (void)landed; /* a request that could not be sent is left to the bound */
    if (c->state != CONN_READY)
        return;
    /* The statement it was for may have ended meanwhile, and the next orphan started. */
    rt__db_conn_cancel_orphans(c);
    if (c->cancel == NULL)
        rt__db_conn_settle(c);
}

/* --- connecting ------------------------------------------------------------------------------ */

static uint64_t conn_backoff_ms(db_conn *c)
{
    rt_db *db = c->db;
    uint64_t d;
    uint64_t cap;
    unsigned shift;

    if (c->failures == 0)
        return 0;
    shift = c->failures - 1 > 16 ? 16 : c->failures - 1;
    d = (uint64_t)db->cfg.backoff_min_ms << shift;
    /* Refused while other connections work: the server is full (max_connections, a role's or a
     * database's connection limit) and says so on every attempt, so ask far less often. */
    cap =
        c->crowded ? (uint64_t)db->cfg.backoff_max_ms * DB_CROWDED_BACKOFF : db->cfg.backoff_max_ms;
    if (d > cap)
        d = cap;
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
    if (rt__db_conn_watch(c, UV_READABLE, false) < 0) {
        conn_attempt_failed(c, UV_ENOMEM);
        return;
    }
    c->state = CONN_READY;
    c->bound = BOUND_NONE;
    c->ready_at = uv_now(db->loop);
    db->ready++;
    db->down = false;
    db->st.connects_ok++;
    c->crowded = false;
    conn_report(db, NULL);
    /* The other connections keep their own backoff: one success says little about a server
     * that drops connections shortly after accepting them, and resetting every backoff on it
     * made the whole pool retry at once. */
    rt__db_dispatch(db);
    rt__db_conn_arm_idle(c);
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
    if (rt__db_conn_watch(c, UV_WRITABLE, true) < 0)
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
    /* The attempt's deadline may have passed while the resolver could no longer be stopped. */
    if (status == 0 && !uv_is_active((uv_handle_t *)&c->timer))
        status = UV_ETIMEDOUT;
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

/* Reports a change of the pool's connection state through on_change: why is NULL when every
 * connection is up, else why attempts fail (reported only when it differs from the last). */
static void conn_report(rt_db *db, const char *why)
{
    char line[sizeof(db->why)];
    size_t n = 0;

    if (why == NULL) {
        if (db->why[0] == '\0' || db->ready < db->cfg.pool_size)
            return;
        db->why[0] = '\0';
        if (db->cfg.on_change != NULL)
            db->cfg.on_change(db->cfg.on_change_arg, false, NULL);
        return;
    }
    /* One line: libpq's message spans several (one per address tried, hints indented). */
    for (const char *p = why; *p != '\0' && n + 1 < sizeof(line); p++) {
        char ch = *p == '\n' || *p == '\t' ? ' ' : *p;

        if (ch == ' ' && (n == 0 || line[n - 1] == ' '))
            continue;
        line[n++] = ch;
    }
    while (n > 0 && line[n - 1] == ' ')
        n--;
    line[n] = '\0';
    if (strcmp(line, db->why) == 0)
        return;
    memcpy(db->why, line, n + 1);
    if (db->cfg.on_change != NULL)
        db->cfg.on_change(db->cfg.on_change_arg, true, db->why);
}

static void conn_attempt_failed(db_conn *c, int err)
{
    rt_db *db = c->db;
    char why[sizeof(db->why)];

    uv_timer_stop(&c->timer);
    conn_unwatch(c);
    if (err == UV_ETIMEDOUT)
        snprintf(why, sizeof(why), "%s: no answer within connect_timeout_ms",
                 db->host != NULL           ? db->host
                 : db->host_literal != NULL ? db->host_literal
                                            : "the server");
    else if (c->pg != NULL && *PQerrorMessage(c->pg) != '\0')
        /* libpq names each address it tried; given them as hostaddr, it no longer names the
         * host they came from. */
        snprintf(why, sizeof(why), "%s%s%s", db->host != NULL ? db->host : "",
                 db->host != NULL ? ": " : "", PQerrorMessage(c->pg));
    else if (err == UV_EAI_NONAME || (err < 0 && c->state == CONN_RESOLVING))
        snprintf(why, sizeof(why), "cannot resolve %s: %s", db->host ? db->host : "the host",
                 uv_strerror(err));
    else
        snprintf(why, sizeof(why), "%s", uv_strerror(err));
    /* The server's refusals for being full (SQLSTATE 53300: max_connections, or a role's or a
     * database's limit) all say "too many"; libpq gives no SQLSTATE for a failed handshake. */
    c->crowded = c->pg != NULL && db->ready > 0 && strstr(why, "too many") != NULL;
    if (c->pg != NULL) {
        PQfinish(c->pg); /* never established: sends nothing, cannot block */
        c->pg = NULL;
    }
    db->st.connects_failed++;
    if (err == UV_ETIMEDOUT)
        db->st.connects_timed_out++;
    if (c->crowded)
        db->st.connects_refused++;
    c->failures++;
    if (!db->closing)
        conn_report(db, why);
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
    rt_post_init(&c->finish_job.after);
    /* Cannot fail on Linux; the pool counts the handle so that its close is awaited. */
    uv_timer_init(db->loop, &c->timer);
    db->timers++;
}

void rt__db_conn_start(db_conn *c)
{
    conn_attempt(c);
}

static void conn_on_poll(uv_poll_t *h, int status, int events)
{
    db_watch *w = rt_container_of(h, db_watch, poll);
    db_conn *c = w->conn;

    if (c == NULL)
        return;
    /* libuv reports an error on the socket (POLLERR) as a status, and has stopped the watch by
     * then: forget its events, so that the next rt__db_conn_watch starts it again. Without
     * this, a handshake whose last answer arrived together with a reset came up READY with a
     * socket that nothing watched, and its first statement waited forever. */
    if (status < 0)
        c->events = 0;
    if (c->state == CONN_CONNECTING) {
        PostgresPollingStatusType r;
        int err;

        /* An error on the socket (libuv reports POLLERR as a status, and stops the watch) is
         * libpq's to judge: a refused connect to one address of the host moves on to the next
         * (localhost is ::1 first on a stock Debian, where the server may listen on IPv4 only),
         * and only when none is left does PQconnectPoll fail the attempt. */
        (void)status;
        r = PQconnectPoll(c->pg);
        if (r == PGRES_POLLING_OK) {
            conn_ready(c);
            return;
        }
        if (r == PGRES_POLLING_FAILED) {
            conn_attempt_failed(c, UV_ECONNREFUSED);
            return;
        }
        err = rt__db_conn_watch(c, r == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, true);
        if (err < 0)
            conn_attempt_failed(c, err);
        return;
    }
    assert(c->state == CONN_READY);
    rt__db_conn_on_io(c, status, events);
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
        if (c->bound == BOUND_IDLE) {
            rt__db_conn_check_idle(c);
            break;
        }
        if (c->bound == BOUND_CANCEL)
            c->db->st.cancels_timed_out++;
        c->db->st.conns_expired++;
        rt__db_conn_discard(c, UV_ETIMEDOUT,
                            c->bound == BOUND_COMMIT  ? "no answer to COMMIT in time"
                            : c->bound == BOUND_CHECK ? "no answer to the idle check in time"
                                                      : "no answer after cancel or ROLLBACK");
        break;
    default:
        break;
    }
}

void rt__db_conn_arm_bound(db_conn *c, uint8_t bound, uint32_t ms)
{
    c->bound = bound;
    uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

/* --- losing and closing ---------------------------------------------------------------------- */
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
    /* The request was for this backend only; nobody waits for it, but it is not hung up on
     * (a pooler still forwarding it may not survive that): it ends alone, within its bound. */
    rt__db_cancel_detach(c);
    c->seq = 0;
    c->cancelled_seq = 0;
    /* detail may point into pg's error buffer: fail the slots before finishing pg. */
    rt__db_conn_fail_slots(c, err, detail);
    c->pg = NULL;
    c->held = false;
    rt__db_conn_forget_names(c);
    conn_finish_pg(c, pg);
    if (db->closing) {
        conn_closed(c);
        return;
    }
    if (now - c->ready_at < DB_MIN_HEALTHY_MS)
        c->failures++;
    else
        c->failures = 0;
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
        if (c->count > 0 || c->tx != NULL)
            break; /* rt__db_conn_settle comes back here once they are done */
        /* Nothing is left for a cancel request in flight to hit: the session ends now, and the
         * request ends alone, within its bound (the pool's close waits for it). */
        rt__db_cancel_detach(c);
        uv_timer_stop(&c->timer);
        conn_unwatch(c);
        c->state = CONN_CLOSED;
        db->ready--;
        rt__db_conn_forget_names(c);
        conn_finish_pg(c, c->pg);
        c->pg = NULL;
        rt__db_maybe_closed(db);
        break;
    default:
        break;
    }
}

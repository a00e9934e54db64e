/* SPDX-License-Identifier: MIT */
/*
 * db_pipe.c - a READY connection's pipeline: sending requests, reading their results in order,
 * and deciding when the connection may take new work.
 *
 * The main idea: every statement is a slot in a FIFO ring that mirrors libpq's own command queue
 * one to one. A slot is [Parse] + Bind/Execute, and [Sync]: its results end with one NULL per
 * command, then, with a Sync, a PGRES_PIPELINE_SYNC. A query has its own Sync, so an error aborts
 * nothing but its own slot. A transaction's statements sent in one go share one, behind the last
 * of them: the server answers the group at once (one wake-up and one send on each side instead of
 * one per statement), and an error aborts the rest of the group, which the transaction's error
 * aborts anyway. Results are read only while a slot is open, and what libpq returns must match
 * what the ring expects: a mismatch means the connection's state is unknown, and it is
 * discarded, never guessed at.
 *
 * Before a connection takes new work after a transaction, an orphaned statement or a cancel
 * request, rt__db_conn_settle makes sure it is back to a known, idle state: it waits for the
 * cancel request to have landed (so it cannot hit the next statement), rolls back what was left
 * open, and discards what it cannot explain. An idle connection is checked now and then with an
 * empty statement (rt__db_conn_check_idle), so that a silent partition is noticed.
 */
#include "db_int.h"

#include <string.h>

/* --- prepared statement names ---------------------------------------------------------------- */

static db_name *conn_find_name(const db_conn *c, const char *name)
{
    for (size_t i = 0; i < c->nnames; i++) {
        if (strcmp(c->names[i].name, name) == 0)
            return &c->names[i];
    }
    return NULL;
}

/* Reserves name (not yet ready) and returns the connection's copy, or NULL without memory. */
static char *conn_add_name(db_conn *c, const char *name)
{
    char *copy;

    if (c->nnames == c->names_cap) {
        size_t cap = c->names_cap ? c->names_cap * 2 : 8;
        db_name *grown = rt_malloc(cap * sizeof(*grown));

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
    c->names[c->nnames].name = copy;
    c->names[c->nnames].ready = false;
    c->nnames++;
    return copy;
}

/* The Parse sent for copy (conn_add_name's pointer) came back: ready, or failed and forgotten. */
static void conn_name_parsed(db_conn *c, const char *copy, bool ok)
{
    for (size_t i = 0; i < c->nnames; i++) {
        if (c->names[i].name != copy)
            continue;
        if (ok) {
            c->names[i].ready = true;
        } else {
            rt_free(c->names[i].name);
            c->names[i] = c->names[--c->nnames];
        }
        return;
    }
}

void rt__db_conn_forget_names(db_conn *c)
{
    for (size_t i = 0; i < c->nnames; i++)
        rt_free(c->names[i].name);
    rt_free(c->names);
    c->names = NULL;
    c->nnames = 0;
    c->names_cap = 0;
}

bool rt__db_conn_is_placeable(const db_conn *c)
{
    const db_slot *head = &c->slots[c->head];

    return c->state == CONN_READY && !c->held && c->cancel == NULL && c->count < db_conn_cap(c) &&
           !(c->count > 0 && head->kind == SLOT_ORPHAN);
}

bool rt__db_conn_is_idle(const db_conn *c)
{
    return rt__db_conn_is_placeable(c) && c->count == 0;
}

static int conn_flush(db_conn *c)
{
    int r = PQflush(c->pg);

    if (r < 0) {
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
        return -1;
    }
    if (rt__db_conn_watch(c, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE, false) < 0) {
        rt__db_conn_discard(c, RT_DB_ELOST, "cannot watch the socket");
        return -1;
    }
    return 0;
}

bool rt__db_conn_sync(db_conn *c)
{
    db_slot *last = db_conn_slot(c, c->count - 1);

    assert(c->state == CONN_READY && c->count > 0);
    if (last->sync)
        return true;
    /* PQpipelineSync flushes too, as far as the socket takes it; conn_flush watches for the
     * rest. */
    if (!PQpipelineSync(c->pg)) {
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
        return false;
    }
    last->sync = true;
    return conn_flush(c) == 0;
}

db_slot *rt__db_conn_send(db_conn *c, uint8_t kind, rt_db_query *q, const char *name,
                          const char *sql, int nparams, const char *const *params, bool sync)
{
    db_slot *s;
    const char *prepared = NULL;
    int ok;

    assert(c->state == CONN_READY && c->count < db_conn_cap(c));
    s = db_conn_slot(c, c->count);
    s->kind = kind;
    s->q = q;
    s->res = NULL;
    s->sent_ns = uv_hrtime();
    s->seq = ++c->seq;
    s->prepare = false;
    s->prep_name = NULL;
    s->sync = false;
    c->count++;
    if (q != NULL)
        q->slot = s;

    /* Behind a pooler in transaction mode a named statement may not exist on the server session
     * the next transaction runs on: everything goes as the unnamed statement. */
    if (c->db->cfg.transaction_pooler)
        name = NULL;
    if (name != NULL) {
        const db_name *known = conn_find_name(c, name);

        if (known != NULL) {
            /* A name whose Parse is still in flight runs unnamed: if that Parse fails, the
             * statement does not exist, and a Bind alone would fail with it. */
            if (known->ready)
                prepared = known->name;
        } else if ((s->prep_name = conn_add_name(c, name)) != NULL) {
            /* Reserve the name before sending Parse: if the copy cannot be made, run the
             * statement unnamed rather than risk preparing the same name twice. */
            s->prepare = true;
            prepared = s->prep_name;
        }
    }
    s->open = s->prepare ? 2 : 1;
    ok = 1;
    if (s->prepare)
        ok = PQsendPrepare(c->pg, prepared, sql, nparams, NULL);
    if (ok && prepared != NULL)
        ok = PQsendQueryPrepared(c->pg, prepared, nparams, params, NULL, NULL, 0);
    else if (ok)
        ok = PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!ok) {
        rt__db_conn_discard(c, RT_DB_ELOST, PQerrorMessage(c->pg));
        return NULL;
    }
    if (sync && !rt__db_conn_sync(c))
        return NULL;
    return s;
}

/* True when nobody waits for any result on c: every slot in flight is an orphan. */
static bool conn_only_orphans(const db_conn *c)
{
    for (size_t i = 0; i < c->count; i++) {
        if (db_conn_slot(c, i)->kind != SLOT_ORPHAN)
            return false;
    }
    return c->count > 0;
}

/*
 * A cancel request interrupts whatever the backend runs when it lands, which may already be the
 * next statement in the pipeline. So it is sent only when every statement on the connection is
 * an orphan: then whichever it hits, nobody loses a result. An orphan with live neighbours runs
 * to its end (statement_timeout bounds it), and no new work is placed behind an orphan at the
 * head. Each orphan that reaches the head of the pipeline gets its own request (one in flight at
 * a time; the next is sent when it has landed or when the head moves on), so every statement of
 * a cancelled request stops, not only the one running when the first request went out.
 */
void rt__db_conn_cancel_orphans(db_conn *c)
{
    if (c->state != CONN_READY || c->cancel != NULL || !conn_only_orphans(c))
        return;
    if (db_conn_slot(c, 0)->seq == c->cancelled_seq)
        return;
    rt__db_conn_cancel_running(c);
}

/* The query in s completed early (cancelled): its result will be read and dropped. */
void rt__db_conn_orphan(db_conn *c, db_slot *s)
{
    assert(s->kind == SLOT_QUERY);
    s->kind = SLOT_ORPHAN;
    s->q = NULL;
    rt__db_conn_cancel_orphans(c);
}

/*
 * The connection's work ended (or some of it did): decide what it does next. With an open
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
    /* A cancel request still on its way could hit the next statement (the ROLLBACK, or someone
     * else's query): wait for it to land; its completion settles the connection again. */
    if (c->cancel != NULL)
        return;
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
        if (rt__db_conn_send(c, SLOT_ROLLBACK, NULL, NULL, "ROLLBACK", 0, NULL, true) != NULL)
            rt__db_conn_arm_bound(c, BOUND_ROLLBACK, db->cfg.commit_timeout_ms);
        return;
    }
    if (ts != PQTRANS_IDLE) {
        rt__db_conn_discard(c, RT_DB_ELOST, "connection in an unknown state");
        return;
    }
    c->held = false;
    if (db->closing) {
        rt__db_conn_close(c);
        return;
    }
    if (db->queued > 0)
        rt__db_dispatch(db);
    rt__db_conn_arm_idle(c);
}

void rt__db_conn_arm_idle(db_conn *c)
{
    if (c->state == CONN_READY && c->bound == BOUND_NONE && c->db->cfg.idle_check_ms > 0 &&
        rt__db_conn_is_idle(c))
        rt__db_conn_arm_bound(c, BOUND_IDLE, c->db->cfg.idle_check_ms);
}

/*
 * An idle connection sends nothing and is sent nothing, so a partition that drops packets
 * without a reset goes unnoticed by the socket (TCP keepalive finds a vanished peer, but not
 * a middlebox that keeps answering for it). So after idle_check_ms of idleness the connection
 * sends an empty statement, and is discarded when no answer comes in idle_check_timeout_ms.
 * Work may be placed behind it meanwhile: it costs the server next to nothing.
 */
void rt__db_conn_check_idle(db_conn *c)
{
    c->bound = BOUND_NONE;
    if (!rt__db_conn_is_idle(c))
        return; /* busy: its work has its own bounds, and settle arms the wait again */
    if (rt__db_conn_send(c, SLOT_CHECK, NULL, NULL, "", 0, NULL, true) != NULL)
        rt__db_conn_arm_bound(c, BOUND_CHECK, c->db->cfg.idle_check_timeout_ms);
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

    memset(&c->slots[c->head], 0, sizeof(db_slot));
    c->head = (c->head + 1) % db_conn_cap(c);
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
    case SLOT_CHECK:
        if (c->bound == BOUND_CHECK) {
            uv_timer_stop(&c->timer);
            c->bound = BOUND_NONE;
        }
        if (s.res_is_error) {
            PQclear(s.res);
            rt__db_conn_discard(c, RT_DB_ELOST, "the idle check failed");
            return;
        }
        PQclear(s.res);
        break;
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
    rt__db_conn_cancel_orphans(c);
    rt__db_conn_settle(c);
}

/* Reads every result libpq has complete, slot by slot. User code may run inside (a transaction's
 * step callback), so the connection is re-checked after each slot. */
static void conn_read(db_conn *c)
{
    uint64_t gen = c->gen;

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
            /* One NULL ends each command's results: one more than the slot sent means libpq's
             * queue and the ring disagree. */
            if (s->open == 0) {
                rt__db_conn_discard(c, RT_DB_ELOST, "pipeline out of step");
                return;
            }
            if (--s->open == 0 && !s->sync)
                conn_slot_done(c);
            continue;
        }
        switch (PQresultStatus(res)) {
        case PGRES_PIPELINE_SYNC:
            PQclear(res);
            if (!s->sync || s->open > 0) {
                rt__db_conn_discard(c, RT_DB_ELOST, "pipeline out of step");
                return;
            }
            conn_slot_done(c);
            break;
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK:
        case PGRES_EMPTY_QUERY:
            if (s->prepare) {
                s->prepare = false;
                conn_name_parsed(c, s->prep_name, true);
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
                conn_name_parsed(c, s->prep_name, false);
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

void rt__db_conn_on_io(db_conn *c, int status, int events)
{
    /* The server answers nothing before a Sync: results would never come. */
    if (RT_NEVER(c->count > 0 && !db_conn_slot(c, c->count - 1)->sync)) {
        rt__db_conn_discard(c, RT_DB_ELOST, "a pipeline without a Sync");
        return;
    }
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

/* Empties the ring: queries fail with err, the transaction learns it lost its connection. */
void rt__db_conn_fail_slots(db_conn *c, int err, const char *detail)
{
    size_t n = c->count;
    size_t head = c->head;

    c->count = 0;
    c->head = 0;
    for (size_t i = 0; i < n; i++) {
        db_slot *s = &c->slots[(head + i) % db_conn_cap(c)];
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

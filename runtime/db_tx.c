/* SPDX-License-Identifier: MIT */
/*
 * db_tx.c - the transaction task: one connection held from BEGIN to COMMIT, the statements
 * known in advance pipelined behind BEGIN, the rest chosen by the caller's step callback from
 * the previous result (COMMIT possibly pipelined behind the last one), and the one rule that
 * makes cancellation safe: it may strike before COMMIT is sent, never after.
 *
 *   phase      on the connection           cancellation                      left by
 *   QUEUED     nothing (in the pool queue) leaves the queue, completes       rt__db_tx_place
 *   BEGIN      BEGIN in flight             completes now; cancel sent; the   its result
 *   STMT       statements in flight          pool rolls back afterwards;     the last result
 *                                            their results are dropped
 *   (step)     nothing: the callback runs  remembered, applied after it      the callback's choice
 *   COMMIT     COMMIT in flight            ignored: the answer is awaited,   its result, loss, or
 *                                            bounded by commit_timeout_ms    the bound
 *   DONE       detached from the connection
 *
 * The transaction completes as soon as its fate is known to the caller, and the connection's
 * cleanup is the pool's business (rt__db_conn_settle): a transaction abandoned in any way leaves
 * its connection "held" until a ROLLBACK has come back, so nobody else ever sees it mid-way. A
 * transaction that never sent COMMIT cannot have written anything visible, so completing before
 * the ROLLBACK is acknowledged tells the caller nothing false.
 *
 * What the transaction sends in one go (BEGIN and the statements pipelined behind it; a chosen
 * statement and the COMMIT behind it) shares one Sync, sent behind the last of it before control
 * returns to the loop (tx_sync): one wait on the server, one ReadyForQuery. A statement that fails
 * aborts the rest of its group, as it aborts the rest of the transaction.
 *
 * Every slot on the connection belongs to the transaction while it holds it, so the pipeline
 * needs no bookkeeping of its own: the ring's count is what is in flight, and what did not fit
 * (pipeline_depth 1: a statement pipelined behind BEGIN, a COMMIT behind the last statement)
 * waits in tx (ahead_sent, commit_queued) and goes out after the previous success. A failure or
 * an abandon drops whatever is still in flight (SLOT_DROPPED); a statement behind a failed one
 * fails too on the server (the transaction is aborted), so nothing runs that was not meant to.
 *
 * Outcomes: COMMITTED only on COMMIT's success; UNKNOWN only when COMMIT was sent and its answer
 * was lost (the connection broke or the bound expired); ROLLED_BACK otherwise once it had a
 * connection; NONE when it never got one.
 */
#include "db_int.h"

#include <string.h>

enum tx_phase { TX_QUEUED = 0, TX_BEGIN, TX_STMT, TX_COMMIT, TX_DONE };

/* Ends tx's hold on its connection (the connection stays held until it has settled); whatever
 * of tx is still in flight is dropped, what was still to be sent never will be. */
static void tx_detach(rt_db_tx *tx, uint8_t outcome)
{
    db_conn *c = tx->conn;
    rt_db_stats *st = &tx->db->st;

    for (size_t i = 0; i < c->count; i++)
        db_conn_slot(c, i)->kind = SLOT_DROPPED;
    tx->ahead_sent = tx->nahead;
    tx->commit_queued = false;
    c->tx = NULL;
    tx->conn = NULL;
    tx->phase = TX_DONE;
    tx->outcome = outcome;
    tx->db->in_flight--;
    if (outcome == RT_DB_TX_COMMITTED)
        st->tx_committed++;
    else if (outcome == RT_DB_TX_UNKNOWN)
        st->tx_unknown++;
    else
        st->tx_rolled_back++;
}

/* Sends one request of tx; false when sending failed (tx has then completed as lost). */
static bool tx_send(rt_db_tx *tx, uint8_t kind, const char *name, const char *sql, int nparams,
                    const char *const *params)
{
    db_conn *c = tx->conn;

    if (c->count == 0) {
        tx->round_trips++;
        tx->db->st.tx_round_trips++;
    }
    if (kind == SLOT_COMMIT) {
        tx->phase = TX_COMMIT;
        tx->commit_sent = true;
    } else if (kind == SLOT_STMT) {
        tx->phase = TX_STMT;
    }
    if (rt__db_conn_send(c, kind, NULL, name, sql, nparams, params, false) == NULL)
        return false;
    if (kind == SLOT_COMMIT)
        rt__db_conn_arm_bound(c, BOUND_COMMIT, tx->db->cfg.commit_timeout_ms);
    return true;
}

/* Sends what waits for room: statements pipelined behind BEGIN, then a chosen COMMIT. */
static void tx_send_waiting(rt_db_tx *tx)
{
    while (tx->phase != TX_DONE && tx->conn->count < db_conn_cap(tx->conn)) {
        if (tx->ahead_sent < tx->nahead) {
            const rt_db__ahead *a = &tx->ahead[tx->ahead_sent++];

            if (!tx_send(tx, SLOT_STMT, a->name, a->sql, a->nparams, a->params))
                return;
        } else if (tx->commit_queued) {
            tx->commit_queued = false;
            tx_send(tx, SLOT_COMMIT, NULL, "COMMIT", 0, NULL);
            return;
        } else {
            return;
        }
    }
}

/* Ends what was just sent on c with its Sync, unless sending failed (c was discarded, gen moved
 * on) or nothing is in flight. */
static void tx_sync(db_conn *c, uint64_t gen)
{
    if (c->state == CONN_READY && c->gen == gen && c->count > 0)
        rt__db_conn_sync(c);
}

void rt__db_tx_place(rt_db_tx *tx, db_conn *c)
{
    uint64_t gen = c->gen;

    tx->conn = c;
    tx->phase = TX_BEGIN;
    c->tx = tx;
    c->held = true;
    if (tx_send(tx, SLOT_BEGIN, NULL, tx->begin_sql != NULL ? tx->begin_sql : "BEGIN", 0, NULL))
        tx_send_waiting(tx);
    tx_sync(c, gen);
}

unsigned rt_db_tx_queued(const rt_db_tx *tx)
{
    if (tx->phase == TX_DONE || tx->conn == NULL)
        return 0;
    return (unsigned)tx->conn->count + (unsigned)(tx->nahead - tx->ahead_sent) +
           (tx->commit_queued ? 1u : 0u);
}

void rt__db_tx_on_lost(db_conn *c, int err, const char *detail)
{
    rt_db_tx *tx = c->tx;

    /* The server rolls back a transaction whose session ends, unless COMMIT got there first. */
    if (tx->phase == TX_COMMIT) {
        tx_detach(tx, RT_DB_TX_UNKNOWN);
    } else {
        tx_detach(tx, RT_DB_TX_ROLLED_BACK);
        tx->db->st.rollbacks_error++;
    }
    rt__db_result_set(&tx->result, NULL, detail);
    rt_task_complete(&tx->task, err);
}

/* Cancels a transaction that has statements in flight (phase BEGIN or STMT), none of them
 * COMMIT: they are dropped, and the one running is interrupted. */
static void tx_cancel_running(rt_db_tx *tx, int reason)
{
    db_conn *c = tx->conn;

    assert(c->count >= 1);
    for (size_t i = 0; i < c->count; i++) {
        uint8_t kind = db_conn_slot(c, i)->kind;

        assert(kind == SLOT_BEGIN || kind == SLOT_STMT);
        (void)kind;
    }
    tx_detach(tx, RT_DB_TX_ROLLED_BACK);
    tx->db->st.rollbacks_cancel++;
    rt_task_complete(&tx->task, reason);
    rt__db_conn_cancel_running(c);
}

static void tx_on_result(db_conn *c, db_slot *s)
{
    rt_db_tx *tx = c->tx;
    uint64_t gen = c->gen;

    assert(tx != NULL);
    if (s->kind == SLOT_COMMIT) {
        bool ok = s->res != NULL && !s->res_is_error;

        /* A refused COMMIT (a deferred constraint, a serialization failure) ends the
         * transaction on the server: nothing was written. */
        tx_detach(tx, ok ? RT_DB_TX_COMMITTED : RT_DB_TX_ROLLED_BACK);
        if (!ok)
            tx->db->st.rollbacks_error++;
        rt__db_result_set(&tx->result, s->res, NULL);
        rt_task_complete(&tx->task, ok ? 0 : rt__db_result_status(s->res));
        rt__db_conn_settle(c);
        return;
    }
    if (s->res == NULL || s->res_is_error) {
        tx_detach(tx, RT_DB_TX_ROLLED_BACK);
        tx->db->st.rollbacks_error++;
        rt__db_result_set(&tx->result, s->res, s->res != NULL ? NULL : "no result");
        rt_task_complete(&tx->task, s->res != NULL ? rt__db_result_status(s->res) : RT_DB_ELOST);
        rt__db_conn_settle(c);
        return;
    }
    if (s->kind == SLOT_STMT)
        tx->step++;
    /* With pipeline_depth 1, what waited behind this statement goes out now. */
    tx_send_waiting(tx);
    if (tx->phase == TX_DONE || c->gen != gen) {
        PQclear(s->res); /* sending failed: tx completed as lost */
        return;
    }
    if (tx->phase == TX_COMMIT || tx->commit_queued || (s->kind == SLOT_BEGIN && tx->nahead > 0)) {
        /* Nobody reads this result: COMMIT is behind it, or it is BEGIN's with statements
         * pipelined behind. */
        PQclear(s->res);
        return;
    }
    rt__db_result_set(&tx->result, s->res, NULL);
    tx->decided = false;
    tx->in_step = true;
    tx->step_cb(tx);
    if (RT_NEVER(!tx->decided && rt_db_tx_queued(tx) == 0))
        rt_db_tx_rollback(tx, UV_EINVAL);
    tx->in_step = false;
    if (tx->pending_cancel != 0 && tx->phase != TX_DONE && tx->phase != TX_COMMIT)
        tx_cancel_running(tx, tx->pending_cancel);
    if (c->state == CONN_READY && c->gen == gen)
        rt__db_conn_settle(c);
}

/* A result of c's transaction: whatever it (or its step callback) sent goes out with one Sync. */
void rt__db_tx_on_result(db_conn *c, db_slot *s)
{
    uint64_t gen = c->gen;

    tx_on_result(c, s);
    tx_sync(c, gen);
}

static int tx_start(rt_task *t)
{
    rt_db_tx *tx = rt_container_of(t, rt_db_tx, task);

    return rt__db_submit(tx->db, &tx->wait);
}

static void tx_cancel(rt_task *t, int reason)
{
    rt_db_tx *tx = rt_container_of(t, rt_db_tx, task);

    switch (tx->phase) {
    case TX_QUEUED:
        rt__db_unqueue(tx->db, &tx->wait);
        rt_task_complete(t, reason);
        break;
    case TX_BEGIN:
    case TX_STMT:
        if (tx->in_step)
            tx->pending_cancel = reason; /* applied once the step callback has chosen */
        else
            tx_cancel_running(tx, reason);
        break;
    default:
        /* TX_COMMIT: COMMIT was sent; its answer decides. TX_DONE: already completed. */
        break;
    }
}

static void tx_release(rt_task *t)
{
    rt_db_tx *tx = rt_container_of(t, rt_db_tx, task);

    rt__db_result_clear(&tx->result);
    if (tx->release_cb != NULL)
        tx->release_cb(tx);
}

static const rt_task_vtable tx_vt = {
    .name = "db.tx",
    .start = tx_start,
    .cancel = tx_cancel,
    .release = tx_release,
};

void rt_db_tx_init(rt_db_tx *tx, rt_db *db, const char *begin_sql, rt_db_tx_step_cb step,
                   rt_db_tx_release_cb release_cb)
{
    rt_task_init(&tx->task, db->rt, &tx_vt);
    memset(&tx->result, 0, sizeof(tx->result));
    tx->step = 0;
    tx->round_trips = 0;
    tx->outcome = RT_DB_TX_NONE;
    tx->commit_sent = false;
    tx->nahead = 0;
    tx->ahead_sent = 0;
    tx->commit_queued = false;
    tx->db = db;
    rt_list_init(&tx->wait.link);
    tx->wait.kind = DB_WAIT_TX;
    tx->wait.since = 0;
    tx->begin_sql = begin_sql;
    tx->step_cb = step;
    tx->release_cb = release_cb;
    tx->conn = NULL;
    tx->pending_cancel = 0;
    tx->phase = TX_QUEUED;
    tx->in_step = false;
    tx->decided = false;
}

void rt_db_tx_pipeline(rt_db_tx *tx, const char *name, const char *sql, int nparams,
                       const char *const *params)
{
    rt_db__ahead *a;

    assert(tx->phase == TX_QUEUED && tx->nahead < RT_DB_TX_AHEAD);
    assert(nparams >= 0 && nparams <= RT_DB_MAX_PARAMS);
    a = &tx->ahead[tx->nahead++];
    a->name = name;
    a->sql = sql;
    a->nparams = nparams;
    a->params = params;
}

void rt_db_tx_exec(rt_db_tx *tx, const char *name, const char *sql, int nparams,
                   const char *const *params)
{
    PGresult *prev = tx->result.res;

    assert(tx->in_step && !tx->decided && rt_db_tx_queued(tx) == 0);
    assert(nparams >= 0 && nparams <= RT_DB_MAX_PARAMS);
    tx->decided = true;
    /* params may point into the previous result: it is freed only once the statement is in
     * libpq's buffer. */
    tx->result.res = NULL;
    tx_send(tx, SLOT_STMT, name, sql, nparams, params);
    PQclear(prev);
}

void rt_db_tx_commit(rt_db_tx *tx)
{
    assert(tx->in_step);
    if (!tx->decided) {
        assert(rt_db_tx_queued(tx) == 0);
        tx->decided = true;
        tx_send(tx, SLOT_COMMIT, NULL, "COMMIT", 0, NULL);
        return;
    }
    /* Behind the statement rt_db_tx_exec just sent (unless that send failed and tx is over). */
    if (tx->phase != TX_STMT)
        return;
    assert(!tx->commit_queued && tx->ahead_sent == tx->nahead);
    tx->commit_queued = true;
    tx_send_waiting(tx);
}

void rt_db_tx_rollback(rt_db_tx *tx, int status)
{
    assert(tx->in_step && !tx->decided && status < 0);
    tx->decided = true;
    tx_detach(tx, RT_DB_TX_ROLLED_BACK);
    tx->db->st.rollbacks_user++;
    rt_task_complete(&tx->task, status);
}

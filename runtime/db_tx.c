/* SPDX-License-Identifier: MIT */
/*
 * db_tx.c - the transaction task: one connection held from BEGIN to COMMIT, statements chosen
 * one at a time by the caller's step callback, and the one rule that makes cancellation safe:
 * it may strike before COMMIT is sent, never after.
 *
 *   phase      on the connection           cancellation                      left by
 *   QUEUED     nothing (in the pool queue) leaves the queue, completes       rt__db_tx_place
 *   BEGIN      BEGIN in flight             completes now; cancel sent; the   its result
 *   STMT       a statement in flight         pool rolls back afterwards      its result
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
 * Outcomes: COMMITTED only on COMMIT's success; UNKNOWN only when COMMIT was sent and its answer
 * was lost (the connection broke or the bound expired); ROLLED_BACK otherwise once it had a
 * connection; NONE when it never got one.
 */
#include "db_int.h"

#include <string.h>

enum tx_phase { TX_QUEUED = 0, TX_BEGIN, TX_STMT, TX_COMMIT, TX_DONE };

/* Ends tx's hold on its connection (the connection stays held until it has settled). */
static void tx_detach(rt_db_tx *tx, uint8_t outcome)
{
    db_conn *c = tx->conn;
    rt_db_stats *st = &tx->db->st;

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

void rt__db_tx_place(rt_db_tx *tx, db_conn *c)
{
    tx->conn = c;
    tx->phase = TX_BEGIN;
    c->tx = tx;
    c->held = true;
    rt__db_conn_send(c, SLOT_BEGIN, NULL, NULL, tx->begin_sql != NULL ? tx->begin_sql : "BEGIN", 0,
                     NULL);
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

/* Cancels a transaction that has a statement in flight (phase BEGIN or STMT). */
static void tx_cancel_running(rt_db_tx *tx, int reason)
{
    db_conn *c = tx->conn;
    db_slot *s = &c->slots[c->head];

    assert(c->count == 1 && (s->kind == SLOT_BEGIN || s->kind == SLOT_STMT));
    s->kind = SLOT_DROPPED;
    tx_detach(tx, RT_DB_TX_ROLLED_BACK);
    tx->db->st.rollbacks_cancel++;
    rt_task_complete(&tx->task, reason);
    rt__db_conn_cancel_running(c);
}

void rt__db_tx_on_result(db_conn *c, db_slot *s)
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
    rt__db_result_set(&tx->result, s->res, NULL);
    tx->decided = false;
    tx->in_step = true;
    tx->step_cb(tx);
    if (RT_NEVER(!tx->decided))
        rt_db_tx_rollback(tx, UV_EINVAL);
    tx->in_step = false;
    if (tx->pending_cancel != 0 && tx->phase != TX_DONE && tx->phase != TX_COMMIT)
        tx_cancel_running(tx, tx->pending_cancel);
    if (c->state == CONN_READY && c->gen == gen)
        rt__db_conn_settle(c);
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
    tx->outcome = RT_DB_TX_NONE;
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

void rt_db_tx_exec(rt_db_tx *tx, const char *name, const char *sql, int nparams,
                   const char *const *params)
{
    PGresult *prev = tx->result.res;

    assert(tx->in_step && !tx->decided);
    assert(nparams >= 0 && nparams <= RT_DB_MAX_PARAMS);
    tx->decided = true;
    tx->phase = TX_STMT;
    /* params may point into the previous result: it is freed only once the statement is in
     * libpq's buffer. */
    tx->result.res = NULL;
    rt__db_conn_send(tx->conn, SLOT_STMT, NULL, name, sql, nparams, params);
    PQclear(prev);
}

void rt_db_tx_commit(rt_db_tx *tx)
{
    db_conn *c = tx->conn;

    assert(tx->in_step && !tx->decided);
    tx->decided = true;
    tx->phase = TX_COMMIT;
    if (rt__db_conn_send(c, SLOT_COMMIT, NULL, NULL, "COMMIT", 0, NULL) != NULL)
        rt__db_conn_arm_bound(c, BOUND_COMMIT, tx->db->cfg.commit_timeout_ms);
}

void rt_db_tx_rollback(rt_db_tx *tx, int status)
{
    assert(tx->in_step && !tx->decided && status < 0);
    tx->decided = true;
    tx_detach(tx, RT_DB_TX_ROLLED_BACK);
    tx->db->st.rollbacks_user++;
    rt_task_complete(&tx->task, status);
}

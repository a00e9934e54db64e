/* SPDX-License-Identifier: MIT */
/*
 * db_int.h - what the driver's files share: the pool and the query task (db.c), one
 * connection's life (db_conn.c), its pipeline of requests (db_pipe.c), the transaction task
 * (db_tx.c) and results (db_result.c). Nothing outside runtime/db*.c includes it.
 *
 * A connection's life (db_conn.c draws the details):
 *
 *     BACKOFF --timer--> RESOLVING --addresses--> CONNECTING --PGRES_POLLING_OK--> READY
 *        ^                   |                        |                             |
 *        +------ failed -----+------- failed ---------+<------- lost/discarded -----+
 *
 * and CLOSED, once the pool is closing and the connection has let go of everything.
 *
 * In READY, a connection carries a FIFO ring of slots, one per statement sent. A slot belongs to
 * a query, to the transaction holding the connection, or to nobody (an orphan, whose task already
 * completed, or the pool's own ROLLBACK); results of ownerless slots are read and dropped. Every
 * query, and every request of the pool's own, ends with its own Sync, so one failing aborts none
 * of its neighbours; a transaction's statements sent in one go share the Sync behind the last of
 * them (a failing one aborts the transaction anyway). The last slot in flight always has a Sync:
 * the server sends nothing back before it. A connection takes new work only when it is "placeable"
 * (see rt__db_conn_is_placeable): never behind an orphan, never while a cancel request for it is in
 * flight, never while a transaction holds it or its cleanup is pending.
 */
#ifndef RT_DB_INT_H
#define RT_DB_INT_H

#include "db.h"
#include "work.h"

#include <libpq-fe.h>

enum db_wait_kind { DB_WAIT_QUERY = 1, DB_WAIT_TX = 2 };

enum db_conn_state {
    CONN_BACKOFF = 0, /* not connected; the timer starts the next attempt */
    CONN_RESOLVING,   /* uv_getaddrinfo in flight */
    CONN_CONNECTING,  /* PQconnectPoll handshake */
    CONN_READY,       /* established; slots may be in flight */
    CONN_CLOSED       /* the pool is closing and this connection is done */
};

enum db_slot_kind {
    SLOT_QUERY = 1, /* an rt_db_query's statement */
    SLOT_ORPHAN,    /* its query completed early (cancelled); the result is dropped */
    SLOT_BEGIN,     /* the holding transaction's BEGIN */
    SLOT_STMT,      /* one of its statements */
    SLOT_COMMIT,    /* its COMMIT: from here on, cancellation no longer strikes */
    SLOT_ROLLBACK,  /* the pool's own cleanup after an abandoned transaction */
    SLOT_DROPPED,   /* a transaction statement whose transaction already completed */
    SLOT_CHECK      /* the pool's own empty statement checking an idle connection */
};

/* What the connection's timer is bounding while READY (BOUND_IDLE: the wait before an idle
 * connection is checked; BOUND_CHECK: the check's answer). */
enum db_bound {
    BOUND_NONE = 0,
    BOUND_COMMIT,
    BOUND_ROLLBACK,
    BOUND_CANCEL,
    BOUND_IDLE,
    BOUND_CHECK
};

/* conninfo keywords add_keepalives (db.c) may add. */
#define DB_KEEPALIVE_KEYS 5

typedef struct rt_db__slot {
    rt_db_query *q;        /* SLOT_QUERY only */
    PGresult *res;         /* the statement's result, or the first error seen for it */
    uint64_t sent_ns;      /* uv_hrtime() when it was sent */
    uint64_t seq;          /* the connection's count of slots sent, this one included */
    const char *prep_name; /* the connection's copy of the name being prepared, or NULL */
    uint8_t kind;          /* enum db_slot_kind */
    uint8_t open;          /* commands (Parse, Execute) whose results have not all come back */
    bool sync;             /* a Sync follows: the slot ends with its PGRES_PIPELINE_SYNC */
    bool prepare;          /* a Parse was sent and its result is still to come */
    bool res_is_error;     /* res is an error */
} db_slot;

/*
 * A statement name on one connection. It is usable by Bind alone only once its Parse has been
 * acknowledged (ready): until then, a neighbour pipelined behind that Parse runs its statement
 * unnamed, so a Parse that fails takes nobody down with it.
 */
typedef struct db_name {
    char *name; /* owned copy */
    bool ready; /* ParseComplete came back */
} db_name;

typedef struct rt_db__conn db_conn;

/* A uv_poll handle for one socket; allocated because libpq may switch sockets while connecting. */
typedef struct db_watch {
    uv_poll_t poll;
    db_conn *conn; /* NULL once detached (closing) */
    int fd;
} db_watch;

/* A blocking libpq call run on the thread pool: PQfinish of a live connection. */
typedef struct db_job {
    rt_work work;
    rt_post after; /* the job's end, handled once its task has been fully delivered */
    db_conn *conn;
    PGconn *pg;
    bool busy;
} db_job;

/* A cancel request in flight on the loop (db_cancel.c). */
typedef struct db_cancel db_cancel;

struct rt_db__conn {
    rt_db *db;
    uint8_t state; /* enum db_conn_state */
    uint8_t bound; /* enum db_bound, while READY */
    PGconn *pg;
    db_watch *watch;
    int events;       /* events the watch is started with */
    uint64_t gen;     /* bumped at every discard: stale callbacks compare it */
    uv_timer_t timer; /* backoff, connect timeout, or the READY bound */
    uv_getaddrinfo_t resolve;
    db_slot *slots; /* ring of cfg.pipeline_depth slots, in db->slots */
    size_t head;
    size_t count;
    rt_db_tx *tx;      /* the transaction holding the connection, or NULL */
    bool held;         /* a transaction or its cleanup owns the connection */
    unsigned failures; /* consecutive failed attempts, for the backoff */
    bool crowded;      /* the last attempt was refused while other connections worked */
    uint64_t ready_at; /* loop time when it last became READY */
    db_name *names;    /* statements prepared, or being prepared, on this connection */
    size_t nnames;
    size_t names_cap;
    uint64_t seq;           /* slots sent on this PGconn */
    uint64_t cancelled_seq; /* the slot the last cancel request was sent for */
    db_cancel *cancel;      /* the cancel request in flight, or NULL */
    db_job finish_job;
};

struct rt_db {
    rt_runtime *rt;
    uv_loop_t *loop;
    rt_db_config cfg;
    /* Connection parameters without host/hostaddr, as libpq keyword/value arrays. */
    const char **keys;
    const char **vals;
    size_t nkeys;
    PQconninfoOption *parsed; /* owns the strings keys/vals point into (libpq's allocation) */
    char *app_name;
    char *options;
    char *host;         /* a name to resolve before each attempt, or NULL */
    char *host_literal; /* host as given when it needs no resolution, or NULL */
    char *hostaddr;     /* hostaddr as given, or NULL */
    char keepalive_vals[DB_KEEPALIVE_KEYS][12];
    db_conn *conns;
    db_slot *slots; /* pool_size rings of pipeline_depth slots */
    rt_list queue;
    size_t queued;
    size_t ready; /* connections in CONN_READY */
    size_t in_flight;
    bool down;     /* the last attempt failed and no connection works */
    char why[256]; /* the failure last reported through on_change, "" when none is */
    bool closing;
    size_t watches; /* db_watch and cancel request handles not yet closed */
    size_t timers;  /* connection timers not yet closed */
    size_t jobs;    /* db_jobs on the thread pool */
    bool finalizing;
    rt_db_close_cb close_cb;
    void *close_arg;
    uint64_t rng;
    rt_db_stats st; /* counters; gauges are computed in rt_db_stats_get */
};

/* db.c */
int rt__db_submit(rt_db *db, rt_db__wait *w);
void rt__db_unqueue(rt_db *db, rt_db__wait *w);
void rt__db_dispatch(rt_db *db);
void rt__db_fail_queue(rt_db *db, int err);
void rt__db_query_finish(rt_db_query *q, PGresult *res, int err, const char *detail);
void rt__db_maybe_closed(rt_db *db);
char *rt__db_strdup(const char *s);

static inline size_t db_conn_cap(const db_conn *c)
{
    return c->db->cfg.pipeline_depth;
}

/* The i-th slot in flight on c, counted from the oldest. */
static inline db_slot *db_conn_slot(const db_conn *c, size_t i)
{
    return &c->slots[(c->head + i) % db_conn_cap(c)];
}

/* db_conn.c: a connection's life. */
/* (Re)starts watching PQsocket for events; fresh forces libuv to register the socket again. */
int rt__db_conn_watch(db_conn *c, int events, bool fresh);
void rt__db_conn_init(db_conn *c, rt_db *db, db_slot *slots);
/* Starts the first connection attempt. */
void rt__db_conn_start(db_conn *c);
/* Pool closing: stops c now, or (READY with work) once it has settled. */
void rt__db_conn_close(db_conn *c);
/* A cancel request (db_cancel.c) for the statement running on c, bounded by cancel_timeout_ms. */
void rt__db_conn_cancel_running(db_conn *c);
/* c's cancel request ended: it landed (the server closed it), or it could not be sent. */
void rt__db_conn_cancel_done(db_conn *c, bool landed);
/* Arms c's timer to discard c unless the awaited answer comes within ms. */
void rt__db_conn_arm_bound(db_conn *c, uint8_t bound, uint32_t ms);
/* c is in an unknown or broken state: fail what is on it, finish it, reconnect. */
void rt__db_conn_discard(db_conn *c, int err, const char *detail);

/* db_pipe.c: a READY connection's requests. */
bool rt__db_conn_is_placeable(const db_conn *c);
bool rt__db_conn_is_idle(const db_conn *c);
/* Appends a slot and sends it, with a Sync behind it when sync is set (otherwise it waits in
 * libpq's buffer for rt__db_conn_sync); NULL when sending failed (c was discarded, the slot
 * failed). */
db_slot *rt__db_conn_send(db_conn *c, uint8_t kind, rt_db_query *q, const char *name,
                          const char *sql, int nparams, const char *const *params, bool sync);
/* Sends a Sync behind the last slot, unless it has one, and flushes. False when sending failed
 * (c was discarded). */
bool rt__db_conn_sync(db_conn *c);
/* The query in s completed early: drop its result when it comes. */
void rt__db_conn_orphan(db_conn *c, db_slot *s);
/* When nobody waits for anything on c, interrupts the statement running now, unless a cancel
 * request was already sent for it or is still in flight. */
void rt__db_conn_cancel_orphans(db_conn *c);
/* Brings c back to a known state after its work ended, then lets it take queued work. */
void rt__db_conn_settle(db_conn *c);
/* Socket events on a READY connection. */
void rt__db_conn_on_io(db_conn *c, int status, int events);
void rt__db_conn_fail_slots(db_conn *c, int err, const char *detail);
void rt__db_conn_forget_names(db_conn *c);
/* c has been idle for idle_check_ms: sends the empty statement that checks it. */
void rt__db_conn_check_idle(db_conn *c);
/* Arms the idle check's wait when c is idle and nothing else is bounded. */
void rt__db_conn_arm_idle(db_conn *c);

/* db_tx.c */
void rt__db_tx_place(rt_db_tx *tx, db_conn *c);
void rt__db_tx_on_result(db_conn *c, db_slot *s);
void rt__db_tx_on_lost(db_conn *c, int err, const char *detail);

/* db_cancel.c: cancel requests on the loop. */
/* Sends a cancel request for c's backend; c->cancel is set until it ends (reported through
 * rt__db_conn_cancel_done). Returns 0, or an error when none could be sent. */
int rt__db_cancel_start(db_conn *c);
/* c no longer waits for its cancel request (c is discarded or closed): the request goes on
 * alone until the peer closes it or its bound (cancel_timeout_ms from its start) passes. */
void rt__db_cancel_detach(db_conn *c);

/* db_result.c */
/* Classifies an error result: RT_DB_ESQL, or UV_ETIMEDOUT for statement_timeout (57014). */
int rt__db_result_status(const PGresult *res);
/* Replaces r's content with res (steals it; may be NULL) and a copy of detail (may be NULL). */
void rt__db_result_set(rt_db_result *r, PGresult *res, const char *detail);
/* Frees r's content. */
void rt__db_result_clear(rt_db_result *r);

#endif /* RT_DB_INT_H */

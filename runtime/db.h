/* SPDX-License-Identifier: MIT */
/*
 * db.h - the asynchronous PostgreSQL driver: a pool of non-blocking libpq connections on the loop.
 *
 * An rt_db is a fixed pool of `pool_size` libpq connections, each in non-blocking pipeline mode
 * and watched by a uv_poll handle, all on the loop thread: nothing here blocks the loop. Work
 * comes in two shapes, both tasks embedded by the caller:
 *
 *  - rt_db_query: one parameterized statement (text parameters only, never interpolated SQL),
 *    optionally prepared once per connection under a name. Queries share connections: when every
 *    connection is busy, up to `pipeline_depth` queries are pipelined on one connection, each
 *    with its own sync point, so one failing statement never aborts its neighbours. Pipelining
 *    pays for short statements only: a connection whose oldest statement has run for
 *    `pipeline_stall_us` takes nothing more, and new queries wait in the queue for whichever
 *    connection frees up first.
 *  - rt_db_tx: a transaction holding one connection alone. BEGIN, with the statements known in
 *    advance pipelined behind it, then the caller's step callback chooses the next statement
 *    from the previous result, then COMMIT (possibly behind the last statement) or ROLLBACK.
 *    What it sends in one go shares one sync point: an error aborts the transaction anyway.
 *
 * Acquisition is a bounded FIFO queue: when `queue_limit` requests already wait, a new one fails
 * at once with UV_EBUSY (a 503, never memory growth). While the database is known to be down (no
 * connection works and the last attempt failed), requests fail fast with UV_ECONNREFUSED;
 * connections reconnect by themselves, each with its own exponential backoff and jitter, and
 * idle connections are checked (idle_check_ms) so that a silent partition is noticed.
 *
 * Cancellation (the task's signal, or rt_task_cancel) completes the task at once with the reason;
 * the connection it was using is cleaned up by the pool before anyone else gets it:
 *  - a statement whose connection carries nothing anyone still waits for is interrupted by a
 *    cancel request sent from the loop (db_cancel.c; never a blocking PQcancel), bounded by
 *    cancel_timeout_ms, after which the connection is replaced; one pipelined between live
 *    neighbours runs to its end, and its result is dropped;
 *  - a transaction cancelled before COMMIT is sent is rolled back (COMMIT is never sent, so
 *    nothing it wrote is ever visible); once COMMIT is sent, cancellation no longer strikes: the
 *    outcome is awaited, bounded by `commit_timeout_ms`, and reported;
 *  - a connection whose state is unknown (lost, timed out, protocol surprise) is never reused: it
 *    is closed and replaced.
 *
 * What it deliberately does not do: HTTP, JSON, retries of failed statements (a retry is the
 * caller's decision, since only the caller knows whether a statement is idempotent), COPY,
 * LISTEN/NOTIFY, binary results, or more than one host in the connection string.
 *
 * Threads: everything here is called on the loop thread of the runtime the pool was opened on.
 */
#ifndef RT_DB_H
#define RT_DB_H

#include "task.h"

/* libpq's result type, kept opaque so that users of the driver need not include libpq-fe.h. */
struct pg_result;

typedef struct rt_db rt_db;
typedef struct rt_db_query rt_db_query;
typedef struct rt_db_tx rt_db_tx;

/*
 * Errors, besides UV_ENOMEM, UV_EINVAL and the cancellation reasons (UV_ECANCELED, UV_ETIMEDOUT):
 *
 * | code              | meaning                                                | HTTP hint   |
 * |-------------------|--------------------------------------------------------|-------------|
 * | RT_DB_EQUEUE_FULL | queue_limit requests already wait for a connection     | 503, retry  |
 * | RT_DB_EDOWN       | no connection works and the last attempt failed        | 503         |
 * | RT_DB_ELOST       | the connection broke while the statement was on it;    | 503         |
 * |                   | for a write outside a transaction, outcome unknown     |             |
 * | RT_DB_ESQL        | the server answered with an error: sqlstate, message   | by SQLSTATE |
 * | RT_DB_ESHUTDOWN   | the pool is closing                                    | 503         |
 * | UV_ETIMEDOUT      | statement_timeout fired on the server (SQLSTATE 57014) | 504         |
 * |                   | or the task's signal was a deadline                    |             |
 */
#define RT_DB_EQUEUE_FULL UV_EBUSY
#define RT_DB_EDOWN       UV_ECONNREFUSED
#define RT_DB_ELOST       UV_ECONNRESET
#define RT_DB_ESQL        UV_EPROTO
#define RT_DB_ESHUTDOWN   UV_ESHUTDOWN

/* At most this many parameters per statement. */
#define RT_DB_MAX_PARAMS 16

/* Upper bounds (seconds) of the acquisition-wait histogram buckets; +Inf is implicit. */
#define RT_DB_WAIT_BUCKETS 12
extern const double rt_db_wait_bounds_s[RT_DB_WAIT_BUCKETS];

typedef struct rt_db_config {
    /* libpq connection string or URI (borrowed during rt_db_open; copied). One host only. */
    const char *conninfo;
    /* Shown in pg_stat_activity (borrowed during rt_db_open; copied). NULL: "hindsight". */
    const char *application_name;
    size_t pool_size;               /* connections, >= 1 */
    size_t queue_limit;             /* requests waiting for a connection, beyond which UV_EBUSY */
    size_t pipeline_depth;          /* queries in flight per connection; 1 disables pipelining */
    uint32_t pipeline_stall_us;     /* never pipeline behind a statement running this long */
    uint32_t statement_timeout_ms;  /* server-side statement_timeout; 0: none */
    uint32_t idle_in_tx_timeout_ms; /* idle_in_transaction_session_timeout; 0: none */
    uint32_t connect_timeout_ms;    /* bound on one connection attempt (resolve + handshake) */
    uint32_t commit_timeout_ms;     /* bound on waiting for COMMIT's answer (and ROLLBACK's) */
    uint32_t cancel_timeout_ms;     /* after a cancel request, wait this long before discarding */
    uint32_t backoff_min_ms;        /* first reconnect delay after a failure */
    uint32_t backoff_max_ms;        /* cap of the exponential backoff */
    /*
     * The server is reached through a pooler in transaction mode (PgBouncer's
     * pool_mode=transaction), where consecutive transactions of one connection may run on
     * different server sessions: no statement is prepared under a name (rt_db_query_prepare_as
     * and rt_db_tx_exec's name are ignored; every statement goes as the unnamed one), and the
     * session settings statement_timeout_ms and idle_in_tx_timeout_ms are not sent at connect
     * (the pooler refuses the startup option): set them on the pooler or the database role.
     * It also turns pipelining off (pipeline_depth is 1): PgBouncer 1.18 returns a server
     * session to its pool at the first ReadyForQuery even while later pipelined statements
     * still run there, so another client could read their results as its own.
     */
    bool transaction_pooler;
    /* A connection idle this long is checked with an empty statement, whose answer must come
     * within idle_check_timeout_ms, else it is discarded; 0: never checked. A silent partition
     * (no reset, no answer) is found this way even with no traffic. */
    uint32_t idle_check_ms;
    uint32_t idle_check_timeout_ms;
    /* TCP keepalive (libpq's keepalives_idle/_interval/_count, in seconds) and tcp_user_timeout
     * (ms; 0: the kernel's) for every connection, unless conninfo sets them itself. */
    uint32_t keepalive_idle_s;
    uint32_t keepalive_interval_s;
    uint32_t keepalive_count;
    uint32_t tcp_user_timeout_ms;
    /* Told once per change of the pool's connection state, on the loop (may be NULL): failing
     * is true with why (libpq's message, one line, naming the host and each address tried) when
     * attempts start failing or fail for another reason, false with why NULL once every
     * connection is up again. Not once per attempt: a refusing server would flood the log. */
    void (*on_change)(void *arg, bool failing, const char *why);
    void *on_change_arg;
} rt_db_config;

/** Fills cfg with the defaults (pool 10, queue 1000, depth 8, stall 5 ms, timeouts in seconds). */
void rt_db_config_default(rt_db_config *cfg);

/**
 * Opens a pool on rt's loop and starts connecting every connection at once, without waiting:
 * requests made before the first connection is up wait in the queue. Returns 0 and stores a new
 * pool in *out (release it with rt_db_close), or UV_EINVAL (bad configuration or connection
 * string) or UV_ENOMEM, in which case nothing was allocated and no handle is left open. A
 * database that cannot be reached is not an error here: the pool keeps retrying with backoff.
 */
int rt_db_open(rt_db **out, rt_runtime *rt, const rt_db_config *cfg);

typedef void (*rt_db_close_cb)(rt_db *db, void *arg);

/**
 * Closes the pool. Requests still waiting fail with RT_DB_ESHUTDOWN, statements and transactions
 * in flight are cancelled as by rt_task_cancel (a transaction whose COMMIT was sent is still
 * awaited, bounded), and every connection is finished and every handle closed. cb(db, arg) (may
 * be NULL) runs on a later loop turn once that is done; db is freed right after cb returns.
 * Requests started after rt_db_close fail with RT_DB_ESHUTDOWN until then; after cb, db is gone.
 * Calling close twice is a programmer error.
 */
void rt_db_close(rt_db *db, rt_db_close_cb cb, void *arg);

/** True while at least one connection is established and usable (readiness). */
bool rt_db_is_up(const rt_db *db);

typedef struct rt_db_stats {
    size_t pool_size;
    /* Connections by state; they add up to pool_size. */
    size_t conns_idle;       /* established, nothing in flight */
    size_t conns_busy;       /* established, statements in flight or held by a transaction */
    size_t conns_connecting; /* resolving the host or in the handshake */
    size_t conns_broken;     /* failed or lost, waiting for the backoff timer (or closing) */
    size_t queue_depth;      /* requests waiting for a connection */
    size_t queue_limit;
    size_t in_flight; /* queries and transactions placed on a connection */
    /* Queries (rt_db_query), by outcome. */
    uint64_t queries_ok;
    uint64_t errors_sql;       /* RT_DB_ESQL */
    uint64_t errors_timeout;   /* statement_timeout fired on the server */
    uint64_t errors_lost;      /* RT_DB_ELOST */
    uint64_t errors_cancelled; /* cancelled by the caller while waiting or running */
    uint64_t rejected_busy;    /* RT_DB_EQUEUE_FULL (queries and transactions) */
    uint64_t rejected_down;    /* RT_DB_EDOWN (queries and transactions) */
    uint64_t pipelined;        /* queries sent while another was in flight on the connection */
    /* Transactions (rt_db_tx), by outcome, and rollbacks by cause. */
    uint64_t tx_committed;
    uint64_t tx_rolled_back;
    uint64_t tx_unknown;     /* COMMIT sent, answer never came (lost or commit_timeout_ms) */
    uint64_t tx_round_trips; /* waits on the server: sends made with none of its own in flight */
    uint64_t rollbacks_cancel;
    uint64_t rollbacks_error;
    uint64_t rollbacks_user;
    /* Connections over time. */
    uint64_t connects_ok;
    uint64_t connects_failed;
    uint64_t connects_timed_out; /* of connects_failed: no answer within connect_timeout_ms */
    uint64_t connects_refused;   /* of connects_failed: refused while others worked (full) */
    uint64_t conns_lost;         /* an established connection broke or was discarded */
    uint64_t conns_expired;      /* of conns_lost: discarded because an awaited answer (COMMIT,
                                    ROLLBACK, cancelled work, idle check) outlasted its bound */
    uint64_t cancels_sent;       /* cancel requests sent */
    uint64_t cancels_timed_out;  /* cancelled statements not ended within cancel_timeout_ms */
    /* Time from start to getting a connection: cumulative counts per rt_db_wait_bounds_s. */
    uint64_t wait_le[RT_DB_WAIT_BUCKETS];
    uint64_t wait_count;
    double wait_sum_s;
} rt_db_stats;

/** Copies the pool's counters and gauges into *out. Never fails. */
void rt_db_stats_get(const rt_db *db, rt_db_stats *out);

/*
 * A statement's result, or its error. Embedded in rt_db_query and rt_db_tx; valid once the
 * query's completion is delivered (or, for a transaction, during the step callback and after
 * completion) until the owner is released or, for a transaction, the next statement is sent.
 */
typedef struct rt_db_result {
    char sqlstate[6]; /* read-only: five characters after an RT_DB_ESQL error, else "" */
    /* private */
    struct pg_result *res;
    char *detail;
} rt_db_result;

/** Rows returned (0 for a command without rows, or on error). */
int rt_db_result_rows(const rt_db_result *r);

/** Columns returned. */
int rt_db_result_cols(const rt_db_result *r);

/** Rows affected by an INSERT/UPDATE/DELETE (the command tag's count), else 0. */
int64_t rt_db_result_affected(const rt_db_result *r);

/** True when the value is SQL NULL (or out of range). */
bool rt_db_result_is_null(const rt_db_result *r, int row, int col);

/** The value as text (borrowed, as the result itself); "" for NULL, NULL when out of range. */
const char *rt_db_result_text(const rt_db_result *r, int row, int col);

/**
 * Parses an integer column into *out. Returns 0, UV_EINVAL when the value is NULL, out of range
 * or not an integer.
 */
int rt_db_result_int64(const rt_db_result *r, int row, int col, int64_t *out);

/** Parses a boolean column ("t"/"f") into *out. Returns 0 or UV_EINVAL. */
int rt_db_result_bool(const rt_db_result *r, int row, int col, bool *out);

/**
 * The human-readable error (server message with its DETAIL, or the connection error), borrowed
 * like the result; "" when there was none.
 */
const char *rt_db_result_error(const rt_db_result *r);

typedef void (*rt_db_query_release_cb)(rt_db_query *q);

/* Private: how a query or a transaction waits in the pool's FIFO queue. */
typedef struct rt_db__wait {
    rt_list link;
    uint64_t since; /* uv_hrtime() when started, for the wait histogram */
    uint8_t kind;
} rt_db__wait;

/*
 * A single statement. Embed it, init it, start q->task (with a signal to make it cancellable),
 * read q->result in the completion callback, then rt_task_release(&q->task).
 * Completion status: 0, or an error from the table above.
 */
struct rt_db_query {
    rt_task task;        /* start, cancel and release this */
    rt_db_result result; /* read-only: valid once the completion is delivered */
    /* private */
    rt_db *db;
    rt_db__wait wait;
    const char *name;
    const char *sql;
    const char *params[RT_DB_MAX_PARAMS];
    int nparams;
    struct rt_db__slot *slot;
    rt_db_query_release_cb release_cb;
};

/**
 * Initializes q to run sql with nparams text parameters ($1..$n; a NULL entry is SQL NULL).
 * sql and each parameter string are borrowed until q's completion is delivered; the params array
 * itself is copied. release_cb (may be NULL) runs when q->task is released, after the result has
 * been freed, so that q's own storage can be freed there. Never allocates, never fails. Like any
 * task, q may be initialized again only once it has been released and its completion callback
 * has returned (not from inside that callback: use a second query, or a post).
 */
void rt_db_query_init(rt_db_query *q, rt_db *db, const char *sql, int nparams,
                      const char *const *params, rt_db_query_release_cb release_cb);

/**
 * Before start: prepare the statement under name (borrowed, like sql) the first time it runs on
 * each connection, and execute the prepared statement after that. Until that first Parse has been
 * acknowledged, queries pipelined behind it run the same sql unnamed, so a Parse that fails fails
 * only its own query. Every query using a name must use the same sql with the same number of
 * parameters.
 */
void rt_db_query_prepare_as(rt_db_query *q, const char *name);

/* What a transaction ended as, as far as the database is concerned. */
enum rt_db_tx_outcome {
    RT_DB_TX_NONE = 0,    /* not finished (or never got a connection) */
    RT_DB_TX_COMMITTED,   /* COMMIT acknowledged: everything is durable */
    RT_DB_TX_ROLLED_BACK, /* COMMIT never sent or refused: nothing is visible */
    RT_DB_TX_UNKNOWN      /* COMMIT sent, answer lost (connection broke or commit timeout) */
};

/*
 * The step callback: a statement succeeded (tx->step statements have run since BEGIN; 0 right
 * after BEGIN) and its result is in tx->result. When rt_db_tx_queued(tx) is 0 it must call
 * exactly one of rt_db_tx_exec, rt_db_tx_commit or rt_db_tx_rollback before returning; while
 * statements of the transaction are still to come (sent with rt_db_tx_pipeline) it may return
 * without choosing, and is called again with the next result, or abandon the transaction with
 * rt_db_tx_rollback. A failing statement does not reach the step callback: the transaction is
 * rolled back and completes with the error. BEGIN's own result reaches it only when no statement
 * was pipelined behind BEGIN.
 */
typedef void (*rt_db_tx_step_cb)(rt_db_tx *tx);
typedef void (*rt_db_tx_release_cb)(rt_db_tx *tx);

/* Statements rt_db_tx_pipeline may send behind BEGIN. */
#define RT_DB_TX_AHEAD 4

/* A statement sent behind BEGIN (private; see rt_db_tx_pipeline). */
typedef struct rt_db__ahead {
    const char *name;
    const char *sql;
    const char *const *params;
    int nparams;
} rt_db__ahead;

/*
 * A transaction on one connection. Embed it, init it, start tx->task. Completion status: 0 when
 * committed; RT_DB_ESQL (tx->result has the SQLSTATE) or another error from the table above; the
 * status given to rt_db_tx_rollback; or the cancellation reason. tx->outcome says what the
 * database did, which matters when the status is an error after COMMIT was sent.
 *
 * Round trips: every send made while none of the transaction's statements is in flight is one
 * more wait on the server (counted in round_trips and in the pool's tx_round_trips). Statements
 * pipelined behind BEGIN (rt_db_tx_pipeline) and a COMMIT sent behind the last statement
 * (rt_db_tx_exec then rt_db_tx_commit) share their round trip; with pipeline_depth 1 (and so
 * behind a transaction pooler) they go one at a time, each after the previous one's success.
 */
struct rt_db_tx {
    rt_task task;         /* start, cancel and release this */
    rt_db_result result;  /* read-only: the last statement's result (or error) */
    unsigned step;        /* read-only: statements completed since BEGIN */
    unsigned round_trips; /* read-only: waits on the server so far (see above) */
    uint8_t outcome;      /* read-only: enum rt_db_tx_outcome, once completed */
    bool commit_sent;     /* read-only: COMMIT went out; cancellation no longer strikes */
    /* private */
    rt_db *db;
    rt_db__wait wait;
    const char *begin_sql;
    rt_db_tx_step_cb step_cb;
    rt_db_tx_release_cb release_cb;
    struct rt_db__conn *conn;
    int pending_cancel;
    uint8_t phase;
    uint8_t nahead;     /* statements given to rt_db_tx_pipeline */
    uint8_t ahead_sent; /* of which sent */
    bool commit_queued; /* COMMIT chosen, waiting for room on the connection */
    bool in_step;
    bool decided;
    rt_db__ahead ahead[RT_DB_TX_AHEAD];
};

/**
 * Initializes tx. begin_sql (borrowed until completion; NULL means "BEGIN") may set an isolation
 * level, e.g. "BEGIN ISOLATION LEVEL SERIALIZABLE". step is called on the loop after BEGIN and
 * after each successful statement. release_cb (may be NULL) as for rt_db_query_init. Never
 * allocates, never fails.
 */
void rt_db_tx_init(rt_db_tx *tx, rt_db *db, const char *begin_sql, rt_db_tx_step_cb step,
                   rt_db_tx_release_cb release_cb);

/**
 * Before tx->task is started, at most RT_DB_TX_AHEAD times: a statement to send right behind
 * BEGIN, in the same round trip (name as in rt_db_query_prepare_as, may be NULL). Unlike
 * rt_db_tx_exec, name, sql, the params array and the strings it points to are borrowed until
 * completion. Each one's result reaches the step callback in order; a failure of one rolls the
 * transaction back, and the statements behind it are answered by the server with an error that
 * nobody reads.
 */
void rt_db_tx_pipeline(rt_db_tx *tx, const char *name, const char *sql, int nparams,
                       const char *const *params);

/** Statements of tx sent or waiting to be sent whose results have not reached the callback. */
unsigned rt_db_tx_queued(const rt_db_tx *tx);

/**
 * From the step callback only, when rt_db_tx_queued is 0: sends the next statement (name as in
 * rt_db_query_prepare_as, may be NULL). sql and params are borrowed only for this call (the
 * statement is sent before it returns, so params may point into tx->result). The previous result
 * is freed after sending.
 */
void rt_db_tx_exec(rt_db_tx *tx, const char *name, const char *sql, int nparams,
                   const char *const *params);

/**
 * From the step callback only: sends COMMIT. From this point cancellation no longer interrupts
 * the transaction; it completes with 0 once COMMIT is acknowledged, or with an error and
 * outcome RT_DB_TX_UNKNOWN when the answer does not come within commit_timeout_ms.
 *
 * Called right after rt_db_tx_exec in the same callback, COMMIT goes behind that statement in
 * the same round trip, and the statement's result does not reach the step callback: its
 * failure completes the transaction with the error and outcome RT_DB_TX_ROLLED_BACK (the server
 * answers the COMMIT of a failed transaction by rolling it back). With pipeline_depth 1, COMMIT
 * waits for the statement's success, and until it is sent cancellation still rolls back.
 */
void rt_db_tx_commit(rt_db_tx *tx);

/**
 * From the step callback only: abandons the transaction (the caller decided, e.g. insufficient
 * funds). The pool rolls it back before reusing the connection; the task completes with status
 * (negative) and outcome RT_DB_TX_ROLLED_BACK. Statements still in flight run to their end and
 * their results are dropped.
 */
void rt_db_tx_rollback(rt_db_tx *tx, int status);

#endif /* RT_DB_H */

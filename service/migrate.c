/* SPDX-License-Identifier: MIT */
/*
 * migrate.c - applying the embedded SQL files (see migrate.h).
 *
 * Every file runs in its own transaction together with the row that records it, so a crash
 * half-way leaves either both or neither; the files are idempotent as well (IF NOT EXISTS, ON
 * CONFLICT DO NOTHING), so even a hand-run file can be repeated. Each transaction begins by
 * taking a transaction-level advisory lock and only then checks whether its file is still
 * needed: a second instance waits on the lock, then finds nothing left to do. The lock is a
 * transaction's, not the session's, and nothing is SET on the session, so the same run works
 * through a pooler in transaction mode (DB_TRANSACTION_POOLER), where only what lies between
 * BEGIN and COMMIT is sure to share a server session: a session lock taken there could be
 * released on another session and stay held on the first, blocking every later start.
 */
#include "service/migrate.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <uv.h>

#include "service/log.h"

/* The migration lock: an arbitrary 64-bit key that nothing else on this database uses. */
#define LOCK_KEY "7523383421053626228"

/* The seed fills these; if any is empty, the seed (idempotent) runs again. */
static const char seed_needed_sql[] =
    "SELECT NOT EXISTS (SELECT 1 FROM users) OR NOT EXISTS (SELECT 1 FROM settings)"
    " OR NOT EXISTS (SELECT 1 FROM accounts)";

static void log_pg_error(const char *what, const char *name, const char *msg)
{
    svc_log_line l;
    char clean[512];
    size_t n;

    snprintf(clean, sizeof(clean), "%s", msg != NULL ? msg : "");
    n = strlen(clean);
    while (n > 0 && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
        clean[--n] = '\0';
    if (!svc_log_begin(&l, SVC_LOG_ERROR, "migrate"))
        return;
    svc_log_str(&l, "step", what);
    if (name != NULL)
        svc_log_str(&l, "file", name);
    svc_log_str(&l, "error", clean);
    svc_log_end(&l);
}

/* Runs sql with up to one text parameter; true when it succeeded. *out (optional) keeps the
 * result for the caller to read and PQclear. */
static bool exec(PGconn *c, const char *sql, const char *param, PGresult **out, const char *what,
                 const char *name)
{
    PGresult *r;
    ExecStatusType st;

    if (param != NULL)
        r = PQexecParams(c, sql, 1, NULL, &param, NULL, NULL, 0);
    else
        r = PQexec(c, sql);
    st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        log_pg_error(what, name, PQerrorMessage(c));
        PQclear(r);
        return false;
    }
    if (out != NULL)
        *out = r;
    else
        PQclear(r);
    return true;
}

static bool query_bool(PGconn *c, const char *sql, const char *param, bool *out, const char *name)
{
    PGresult *r;

    if (!exec(c, sql, param, &r, "check", name))
        return false;
    *out = PQntuples(r) > 0 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return true;
}

static bool is_seed(const char *name)
{
    size_t n = strlen(name);

    return n >= 9 && strcmp(name + n - 9, "_seed.sql") == 0;
}

/* BEGIN, then the migration lock (held until COMMIT or ROLLBACK). */
static bool begin_locked(PGconn *c, const char *name)
{
    if (!exec(c, "BEGIN", NULL, NULL, "begin", name))
        return false;
    if (!exec(c, "SELECT pg_advisory_xact_lock(" LOCK_KEY ")", NULL, NULL, "lock", name)) {
        PQclear(PQexec(c, "ROLLBACK"));
        return false;
    }
    return true;
}

/* Applies one file and its record in a single transaction, if it is still needed once the lock
 * is held. */
static bool apply(PGconn *c, const svc_migration *m)
{
    uint64_t t0 = uv_hrtime();
    svc_log_line l;
    bool needed;

    if (!begin_locked(c, m->name))
        return false;
    if (is_seed(m->name)) {
        if (!query_bool(c, seed_needed_sql, NULL, &needed, m->name))
            goto out_rollback;
    } else if (!query_bool(c,
                           "SELECT NOT EXISTS (SELECT 1 FROM schema_migrations"
                           " WHERE version = $1)",
                           m->name, &needed, m->name)) {
        goto out_rollback;
    }
    if (!needed)
        return exec(c, "COMMIT", NULL, NULL, "commit", m->name);
    if (!exec(c, m->sql, NULL, NULL, "apply", m->name) ||
        !exec(c,
              "INSERT INTO schema_migrations (version) VALUES ($1)"
              " ON CONFLICT (version) DO UPDATE SET applied_at = now()",
              m->name, NULL, "record", m->name) ||
        !exec(c, "COMMIT", NULL, NULL, "commit", m->name))
        goto out_rollback;
    if (svc_log_begin(&l, SVC_LOG_INFO, "migrate")) {
        svc_log_str(&l, "step", "applied");
        svc_log_str(&l, "file", m->name);
        svc_log_ms(&l, "duration_ms", (double)(uv_hrtime() - t0) / 1e6);
        svc_log_end(&l);
    }
    return true;

out_rollback:
    PQclear(PQexec(c, "ROLLBACK"));
    return false;
}

static bool run(PGconn *c)
{
    if (!begin_locked(c, "bootstrap"))
        return false;
    if (!exec(c,
              "CREATE TABLE IF NOT EXISTS schema_migrations ("
              " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
              NULL, NULL, "bootstrap", NULL) ||
        !exec(c, "COMMIT", NULL, NULL, "commit", "bootstrap")) {
        PQclear(PQexec(c, "ROLLBACK"));
        return false;
    }
    for (size_t i = 0; i < svc_migrations_count; i++) {
        if (!apply(c, &svc_migrations[i]))
            return false;
    }
    return true;
}

/* Notices ("relation already exists, skipping") are expected on every start: dropped here
 * rather than silenced with a SET, which would outlive this run on a pooler's session. */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Connects, retrying every 250 ms until deadline_ns; NULL when the time ran out. */
static PGconn *connect_with_retry(const char *conninfo, uint64_t deadline_ns)
{
    bool logged = false;

    for (;;) {
        PGconn *c = PQconnectdb(conninfo);
        struct timespec pause = {0, 250 * 1000 * 1000};

        if (PQstatus(c) == CONNECTION_OK)
            return c;
        if (!logged || uv_hrtime() >= deadline_ns) {
            log_pg_error("connect", NULL, PQerrorMessage(c));
            logged = true;
        }
        PQfinish(c);
        if (uv_hrtime() >= deadline_ns)
            return NULL;
        nanosleep(&pause, NULL);
    }
}

int svc_migrate(const char *conninfo, uint32_t wait_ms)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)wait_ms * 1000000u;
    PGconn *c;
    int err = UV_EIO;

    c = connect_with_retry(conninfo, deadline);
    if (c == NULL)
        return UV_ETIMEDOUT;
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    if (run(c))
        err = 0;
    PQfinish(c);
    return err;
}

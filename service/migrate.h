/* SPDX-License-Identifier: MIT */
/*
 * migrate.h - bringing the database schema up to date at startup.
 *
 * The SQL files of deploy/sql are compiled into the binary (service/embed_sql.cmake generates
 * svc_migrations[] at build time), so a deployed binary and its schema can never disagree.
 * Files are applied in name order; each schema file once, recorded in schema_migrations; a seed
 * file (its name ends in "_seed.sql") whenever the tables it fills are empty.
 *
 * This runs before the loop serves, so it may block: it uses one plain libpq connection and
 * waits, with a bound, for the database to come up. Several instances starting at once
 * serialize on a PostgreSQL advisory lock taken in each file's transaction, so each file is
 * applied by exactly one of them; nothing outlives a transaction, so it works the same through
 * a pooler in transaction mode.
 */
#ifndef SVC_MIGRATE_H
#define SVC_MIGRATE_H

#include <stddef.h>
#include <stdint.h>

typedef struct svc_migration {
    const char *name; /* the file name, e.g. "001_schema.sql": the version recorded */
    const char *sql;  /* its text, NUL-terminated */
} svc_migration;

/* Generated at build time, in name order. */
extern const svc_migration svc_migrations[];
extern const size_t svc_migrations_count;

/**
 * Connects to conninfo (retrying until wait_ms has passed while the database is unreachable),
 * applies what is missing, each file under the migration advisory lock, and disconnects. Each step
 * is logged. Returns 0, UV_ETIMEDOUT when no connection could be made in time, or UV_EIO when a
 * statement failed (logged with the server's message). Blocking: startup only.
 */
int svc_migrate(const char *conninfo, uint32_t wait_ms);

#endif /* SVC_MIGRATE_H */

/* SPDX-License-Identifier: MIT */
/*
 * user_row_int.h - the user row that patterns 0 and 2 read: its statement, its route inputs and
 * its JSON, and how `delay_ms` is played inside a statement.
 *
 * Patterns 0 and 2 read the same user row in four places (both users routes, the dashboard, the
 * batch). Keeping the statement text in one place is what makes `before` and `after` comparable:
 * they differ in how they wait for the row, never in what they ask for.
 */
#ifndef HS_USER_ROW_INT_H
#define HS_USER_ROW_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/db.h"
#include "service/http.h"

/*
 * Timestamps leave the database as RFC 3339 UTC text (to_char(ts AT TIME ZONE 'UTC', this)), so
 * no handler parses a timestamptz.
 */
#define HS_SQL_RFC3339 "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'"

/*
 * The delay of a database step: a one-row CTE that sleeps $2 milliseconds on the server. The
 * statements that use it LEFT JOIN their table to it, so the CTE is always the preserved side and
 * the sleep runs even when the row asked for does not exist (an inner join would let the planner
 * skip the CTE once the table side comes up empty).
 */
#define HS_SQL_DELAY "WITH d AS MATERIALIZED (SELECT pg_sleep($2::float8 / 1000)) "

/*
 * The user statement: $1 the id, $2 the delay in ms. Always one row: columns id, name, email,
 * created_at, all NULL when the user does not exist. Prepared under HS_USER_STMT by the pool.
 */
#define HS_USER_SQL                                                                                \
    HS_SQL_DELAY                                                                                   \
    "SELECT u.id, u.name, u.email, to_char(u.created_at AT TIME ZONE 'UTC', " HS_SQL_RFC3339 ")"   \
    " FROM d LEFT JOIN users u ON u.id = $1::bigint"
#define HS_USER_STMT "hs_user_by_id"

/**
 * Reads the user routes' inputs: the {id} path parameter into *id and the delay_ms query
 * parameter (0..HS_DELAY_MAX_MS, default 0) into *delay. Returns 0, or a negative error after
 * setting the 400 for the bad input. req is borrowed for the call; loop thread only.
 */
int hs__user_args(svc_request *req, int64_t *id, int64_t *delay);

/**
 * The user object {"id","name","email","created_at"} from the four columns of HS_USER_SQL as
 * text (borrowed for the call). Returns new, or NULL without memory.
 */
json_t *hs__user_json(const char *id, const char *name, const char *email, const char *created_at);

/** True when an HS_USER_SQL result (borrowed) is the all-NULL row: no such user. */
bool hs__user_is_missing(const rt_db_result *r);

/**
 * The user object from row 0 of an HS_USER_SQL result (borrowed). *missing is set when the row
 * is the all-NULL one (no such user), and NULL is returned; NULL with *missing false means out
 * of memory.
 */
json_t *hs__user_json_result(const rt_db_result *r, bool *missing);

/** Sets the 404 of a user that does not exist. */
void hs__user_respond_missing(svc_request *req, int64_t id);

#endif /* HS_USER_ROW_INT_H */

/* SPDX-License-Identifier: MIT */
/*
 * patterns.h - the rows of the patterns, one register function per pattern file.
 *
 * Pattern files are named p<N>_<name>.c after the README's pattern table (N its number, name the
 * pattern as the benchmark table calls it), and each holds one pattern, in sections laid out the
 * same way (a file leaves out what it has none of): its statements, what both variants share,
 * `before`, `after`, the handler, then its rows. Pattern 1 (type-erased handlers) is the handler
 * table itself (service/router.c); the probes are in probes.c, the kit every pattern file uses
 * in kit.c (kit_int.h), and the user row patterns 0 and 2 share in user_row.c.
 *
 *   p0_blocking.c          0 don't block the loop    GET /{before,after}/users/{id}
 *   p2_dashboard.c         2 join                    GET /{before,after}/users/{id}/dashboard
 *   p2_batch.c             2 bounded stream          POST /{before,after}/batch
 *   p3_structured.c        3 structured concurrency  POST /{before,after}/users/{id}/welcome
 *   p4_transfers.c         4 cancellation-aware      POST /{before,after}/transfers,
 *                            writes                  GET /accounts/invariant
 *
 * Each function adds its rows to r. app and r are borrowed for the process lifetime; the rows'
 * state is freed (and pattern 0's own connection closed) when app->root_scope closes. Each
 * returns 0, an error from svc_router_add, or UV_ENOMEM. Startup only.
 */
#ifndef HS_PATTERNS_H
#define HS_PATTERNS_H

#include "service/http.h"

/** GET /before/users/{id} (a synchronous query on the loop thread, on a connection of its own)
 * and GET /after/users/{id} (the same query through app->db). */
int hs_blocking_register(svc_router *r, svc_app *app);

/** GET /{before,after}/users/{id}/dashboard: sequential awaits vs a fail-fast join. */
int hs_dashboard_register(svc_router *r, svc_app *app);

/** POST /{before,after}/batch: a sequential loop vs a bounded stream that drains at shutdown. */
int hs_batch_register(svc_router *r, svc_app *app);

/** POST /{before,after}/users/{id}/welcome: detached vs scoped background work. */
int hs_structured_register(svc_router *r, svc_app *app);

/** POST /{before,after}/transfers and GET /accounts/invariant. */
int hs_transfers_register(svc_router *r, svc_app *app);

#endif /* HS_PATTERNS_H */

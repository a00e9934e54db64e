/* SPDX-License-Identifier: MIT */
/*
 * transfers.h - pattern 4, cancellation-aware writes: a money transfer as separate autocommit
 * statements (before) against one transaction raced against cancellation (after), with
 * idempotency keys; and the invariant that tells the two apart.
 */
#ifndef HS_TRANSFERS_H
#define HS_TRANSFERS_H

#include "service/http.h"

/**
 * Adds POST /before/transfers, POST /after/transfers and GET /accounts/invariant to r. app is
 * borrowed for the process lifetime; the rows' state is freed when app->root_scope closes.
 * Returns 0, or an error from svc_router_add / UV_ENOMEM. Startup only.
 */
int hs_transfers_register(svc_router *r, svc_app *app);

#endif /* HS_TRANSFERS_H */

/* SPDX-License-Identifier: MIT */
/*
 * concurrency.h - pattern 2, concurrency: the dashboard (sequential awaits vs a join) and the
 * batch (a sequential loop vs a bounded stream that stops taking items at shutdown).
 */
#ifndef HS_CONCURRENCY_H
#define HS_CONCURRENCY_H

#include "service/http.h"

/**
 * Adds GET /{before,after}/users/{id}/dashboard and POST /{before,after}/batch to r. app and r
 * are borrowed for the process lifetime; the rows' state is freed when app->root_scope closes.
 * Returns 0, an error from svc_router_add, or UV_ENOMEM. Startup only.
 */
int hs_concurrency_register(svc_router *r, svc_app *app);

#endif /* HS_CONCURRENCY_H */

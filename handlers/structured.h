/* SPDX-License-Identifier: MIT */
/*
 * structured.h - pattern 3, structured concurrency: background work that nothing tracks
 * (before) against background work that belongs to a scope (after).
 */
#ifndef HS_STRUCTURED_H
#define HS_STRUCTURED_H

#include "service/http.h"

/**
 * Adds POST /before/users/{id}/welcome and POST /after/users/{id}/welcome to r. app is borrowed
 * for the process lifetime; the rows' state is freed when app->root_scope closes. Returns 0, or
 * an error from svc_router_add / UV_ENOMEM. Startup only.
 */
int hs_structured_register(svc_router *r, svc_app *app);

#endif /* HS_STRUCTURED_H */

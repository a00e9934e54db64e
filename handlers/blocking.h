/* SPDX-License-Identifier: MIT */
/*
 * blocking.h - pattern 0, "don't block the loop": GET /before/users/{id} and /after/users/{id}.
 */
#ifndef HS_BLOCKING_H
#define HS_BLOCKING_H

#include "service/http.h"

/**
 * Adds GET /before/users/{id} (a synchronous query on the loop thread, on a connection of its
 * own) and GET /after/users/{id} (the same query through app->db) to r. app and r are borrowed
 * for the process lifetime; the rows' state is freed, and the before route's connection closed,
 * when app->root_scope closes. Returns 0, an error from svc_router_add, or UV_ENOMEM. Startup
 * only.
 */
int hs_blocking_register(svc_router *r, svc_app *app);

#endif /* HS_BLOCKING_H */

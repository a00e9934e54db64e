/* SPDX-License-Identifier: MIT */
/*
 * probes.h - liveness, readiness, metrics and the handler table itself.
 */
#ifndef HS_PROBES_H
#define HS_PROBES_H

#include "service/http.h"

/**
 * Adds GET /healthz, /readyz, /metrics and /routes to r. /routes lists r as it is when it is
 * requested, so the other handlers may register after this. app and r are borrowed for the
 * process lifetime. Returns 0, or an error from svc_router_add / UV_ENOMEM. Startup only.
 */
int hs_probes_register(svc_router *r, svc_app *app);

#endif /* HS_PROBES_H */

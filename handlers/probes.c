/* SPDX-License-Identifier: MIT */
/*
 * probes.c - GET /healthz, /readyz, /metrics, /routes and /openapi.json.
 *
 * All five answer at once, without a task and without suspending the connection: they read
 * state the loop already has. /healthz is the cheapest route in the service by design (a
 * literal body, no allocation beyond the response), since orchestrators and load balancers call
 * it constantly and it must keep answering while everything else is slow. /readyz reads the
 * pool's state instead of running a query: the pool already knows whether a connection works,
 * and a probe that queues behind real traffic would report overload as an outage.
 */
#include "handlers/probes.h"

#include <stdlib.h>

#include "runtime/db.h"
#include "service/metrics.h"
#include "service/openapi.h"
#include "service/router.h"

typedef struct probes {
    svc_app *app;
    const svc_router *router;
    rt_guard free_guard;
} probes;

static int healthz(svc_request *req, void *state, rt_task **task_out)
{
    (void)state;
    (void)task_out;
    svc_respond_static(req, 200, "{\"status\":\"ok\"}");
    return 0;
}

static int readyz(svc_request *req, void *state, rt_task **task_out)
{
    probes *p = state;

    (void)task_out;
    if (p->app->draining)
        svc_respond_static(req, 503, "{\"status\":\"draining\"}");
    else if (p->app->db == NULL || !rt_db_is_up(p->app->db))
        svc_respond_static(req, 503, "{\"status\":\"unavailable\",\"db\":\"down\"}");
    else
        svc_respond_static(req, 200, "{\"status\":\"ready\",\"db\":\"up\"}");
    return 0;
}

static int metrics(svc_request *req, void *state, rt_task **task_out)
{
    probes *p = state;
    size_t len;
    char *text;

    (void)task_out;
    text = svc_metrics_render(p->app->metrics, p->app, p->app->root_scope, &len);
    if (text == NULL)
        return UV_ENOMEM;
    svc_respond_buffer(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    return 0;
}

static int routes(svc_request *req, void *state, rt_task **task_out)
{
    probes *p = state;
    json_t *list = svc_router_to_json(p->router);

    (void)task_out;
    if (list == NULL)
        return UV_ENOMEM;
    svc_respond_json(req, 200, list);
    return 0;
}

static int openapi(svc_request *req, void *state, rt_task **task_out)
{
    (void)state;
    (void)task_out;
    /* The embedded document lives as long as the process: served as is, never copied. */
    svc_respond_static(req, 200, svc_openapi_json);
    return 0;
}

int hs_probes_register(svc_router *r, svc_app *app)
{
    probes *p = calloc(1, sizeof(*p));
    int err = 0;

    if (p == NULL)
        return UV_ENOMEM;
    p->app = app;
    p->router = r;
    /* The root scope closes after the server has stopped, so no request can still use p. */
    p->free_guard.fn = free;
    p->free_guard.arg = p;
    rt_scope_defer(app->root_scope, &p->free_guard);
    const svc_route rows[] = {
        {"GET", "/healthz", SVC_VARIANT_NONE, "liveness: 200 whenever the event loop turns",
         healthz, p, SVC_ROUTE_QUIET},
        {"GET", "/readyz", SVC_VARIANT_NONE,
         "readiness: 503 while draining or when no database connection works", readyz, p,
         SVC_ROUTE_QUIET},
        {"GET", "/metrics", SVC_VARIANT_NONE, "Prometheus text exposition (format 0.0.4)", metrics,
         p, SVC_ROUTE_QUIET},
        {"GET", "/routes", SVC_VARIANT_NONE, "this handler table", routes, p, 0},
        {"GET", "/openapi.json", SVC_VARIANT_NONE, "the OpenAPI 3.1 document of this contract",
         openapi, p, 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]) && err == 0; i++)
        err = svc_router_add(r, &rows[i]);
    return err;
}

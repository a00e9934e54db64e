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

#include "handlers/kit_int.h"
#include "runtime/db.h"
#include "service/config.h"
#include "service/metrics.h"
#include "service/openapi.h"
#include "service/router.h"
#include "service/workers.h"

/*
 * 200 while the loop turns, timers included: the loop-lag probe (a 100 ms timer) must have run
 * within LIVENESS_MAX_STALL_MS. A loop blocked outright cannot answer at all; this catches one
 * that still runs some callbacks while its timers starve: 503, so the process gets restarted.
 */
static int healthz(svc_request *req, void *state, rt_task **task_out)
{
    svc_app *app = req->app;
    uint64_t max_ms = (uint64_t)app->config->liveness_max_stall_ms;
    size_t worker = 0;
    uint64_t stall_ms;

    (void)state;
    (void)task_out;
    /* Every loop, not only this one: a worker stalled by a blocking call serves nothing on its
     * connections, and the process must be restarted for it even though this loop turns. */
    if (app->workers != NULL)
        stall_ms = svc_workers_max_stall_ns(app->workers, &worker) / 1000000u;
    else
        stall_ms = svc_metrics_probe_stall_ns(app->metrics) / 1000000u;
    if (max_ms > 0 && stall_ms > max_ms) {
        svc_respond_error(req, 503, "loop_stalled",
                          "the event loop's lag probe has not run for %llu ms (limit %llu ms) on "
                          "worker %zu",
                          (unsigned long long)stall_ms, (unsigned long long)max_ms, worker);
        return 0;
    }
    svc_respond_static(req, 200, "{\"status\":\"ok\"}");
    return 0;
}

static int readyz(svc_request *req, void *state, rt_task **task_out)
{
    svc_app *app = req->app;

    (void)state;
    (void)task_out;
    if (app->draining)
        svc_respond_static(req, 503, "{\"status\":\"draining\"}");
    else if (app->db == NULL || !rt_db_is_up(app->db) ||
             (app->workers != NULL && svc_workers_count(app->workers) > 1 &&
              !svc_workers_all_db_up(app->workers)))
        svc_respond_static(req, 503, "{\"status\":\"unavailable\",\"db\":\"down\"}");
    else
        svc_respond_static(req, 200, "{\"status\":\"ready\",\"db\":\"up\"}");
    return 0;
}

static int metrics(svc_request *req, void *state, rt_task **task_out)
{
    svc_app *app = req->app;
    size_t len;
    char *text;

    (void)state;
    /* Several loops: a task asks every other worker for its own text and sums them. */
    if (app->workers != NULL && svc_workers_count(app->workers) > 1) {
        *task_out = svc_workers_metrics_task(app->workers, app->worker_id, req);
        return *task_out != NULL ? 0 : UV_ENOMEM;
    }
    text = svc_metrics_render(app->metrics, app, app->root_scope, &len);
    if (text == NULL)
        return UV_ENOMEM;
    svc_respond_buffer(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    return 0;
}

/* The row's state is the router itself. */
static int routes(svc_request *req, void *state, rt_task **task_out)
{
    json_t *list = svc_router_to_json(state);

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

static const svc_route rows[] = {
    {"GET", "/healthz", SVC_VARIANT_NONE,
     "liveness: 200 while the event loop turns, 503 when its lag probe stalls", healthz, NULL,
     SVC_ROUTE_QUIET},
    {"GET", "/readyz", SVC_VARIANT_NONE,
     "readiness: 503 while draining or when no database connection works", readyz, NULL,
     SVC_ROUTE_QUIET},
    {"GET", "/metrics", SVC_VARIANT_NONE, "Prometheus text exposition (format 0.0.4)", metrics,
     NULL, SVC_ROUTE_QUIET},
    {"GET", "/routes", SVC_VARIANT_NONE, "this handler table", routes, NULL, 0},
    {"GET", "/openapi.json", SVC_VARIANT_NONE, "the OpenAPI 3.1 document of this contract", openapi,
     NULL, 0},
};

int hs_probes_register(svc_router *r, svc_app *app)
{
    (void)app;
    return HS_ROUTES_ADD(r, rows, r);
}

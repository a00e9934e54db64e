/* SPDX-License-Identifier: MIT */
/*
 * shutdown.c - the shutdown sequence (see shutdown.h for the steps).
 *
 * One timer serves every wait in turn (drain delay, grace period, the bound after cancelling),
 * and one predicate, finished(), decides when step 4 or 5 is over; it is re-checked whenever
 * something it depends on changes: a scope closed, or the server's in-flight count reached zero.
 *
 *   serving(0) --signal--> readiness(1) --DRAIN_DELAY_MS--> stop_accepting(3)
 *   stop_accepting(3) --finished()--> close(6)
 *   stop_accepting(3) --SHUTDOWN_GRACE_MS or 2nd signal--> cancel(5) --finished()--> close(6)
 *   readiness(1) --2nd signal--> [stop_accepting] cancel(5)
 *
 * After cancelling, the completions must come (CONTRIBUTING.md, "Callbacks"); if they have not
 * come within STUCK_MS a task is ignoring cancellation, which is a bug: the process says so and
 * exits 1 rather than hang forever or pretend it stopped cleanly.
 */
#include "service/shutdown.h"

#include <signal.h>
#include <stdlib.h>

#include "service/config.h"
#include "service/log.h"
#include "service/workers.h"

#define STUCK_MS 5000
#define FLUSH_MS 200

static void log_step(svc_shutdown *sd, const char *step)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_INFO, "shutdown"))
        return;
    svc_log_str(&l, "step", step);
    if (sd->app->workers != NULL)
        svc_log_int(&l, "worker", (int64_t)sd->app->worker_id);
    svc_log_ms(&l, "since_signal_ms", (double)(uv_hrtime() - sd->began_ns) / 1e6);
    svc_log_int(&l, "requests_in_flight", (int64_t)svc_server_in_flight(sd->server));
    svc_log_int(&l, "request_tasks", (int64_t)sd->requests->live_total);
    svc_log_int(&l, "service_tasks", (int64_t)sd->service->live_total);
    svc_log_end(&l);
}

static void finish(svc_shutdown *sd)
{
    sd->step = 6;
    uv_timer_stop(&sd->timer);
    log_step(sd, "close");
    sd->done(sd);
}

static void on_flushed(uv_timer_t *t)
{
    finish(t->data);
}

/*
 * Step 4 is over when every task has finished and every request has been answered. After the
 * cancel (step 5) the tasks still have to finish, but a request that is merely uploading a body
 * slowly has no task to cancel: once the scopes have closed, answers already queued get FLUSH_MS
 * to leave, and MHD_stop_daemon drops the rest.
 */
static void check(svc_shutdown *sd)
{
    if ((sd->step != 3 && sd->step != 5) || !sd->requests_closed || !sd->service_closed)
        return;
    if (svc_server_in_flight(sd->server) == 0) {
        finish(sd);
    } else if (sd->step == 5 && !sd->flushing) {
        sd->flushing = true;
        uv_timer_start(&sd->timer, on_flushed, FLUSH_MS, 0);
    }
}

static void on_idle(void *arg)
{
    check(arg);
}

static void on_requests_closed(rt_scope *s)
{
    svc_shutdown *sd = s->data;

    sd->requests_closed = true;
    check(sd);
}

static void on_service_closed(rt_scope *s)
{
    svc_shutdown *sd = s->data;

    sd->service_closed = true;
    check(sd);
}

static void on_stuck(uv_timer_t *t)
{
    svc_shutdown *sd = t->data;
    svc_log_line l;

    if (svc_log_begin(&l, SVC_LOG_ERROR, "shutdown")) {
        svc_log_str(&l, "step", "stuck");
        svc_log_str(&l, "msg", "tasks did not complete after cancellation; exiting with status 1");
        svc_log_int(&l, "request_tasks", (int64_t)sd->requests->live_total);
        svc_log_int(&l, "service_tasks", (int64_t)sd->service->live_total);
        svc_log_int(&l, "requests_in_flight", (int64_t)svc_server_in_flight(sd->server));
        svc_log_end(&l);
    }
    exit(1);
}

static void stop_accepting(svc_shutdown *sd)
{
    sd->step = 3;
    log_step(sd, "stop_accepting");
    svc_server_quiesce(sd->server);
    rt_cancel_fire(sd->app->drain, UV_ECANCELED);
    sd->requests->data = sd;
    sd->service->data = sd;
    rt_scope_close(sd->requests, on_requests_closed);
    rt_scope_close(sd->service, on_service_closed);
    svc_server_on_idle(sd->server, on_idle, sd);
}

static void cancel_rest(svc_shutdown *sd)
{
    uint64_t left;

    if (sd->step < 3)
        stop_accepting(sd);
    sd->step = 5;
    left = sd->requests->live_total + sd->service->live_total;
    svc_metrics_shutdown_cancelled(sd->metrics, left);
    log_step(sd, "cancel");
    sd->app->draining = true;
    rt_cancel_fire(sd->app->hard_cancel, UV_ECANCELED);
    rt_scope_cancel(sd->requests, UV_ECANCELED);
    rt_scope_cancel(sd->service, UV_ECANCELED);
    uv_timer_start(&sd->timer, on_stuck, STUCK_MS, 0);
    check(sd);
}

static void on_grace_over(uv_timer_t *t)
{
    cancel_rest(t->data);
}

static void on_drain_delay_over(uv_timer_t *t)
{
    svc_shutdown *sd = t->data;

    stop_accepting(sd);
    uv_timer_start(&sd->timer, on_grace_over, (uint64_t)sd->app->config->shutdown_grace_ms, 0);
    /* Nothing in flight and no background task: step 4 is already over. */
    check(sd);
}

void svc_shutdown_begin(svc_shutdown *sd, const char *why)
{
    svc_log_line l;

    if (sd->step == 0) {
        sd->began_ns = uv_hrtime();
        sd->step = 1;
        sd->app->draining = true;
        sd->app->draining_since_ns = sd->began_ns;
        if (svc_log_begin(&l, SVC_LOG_INFO, "shutdown")) {
            svc_log_str(&l, "step", "readiness");
            svc_log_str(&l, "signal", why);
            svc_log_int(&l, "drain_delay_ms", sd->app->config->drain_delay_ms);
            svc_log_int(&l, "grace_ms", sd->app->config->shutdown_grace_ms);
            svc_log_end(&l);
        }
        uv_timer_start(&sd->timer, on_drain_delay_over, (uint64_t)sd->app->config->drain_delay_ms,
                       0);
        return;
    }
    if (sd->step < 5) {
        if (svc_log_begin(&l, SVC_LOG_WARN, "shutdown")) {
            svc_log_str(&l, "step", "second_signal");
            svc_log_str(&l, "signal", why);
            svc_log_end(&l);
        }
        uv_timer_stop(&sd->timer);
        cancel_rest(sd);
    }
}

/* Signals are handled on one loop (worker 0's), which hands each one on to the others. */
static void on_signal(uv_signal_t *h, int signum)
{
    svc_shutdown *sd = h->data;
    const char *why = signum == SIGTERM ? "SIGTERM" : "SIGINT";

    svc_shutdown_begin(sd, why);
    if (sd->app->workers != NULL)
        svc_workers_signal(sd->app->workers, sd->app->worker_id, why);
}

static void on_handle_closed(uv_handle_t *h)
{
    svc_shutdown *sd = h->data;

    if (--sd->open_handles == 0 && sd->closed != NULL)
        sd->closed(sd);
}

int svc_shutdown_init(svc_shutdown *sd, svc_app *app, svc_server *server, svc_metrics *metrics,
                      rt_scope *requests, rt_scope *service, svc_shutdown_cb done)
{
    int err;

    sd->step = 0;
    sd->app = app;
    sd->server = server;
    sd->metrics = metrics;
    sd->requests = requests;
    sd->service = service;
    sd->done = done;
    sd->closed = NULL;
    sd->open_handles = 0;
    sd->requests_closed = false;
    sd->service_closed = false;
    sd->flushing = false;
    err = uv_timer_init(app->loop, &sd->timer);
    if (err < 0)
        return err;
    sd->timer.data = sd;
    sd->open_handles++;
    if (app->workers != NULL && app->worker_id != 0)
        return 0;
    err = uv_signal_init(app->loop, &sd->sigterm);
    if (err < 0)
        goto out_close;
    sd->sigterm.data = sd;
    sd->open_handles++;
    err = uv_signal_init(app->loop, &sd->sigint);
    if (err < 0)
        goto out_close;
    sd->sigint.data = sd;
    sd->open_handles++;
    err = uv_signal_start(&sd->sigterm, on_signal, SIGTERM);
    if (err < 0)
        goto out_close;
    err = uv_signal_start(&sd->sigint, on_signal, SIGINT);
    if (err < 0)
        goto out_close;
    return 0;

out_close:
    svc_shutdown_close(sd, NULL);
    return err;
}

void svc_shutdown_close(svc_shutdown *sd, svc_shutdown_cb cb)
{
    uv_handle_t *handles[] = {(uv_handle_t *)&sd->timer, (uv_handle_t *)&sd->sigterm,
                              (uv_handle_t *)&sd->sigint};

    sd->closed = cb;
    /* Only the handles that were initialized, which init counted in order. */
    for (int i = 0, n = sd->open_handles; i < n; i++)
        uv_close(handles[i], on_handle_closed);
}

/* SPDX-License-Identifier: MIT */
/*
 * shutdown.h - the shutdown sequence, driven by SIGTERM/SIGINT on the loop. This comment is the
 * one description of it; the documentation links here rather than telling it again.
 *
 *   1. readiness turns 503 `draining` (app->draining); liveness stays 200
 *   2. keep serving for DRAIN_DELAY_MS, so that load balancers stop sending traffic
 *   3. stop accepting (MHD_quiesce_daemon; answers on kept-alive connections say
 *      Connection: close); fire app->drain (after batches start no new item); close the request
 *      and service scopes (they refuse new children and drain)
 *   4. wait until both scopes have closed and no request is in flight, up to SHUTDOWN_GRACE_MS
 *   5. then cancel what is left: fire app->hard_cancel and cancel both scopes (open transactions
 *      roll back, a cancelled request answers 503), logging the count and adding it to
 *      hs_shutdown_cancelled_tasks_total; wait for their completions (they come: cancellation
 *      is a completion, CONTRIBUTING.md, "Callbacks"). Tasks still running 5 s later ignore
 *      cancellation, which is a bug: the process logs it and exits 1 rather than hang
 *   6. call the done callback: main takes the server down (resuming every suspended connection
 *      before stopping MHD), then the pool and every handle (main.c, "Teardown"), and exits 0
 *
 * A second signal at any point before step 5 goes straight to step 5 (after doing step 3 if it
 * had not happened yet). Each step is logged with the time since the first signal. With several
 * workers, worker 0's loop takes the signals and hands each on to the others (workers.h); every
 * worker runs these steps on its own loop.
 */
#ifndef SVC_SHUTDOWN_H
#define SVC_SHUTDOWN_H

#include "service/http.h"
#include "service/metrics.h"
#include "service/server.h"

typedef struct svc_shutdown svc_shutdown;
typedef void (*svc_shutdown_cb)(svc_shutdown *sd);

struct svc_shutdown {
    void *data;
    int step; /* read-only: 0 while serving, then the step number above */
    /* private */
    svc_app *app;
    svc_server *server;
    svc_metrics *metrics;
    rt_scope *requests;
    rt_scope *service;
    svc_shutdown_cb done;
    svc_shutdown_cb closed;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_timer_t timer;
    int open_handles;
    uint64_t began_ns;
    bool requests_closed;
    bool service_closed;
    bool flushing; /* step 5: tasks done, queued answers leaving */
};

/**
 * Starts watching SIGTERM and SIGINT. All pointers are borrowed until svc_shutdown_close's
 * callback. done runs once, at step 6. Returns 0 or a negative UV_E* code from libuv (then
 * nothing is left open).
 */
int svc_shutdown_init(svc_shutdown *sd, svc_app *app, svc_server *server, svc_metrics *metrics,
                      rt_scope *requests, rt_scope *service, svc_shutdown_cb done);

/** Begins the sequence as if a signal had arrived (also what the signal handlers call). */
void svc_shutdown_begin(svc_shutdown *sd, const char *why);

/** Closes the signal and timer handles; cb (may be NULL) runs once they have closed. */
void svc_shutdown_close(svc_shutdown *sd, svc_shutdown_cb cb);

#endif /* SVC_SHUTDOWN_H */

/* SPDX-License-Identifier: MIT */
/*
 * server.h - libmicrohttpd driven by the libuv loop, dispatching to the handler table.
 *
 * The daemon runs in external-event-loop epoll mode: its epoll descriptor is watched by a
 * uv_poll handle, its timeout by a uv_timer, and its wish for another turn at once by a uv_idle
 * handle (one turn per loop iteration, so no state of MHD's can keep the loop from polling), and
 * MHD_run is called only when one of them fires, so it never blocks and every callback runs on
 * the loop thread with no locks.
 *
 * It also holds every connection to HEADER_TIMEOUT_MS and BODY_TIMEOUT_MS (408 and close) and to
 * MAX_CONNECTIONS (the longest-waiting idle connection is closed for a newcomer, else the
 * newcomer gets 503), counted in hs_http_connections_shed_total{reason}.
 *
 * Per request the server owns the svc_request, the request scope (under requests_scope), the
 * deadline, and the suspension of the connection while the handler's task runs. It records every
 * request in the metrics and writes its log line when MHD reports the request finished.
 */
#ifndef SVC_SERVER_H
#define SVC_SERVER_H

#include "service/http.h"
#include "service/metrics.h"
#include "service/router.h"

typedef struct svc_server svc_server;

/**
 * Opens the listening daemon on app->config->port and starts watching it. router, metrics and
 * requests_scope are borrowed until svc_server_close's callback. Returns 0 and a new server in
 * *out, or UV_EADDRINUSE / UV_ENOMEM / UV_EIO (MHD could not start; the reason is logged).
 */
int svc_server_open(svc_server **out, svc_app *app, const svc_router *router, svc_metrics *metrics,
                    rt_scope *requests_scope);

/** The bound TCP port (useful with PORT=0). */
uint16_t svc_server_port(const svc_server *s);

/**
 * Shutdown step 3: stops accepting connections (MHD_quiesce_daemon; the listening socket is
 * closed) and marks every later response `Connection: close`. Requests in flight continue.
 */
void svc_server_quiesce(svc_server *s);

/** Requests received (first byte of headers parsed) and not yet finished. */
size_t svc_server_in_flight(const svc_server *s);

/**
 * Sets a callback run (on the loop) each time the number of requests in flight drops to zero;
 * the shutdown sequence waits on it. cb may be NULL.
 */
void svc_server_on_idle(svc_server *s, void (*cb)(void *arg), void *arg);

/**
 * Stops the server: answers and resumes every connection still suspended (503; normally there is
 * none, since shutdown waits for the request scopes first), then stops the daemon (which closes
 * every connection) and closes the loop handles. cb(arg) runs once the handles have closed and s
 * has been freed. Requests whose tasks are still running (which only a task that ignores
 * cancellation can cause) are freed when their scopes finally close.
 */
void svc_server_close(svc_server *s, void (*cb)(void *arg), void *arg);

#endif /* SVC_SERVER_H */

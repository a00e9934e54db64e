/* SPDX-License-Identifier: MIT */
/*
 * workers.h - what the WORKERS event loops share, and the only ways they talk to each other.
 *
 * Each worker is a whole service on its own thread: its loop, runtime, scopes, pool slice,
 * metrics registry, handler table (built by the same register functions, with its own handler
 * state) and libmicrohttpd daemon. The loops share nothing a handler touches. What crosses
 * threads goes through this object, and only this:
 *
 *   - the listening socket: worker 0's daemon binds it (without SO_REUSEPORT, so a second
 *     instance on the same port still fails to start), the others get a dup() of it;
 *   - liveness: every worker's loop-lag probe time, stored and read with atomic operations
 *     (svc_metrics_probe_stall_ns), so /healthz on any worker fails while any loop is stalled;
 *   - /metrics: the worker that is asked renders its own text, asks every other worker for
 *     theirs (each renders on its own loop; nothing is read across threads) and sums them;
 *   - shutdown: signals are handled on worker 0's loop, which forwards each one to the others.
 *
 * The mutex guards the lists and flags below it; it is never held while rendering or while
 * a loop runs anything else. Each worker's uv_async_t is its only wake-up from other threads:
 * it is sent only under the mutex while the worker says it is open.
 */
#ifndef SVC_WORKERS_H
#define SVC_WORKERS_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "runtime/task.h"
#include "service/http.h"

typedef struct svc_workers svc_workers;
typedef struct svc_shutdown svc_shutdown;

/** Creates the shared part for n workers. Returns NULL without memory. Startup only. */
svc_workers *svc_workers_new(size_t n);

/** Frees ws; every worker has detached (svc_workers_detach) and every thread has ended. */
void svc_workers_free(svc_workers *ws);

/** How many workers there are. */
size_t svc_workers_count(const svc_workers *ws);

/**
 * Attaches worker id, whose loop is app->loop: its metrics and scope tree (for /metrics), and
 * its shutdown sequence (for forwarded signals). Starts its async handle on its loop. Returns 0
 * or a negative UV_E* code. Called from the thread that will run the loop, or before it starts.
 */
int svc_workers_attach(svc_workers *ws, size_t id, svc_app *app, svc_shutdown *sd);

/**
 * Detaches worker id at its teardown: no more asks reach it (those pending are answered
 * "missing"), and its async handle is closed on its loop. Its own thread only.
 */
void svc_workers_detach(svc_workers *ws, size_t id);

/** The shared listening socket (worker 0's), or -1 before worker 0's daemon exists. */
int svc_workers_listen_fd(const svc_workers *ws);

/** Records worker 0's listening socket. Startup only. */
void svc_workers_set_listen_fd(svc_workers *ws, int fd);

/**
 * Forwards a shutdown signal (why: "SIGTERM" or "SIGINT", a literal) to every worker but from:
 * each runs svc_shutdown_begin on its own loop, once per signal. Any thread.
 */
void svc_workers_signal(svc_workers *ws, size_t from, const char *why);

/**
 * The longest time since any worker's loop-lag probe ran, in nanoseconds, and which worker it
 * is (*worker). Any worker's thread.
 */
uint64_t svc_workers_max_stall_ns(const svc_workers *ws, size_t *worker);

/**
 * True when every worker's pool has a working connection, as their loop-lag probes last
 * published it (svc_metrics_db_up): readiness is the process's, not one loop's. Any thread.
 */
bool svc_workers_all_db_up(const svc_workers *ws);

/**
 * A task that answers req with /metrics summed over every worker (the asking worker is self).
 * A worker that does not answer within SVC_WORKERS_METRICS_WAIT_MS (its loop is stalled) is
 * left out and counted in hs_metrics_workers_missing. NULL without memory.
 */
rt_task *svc_workers_metrics_task(svc_workers *ws, size_t self, svc_request *req);

#define SVC_WORKERS_METRICS_WAIT_MS 1000

#endif /* SVC_WORKERS_H */

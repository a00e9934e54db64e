/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - the service's counters and histograms, and their Prometheus text exposition.
 *
 * Recording is plain integer arithmetic on the loop thread (no locks, no allocation, no label
 * lookup): a request is recorded by its row index in the handler table, which the table fixes
 * at startup, into arrays sized for it. Everything that is a gauge of somebody else's state
 * (tasks per scope, the database pool) is read only when /metrics is scraped.
 *
 * Handlers register their own counters at startup (svc_metrics_counter, or a whole table of them
 * with svc_metrics_register) and bump the returned integer: cancellations of background tasks,
 * events lost by a `before` route, and so on.
 */
#ifndef SVC_METRICS_H
#define SVC_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/scope.h"
#include "service/http.h"

/**
 * Creates the registry for router (borrowed for the registry's lifetime). It exists before the
 * handler table is filled, so that handlers register their own series from their register
 * functions; the per-route series are sized by svc_metrics_bind_routes once the table is
 * complete. Returns new (free with svc_metrics_free) or NULL without memory. Startup only.
 */
svc_metrics *svc_metrics_new(const svc_router *router);

/**
 * Sizes the per-route series for the rows router has now: the handler table is complete from
 * here on. Call it once, after every row was added and before the first request is counted.
 * Returns 0 or UV_ENOMEM. Startup only.
 */
int svc_metrics_bind_routes(svc_metrics *m);

/** Frees m and the counters it handed out. */
void svc_metrics_free(svc_metrics *m);

/**
 * Registers a counter series: name (a Prometheus metric name ending in _total), labels (the
 * inside of the braces, e.g. `variant="after"`, or "" for none) and help. All three are borrowed
 * for the process lifetime (literals). Returns the counter to increment (borrowed until
 * svc_metrics_free), or NULL without memory. Startup only.
 */
uint64_t *svc_metrics_counter(svc_metrics *m, const char *name, const char *labels,
                              const char *help);

/**
 * Registers a gauge series, like svc_metrics_counter but rendered as a gauge: the handler
 * increments and decrements the returned value (never below zero), e.g. tasks alive that no
 * scope tracks. The name carries no _total. Loop thread only.
 */
uint64_t *svc_metrics_gauge(svc_metrics *m, const char *name, const char *labels, const char *help);

/* One row of a table of series for svc_metrics_register. */
typedef struct svc_metrics_series {
    uint64_t **out; /* where the value's address is stored (borrowed for the call) */
    const char *name;
    const char *labels;
    const char *help;
    bool gauge; /* svc_metrics_gauge instead of svc_metrics_counter */
} svc_metrics_series;

/**
 * Registers the n series of table, in order, as svc_metrics_counter or svc_metrics_gauge would,
 * and stores each one's value in *table[i].out (NULL for one that failed). name, labels and help
 * are borrowed as those say. Returns 0, or UV_ENOMEM if any series failed: one check for a
 * handler's whole set instead of one per pointer. Startup only.
 */
int svc_metrics_register(svc_metrics *m, const svc_metrics_series *table, size_t n);

#define SVC_METRICS_REGISTER(m, table)                                                             \
    svc_metrics_register((m), (table), sizeof(table) / sizeof((table)[0]))

/** A request has arrived (in-flight gauge). */
void svc_metrics_request_begin(svc_metrics *m);

/**
 * A request has ended: route (NULL for 404/405 and requests that never got routed), its status
 * and its duration in nanoseconds.
 */
void svc_metrics_request_end(svc_metrics *m, const svc_route *route, int status, uint64_t ns);

/** Records one sample of event-loop lag, in nanoseconds. */
void svc_metrics_loop_lag(svc_metrics *m, uint64_t ns);

/* The loop-lag probe's period. */
#define SVC_LAG_PERIOD_MS 100

/**
 * Starts the loop-lag probe on loop: a timer every SVC_LAG_PERIOD_MS that records how late it
 * ran (svc_metrics_loop_lag) and when (svc_metrics_probe_stall_ns). The timer is unref'd, so it
 * never keeps the loop alive; close it with svc_metrics_probe_close before the loop closes.
 * Returns 0 or a negative UV_E* code. Loop thread only.
 */
int svc_metrics_probe_start(svc_metrics *m, uv_loop_t *loop);

/** Closes the probe's timer, if it was started (the loop finishes the close). */
void svc_metrics_probe_close(svc_metrics *m);

/**
 * How long ago, in nanoseconds of the monotonic clock (uv_hrtime, not the loop's cached time),
 * the probe last ran, or was started; 0 when it was never started. Liveness reads it: while the
 * loop turns, it stays near SVC_LAG_PERIOD_MS.
 */
uint64_t svc_metrics_probe_stall_ns(const svc_metrics *m);

/** Counts tasks cancelled by the shutdown sequence (step 5). */
void svc_metrics_shutdown_cancelled(svc_metrics *m, uint64_t n);

/**
 * Renders every metric in the Prometheus text format 0.0.4: the request series, in-flight
 * requests, tasks alive per scope under root (scopes grouped by name), the runtime's task
 * counters, event-loop lag, the database pool (when app->db is set) and the registered counters.
 * Returns a new malloc'd buffer with its length in *len, or NULL without memory.
 */
char *svc_metrics_render(svc_metrics *m, const svc_app *app, rt_scope *root, size_t *len);

/** Sets the worker label of this registry's loop-lag series (0 unless WORKERS > 1). Startup. */
void svc_metrics_set_worker(svc_metrics *m, int worker);

/**
 * Has the loop-lag probe publish whether db (may be NULL) has a working connection, at every
 * tick, for the other workers' /readyz (svc_metrics_db_up). Startup only.
 */
void svc_metrics_watch_db(svc_metrics *m, const rt_db *db);

/** What the probe last published for the pool (at most SVC_LAG_PERIOD_MS old). Any thread. */
bool svc_metrics_db_up(const svc_metrics *m);

/**
 * Sums n rendered texts (svc_metrics_render of each worker) into one: samples with the same name
 * and labels are added (hs_db_up takes the maximum), families keep their HELP/TYPE heads and stay
 * together, and series only some texts have are kept. Per-worker series carry a `worker` label,
 * so they pass through apart. Appends hs_metrics_workers_missing (missing). Returns a new buffer
 * and its length in *len, or NULL without memory.
 */
char *svc_metrics_sum(const char *const *texts, const size_t *lens, size_t n, size_t missing,
                      size_t *len);

#endif /* SVC_METRICS_H */

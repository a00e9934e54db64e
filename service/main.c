/* SPDX-License-Identifier: MIT */
/*
 * main.c - the composition root: configuration, schema, loop, runtime, scopes, pool, handler
 * table, server, shutdown; and the order in which they are taken down.
 *
 * This is the only file in service/ that knows the handlers: it assembles the handler table
 * from each handler file's register function. Everything is owned by one struct on main's stack
 * and lives on one loop thread.
 *
 * The scope tree:   root ─┬─ service   (background work spawned by handlers)
 *                         └─ requests ── request (one per request with a task)
 *
 * Teardown (after the shutdown sequence's step 6): server (resumes anything suspended, stops
 * MHD) -> pool -> the loop-lag timer and the signal handles -> root scope (its guards free the
 * handlers' state) -> signals -> runtime; then uv_walk closes any straggler, and
 * uv_loop_close() must return 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <uv.h>

#include "handlers/patterns.h"
#include "handlers/probes.h"
#include "runtime/db.h"
#include "service/config.h"
#include "service/http.h"
#include "service/log.h"
#include "service/metrics.h"
#include "service/migrate.h"
#include "service/router.h"
#include "service/server.h"
#include "service/shutdown.h"
#include "service/workers.h"

/* How long startup waits for the database to accept connections before giving up. */
#define DB_STARTUP_WAIT_MS 30000

/*
 * One worker: a whole service on one loop (see service/workers.h). Its configuration is a copy
 * of the process's with its share of the limits that are counted per loop; the strings in it
 * are the process's (freed once, by main).
 */
typedef struct hs_worker {
    size_t id;
    svc_config cfg;
    svc_app app;
    uv_loop_t loop;
    rt_runtime rt;
    rt_scope root;
    rt_scope service;
    rt_scope requests;
    rt_cancel drain;
    rt_cancel hard_cancel;
    svc_router *router;
    svc_metrics *metrics;
    svc_server *server;
    svc_shutdown shutdown;
    svc_workers *workers;
    uv_thread_t thread;
    bool loop_started;
} hs_worker;

typedef struct hs_main {
    svc_config cfg;
    svc_workers *workers;
    size_t n;
    hs_worker *w;
} hs_main;

/* Registers every handler file's rows, in the order /routes lists them. */
static int register_handlers(svc_router *r, svc_app *app)
{
    int err = hs_probes_register(r, app);

    if (err == 0)
        err = hs_blocking_register(r, app);
    if (err == 0)
        err = hs_dashboard_register(r, app);
    if (err == 0)
        err = hs_batch_register(r, app);
    if (err == 0)
        err = hs_structured_register(r, app);
    if (err == 0)
        err = hs_transfers_register(r, app);
    return err;
}

/*
 * Until svc_shutdown_init hands SIGTERM and SIGINT to the shutdown sequence, start-up blocks: the
 * migration waits up to DB_STARTUP_WAIT_MS for the database, inside libpq, and then for the other
 * instances' migration lock. Nothing has been served yet and the migration's transactions roll
 * back when its connection goes, so a signal then ends the process at once, with status 0: what
 * `docker stop` or Kubernetes sent it for is done. libuv's handlers replace this one
 * (uv_signal_start installs its own with sigaction), so there is no moment without a handler.
 */
static void on_startup_signal(int sig)
{
    svc_log_line l;

    if (svc_log_begin(&l, SVC_LOG_WARN, "shutdown")) {
        svc_log_str(&l, "step", "startup");
        svc_log_str(&l, "signal", sig == SIGINT ? "SIGINT" : "SIGTERM");
        svc_log_str(&l, "msg", "signal before serving began; exiting");
        svc_log_end(&l);
    }
    _exit(0);
}

static void catch_startup_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_startup_signal;
    sigfillset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        svc_log_line l;

        if (svc_log_begin(&l, SVC_LOG_WARN, "shutdown")) {
            svc_log_str(&l, "step", "straggler");
            svc_log_str(&l, "handle", uv_handle_type_name(uv_handle_get_type(h)));
            svc_log_end(&l);
        }
        uv_close(h, NULL);
    }
}

static void on_root_closed(rt_scope *s)
{
    hs_worker *m = s->data;

    rt_cancel_close(&m->drain);
    rt_cancel_close(&m->hard_cancel);
    rt_runtime_close(&m->rt, NULL);
}

static void close_rest(hs_worker *m)
{
    /* Its requests are all answered: no gather of its own is pending, and asks from the other
     * workers are answered "missing" from here on. */
    svc_workers_detach(m->workers, m->id);
    svc_metrics_probe_close(m->metrics);
    svc_shutdown_close(&m->shutdown, NULL);
    m->root.data = m;
    rt_scope_close(&m->root, on_root_closed);
}

static void on_db_closed(rt_db *db, void *arg)
{
    hs_worker *m = arg;

    (void)db;
    m->app.db = NULL;
    close_rest(m);
}

static void on_server_closed(void *arg)
{
    hs_worker *m = arg;

    m->server = NULL;
    if (m->app.db != NULL)
        rt_db_close(m->app.db, on_db_closed, m);
    else
        close_rest(m);
}

static void on_shutdown_done(svc_shutdown *sd)
{
    hs_worker *m = sd->data;

    svc_server_close(m->server, on_server_closed, m);
}

/* Enough descriptors for MAX_CONNECTIONS plus the pool and the process's own. */
static void raise_fd_limit(int connections)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)connections + 1024;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static void log_start(const hs_worker *m, size_t workers, uint16_t port)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_INFO, "listening"))
        return;
    svc_log_str(&l, "version", HS_VERSION);
    svc_log_int(&l, "port", port);
    svc_log_int(&l, "workers", (int64_t)workers);
    svc_log_int(&l, "routes", (int64_t)svc_router_count(m->router));
    svc_log_str(&l, "database", m->app.db != NULL ? "configured" : "none");
    svc_log_int(&l, "db_pool_size_per_worker", m->cfg.db_pool_size);
    svc_log_int(&l, "max_connections_per_worker", m->cfg.max_connections);
    svc_log_str(&l, "db_transaction_pooler", m->cfg.db_transaction_pooler ? "on" : "off");
    svc_log_int(&l, "request_timeout_ms", m->cfg.request_timeout_ms);
    svc_log_str(&l, "before_routes", m->cfg.before_routes ? "on" : "off");
    svc_log_end(&l);
}

/* The pool's connection state changed: logged once per change, never once per attempt. */
static void on_db_change(void *arg, bool failing, const char *why)
{
    const hs_worker *m = arg;
    svc_log_line l;

    if (!svc_log_begin(&l, failing ? SVC_LOG_WARN : SVC_LOG_INFO,
                       failing ? "db_connect_failing" : "db_connected"))
        return;
    svc_log_int(&l, "worker", (int64_t)m->id);
    if (why != NULL)
        svc_log_str(&l, "error", why);
    svc_log_end(&l);
}

static int open_pool(hs_worker *m)
{
    rt_db_config dc;

    rt_db_config_default(&dc);
    dc.conninfo = m->cfg.database_url;
    dc.application_name = "hindsight";
    dc.pool_size = (size_t)m->cfg.db_pool_size;
    dc.queue_limit = (size_t)m->cfg.db_queue_limit;
    dc.transaction_pooler = m->cfg.db_transaction_pooler;
    dc.cancel_timeout_ms = (uint32_t)m->cfg.db_cancel_timeout_ms;
    dc.idle_check_ms = (uint32_t)m->cfg.db_idle_check_ms;
    dc.on_change = on_db_change;
    dc.on_change_arg = m;
    return rt_db_open(&m->app.db, &m->rt, &dc);
}

/* Builds everything that runs on the loop. On failure, what was built is torn down by the
 * caller through the normal shutdown path where possible; startup failures exit 1. */
static int start(hs_worker *m, svc_workers *workers)
{
    int err;

    err = uv_loop_init(&m->loop);
    if (err < 0)
        return err;
    err = rt_runtime_init(&m->rt, &m->loop);
    if (err < 0)
        return err;
    rt_scope_init(&m->root, &m->rt, NULL, "root");
    rt_scope_init(&m->service, &m->rt, &m->root, "service");
    rt_scope_init(&m->requests, &m->rt, &m->root, "requests");
    rt_cancel_init(&m->drain, NULL);
    rt_cancel_init(&m->hard_cancel, NULL);
    m->app.config = &m->cfg;
    m->app.loop = &m->loop;
    m->app.rt = &m->rt;
    m->app.root_scope = &m->root;
    m->app.service_scope = &m->service;
    m->app.drain = &m->drain;
    m->app.hard_cancel = &m->hard_cancel;
    m->app.workers = workers;
    m->app.worker_id = m->id;
    m->workers = workers;
    if (m->cfg.database_url != NULL) {
        err = open_pool(m);
        if (err < 0) {
            svc_log_msg(SVC_LOG_ERROR, "startup", "the database pool could not be opened");
            return err;
        }
    } else {
        svc_log_msg(SVC_LOG_WARN, "startup",
                    "DATABASE_URL is unset: readiness stays 503 and database routes answer 503");
    }
    m->router = svc_router_new(m->cfg.before_routes);
    if (m->router == NULL)
        return UV_ENOMEM;
    /* Before the handlers, so that they register their own series as they register their rows. */
    m->metrics = svc_metrics_new(m->router);
    if (m->metrics == NULL)
        return UV_ENOMEM;
    svc_metrics_set_worker(m->metrics, (int)m->id);
    /* Readiness is every worker's pool: each probe publishes its own (workers.h). */
    svc_metrics_watch_db(m->metrics, m->app.db);
    m->app.metrics = m->metrics;
    err = register_handlers(m->router, &m->app);
    if (err < 0) {
        svc_log_msg(SVC_LOG_ERROR, "startup", "a handler table row was refused");
        return err;
    }
    err = svc_metrics_bind_routes(m->metrics);
    if (err < 0)
        return err;
    err = svc_server_open(&m->server, &m->app, m->router, m->metrics, &m->requests);
    if (err < 0) {
        svc_log_msg(SVC_LOG_ERROR, "startup", "the HTTP server could not listen on PORT");
        return err;
    }
    m->shutdown.data = m;
    err = svc_shutdown_init(&m->shutdown, &m->app, m->server, m->metrics, &m->requests, &m->service,
                            on_shutdown_done);
    if (err < 0)
        return err;
    err = svc_workers_attach(workers, m->id, &m->app, &m->shutdown);
    if (err < 0)
        return err;
    /* The loop-lag probe, which /metrics reports and /healthz checks. */
    err = svc_metrics_probe_start(m->metrics, &m->loop);
    if (err < 0)
        return err;
    return 0;
}

/*
 * This worker's share of a limit counted per loop: total/n, the remainder going to the first
 * workers, and at least min (a pool needs one connection, whatever DB_POOL_SIZE/WORKERS is).
 */
static int64_t share(int64_t total, size_t n, size_t i, int64_t min)
{
    int64_t v = total / (int64_t)n + ((int64_t)i < total % (int64_t)n ? 1 : 0);

    return v < min ? min : v;
}

/* The process's configuration, with worker id's shares of the per-loop limits
 * (docs/architecture.md, "Workers"). */
static void worker_config(svc_config *out, const svc_config *cfg, size_t n, size_t id)
{
    *out = *cfg;
    out->db_pool_size = (int)share(cfg->db_pool_size, n, id, 1);
    out->db_queue_limit = (int)share(cfg->db_queue_limit, n, id, 0);
    out->max_connections = (int)share(cfg->max_connections, n, id, 1);
    out->max_connections_per_ip = (int)share(cfg->max_connections_per_ip, n, id, 1);
    out->max_body_buffer_bytes = share(cfg->max_body_buffer_bytes, n, id, 0);
}

/* Runs worker w's loop to its end and closes it; returns uv_loop_close's result. */
static int run_loop(hs_worker *w)
{
    int err;

    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_walk(&w->loop, on_walk_close, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    err = uv_loop_close(&w->loop);
    if (err < 0) {
        svc_log_line l;

        if (svc_log_begin(&l, SVC_LOG_ERROR, "shutdown")) {
            svc_log_str(&l, "step", "loop_close");
            svc_log_int(&l, "worker", (int64_t)w->id);
            svc_log_str(&l, "error", uv_strerror(err));
            svc_log_end(&l);
        }
    }
    return err;
}

static void worker_thread(void *arg)
{
    run_loop(arg);
}

int main(int argc, char **argv)
{
    static hs_main m;
    int err;

    switch (svc_config_parse(&m.cfg, argc, argv, stdout, stderr)) {
    case SVC_CONFIG_EXIT_OK:
        svc_config_free(&m.cfg);
        return 0;
    case SVC_CONFIG_EXIT_USAGE:
        svc_config_free(&m.cfg);
        return 2;
    default:
        break;
    }
    svc_log_setup(m.cfg.log_level, m.cfg.log_format);
    catch_startup_signals();
    /* Writes to a vanished client must fail with EPIPE, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(m.cfg.max_connections);
    if (m.cfg.database_url != NULL) {
        err = svc_migrate(m.cfg.database_url, DB_STARTUP_WAIT_MS);
        if (err < 0) {
            svc_log_msg(SVC_LOG_ERROR, "startup",
                        "the database schema could not be brought up to date");
            svc_config_free(&m.cfg);
            return 1;
        }
    }
    m.n = (size_t)m.cfg.workers;
    m.workers = svc_workers_new(m.n);
    m.w = calloc(m.n, sizeof(*m.w));
    if (m.workers == NULL || m.w == NULL)
        return 1;
    /* Every worker is built here, on the main thread, before any loop runs: a startup failure
     * is one exit status, and each loop then belongs to its own thread alone. Worker 0's daemon
     * binds the port; the others share its socket. */
    for (size_t i = 0; i < m.n; i++) {
        m.w[i].id = i;
        worker_config(&m.w[i].cfg, &m.cfg, m.n, i);
        err = start(&m.w[i], m.workers);
        if (err < 0) {
            svc_log_line l;

            if (svc_log_begin(&l, SVC_LOG_ERROR, "startup")) {
                svc_log_int(&l, "worker", (int64_t)i);
                svc_log_str(&l, "error", uv_strerror(err));
                svc_log_end(&l);
            }
            /* A partial start is not worth an orderly teardown: nothing was served yet. */
            return 1;
        }
    }
    log_start(&m.w[0], m.n, svc_server_port(m.w[0].server));
    for (size_t i = 1; i < m.n; i++) {
        err = uv_thread_create(&m.w[i].thread, worker_thread, &m.w[i]);
        if (err < 0) {
            svc_log_msg(SVC_LOG_ERROR, "startup", "a worker thread could not be started");
            return 1;
        }
        m.w[i].loop_started = true;
    }
    /* Worker 0 runs on the main thread and holds the signal handlers (shutdown.c). */
    run_loop(&m.w[0]);
    for (size_t i = 1; i < m.n; i++) {
        if (m.w[i].loop_started)
            uv_thread_join(&m.w[i].thread);
    }
    svc_log_msg(SVC_LOG_INFO, "shutdown", "stopped");
    /* Only now: every worker's /healthz read every registry until its own loop ended. */
    for (size_t i = 0; i < m.n; i++) {
        svc_metrics_free(m.w[i].metrics);
        svc_router_free(m.w[i].router);
    }
    free(m.w);
    svc_workers_free(m.workers);
    svc_config_free(&m.cfg);
    return 0;
}

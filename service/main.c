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

#include "handlers/blocking.h"
#include "handlers/concurrency.h"
#include "handlers/probes.h"
#include "handlers/structured.h"
#include "handlers/transfers.h"
#include "runtime/db.h"
#include "service/config.h"
#include "service/http.h"
#include "service/log.h"
#include "service/metrics.h"
#include "service/migrate.h"
#include "service/router.h"
#include "service/server.h"
#include "service/shutdown.h"

/* How long startup waits for the database to accept connections before giving up. */
#define DB_STARTUP_WAIT_MS 30000

typedef struct hs_main {
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
} hs_main;

/* Registers every handler file's rows, in the order /routes lists them. */
static int register_handlers(svc_router *r, svc_app *app)
{
    int err = hs_probes_register(r, app);

    if (err == 0)
        err = hs_blocking_register(r, app);
    if (err == 0)
        err = hs_concurrency_register(r, app);
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
    hs_main *m = s->data;

    rt_cancel_close(&m->drain);
    rt_cancel_close(&m->hard_cancel);
    rt_runtime_close(&m->rt, NULL);
}

static void close_rest(hs_main *m)
{
    svc_metrics_probe_close(m->metrics);
    svc_shutdown_close(&m->shutdown, NULL);
    m->root.data = m;
    rt_scope_close(&m->root, on_root_closed);
}

static void on_db_closed(rt_db *db, void *arg)
{
    hs_main *m = arg;

    (void)db;
    m->app.db = NULL;
    close_rest(m);
}

static void on_server_closed(void *arg)
{
    hs_main *m = arg;

    m->server = NULL;
    if (m->app.db != NULL)
        rt_db_close(m->app.db, on_db_closed, m);
    else
        close_rest(m);
}

static void on_shutdown_done(svc_shutdown *sd)
{
    hs_main *m = sd->data;

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

static void log_start(const hs_main *m, uint16_t port)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_INFO, "listening"))
        return;
    svc_log_str(&l, "version", HS_VERSION);
    svc_log_int(&l, "port", port);
    svc_log_int(&l, "routes", (int64_t)svc_router_count(m->router));
    svc_log_str(&l, "database", m->app.db != NULL ? "configured" : "none");
    svc_log_int(&l, "db_pool_size", m->cfg.db_pool_size);
    svc_log_str(&l, "db_transaction_pooler", m->cfg.db_transaction_pooler ? "on" : "off");
    svc_log_int(&l, "request_timeout_ms", m->cfg.request_timeout_ms);
    svc_log_str(&l, "before_routes", m->cfg.before_routes ? "on" : "off");
    svc_log_end(&l);
}

/* The pool's connection state changed: logged once per change, never once per attempt. */
static void on_db_change(void *arg, bool failing, const char *why)
{
    svc_log_line l;

    (void)arg;
    if (!svc_log_begin(&l, failing ? SVC_LOG_WARN : SVC_LOG_INFO,
                       failing ? "db_connect_failing" : "db_connected"))
        return;
    if (why != NULL)
        svc_log_str(&l, "error", why);
    svc_log_end(&l);
}

static int open_pool(hs_main *m)
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
    return rt_db_open(&m->app.db, &m->rt, &dc);
}

/* Builds everything that runs on the loop. On failure, what was built is torn down by the
 * caller through the normal shutdown path where possible; startup failures exit 1. */
static int start(hs_main *m)
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
    /* The loop-lag probe, which /metrics reports and /healthz checks. */
    err = svc_metrics_probe_start(m->metrics, &m->loop);
    if (err < 0)
        return err;
    log_start(m, svc_server_port(m->server));
    return 0;
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
    err = start(&m);
    if (err < 0) {
        svc_log_line l;

        if (svc_log_begin(&l, SVC_LOG_ERROR, "startup")) {
            svc_log_str(&l, "error", uv_strerror(err));
            svc_log_end(&l);
        }
        /* A partial start is not worth an orderly teardown: nothing was served yet. */
        return 1;
    }
    uv_run(&m.loop, UV_RUN_DEFAULT);
    uv_walk(&m.loop, on_walk_close, NULL);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    err = uv_loop_close(&m.loop);
    if (err < 0) {
        svc_log_line l;

        if (svc_log_begin(&l, SVC_LOG_ERROR, "shutdown")) {
            svc_log_str(&l, "step", "loop_close");
            svc_log_str(&l, "error", uv_strerror(err));
            svc_log_end(&l);
        }
    } else {
        svc_log_msg(SVC_LOG_INFO, "shutdown", "stopped");
    }
    svc_metrics_free(m.metrics);
    svc_router_free(m.router);
    svc_config_free(&m.cfg);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * server.c - libmicrohttpd on the libuv loop, and the life of one request.
 *
 * Wiring. MHD runs with MHD_USE_EPOLL and no thread of its own. Its epoll descriptor becomes
 * readable whenever any of its sockets (or its inter-thread channel, which resume writes to) is
 * ready; a uv_poll watches that descriptor and calls MHD_run, which handles what is ready and
 * returns without blocking. After every run the uv_timer is re-armed with MHD_get_timeout, which
 * is how connection timeouts and MHD's own pending work get their turn.
 *
 * A request, as MHD calls the access handler for it:
 *
 *   call 1 (headers parsed)  create the request, echo or make its id and trace context; return
 *                            MHD_YES without a
 *                            response: queueing here makes MHD close the connection after it
 *                            (DESIGN.md). Exception: a Content-Length over MAX_BODY_BYTES, where
 *                            closing is the point and the body must not be read.
 *   calls with upload data   append to the body, or stop keeping it once it is too large
 *   last call (no data)      route and run the handler:
 *                              - answered at once: queue the response (the fast path);
 *                              - a task: open the request scope and deadline, spawn the task,
 *                                MHD_suspend_connection
 *   task delivered           if it set no response, map its status; close the request scope
 *   request scope closed     close the deadline, MHD_resume_connection
 *   call after resume        queue the response
 *   MHD "completed"          log line, metrics, drop MHD's reference
 *
 * The request object has two owners: MHD (until "completed") and the async part (from spawning
 * the task until the deadline handle has closed); it is freed when both have let go. While
 * suspended, MHD cannot time the connection out or notice the client leaving, which is why the
 * deadline exists, and why shutdown must resume every suspended connection before stopping MHD.
 *
 * Memory: MHD gives each connection one buffer (CONNECTION_MEMORY_BYTES) for the request's
 * headers and the response's, and touches all of it once the first request is served, so it is
 * what every idle keep-alive connection costs; its 32 KB default would make 10,000 idle
 * connections cost 330 MB instead of about 50.
 *
 * States of a request (asserted on each transition):
 *
 *   RECEIVING --dispatch, answered at once------------------------------> ANSWERED
 *   RECEIVING --dispatch, task spawned--> SUSPENDED --scope closed--> READY --queued--> ANSWERED
 *                                            |                          ^
 *                                            +--svc_server_close (503)--+  (orphaned)
 */
#include "service/server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <microhttpd.h>

#include "service/config.h"
#include "service/log.h"
#include "service/request_int.h"

enum req_state { RECEIVING = 0, SUSPENDED, READY, ANSWERED };

typedef struct conn_req {
    svc_request req;
    struct svc_request_int in;
    svc_server *srv;
    svc_match match;
    rt_scope scope;
    rt_deadline deadline;
    rt_cancel_listener on_deadline;
    rt_list link; /* in srv->suspended while SUSPENDED */
    char *body;
    size_t body_len;
    size_t body_cap;
    int state;
    int refs; /* MHD's, and the async part's */
    int task_status;
    bool too_large;
    bool orphaned; /* answered by svc_server_close: never touch the connection again */
} conn_req;

struct svc_server {
    svc_app *app;
    const svc_config *cfg;
    const svc_router *router;
    svc_metrics *metrics;
    rt_scope *requests;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t timer;
    int open_handles;
    rt_list suspended;
    size_t in_flight;
    bool quiesced;
    bool closing;
    uint16_t port;
    char server_header[48];
    void (*idle_cb)(void *arg);
    void *idle_arg;
    rt_post idle_post;
    void (*close_cb)(void *arg);
    void *close_arg;
};

static void run_mhd(svc_server *s);
static void on_timer(uv_timer_t *t);

/* --- requests ---------------------------------------------------------------------------- */

static void req_unref(conn_req *cr)
{
    if (--cr->refs > 0)
        return;
    svc_request_clear_response(&cr->req);
    free(cr->body);
    free(cr);
}

/*
 * Appends "<name>;dur=<ms with three decimals>" at out and returns the end. Written by hand
 * because it runs for every response and printf's floating-point path costs as much as a fair
 * share of the rest of a /healthz answer; out must have room for name plus 32 bytes.
 */
static char *format_ms(char *out, const char *name, uint64_t ns)
{
    uint64_t us = ns / 1000;
    uint64_t whole = us / 1000;
    char digits[24];
    int n = 0;

    while (*name != '\0')
        *out++ = *name++;
    memcpy(out, ";dur=", 5);
    out += 5;
    do {
        digits[n++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole != 0);
    while (n > 0)
        *out++ = digits[--n];
    *out++ = '.';
    *out++ = (char)('0' + (us / 100) % 10);
    *out++ = (char)('0' + (us / 10) % 10);
    *out++ = (char)('0' + us % 10);
    *out = '\0';
    return out;
}

/* Builds the MHD response from what the handler set and queues it. */
static enum MHD_Result queue_response(conn_req *cr, struct MHD_Connection *conn)
{
    svc_server *s = cr->srv;
    svc_request *req = &cr->req;
    struct MHD_Response *resp;
    char timing[96];
    char *end;
    enum MHD_Result ret;

    if (req->status == 0)
        svc_respond_error(req, 500, "internal", "the handler set no response");
    resp = MHD_create_response_from_buffer(req->resp_len, req->resp_body,
                                           req->resp_static ? MHD_RESPMEM_PERSISTENT
                                                            : MHD_RESPMEM_MUST_FREE);
    if (resp == NULL)
        return MHD_NO;
    /* MHD frees the body with the response now. */
    if (!req->resp_static)
        req->resp_body = NULL;
    end = format_ms(timing, "total", uv_hrtime() - req->start_ns);
    if (req->db_ns != 0)
        format_ms(end, ", db", req->db_ns);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            req->resp_type ? req->resp_type : "application/json; charset=utf-8");
    MHD_add_response_header(resp, "X-Request-Id", req->request_id);
    MHD_add_response_header(resp, "traceparent", svc_request_traceparent(req));
    MHD_add_response_header(resp, "Server-Timing", timing);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, s->server_header);
    for (size_t i = 0; i < req->nheaders; i++)
        MHD_add_response_header(resp, req->headers[i].key, req->headers[i].value);
    if (s->quiesced)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ret = MHD_queue_response(conn, (unsigned int)req->status, resp);
    MHD_destroy_response(resp);
    cr->state = ANSWERED;
    return ret;
}

static void on_deadline_closed(rt_deadline *d)
{
    req_unref(rt_container_of(d, conn_req, deadline));
}

static void on_request_scope_closed(rt_scope *scope)
{
    conn_req *cr = rt_container_of(scope, conn_req, scope);

    rt_cancel_unlisten(&cr->on_deadline);
    rt_deadline_close(&cr->deadline, on_deadline_closed);
    if (cr->orphaned)
        return;
    assert(cr->state == SUSPENDED);
    rt_list_remove(&cr->link);
    cr->state = READY;
    /* MHD calls the access handler again, which queues the response, but only from MHD_run:
     * its own wake-up (the inter-thread channel) does not reliably reach our poll in external
     * epoll mode, so ask for a run on the next loop turn (resumes in one turn share it). */
    MHD_resume_connection(cr->in.conn);
    uv_timer_start(&cr->srv->timer, on_timer, 0, 0);
}

static void on_task_done(rt_task *t, int status)
{
    conn_req *cr = t->data;

    cr->task_status = status;
    if (!svc_request_has_response(&cr->req)) {
        if (status == 0)
            svc_respond_error(&cr->req, 500, "internal", "the handler set no response");
        else
            svc_respond_uv_error(&cr->req, status);
    }
    /* The response waits for everything else the handler spawned into the request scope. */
    rt_scope_close(&cr->scope, on_request_scope_closed);
}

static void on_deadline(rt_cancel_listener *l, int reason)
{
    conn_req *cr = l->data;

    rt_scope_cancel(&cr->scope, reason);
}

static void on_unused_scope_closed(rt_scope *scope)
{
    req_unref(rt_container_of(scope, conn_req, scope));
}

/* Runs the handler's task in a new request scope with its own deadline. */
static int start_task(conn_req *cr, rt_task *task, struct MHD_Connection *conn)
{
    svc_server *s = cr->srv;
    svc_request *req = &cr->req;
    int err;

    err = rt_scope_init(&cr->scope, s->app->rt, s->requests, "request");
    if (err < 0) {
        rt_task_release(task);
        return err;
    }
    req->deadline = uv_now(s->app->loop) + (uint64_t)s->cfg->request_timeout_ms;
    err = rt_deadline_init(&cr->deadline, s->app->rt, NULL, req->deadline);
    if (err < 0) {
        rt_task_release(task);
        /* The scope lives in cr and closes on a later turn: keep cr until it has. */
        cr->refs++;
        rt_scope_close(&cr->scope, on_unused_scope_closed);
        return err;
    }
    rt_cancel_listener_init(&cr->on_deadline);
    cr->on_deadline.data = cr;
    rt_cancel_listen(&cr->deadline.signal, &cr->on_deadline, on_deadline);
    req->scope = &cr->scope;
    req->signal = &cr->scope.signal;
    cr->refs++;
    cr->state = SUSPENDED;
    rt_list_push_back(&s->suspended, &cr->link);
    task->data = cr;
    MHD_suspend_connection(conn);
    /* The scope is open and its parent is not closing (init checked), so spawn cannot refuse. */
    err = rt_scope_spawn(&cr->scope, task, on_task_done);
    return RT_NEVER(err < 0) ? err : 0;
}

static enum MHD_Result collect_query(void *arg, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    /* Arguments past SVC_MAX_QUERY are ignored: no route takes that many. */
    return svc_request_add_query(arg, key, value) == 0 ? MHD_YES : MHD_NO;
}

static enum MHD_Result dispatch(conn_req *cr, struct MHD_Connection *conn)
{
    svc_server *s = cr->srv;
    svc_request *req = &cr->req;
    rt_task *task = NULL;
    int err;

    if (cr->too_large) {
        svc_respond_error(req, 413, "payload_too_large", "the body is larger than %lld bytes",
                          (long long)s->cfg->max_body_bytes);
        return queue_response(cr, conn);
    }
    switch (svc_router_match(s->router, req->method, req->path, &cr->match)) {
    case SVC_MATCH_NOT_FOUND:
        svc_respond_error(req, 404, "not_found", "no route for %s", req->path);
        return queue_response(cr, conn);
    case SVC_MATCH_BAD_METHOD:
        svc_respond_error(req, 405, "method_not_allowed", "%s is not allowed here; use %s",
                          req->method, cr->match.allow);
        svc_respond_header(req, MHD_HTTP_HEADER_ALLOW, cr->match.allow);
        return queue_response(cr, conn);
    case SVC_MATCH_FOUND:
        break;
    }
    svc_request_set_match(req, &cr->match);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, req);
    svc_request_set_body(req, cr->body, cr->body_len);
    err = req->route->handler(req, req->route->state, &task);
    if (err < 0 && task != NULL) {
        /* The contract says no task with an error; keep the promise that the task is stolen. */
        rt_task_release(task);
        task = NULL;
    }
    if (err == 0 && task != NULL) {
        err = start_task(cr, task, conn);
        if (err == 0)
            return MHD_YES;
    }
    if (err < 0)
        svc_respond_uv_error(req, err);
    return queue_response(cr, conn);
}

static enum MHD_Result count_traceparent(void *arg, enum MHD_ValueKind kind, const char *key,
                                         const char *value)
{
    (void)kind;
    (void)value;
    if (strcasecmp(key, "traceparent") == 0)
        (*(int *)arg)++;
    return MHD_YES;
}

/* The client's traceparent header, borrowed; NULL when absent or repeated (W3C: a request with
 * several is treated as having none). Only a request that sent one pays for the count. */
static const char *client_traceparent(struct MHD_Connection *conn)
{
    const char *tp = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent");
    int n = 0;

    if (tp == NULL)
        return NULL;
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_traceparent, &n);
    return n == 1 ? tp : NULL;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    svc_server *s = cls;
    conn_req *cr = *con_cls;

    (void)version;
    if (cr == NULL) {
        const char *cl;

        cr = calloc(1, sizeof(*cr));
        if (cr == NULL)
            return MHD_NO;
        cr->srv = s;
        cr->refs = 1;
        cr->in.conn = conn;
        rt_list_init(&cr->link);
        svc_request_init(&cr->req, s->app, &cr->in, method, url);
        svc_request_set_id(&cr->req,
                           MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"));
        svc_request_set_trace(&cr->req, client_traceparent(conn));
        *con_cls = cr;
        s->in_flight++;
        svc_metrics_request_begin(s->metrics);
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg->max_body_bytes) {
            /* Answering now closes the connection without reading the body: here that is the
             * point (the one exception to "never queue on the first call"). */
            cr->too_large = true;
            return dispatch(cr, conn);
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;

        *upload_data_size = 0;
        if (cr->too_large)
            return MHD_YES;
        if (cr->body_len + n > (uint64_t)s->cfg->max_body_bytes) {
            /* A chunked body grew too large: keep discarding it and answer 413 at its end. */
            cr->too_large = true;
            free(cr->body);
            cr->body = NULL;
            cr->body_len = cr->body_cap = 0;
            return MHD_YES;
        }
        if (cr->body_len + n + 1 > cr->body_cap) {
            size_t cap = (cr->body_len + n + 1) * 2;
            char *p = realloc(cr->body, cap);

            if (p == NULL)
                return MHD_NO;
            cr->body = p;
            cr->body_cap = cap;
        }
        memcpy(cr->body + cr->body_len, upload_data, n);
        cr->body_len += n;
        cr->body[cr->body_len] = '\0';
        return MHD_YES;
    }
    switch (cr->state) {
    case RECEIVING:
        return dispatch(cr, conn);
    case READY:
        return queue_response(cr, conn);
    case ANSWERED:
        /* A 413 queued before the body was read: nothing is left to do. */
        return MHD_YES;
    default:
        /* MHD never calls for a suspended connection. */
        assert(!"access handler called for a suspended request");
        return MHD_NO;
    }
}

static void log_request(const conn_req *cr, int status, uint64_t ns)
{
    const svc_request *req = &cr->req;
    svc_log_level level = status >= 500 ? SVC_LOG_WARN : SVC_LOG_INFO;
    svc_log_line l;

    /* Probes are polled constantly, and a draining /readyz answers 503 by design. */
    if (req->route != NULL && (req->route->flags & SVC_ROUTE_QUIET))
        level = SVC_LOG_DEBUG;
    if (!svc_log_begin(&l, level, "request"))
        return;
    svc_request_log_ids(&l, req);
    svc_log_str(&l, "method", req->method);
    svc_log_str(&l, "path", req->path);
    svc_log_str(&l, "route", req->route ? req->route->pattern : NULL);
    svc_log_str(&l, "variant",
                svc_variant_name(req->route ? req->route->variant : SVC_VARIANT_NONE));
    svc_log_int(&l, "status", status);
    svc_log_ms(&l, "duration_ms", (double)ns / 1e6);
    svc_log_ms(&l, "db_ms", (double)req->db_ns / 1e6);
    if (cr->task_status != 0)
        svc_log_str(&l, "task_status", uv_err_name(cr->task_status));
    svc_log_end(&l);
}

static void on_idle_post(rt_post *p)
{
    svc_server *s = rt_container_of(p, svc_server, idle_post);

    if (s->in_flight == 0 && s->idle_cb != NULL)
        s->idle_cb(s->idle_arg);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    svc_server *s = cls;
    conn_req *cr = *con_cls;
    uint64_t ns;
    int status;

    (void)conn;
    if (cr == NULL)
        return;
    *con_cls = NULL;
    ns = uv_hrtime() - cr->req.start_ns;
    /* 499 (the client went away before an answer), as nginx logs it. */
    status =
        cr->state == ANSWERED && toe != MHD_REQUEST_TERMINATED_CLIENT_ABORT ? cr->req.status : 499;
    svc_metrics_request_end(s->metrics, cr->req.route, status, ns);
    log_request(cr, status, ns);
    cr->in.conn = NULL;
    req_unref(cr);
    /* The idle callback may stop the daemon, which must not happen inside MHD_run: post it. */
    if (--s->in_flight == 0 && s->idle_cb != NULL)
        rt_post_submit(s->app->rt, &s->idle_post, on_idle_post);
}

/* --- the loop wiring ---------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    run_mhd(t->data);
}

static void run_mhd(svc_server *s)
{
    MHD_UNSIGNED_LONG_LONG ms;

    MHD_run(s->mhd);
    if (MHD_get_timeout(s->mhd, &ms) == MHD_YES)
        uv_timer_start(&s->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&s->timer);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run_mhd(p->data);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[256];
    size_t n;

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    svc_log_msg(SVC_LOG_WARN, "http", msg);
}

static void on_handle_closed(uv_handle_t *h)
{
    svc_server *s = h->data;
    void (*cb)(void *arg) = s->close_cb;
    void *arg = s->close_arg;

    if (--s->open_handles > 0)
        return;
    free(s);
    if (cb != NULL)
        cb(arg);
}

int svc_server_open(svc_server **out, svc_app *app, const svc_router *router, svc_metrics *metrics,
                    rt_scope *requests_scope)
{
    const svc_config *cfg = app->config;
    const union MHD_DaemonInfo *info;
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } addr;
    svc_server *s;
    int err;

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return UV_ENOMEM;
    s->app = app;
    s->cfg = cfg;
    s->router = router;
    s->metrics = metrics;
    s->requests = requests_scope;
    rt_list_init(&s->suspended);
    rt_post_init(&s->idle_post);
    snprintf(s->server_header, sizeof(s->server_header), "hindsight/%s", HS_VERSION);
    /* HOST was checked by the configuration parser; an IPv6 literal needs MHD's IPv6 mode. */
    if (uv_ip4_addr(cfg->host, cfg->port, &addr.in4) != 0) {
        if (uv_ip6_addr(cfg->host, cfg->port, &addr.in6) != 0) {
            err = UV_EINVAL;
            goto out_free;
        }
        flags |= MHD_USE_IPv6;
    }
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &addr.sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)cfg->max_connections_per_ip,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)cfg->connection_memory_bytes, MHD_OPTION_END);
    if (s->mhd == NULL) {
        err = UV_EADDRINUSE;
        goto out_free;
    }
    info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info != NULL ? info->port : (uint16_t)cfg->port;
    info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        err = UV_EIO;
        goto out_stop;
    }
    err = uv_timer_init(app->loop, &s->timer);
    if (err < 0)
        goto out_stop;
    s->timer.data = s;
    s->open_handles++;
    err = uv_poll_init(app->loop, &s->poll, info->epoll_fd);
    if (err < 0)
        goto out_close_timer;
    s->poll.data = s;
    s->open_handles++;
    err = uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (err < 0)
        goto out_close_poll;
    run_mhd(s);
    *out = s;
    return 0;

    /* Handles close asynchronously: s is freed by the last close callback (on_handle_closed). */
out_close_poll:
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
out_close_timer:
    MHD_stop_daemon(s->mhd);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    return err;
out_stop:
    MHD_stop_daemon(s->mhd);
out_free:
    free(s);
    return err;
}

uint16_t svc_server_port(const svc_server *s)
{
    return s->port;
}

size_t svc_server_in_flight(const svc_server *s)
{
    return s->in_flight;
}

void svc_server_on_idle(svc_server *s, void (*cb)(void *arg), void *arg)
{
    s->idle_cb = cb;
    s->idle_arg = arg;
}

void svc_server_quiesce(svc_server *s)
{
    MHD_socket fd;

    if (s->quiesced)
        return;
    s->quiesced = true;
    fd = MHD_quiesce_daemon(s->mhd);
    /* MHD hands the listening socket back and no longer watches it; closing it makes new
     * connection attempts fail at once instead of waiting in the backlog. */
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void svc_server_close(svc_server *s, void (*cb)(void *arg), void *arg)
{
    rt_list moved;

    assert(!s->closing);
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    /* DESIGN.md: stopping MHD with a suspended connection breaks its contract, so every one is
     * answered and resumed first, and MHD gets a few turns to send those answers. */
    rt_list_move(&s->suspended, &moved);
    while (!rt_list_is_empty(&moved)) {
        conn_req *cr = rt_container_of(moved.next, conn_req, link);

        rt_list_remove(&cr->link);
        cr->orphaned = true;
        cr->state = READY;
        svc_respond_error(&cr->req, 503, "unavailable",
                          "the service stopped before this request ended");
        MHD_resume_connection(cr->in.conn);
    }
    for (int i = 0; i < 3; i++)
        MHD_run(s->mhd);
    /* The poll must stop before MHD closes the descriptor it watches. */
    uv_poll_stop(&s->poll);
    uv_timer_stop(&s->timer);
    s->idle_cb = NULL;
    rt_post_cancel(&s->idle_post);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_e2e_async.c - the asynchronous half of the server, over real HTTP: a handler's task
 * suspends its connection and the response goes out when the task and the request scope are
 * done; the request deadline cancels the task and answers 504; a task's error without a
 * response maps to 503/500; children spawned into the request scope hold the response back;
 * many slow requests run at once; and the shutdown sequence lets an in-flight task finish,
 * then cancels the one that outlives the grace period (503).
 *
 * The service is assembled in this process, as main.c does, with a handler table of test rows
 * whose tasks sleep on the loop (rt_sleep): no pattern route is needed to exercise the server.
 * The loop runs on the test's main thread; the client runs on a second thread with libcurl,
 * and triggers the shutdown through a uv_async when it has checked everything else.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "e2e.h"
#include "handlers/probes.h"
#include "runtime/work.h"
#include "service/config.h"
#include "service/metrics.h"
#include "service/router.h"
#include "service/server.h"
#include "service/shutdown.h"

/* --- a test handler: a task that sleeps, then answers (or not) ------------------------------ */

typedef struct sleep_task {
    rt_task task;
    rt_sleep sleep;
    svc_request *req;
    int64_t ms;
    int result;       /* the status to complete with after sleeping */
    bool respond;     /* set a 200 before completing */
    bool spawn_child; /* spawn a child sleep into the request scope instead of sleeping */
    int refs;         /* the outer task's, and the inner sleep's once started */
} sleep_task;

static void sleep_task_unref(sleep_task *st)
{
    if (--st->refs == 0)
        free(st);
}

static void on_inner_released(rt_sleep *s)
{
    sleep_task_unref(rt_container_of(s, sleep_task, sleep));
}

static void on_slept(rt_task *inner, int status)
{
    sleep_task *st = rt_container_of(inner, sleep_task, sleep.task);

    if (status == 0 && st->respond)
        svc_respond_json(st->req, 200, json_pack("{s:I}", "slept", (json_int_t)st->ms));
    rt_task_complete(&st->task, status == 0 ? st->result : status);
    rt_task_release(inner);
}

static const rt_task_vtable sleep_task_vt;

static sleep_task *sleep_task_new(rt_runtime *rt, svc_request *req, int64_t ms)
{
    sleep_task *st = calloc(1, sizeof(*st));

    if (st == NULL)
        return NULL;
    rt_task_init(&st->task, rt, &sleep_task_vt);
    st->req = req;
    st->ms = ms;
    st->refs = 1;
    return st;
}

static int sleep_task_start(rt_task *t)
{
    sleep_task *st = rt_container_of(t, sleep_task, task);

    if (st->spawn_child) {
        /* The request scope exists now: the child's sleep delays the response, not this task. */
        sleep_task *child = sleep_task_new(t->rt, st->req, st->ms);

        if (child == NULL)
            return UV_ENOMEM;
        svc_respond_json(st->req, 200, json_pack("{s:s}", "child", "spawned"));
        rt_scope_spawn(st->req->scope, &child->task, NULL);
        rt_task_complete(t, 0);
        return 0;
    }
    rt_sleep_init(&st->sleep, t->rt, (uint64_t)st->ms, on_inner_released);
    st->refs++;
    rt_task_start(&st->sleep.task, NULL, on_slept);
    return 0;
}

static void sleep_task_cancel(rt_task *t, int reason)
{
    sleep_task *st = rt_container_of(t, sleep_task, task);

    rt_task_cancel(&st->sleep.task, reason);
}

static void sleep_task_release(rt_task *t)
{
    sleep_task_unref(rt_container_of(t, sleep_task, task));
}

static const rt_task_vtable sleep_task_vt = {
    .name = "test-sleep",
    .start = sleep_task_start,
    .cancel = sleep_task_cancel,
    .release = sleep_task_release,
};

enum { H_SLEEP, H_FAIL_BUSY, H_NO_RESPONSE, H_CHILDREN, H_ENOMEM, H_BLOCK };

/* Requests that have reached handler (loop thread), read by the client thread. */
static int handled;

static int handler(svc_request *req, void *state, rt_task **task_out)
{
    int kind = (int)(intptr_t)state;
    sleep_task *st;
    int64_t ms;

    __atomic_add_fetch(&handled, 1, __ATOMIC_RELEASE);
    if (kind == H_ENOMEM)
        return UV_ENOMEM;
    if (kind == H_BLOCK) {
        /* Holds the loop in this callback, as a blocking call would: no timer runs meanwhile. */
        uint64_t until;

        if (svc_query_int(req, "ms", 0, 10000, 10, &ms) < 0)
            return 0;
        until = uv_hrtime() + (uint64_t)ms * 1000000u;
        while (uv_hrtime() < until)
            e2e_sleep_ms(1);
        svc_respond_static(req, 200, "{\"blocked\":true}");
        return 0;
    }
    if (svc_query_int(req, "ms", 0, 10000, 10, &ms) < 0)
        return 0;
    st = sleep_task_new(req->app->rt, req, ms);
    if (st == NULL)
        return UV_ENOMEM;
    st->respond = kind == H_SLEEP;
    st->result = kind == H_FAIL_BUSY ? UV_EBUSY : 0;
    st->spawn_child = kind == H_CHILDREN;
    *task_out = &st->task;
    return 0;
}

/* --- the service, assembled as main.c does ---------------------------------------------------- */

typedef struct harness {
    svc_config cfg;
    svc_app app;
    uv_loop_t loop;
    rt_runtime rt;
    rt_scope root, service, requests;
    rt_cancel drain, hard_cancel;
    svc_router *router;
    svc_metrics *metrics;
    svc_server *server;
    svc_shutdown shutdown;
    uv_async_t trigger;
    e2e_proc peer; /* only .port is used: where the client connects */
    uint64_t shutdown_began_ms;
    uint64_t shutdown_done_ms;
} harness;

static harness h;

static void on_root_closed(rt_scope *s)
{
    (void)s;
    rt_cancel_close(&h.drain);
    rt_cancel_close(&h.hard_cancel);
    rt_runtime_close(&h.rt, NULL);
}

static void on_server_closed(void *arg)
{
    (void)arg;
    svc_metrics_probe_close(h.metrics);
    svc_shutdown_close(&h.shutdown, NULL);
    uv_close((uv_handle_t *)&h.trigger, NULL);
    rt_scope_close(&h.root, on_root_closed);
}

static void on_shutdown_done(svc_shutdown *sd)
{
    (void)sd;
    h.shutdown_done_ms = e2e_now_ms();
    svc_server_close(h.server, on_server_closed, NULL);
}

static void on_trigger(uv_async_t *a)
{
    (void)a;
    h.shutdown_began_ms = e2e_now_ms();
    svc_shutdown_begin(&h.shutdown, "test");
}

static void harness_start(void)
{
    const svc_route rows[] = {
        {"GET", "/sleep", SVC_VARIANT_NONE, "sleeps ?ms then answers", handler,
         (void *)(intptr_t)H_SLEEP, 0},
        {"GET", "/fail", SVC_VARIANT_NONE, "sleeps, then fails with UV_EBUSY", handler,
         (void *)(intptr_t)H_FAIL_BUSY, 0},
        {"GET", "/silent", SVC_VARIANT_NONE, "sleeps, then completes without a response", handler,
         (void *)(intptr_t)H_NO_RESPONSE, 0},
        {"GET", "/children", SVC_VARIANT_NONE, "answers at once, a child sleeps in its scope",
         handler, (void *)(intptr_t)H_CHILDREN, 0},
        {"GET", "/enomem", SVC_VARIANT_NONE, "fails before starting anything", handler,
         (void *)(intptr_t)H_ENOMEM, 0},
        {"GET", "/block", SVC_VARIANT_NONE, "holds the loop for ?ms, then answers", handler,
         (void *)(intptr_t)H_BLOCK, 0},
    };
    char *argv[] = {"test", NULL};

    memset(&h, 0, sizeof(h));
    unsetenv("DATABASE_URL");
    setenv("PORT", "0", 1);
    setenv("LOG_LEVEL", "warn", 1);
    setenv("REQUEST_TIMEOUT_MS", "1000", 1);
    setenv("SHUTDOWN_GRACE_MS", "600", 1);
    setenv("DRAIN_DELAY_MS", "0", 1);
    setenv("LIVENESS_MAX_STALL_MS", "500", 1);
    assert_int_equal(svc_config_parse(&h.cfg, 1, argv, stdout, stderr), SVC_CONFIG_RUN);
    svc_log_setup(h.cfg.log_level, h.cfg.log_format);
    assert_int_equal(uv_loop_init(&h.loop), 0);
    assert_int_equal(rt_runtime_init(&h.rt, &h.loop), 0);
    assert_int_equal(rt_scope_init(&h.root, &h.rt, NULL, "root"), 0);
    assert_int_equal(rt_scope_init(&h.service, &h.rt, &h.root, "service"), 0);
    assert_int_equal(rt_scope_init(&h.requests, &h.rt, &h.root, "requests"), 0);
    rt_cancel_init(&h.drain, NULL);
    rt_cancel_init(&h.hard_cancel, NULL);
    h.app.config = &h.cfg;
    h.app.loop = &h.loop;
    h.app.rt = &h.rt;
    h.app.root_scope = &h.root;
    h.app.service_scope = &h.service;
    h.app.drain = &h.drain;
    h.app.hard_cancel = &h.hard_cancel;
    h.router = svc_router_new(true);
    assert_non_null(h.router);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        assert_int_equal(svc_router_add(h.router, &rows[i]), 0);
    h.metrics = svc_metrics_new(h.router);
    assert_non_null(h.metrics);
    h.app.metrics = h.metrics;
    /* The real probes (/healthz reads the loop-lag probe) and the probe itself, as main.c has. */
    assert_int_equal(hs_probes_register(h.router, &h.app), 0);
    assert_int_equal(svc_metrics_probe_start(h.metrics, &h.loop), 0);
    assert_int_equal(svc_metrics_bind_routes(h.metrics), 0);
    h.app.metrics = h.metrics;
    assert_int_equal(svc_server_open(&h.server, &h.app, h.router, h.metrics, &h.requests), 0);
    h.peer.port = svc_server_port(h.server);
    assert_true(h.peer.port > 0);
    assert_int_equal(svc_shutdown_init(&h.shutdown, &h.app, h.server, h.metrics, &h.requests,
                                       &h.service, on_shutdown_done),
                     0);
    assert_int_equal(uv_async_init(&h.loop, &h.trigger, on_trigger), 0);
}

static void harness_finish(void)
{
    uv_run(&h.loop, UV_RUN_DEFAULT);
    /* Everything was closed by the sequence itself: nothing for uv_walk to find. */
    assert_int_equal(uv_loop_close(&h.loop), 0);
    svc_metrics_free(h.metrics);
    svc_router_free(h.router);
    svc_config_free(&h.cfg);
}

/* --- the client ------------------------------------------------------------------------------ */

typedef struct call {
    const char *path;
    e2e_resp r;
    uint64_t ms;
    pthread_t thread;
} call;

static void *call_run(void *arg)
{
    call *c = arg;
    uint64_t t0 = e2e_now_ms();

    e2e_get(&h.peer, c->path, &c->r);
    c->ms = e2e_now_ms() - t0;
    return NULL;
}

static void call_async(call *c, const char *path)
{
    c->path = path;
    assert_int_equal(pthread_create(&c->thread, NULL, call_run, c), 0);
}

static void call_wait(call *c)
{
    pthread_join(c->thread, NULL);
}

static const char *error_code(const e2e_resp *r, char *out, size_t cap)
{
    json_t *v = json_loadb(r->body, r->body_len, 0, NULL);

    snprintf(out, cap, "%s",
             v ? json_string_value(json_object_get(json_object_get(v, "error"), "code")) : "");
    json_decref(v);
    return out;
}

/* The whole client side; failures are recorded and asserted on the main thread. */
typedef struct results {
    call sleep50, deadline, busy, silent, children, enomem, bad_query;
    call many[40];
    uint64_t many_ms;
    call healthy_before, healthy_after;
    char stalled[8192]; /* two pipelined answers: /block, then /healthz right behind it */
    call finishes, cancelled;
} results;

static results res;

static void *client(void *arg)
{
    int base;

    (void)arg;
    call_run((res.sleep50.path = "/sleep?ms=50", &res.sleep50));
    call_run((res.deadline.path = "/sleep?ms=5000", &res.deadline));
    call_run((res.busy.path = "/fail?ms=10", &res.busy));
    call_run((res.silent.path = "/silent?ms=10", &res.silent));
    call_run((res.children.path = "/children?ms=300", &res.children));
    call_run((res.enomem.path = "/enomem", &res.enomem));
    call_run((res.bad_query.path = "/sleep?ms=-1", &res.bad_query));

    uint64_t t0 = e2e_now_ms();
    for (size_t i = 0; i < 40; i++)
        call_async(&res.many[i], "/sleep?ms=300");
    for (size_t i = 0; i < 40; i++)
        call_wait(&res.many[i]);
    res.many_ms = e2e_now_ms() - t0;

    /* Liveness: /healthz answered from a callback right after the loop was held for 1.5 s,
     * before any timer could run (pipelined behind the request that held it), says 503; the
     * next one, once the probe has run again, 200. */
    call_run((res.healthy_before.path = "/healthz", &res.healthy_before));
    {
        static const char pipelined[] = "GET /block?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n"
                                        "GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                        "Connection: close\r\n\r\n";
        int fd = e2e_connect(&h.peer);
        size_t n = 0;
        ssize_t r;

        if (fd >= 0 && write(fd, pipelined, sizeof(pipelined) - 1) == sizeof(pipelined) - 1) {
            while (n < sizeof(res.stalled) - 1 &&
                   (r = read(fd, res.stalled + n, sizeof(res.stalled) - 1 - n)) > 0)
                n += (size_t)r;
        }
        res.stalled[n] = '\0';
        if (fd >= 0)
            close(fd);
    }
    e2e_sleep_ms(300);
    call_run((res.healthy_after.path = "/healthz", &res.healthy_after));

    /* Shutdown with two requests in flight: one ends within the grace period, one does not. */
    base = __atomic_load_n(&handled, __ATOMIC_ACQUIRE);
    call_async(&res.finishes, "/sleep?ms=250");
    call_async(&res.cancelled, "/sleep?ms=900");
    /* Both have reached their handler before shutdown begins: a fixed pause could end, on a
     * busy machine, before they have even arrived. */
    for (uint64_t until = e2e_now_ms() + 10000;
         __atomic_load_n(&handled, __ATOMIC_ACQUIRE) < base + 2 && e2e_now_ms() < until;)
        e2e_sleep_ms(5);
    uv_async_send(&h.trigger);
    call_wait(&res.finishes);
    call_wait(&res.cancelled);
    return NULL;
}

static void test_async_requests_and_shutdown(void **state)
{
    pthread_t t;
    char code[64], v[64];

    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    harness_start();
    assert_int_equal(pthread_create(&t, NULL, client, NULL), 0);
    harness_finish();
    pthread_join(t, NULL);

    /* A task answers when it completes. */
    assert_int_equal(res.sleep50.r.status, 200);
    assert_string_equal(res.sleep50.r.body, "{\"slept\":50}");
    assert_true(res.sleep50.ms >= 45);

    /* The deadline (1000 ms) cancels a 5 s task: 504 in about a second, not five. */
    assert_int_equal(res.deadline.r.status, 504);
    assert_string_equal(error_code(&res.deadline.r, code, sizeof(code)), "timeout");
    assert_true(res.deadline.ms >= 900 && res.deadline.ms < 4000);

    /* A task's error without a response: UV_EBUSY is a 503 with Retry-After. */
    assert_int_equal(res.busy.r.status, 503);
    assert_true(e2e_header(&res.busy.r, "Retry-After", v, sizeof(v)));
    assert_string_equal(v, "1");
    assert_int_equal(res.silent.r.status, 500);
    assert_string_equal(error_code(&res.silent.r, code, sizeof(code)), "internal");

    /* The response waits for the child spawned into the request scope. */
    assert_int_equal(res.children.r.status, 200);
    assert_true(res.children.ms >= 280);

    assert_int_equal(res.enomem.r.status, 503);
    assert_int_equal(res.bad_query.r.status, 400);

    /* 40 requests of 300 ms each, all suspended at once: about 300 ms, far from 12 s. */
    for (size_t i = 0; i < 40; i++)
        assert_int_equal(res.many[i].r.status, 200);
    assert_true(res.many_ms < 6000);

    /* Liveness follows the loop-lag probe. */
    assert_int_equal(res.healthy_before.r.status, 200);
    {
        const char *second = strstr(res.stalled + 1, "HTTP/1.1 ");

        fprintf(stderr, "pipelined behind a 1.5 s stall:\n%s\n", res.stalled);
        assert_int_equal(strncmp(res.stalled, "HTTP/1.1 200", 12), 0);
        assert_non_null(second);
        assert_int_equal(strncmp(second, "HTTP/1.1 503", 12), 0);
        assert_non_null(strstr(second, "{\"error\":{\"code\":\"loop_stalled\",\"message\":"));
    }
    assert_int_equal(res.healthy_after.r.status, 200);
    assert_string_equal(res.healthy_after.r.body, "{\"status\":\"ok\"}");

    /* Shutdown: the 250 ms request finishes inside the 600 ms grace period, and is told to
     * close its connection; the 900 ms one is cancelled at the end of it, 503. */
    assert_int_equal(res.finishes.r.status, 200);
    assert_true(e2e_header(&res.finishes.r, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
    assert_int_equal(res.cancelled.r.status, 503);
    assert_string_equal(error_code(&res.cancelled.r, code, sizeof(code)), "unavailable");
    assert_true(h.shutdown_done_ms - h.shutdown_began_ms >= 550);
    assert_true(h.shutdown_done_ms - h.shutdown_began_ms < 4000);

    e2e_resp_free(&res.sleep50.r);
    e2e_resp_free(&res.deadline.r);
    e2e_resp_free(&res.busy.r);
    e2e_resp_free(&res.silent.r);
    e2e_resp_free(&res.children.r);
    e2e_resp_free(&res.enomem.r);
    e2e_resp_free(&res.bad_query.r);
    for (size_t i = 0; i < 40; i++)
        e2e_resp_free(&res.many[i].r);
    e2e_resp_free(&res.healthy_before.r);
    e2e_resp_free(&res.healthy_after.r);
    e2e_resp_free(&res.finishes.r);
    e2e_resp_free(&res.cancelled.r);
    curl_global_cleanup();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_async_requests_and_shutdown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

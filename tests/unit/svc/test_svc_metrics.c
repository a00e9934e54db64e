/* SPDX-License-Identifier: MIT */
/*
 * test_svc_metrics.c - the Prometheus exposition: request counts by row and status, cumulative
 * histogram buckets, the unmatched slot, scopes grouped by name (counted from zero), handler
 * counters and gauges grouped under one HELP/TYPE (one by one, or from a table), and loop lag.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "service/metrics.h"
#include "service/router.h"

static int dummy(svc_request *req, void *state, rt_task **task_out)
{
    (void)req;
    (void)state;
    (void)task_out;
    return 0;
}

static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = text; (p = strstr(p, line)) != NULL; p += n) {
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return true;
    }
    return false;
}

static int count(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void test_render(void **state)
{
    svc_route rows[] = {
        {"GET", "/healthz", SVC_VARIANT_NONE, "", dummy, NULL, 0},
        {"GET", "/after/users/{id}", SVC_VARIANT_AFTER, "", dummy, NULL, 0},
    };
    svc_router *router = svc_router_new(true);
    svc_metrics *m;
    uv_loop_t loop;
    rt_runtime rt;
    rt_scope root, service, requests, req[3];
    svc_app app = {0};
    svc_match match;
    uint64_t *a, *b, *g;
    char *text;
    size_t len;

    (void)state;
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(svc_router_add(router, &rows[i]), 0);
    m = svc_metrics_new(router);
    assert_non_null(m);
    assert_int_equal(svc_metrics_bind_routes(m), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(rt_runtime_init(&rt, &loop), 0);
    rt_scope_init(&root, &rt, NULL, "root");
    rt_scope_init(&service, &rt, &root, "service");
    rt_scope_init(&requests, &rt, &root, "requests");
    for (int i = 0; i < 3; i++)
        rt_scope_init(&req[i], &rt, &requests, "request");
    app.rt = &rt;

    svc_router_match(router, "GET", "/after/users/5", &match);
    for (int i = 0; i < 3; i++) {
        svc_metrics_request_begin(m);
        svc_metrics_request_end(m, match.route, 200, 3000000); /* 3 ms */
    }
    svc_metrics_request_begin(m);
    svc_metrics_request_end(m, match.route, 504, 2000000000ull); /* 2 s */
    svc_metrics_request_begin(m);
    svc_metrics_request_end(m, NULL, 404, 100000);
    svc_metrics_request_begin(m); /* still in flight */
    svc_metrics_loop_lag(m, 1500000);
    svc_metrics_shutdown_cancelled(m, 2);
    a = svc_metrics_counter(m, "hs_test_events_total", "variant=\"after\"", "Test events.");
    g = svc_metrics_gauge(m, "hs_test_alive", "", "Test gauge.");
    b = svc_metrics_counter(m, "hs_test_events_total", "variant=\"before\"", "Test events.");
    *a = 7;
    *b = 9;
    *g = 4;

    text = svc_metrics_render(m, &app, &root, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_true(has_line(text, "hs_http_requests_total{route=\"/after/users/{id}\",method=\"GET\","
                               "variant=\"after\",status=\"200\"} 3"));
    assert_true(has_line(text, "hs_http_requests_total{route=\"/after/users/{id}\",method=\"GET\","
                               "variant=\"after\",status=\"504\"} 1"));
    assert_true(has_line(text, "hs_http_requests_total{route=\"(unmatched)\",method=\"any\","
                               "variant=\"none\",status=\"404\"} 1"));
    /* No traffic on /healthz: no series for it. */
    assert_null(strstr(text, "hs_http_requests_total{route=\"/healthz\""));
    /* Buckets are cumulative: 3 requests of 3 ms are under 5 ms, all 4 under +Inf. */
    assert_true(has_line(text,
                         "hs_http_request_duration_seconds_bucket{route=\"/after/users/{id}\","
                         "method=\"GET\",variant=\"after\",le=\"0.0025\"} 0"));
    assert_true(has_line(text,
                         "hs_http_request_duration_seconds_bucket{route=\"/after/users/{id}\","
                         "method=\"GET\",variant=\"after\",le=\"0.005\"} 3"));
    assert_true(has_line(text,
                         "hs_http_request_duration_seconds_bucket{route=\"/after/users/{id}\","
                         "method=\"GET\",variant=\"after\",le=\"2.5\"} 4"));
    assert_true(has_line(text, "hs_http_request_duration_seconds_count{route=\"/after/users/{id}\","
                               "method=\"GET\",variant=\"after\"} 4"));
    assert_true(has_line(text, "hs_http_requests_in_flight 1"));
    /* Scopes grouped by name, counted from zero. */
    assert_true(has_line(text, "hs_scopes_open{scope=\"request\"} 3"));
    assert_true(has_line(text, "hs_scope_tasks{scope=\"request\"} 0"));
    assert_true(has_line(text, "hs_scopes_open{scope=\"service\"} 1"));
    assert_true(has_line(text, "hs_shutdown_cancelled_tasks_total 2"));
    assert_true(has_line(text, "hs_event_loop_lag_seconds{worker=\"0\"} 0.001500"));
    /* Two series of one counter under one HELP/TYPE, and the gauge typed as a gauge. */
    assert_int_equal(count(text, "# TYPE hs_test_events_total counter"), 1);
    assert_true(has_line(text, "hs_test_events_total{variant=\"after\"} 7"));
    assert_true(has_line(text, "hs_test_events_total{variant=\"before\"} 9"));
    assert_int_equal(count(text, "# TYPE hs_test_alive gauge"), 1);
    assert_true(has_line(text, "hs_test_alive 4"));
    /* No database: no pool series. */
    assert_null(strstr(text, "hs_db_"));
    /* Not shutting down: zero. */
    assert_true(has_line(text, "hs_shutdown_seconds 0.000"));
    free(text);

    /* Shutdown began 2.5 s ago: the gauge counts from then, so an alert can tell how long
     * tasks have outlived the start of a shutdown. */
    app.draining = true;
    app.draining_since_ns = uv_hrtime() - 2500000000ull;
    text = svc_metrics_render(m, &app, &root, &len);
    assert_non_null(text);
    {
        const char *at = strstr(text, "\nhs_shutdown_seconds ");
        double v;

        assert_non_null(at);
        v = strtod(at + strlen("\nhs_shutdown_seconds "), NULL);
        assert_true(v >= 2.5 && v < 60);
        assert_int_equal(count(text, "# TYPE hs_shutdown_seconds gauge"), 1);
    }
    free(text);

    for (int i = 0; i < 3; i++)
        rt_scope_close(&req[i], NULL);
    rt_scope_close(&requests, NULL);
    rt_scope_close(&service, NULL);
    rt_scope_close(&root, NULL);
    rt_runtime_close(&rt, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    svc_metrics_free(m);
    svc_router_free(router);
}

/* A handler's table of series: each slot gets a series of its own, counters are typed counter and
 * gauges gauge, rows of one name share one HELP/TYPE, and an empty table registers nothing. */
static void test_register(void **state)
{
    svc_router *router = svc_router_new(true);
    svc_metrics *m;
    uv_loop_t loop;
    rt_runtime rt;
    svc_app app = {0};
    uint64_t *after = NULL, *alive = NULL, *before = NULL, *lost = NULL;
    const svc_metrics_series table[] = {
        {&after, "hs_test_events_total", "variant=\"after\"", "Test events.", false},
        {&alive, "hs_test_alive", "", "Test gauge.", true},
        {&before, "hs_test_events_total", "variant=\"before\"", "Test events.", false},
        {&lost, "hs_test_lost_total", "", "Test lost.", false},
    };
    char *text;
    size_t len;

    (void)state;
    m = svc_metrics_new(router);
    assert_non_null(m);
    assert_int_equal(svc_metrics_bind_routes(m), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(rt_runtime_init(&rt, &loop), 0);
    app.rt = &rt;

    assert_int_equal(svc_metrics_register(m, table, 0), 0);
    assert_null(after);
    assert_int_equal(SVC_METRICS_REGISTER(m, table), 0);
    assert_non_null(after);
    assert_non_null(alive);
    assert_non_null(before);
    assert_non_null(lost);
    assert_true(after != alive && after != before && after != lost && alive != before &&
                alive != lost && before != lost);
    *after = 7;
    *alive = 4;
    *before = 9;
    *lost = 2;

    text = svc_metrics_render(m, &app, NULL, &len);
    assert_non_null(text);
    assert_int_equal(count(text, "# HELP hs_test_events_total Test events."), 1);
    assert_int_equal(count(text, "# TYPE hs_test_events_total counter"), 1);
    assert_true(has_line(text, "hs_test_events_total{variant=\"after\"} 7"));
    assert_true(has_line(text, "hs_test_events_total{variant=\"before\"} 9"));
    assert_int_equal(count(text, "hs_test_events_total{"), 2);
    assert_int_equal(count(text, "# HELP hs_test_alive Test gauge."), 1);
    assert_int_equal(count(text, "# TYPE hs_test_alive gauge"), 1);
    assert_true(has_line(text, "hs_test_alive 4"));
    assert_int_equal(count(text, "# TYPE hs_test_lost_total counter"), 1);
    assert_true(has_line(text, "hs_test_lost_total 2"));
    free(text);

    rt_runtime_close(&rt, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    svc_metrics_free(m);
    svc_router_free(router);
}

/* Two workers' texts summed: same series added, families kept whole, per-worker series apart. */
static void test_sum(void **state)
{
    const char a[] = "# HELP hs_x_total X.\n# TYPE hs_x_total counter\n"
                     "hs_x_total{status=\"200\"} 3\n"
                     "# HELP hs_lag Lag.\n# TYPE hs_lag gauge\nhs_lag{worker=\"0\"} 0.001500\n"
                     "# HELP hs_db_up Up.\n# TYPE hs_db_up gauge\nhs_db_up 1\n"
                     "# HELP hs_h_seconds H.\n# TYPE hs_h_seconds histogram\n"
                     "hs_h_seconds_sum{} 0.250000\nhs_h_seconds_count{} 2\n";
    const char b[] = "# HELP hs_x_total X.\n# TYPE hs_x_total counter\n"
                     "hs_x_total{status=\"200\"} 4\nhs_x_total{status=\"503\"} 1\n"
                     "# HELP hs_lag Lag.\n# TYPE hs_lag gauge\nhs_lag{worker=\"1\"} 0.002000\n"
                     "# HELP hs_db_up Up.\n# TYPE hs_db_up gauge\nhs_db_up 0\n"
                     "# HELP hs_h_seconds H.\n# TYPE hs_h_seconds histogram\n"
                     "hs_h_seconds_sum{} 0.500000\nhs_h_seconds_count{} 1\n";
    /* Not NUL-terminated where they end: the lengths are what counts. */
    const char *texts[] = {a, b};
    const size_t lens[] = {sizeof(a) - 1, sizeof(b) - 1};
    size_t len = 0;
    char *text;

    (void)state;
    text = svc_metrics_sum(texts, lens, 2, 1, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_int_equal(count(text, "# TYPE hs_x_total counter"), 1);
    assert_true(has_line(text, "hs_x_total{status=\"200\"} 7"));
    assert_true(has_line(text, "hs_x_total{status=\"503\"} 1"));
    /* The 503 series joins its family, before the next family's head. */
    assert_true(strstr(text, "hs_x_total{status=\"503\"}") < strstr(text, "# HELP hs_lag"));
    assert_true(has_line(text, "hs_lag{worker=\"0\"} 0.001500"));
    assert_true(has_line(text, "hs_lag{worker=\"1\"} 0.002000"));
    assert_true(has_line(text, "hs_db_up 1"));
    assert_true(has_line(text, "hs_h_seconds_sum{} 0.750000"));
    assert_true(has_line(text, "hs_h_seconds_count{} 3"));
    assert_true(has_line(text, "hs_metrics_workers_missing 1"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_register),
        cmocka_unit_test(test_sum),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_e2e_http.c - the built binary over real HTTP: probes, the headers every response carries,
 * error shapes, 404/405/413, /routes, /metrics, /openapi.json, the per-request log line and W3C
 * trace context.
 *
 * One service instance serves this whole group (started in the group setup): these checks do
 * not disturb each other, and starting the binary once keeps the suite fast. Tests that need
 * their own settings or kill the process live in test_e2e_lifecycle.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "e2e.h"

static e2e_proc svc;

static bool have_db(void)
{
    const char *db = getenv("TEST_DATABASE_URL");

    return db != NULL && db[0] != '\0';
}

static int group_setup(void **state)
{
    static const char *const env[] = {"MAX_BODY_BYTES=1024", NULL};

    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    e2e_start(&svc, env, NULL, true);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    e2e_stop(&svc);
    e2e_kill_all();
    curl_global_cleanup();
    return 0;
}

static json_t *body_json(const e2e_resp *r)
{
    json_t *v = json_loadb(r->body, r->body_len, 0, NULL);

    assert_non_null(v);
    return v;
}

/* The response has the API's error shape with this code. */
static void assert_error_shape(const e2e_resp *r, const char *code)
{
    json_t *v = body_json(r);
    json_t *e = json_object_get(v, "error");

    assert_true(json_is_object(e));
    assert_int_equal(json_object_size(v), 1);
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(strlen(json_string_value(json_object_get(e, "message"))) > 0);
    json_decref(v);
}

static bool matches(const char *re, const char *s)
{
    regex_t rx;
    bool ok;

    assert_int_equal(regcomp(&rx, re, REG_EXTENDED | REG_NOSUB), 0);
    ok = regexec(&rx, s, 0, NULL, 0) == 0;
    regfree(&rx);
    return ok;
}

static void test_healthz(void **state)
{
    e2e_resp r;
    char v[128];

    (void)state;
    e2e_get(&svc, "/healthz", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_true(e2e_header(&r, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "application/json; charset=utf-8");
    e2e_resp_free(&r);

    e2e_request(&svc, "HEAD", "/healthz", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    e2e_resp_free(&r);
}

static void test_readyz(void **state)
{
    e2e_resp r;
    json_t *v;

    (void)state;
    e2e_get(&svc, "/readyz", &r);
    v = body_json(&r);
    if (have_db()) {
        /* The pool connects in the background: readiness may take a moment after start. */
        for (int i = 0; i < 100 && r.status != 200; i++) {
            e2e_resp_free(&r);
            json_decref(v);
            e2e_sleep_ms(50);
            e2e_get(&svc, "/readyz", &r);
            v = body_json(&r);
        }
        assert_int_equal(r.status, 200);
        assert_string_equal(json_string_value(json_object_get(v, "status")), "ready");
        assert_string_equal(json_string_value(json_object_get(v, "db")), "up");
    } else {
        assert_int_equal(r.status, 503);
        assert_string_equal(json_string_value(json_object_get(v, "status")), "unavailable");
        assert_string_equal(json_string_value(json_object_get(v, "db")), "down");
    }
    json_decref(v);
    e2e_resp_free(&r);
}

static void test_common_headers(void **state)
{
    const char *paths[] = {"/healthz", "/routes", "/nope", "/metrics"};
    char v[256];

    (void)state;
    for (size_t i = 0; i < 4; i++) {
        e2e_resp r;

        e2e_get(&svc, paths[i], &r);
        assert_true(e2e_header(&r, "X-Request-Id", v, sizeof(v)));
        assert_true(matches("^[A-Za-z0-9._-]{1,64}$", v));
        assert_true(e2e_header(&r, "Server-Timing", v, sizeof(v)));
        assert_true(matches("^total;dur=[0-9]+\\.[0-9]+$", v));
        assert_true(e2e_header(&r, "Server", v, sizeof(v)));
        assert_true(matches("^hindsight/[0-9]+\\.[0-9]+\\.[0-9]+$", v));
        assert_true(e2e_header(&r, "Date", v, sizeof(v)));
        assert_true(matches("^[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} GMT$", v));
        e2e_resp_free(&r);
    }
}

static void test_request_id(void **state)
{
    const char *sane[] = {"X-Request-Id: abc-123_x.y", NULL};
    const char *spaces[] = {"X-Request-Id: has spaces", NULL};
    const char *bad_char[] = {"X-Request-Id: a/b", NULL};
    char first[128], second[128], v[128];
    e2e_resp r;

    (void)state;
    e2e_request(&svc, "GET", "/healthz", NULL, sane, &r);
    assert_true(e2e_header(&r, "X-Request-Id", v, sizeof(v)));
    assert_string_equal(v, "abc-123_x.y");
    e2e_resp_free(&r);

    e2e_request(&svc, "GET", "/healthz", NULL, spaces, &r);
    assert_true(e2e_header(&r, "X-Request-Id", first, sizeof(first)));
    assert_string_not_equal(first, "has spaces");
    assert_true(matches("^[A-Za-z0-9._-]{1,64}$", first));
    e2e_resp_free(&r);

    e2e_request(&svc, "GET", "/healthz", NULL, bad_char, &r);
    assert_true(e2e_header(&r, "X-Request-Id", second, sizeof(second)));
    assert_string_not_equal(second, "a/b");
    assert_string_not_equal(first, second);
    e2e_resp_free(&r);

    /* 65 characters: one too many. */
    char longest[160];
    memset(v, 'a', 65);
    v[65] = '\0';
    snprintf(longest, sizeof(longest), "X-Request-Id: %s", v);
    const char *too_long[] = {longest, NULL};
    e2e_request(&svc, "GET", "/healthz", NULL, too_long, &r);
    assert_true(e2e_header(&r, "X-Request-Id", first, sizeof(first)));
    assert_true(strlen(first) < 65);
    e2e_resp_free(&r);
}

static void test_not_found(void **state)
{
    e2e_resp r;
    char v[64];

    (void)state;
    e2e_get(&svc, "/no/such/route", &r);
    assert_int_equal(r.status, 404);
    assert_error_shape(&r, "not_found");
    assert_true(e2e_header(&r, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "application/json; charset=utf-8");
    e2e_resp_free(&r);
    e2e_get(&svc, "/healthz/", &r);
    assert_int_equal(r.status, 404);
    e2e_resp_free(&r);
}

static void test_method_not_allowed(void **state)
{
    const char *methods[] = {"POST", "PUT", "DELETE", "PATCH"};
    char v[64];

    (void)state;
    for (size_t i = 0; i < 4; i++) {
        e2e_resp r;

        e2e_request(&svc, methods[i], "/healthz", "{}", NULL, &r);
        assert_int_equal(r.status, 405);
        assert_error_shape(&r, "method_not_allowed");
        assert_true(e2e_header(&r, "Allow", v, sizeof(v)));
        assert_string_equal(v, "GET, HEAD");
        e2e_resp_free(&r);
    }
}

static void test_body_limit(void **state)
{
    char big[2048];
    e2e_resp r;
    const char *chunked[] = {"Transfer-Encoding: chunked", NULL};

    (void)state;
    /* At the limit (1024 bytes): read in full, then routed (405 here: /healthz is GET only). */
    memset(big, 'a', 1024);
    big[1024] = '\0';
    e2e_request(&svc, "POST", "/healthz", big, NULL, &r);
    assert_int_equal(r.status, 405);
    e2e_resp_free(&r);

    /* One byte over, with a Content-Length: 413 without reading the body. */
    memset(big, 'a', 1025);
    big[1025] = '\0';
    e2e_request(&svc, "POST", "/healthz", big, NULL, &r);
    assert_int_equal(r.status, 413);
    assert_error_shape(&r, "payload_too_large");
    e2e_resp_free(&r);

    /* Chunked, so the size shows only while uploading: still 413. */
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    e2e_request(&svc, "POST", "/no/such/route", big, chunked, &r);
    assert_int_equal(r.status, 413);
    assert_error_shape(&r, "payload_too_large");
    e2e_resp_free(&r);

    /* The service is still fine afterwards. */
    e2e_get(&svc, "/healthz", &r);
    assert_int_equal(r.status, 200);
    e2e_resp_free(&r);
}

static void test_routes(void **state)
{
    const char *want[] = {"/healthz", "/readyz", "/metrics", "/routes"};
    e2e_resp r;
    json_t *list;

    (void)state;
    e2e_get(&svc, "/routes", &r);
    assert_int_equal(r.status, 200);
    list = body_json(&r);
    assert_true(json_is_array(list));
    for (size_t w = 0; w < 4; w++) {
        bool found = false;

        for (size_t i = 0; i < json_array_size(list); i++) {
            json_t *o = json_array_get(list, i);

            assert_int_equal(json_object_size(o), 5);
            assert_true(json_is_string(json_object_get(o, "method")));
            assert_true(json_is_string(json_object_get(o, "path")));
            assert_true(json_is_string(json_object_get(o, "summary")));
            assert_true(
                matches("^(before|after|none)$", json_string_value(json_object_get(o, "variant"))));
            if (strcmp(json_string_value(json_object_get(o, "pattern")), want[w]) == 0) {
                assert_string_equal(json_string_value(json_object_get(o, "method")), "GET");
                assert_string_equal(json_string_value(json_object_get(o, "variant")), "none");
                found = true;
            }
        }
        assert_true(found);
    }
    json_decref(list);
    e2e_resp_free(&r);
}

static void test_metrics(void **state)
{
    e2e_resp r;
    char v[128];
    char *save = NULL;

    (void)state;
    e2e_get(&svc, "/healthz", &r);
    e2e_resp_free(&r);
    /* Once the /healthz is counted out, only the /metrics request reading the gauge is in
     * flight. Counted out may come a moment after its answer was sent, and with two workers
     * the other worker can read the gauge in that moment: wait for it, do not expect it. */
    assert_int_equal(e2e_wait_metric(&svc, "hs_http_requests_in_flight", 1, 10000), 1);
    e2e_get(&svc, "/metrics", &r);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "Content-Type", v, sizeof(v)));
    assert_non_null(strstr(v, "text/plain; version=0.0.4"));
    assert_true(matches("hs_http_requests_total\\{route=\"/healthz\",method=\"GET\","
                        "variant=\"none\",status=\"200\"\\} [1-9][0-9]*",
                        r.body));
    assert_non_null(strstr(r.body, "# TYPE hs_http_request_duration_seconds histogram"));
    assert_non_null(strstr(r.body, "hs_http_request_duration_seconds_bucket{route=\"/healthz\""));
    assert_non_null(strstr(r.body, "\nhs_http_requests_in_flight "));
    assert_non_null(strstr(r.body, "hs_scope_tasks{scope=\"service\"}"));
    assert_non_null(strstr(r.body, "hs_event_loop_lag_seconds "));
    if (have_db()) {
        assert_non_null(strstr(r.body, "hs_db_connections{state=\"idle\"}"));
        assert_non_null(strstr(r.body, "hs_db_queue_depth "));
        assert_non_null(strstr(r.body, "hs_db_acquire_wait_seconds_bucket{le=\"+Inf\"}"));
    }
    /* Every line is a comment or `name{labels} value`, in the 0.0.4 grammar. */
    for (char *line = strtok_r(r.body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            assert_true(matches("^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line));
        else
            assert_true(
                matches("^[a-zA-Z_:][a-zA-Z0-9_:]*(\\{([a-zA-Z_][a-zA-Z0-9_]*=\"[^\"]*\",?)*\\})? "
                        "-?[0-9.e+-]+$",
                        line));
    }
    e2e_resp_free(&r);
}

static void test_request_log(void **state)
{
    const char *hdr[] = {"X-Request-Id: log-check-1", NULL};
    e2e_resp r;
    char *log;
    char *line;
    json_t *v;

    (void)state;
    e2e_request(&svc, "GET", "/routes", NULL, hdr, &r);
    e2e_resp_free(&r);
    e2e_sleep_ms(100);
    log = e2e_log(&svc);
    line = strstr(log, "\"request_id\":\"log-check-1\"");
    assert_non_null(line);
    while (line > log && line[-1] != '\n')
        line--;
    *strchr(line, '\n') = '\0';
    v = json_loads(line, 0, NULL);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "event")), "request");
    assert_string_equal(json_string_value(json_object_get(v, "route")), "/routes");
    assert_string_equal(json_string_value(json_object_get(v, "variant")), "none");
    assert_string_equal(json_string_value(json_object_get(v, "method")), "GET");
    assert_int_equal(json_integer_value(json_object_get(v, "status")), 200);
    assert_true(json_is_number(json_object_get(v, "duration_ms")));
    assert_true(json_is_number(json_object_get(v, "db_ms")));
    json_decref(v);
    free(log);
    log = NULL;

    /* Probes are not logged per request at the default level (the 405s of other tests, which
     * matched no row, are). */
    log = e2e_log(&svc);
    assert_null(strstr(log, "\"path\":\"/healthz\",\"route\":\"/healthz\""));
    assert_null(strstr(log, "\"route\":\"/metrics\""));
    free(log);
}

/* GET /openapi.json serves the repository's openapi.json, as the binary was built with it. */
static void test_openapi(void **state)
{
    char path[512];
    json_t *file;
    json_t *served;
    e2e_resp r;
    char v[128];

    (void)state;
    snprintf(path, sizeof(path), "%s/openapi.json", getenv("HS_SOURCE_DIR"));
    file = json_load_file(path, 0, NULL);
    assert_non_null(file);
    e2e_get(&svc, "/openapi.json", &r);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "application/json; charset=utf-8");
    served = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(served, "openapi")), "3.1.0");
    assert_true(json_equal(served, file));
    json_decref(served);
    json_decref(file);
    e2e_resp_free(&r);
}

static void test_server_timing_db(void **state)
{
    e2e_resp r;
    char v[128];

    (void)state;
    if (!have_db())
        skip();
    /* A route that queries the database reports the time spent there. */
    e2e_get(&svc, "/after/users/1", &r);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "Server-Timing", v, sizeof(v)));
    assert_true(matches("^total;dur=[0-9]+\\.[0-9]+, db;dur=[0-9]+\\.[0-9]+$", v));
    e2e_resp_free(&r);
}

/* The request line of the log for request id rid, parsed (new); fails the test when absent. */
static json_t *request_line(const char *rid)
{
    char *line = e2e_request_line(&svc, rid, 5000);
    json_t *v;

    assert_non_null(line);
    v = json_loads(line, 0, NULL);
    free(line);
    assert_non_null(v);
    return v;
}

static void test_trace_context(void **state)
{
    const char *valid[] = {"X-Request-Id: trace-1",
                           "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                           NULL};
    const char *invalid[] = {"X-Request-Id: trace-2",
                             "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                             NULL};
    const char *absent[] = {"X-Request-Id: trace-3", NULL};
    const char *bad_route[] = {"X-Request-Id: trace-4", "traceparent: nonsense", NULL};
    const char *const tp_re = "^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$";
    char tp[128], generated[128], want[128];
    e2e_resp r;
    json_t *v;

    (void)state;
    /* A valid one: the same trace, this request's own span, the caller's flags. */
    e2e_request(&svc, "GET", "/routes", NULL, valid, &r);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "traceparent", tp, sizeof(tp)));
    assert_true(matches("^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$", tp));
    assert_false(matches("-00f067aa0ba902b7-", tp));
    e2e_resp_free(&r);
    v = request_line("trace-1");
    assert_string_equal(json_string_value(json_object_get(v, "trace_id")),
                        "4bf92f3577b34da6a3ce929d0e0e4736");
    snprintf(want, sizeof(want), "00-4bf92f3577b34da6a3ce929d0e0e4736-%s-01",
             json_string_value(json_object_get(v, "span_id")));
    assert_string_equal(tp, want);
    json_decref(v);

    /* Invalid (upper-case hex) or absent: ignored, a new trace, never an error. */
    e2e_request(&svc, "GET", "/routes", NULL, invalid, &r);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "traceparent", generated, sizeof(generated)));
    assert_true(matches(tp_re, generated));
    assert_false(matches("4bf92f3577b34da6a3ce929d0e0e4736", generated));
    e2e_resp_free(&r);
    v = request_line("trace-2");
    snprintf(want, sizeof(want), "00-%s-%s-00", json_string_value(json_object_get(v, "trace_id")),
             json_string_value(json_object_get(v, "span_id")));
    assert_string_equal(generated, want);
    json_decref(v);

    e2e_request(&svc, "GET", "/routes", NULL, absent, &r);
    assert_int_equal(r.status, 200);
    assert_true(e2e_header(&r, "traceparent", tp, sizeof(tp)));
    assert_true(matches(tp_re, tp));
    assert_memory_not_equal(tp, generated, 35); /* another trace id */
    e2e_resp_free(&r);

    /* Errors the server answers itself carry it too. */
    e2e_request(&svc, "GET", "/no/such/route", NULL, bad_route, &r);
    assert_int_equal(r.status, 404);
    assert_true(e2e_header(&r, "traceparent", tp, sizeof(tp)));
    assert_true(matches(tp_re, tp));
    e2e_resp_free(&r);
    v = request_line("trace-4");
    assert_true(json_is_string(json_object_get(v, "trace_id")));
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz),          cmocka_unit_test(test_readyz),
        cmocka_unit_test(test_common_headers),   cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_not_found),        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_body_limit),       cmocka_unit_test(test_routes),
        cmocka_unit_test(test_metrics),          cmocka_unit_test(test_request_log),
        cmocka_unit_test(test_server_timing_db), cmocka_unit_test(test_trace_context),
        cmocka_unit_test(test_openapi),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

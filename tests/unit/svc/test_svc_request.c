/* SPDX-License-Identifier: MIT */
/*
 * test_svc_request.c - the request helpers: JSON bodies (malformed, depth, duplicates, types),
 * query and path parameter parsing with ranges, request ids, W3C trace context, and the response
 * setters.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "service/log.h"
#include "service/request_int.h"

typedef struct fixture {
    svc_request req;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    svc_request_init(&f->req, NULL, NULL, "GET", "/x");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    svc_request_clear_response(&f->req);
    free(f);
    return 0;
}

/* Room for the deepest body test_json_depth sends: {"a": and SVC_JSON_MAX_DEPTH bracket pairs. */
#define NESTED_MAX (2 * SVC_JSON_MAX_DEPTH + 16)

static void set_body(svc_request *req, const char *body)
{
    svc_request_clear_response(req);
    svc_request_set_body(req, body, strlen(body));
}

/* The response is an API error with this status and code; returns its message. */
static const char *expect_error(svc_request *req, int status, const char *code)
{
    static char message[512];
    json_t *body;

    assert_int_equal(req->status, status);
    assert_string_equal(req->resp_type, "application/json; charset=utf-8");
    body = json_loadb(req->resp_body, req->resp_len, 0, NULL);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(json_object_get(body, "error"), "code")),
                        code);
    snprintf(message, sizeof(message), "%s",
             json_string_value(json_object_get(json_object_get(body, "error"), "message")));
    json_decref(body);
    return message;
}

static void test_json_ok(void **state)
{
    fixture *f = *state;
    json_t *v;

    set_body(&f->req, "{\"ids\":[1,2,3],\"s\":\"[[[{{{\",\"n\":{\"a\":1}}");
    assert_int_equal(svc_request_json(&f->req, &v), 0);
    assert_non_null(v);
    assert_int_equal(json_array_size(json_object_get(v, "ids")), 3);
    assert_false(svc_request_has_response(&f->req));
    json_decref(v);
}

static void test_json_rejects(void **state)
{
    fixture *f = *state;
    const char *bad[] = {"",
                         "{",
                         "{\"a\":}",
                         "[1,2]",
                         "42",
                         "\"text\"",
                         "{\"a\":1,\"a\":2}",
                         "{\"a\":1} trailing",
                         "{'a':1}",
                         "{\"a\":\"\\ud800\"}"};
    json_t *v;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        set_body(&f->req, bad[i]);
        assert_int_equal(svc_request_json(&f->req, &v), UV_EINVAL);
        assert_null(v);
        expect_error(&f->req, 400, "bad_request");
    }
    set_body(&f->req, "{\"a\":1,\"a\":2}");
    svc_request_json(&f->req, &v);
    assert_non_null(strstr(expect_error(&f->req, 400, "bad_request"), "duplicate"));
}

/* Writes {"a":[[...]]} into body, depth levels deep in all (the object is the first level). */
static const char *nested(char body[NESTED_MAX], int depth)
{
    size_t n = 0;

    assert_true(depth <= SVC_JSON_MAX_DEPTH + 1);
    n += (size_t)snprintf(body, NESTED_MAX, "{\"a\":");
    for (int i = 1; i < depth; i++)
        body[n++] = '[';
    for (int i = 1; i < depth; i++)
        body[n++] = ']';
    body[n++] = '}';
    body[n] = '\0';
    return body;
}

static void test_json_depth(void **state)
{
    fixture *f = *state;
    char body[NESTED_MAX]; /* the request borrows it */
    json_t *v;

    /* SVC_JSON_MAX_DEPTH levels in all: accepted. */
    set_body(&f->req, nested(body, SVC_JSON_MAX_DEPTH));
    assert_int_equal(svc_request_json(&f->req, &v), 0);
    json_decref(v);

    /* One level more: refused before parsing. */
    set_body(&f->req, nested(body, SVC_JSON_MAX_DEPTH + 1));
    assert_int_equal(svc_request_json(&f->req, &v), UV_EINVAL);
    assert_non_null(strstr(expect_error(&f->req, 400, "bad_request"), "deeper"));

    /* Brackets inside strings (escaped quotes included) do not count. */
    set_body(&f->req, "{\"a\":\"\\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}");
    assert_int_equal(svc_request_json(&f->req, &v), 0);
    json_decref(v);
}

static void test_json_int(void **state)
{
    fixture *f = *state;
    json_t *o = json_pack("{s:i, s:s, s:f, s:n, s:b}", "n", 5, "s", "5", "f", 5.0, "z", "b", 1);
    int64_t out = -1;

    assert_int_equal(svc_json_int(&f->req, o, "n", 1, 10, 0, &out), 0);
    assert_int_equal(out, 5);
    assert_int_equal(svc_json_int(&f->req, o, "missing", 1, 10, 7, &out), 0);
    assert_int_equal(out, 7);
    assert_int_equal(svc_json_int(&f->req, o, "z", 1, 10, 8, &out), 0);
    assert_int_equal(out, 8);
    assert_false(svc_request_has_response(&f->req));
    assert_int_equal(svc_json_int(&f->req, o, "n", 6, 10, 0, &out), UV_EINVAL);
    assert_non_null(
        strstr(expect_error(&f->req, 400, "bad_request"), "n must be an integer in 6..10"));
    const char *wrong[] = {"s", "f", "b"};
    for (size_t i = 0; i < 3; i++) {
        svc_request_clear_response(&f->req);
        assert_int_equal(svc_json_int(&f->req, o, wrong[i], 0, 10, 0, &out), UV_EINVAL);
        expect_error(&f->req, 400, "bad_request");
    }
    svc_request_clear_response(&f->req);
    assert_int_equal(svc_json_int_required(&f->req, o, "missing", 0, 10, &out), UV_EINVAL);
    assert_non_null(strstr(expect_error(&f->req, 400, "bad_request"), "missing is required"));
    json_decref(o);
}

static void test_query_int(void **state)
{
    fixture *f = *state;
    int64_t out = -1;

    svc_request_add_query(&f->req, "delay_ms", "250");
    svc_request_add_query(&f->req, "big", "5001");
    svc_request_add_query(&f->req, "neg", "-3");
    svc_request_add_query(&f->req, "delay_ms", "999"); /* the first one wins */
    assert_int_equal(svc_query_int(&f->req, "delay_ms", 0, 5000, 0, &out), 0);
    assert_int_equal(out, 250);
    assert_int_equal(svc_query_int(&f->req, "absent", 0, 5000, 17, &out), 0);
    assert_int_equal(out, 17);
    assert_int_equal(svc_query_int(&f->req, "neg", -5, 5, 0, &out), 0);
    assert_int_equal(out, -3);
    assert_false(svc_request_has_response(&f->req));
    assert_int_equal(svc_query_int(&f->req, "big", 0, 5000, 0, &out), UV_EINVAL);
    assert_string_equal(expect_error(&f->req, 400, "bad_request"),
                        "big must be an integer in 0..5000");
}

static void test_query_int_malformed(void **state)
{
    fixture *f = *state;
    const char *bad[] = {"",   "abc",  "12a", "+1", " 1",
                         "1 ", "0x10", "1.5", "-",  "99999999999999999999"};
    int64_t out;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        svc_request_init(&f->req, NULL, NULL, "GET", "/x");
        svc_request_add_query(&f->req, "v", bad[i]);
        assert_int_equal(svc_query_int(&f->req, "v", INT64_MIN, INT64_MAX, 0, &out), UV_EINVAL);
        expect_error(&f->req, 400, "bad_request");
        svc_request_clear_response(&f->req);
    }
}

static void test_query_bool(void **state)
{
    fixture *f = *state;
    bool b = false;

    svc_request_add_query(&f->req, "wait", "true");
    svc_request_add_query(&f->req, "off", "0");
    svc_request_add_query(&f->req, "bad", "maybe");
    assert_int_equal(svc_query_bool(&f->req, "wait", false, &b), 0);
    assert_true(b);
    assert_int_equal(svc_query_bool(&f->req, "off", true, &b), 0);
    assert_false(b);
    assert_int_equal(svc_query_bool(&f->req, "absent", true, &b), 0);
    assert_true(b);
    assert_int_equal(svc_query_bool(&f->req, "bad", false, &b), UV_EINVAL);
    expect_error(&f->req, 400, "bad_request");
}

static void test_query_limit(void **state)
{
    fixture *f = *state;

    for (int i = 0; i < SVC_MAX_QUERY; i++)
        assert_int_equal(svc_request_add_query(&f->req, "k", "v"), 0);
    assert_int_equal(svc_request_add_query(&f->req, "k", "v"), UV_E2BIG);
    assert_null(svc_request_query(&f->req, "other"));
    assert_string_equal(svc_request_query(&f->req, "k"), "v");
}

static void test_param_id(void **state)
{
    fixture *f = *state;
    const char *bad[] = {"0", "-1", "abc", "1e3", "", "99999999999999999999", "12 "};
    svc_match m = {0};
    int64_t id;

    m.nparams = 1;
    m.params[0].key = "id";
    m.params[0].value = "42";
    svc_request_set_match(&f->req, &m);
    assert_string_equal(svc_request_param(&f->req, "id"), "42");
    assert_null(svc_request_param(&f->req, "other"));
    assert_int_equal(svc_request_param_id(&f->req, "id", &id), 0);
    assert_int_equal(id, 42);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        m.params[0].value = bad[i];
        svc_request_set_match(&f->req, &m);
        assert_int_equal(svc_request_param_id(&f->req, "id", &id), UV_EINVAL);
        assert_string_equal(expect_error(&f->req, 400, "bad_request"),
                            "id must be a positive integer");
        svc_request_clear_response(&f->req);
    }
    /* A pattern without the parameter: still a clean 400, not a crash. */
    assert_int_equal(svc_request_param_id(&f->req, "missing", &id), UV_EINVAL);
}

static void test_request_id(void **state)
{
    fixture *f = *state;
    char longest[SVC_REQUEST_ID_MAX + 2];
    char first[SVC_REQUEST_ID_MAX + 1];

    svc_request_set_id(&f->req, "client-id_1.2");
    assert_string_equal(f->req.request_id, "client-id_1.2");
    memset(longest, 'a', SVC_REQUEST_ID_MAX);
    longest[SVC_REQUEST_ID_MAX] = '\0';
    svc_request_set_id(&f->req, longest);
    assert_string_equal(f->req.request_id, longest);

    /* Refused: too long, empty, a space, a quote, a newline, non-ASCII: a new id instead. */
    longest[SVC_REQUEST_ID_MAX] = 'a';
    longest[SVC_REQUEST_ID_MAX + 1] = '\0';
    const char *bad[] = {longest, "", "a b", "a\"b", "a\nb", "caf\xc3\xa9", NULL};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        svc_request_set_id(&f->req, bad[i]);
        assert_true(svc_request_id_is_sane(f->req.request_id));
        assert_string_not_equal(f->req.request_id, bad[i] ? bad[i] : "");
    }
    /* Generated ids differ from one request to the next. */
    svc_request_set_id(&f->req, NULL);
    strcpy(first, f->req.request_id);
    svc_request_set_id(&f->req, NULL);
    assert_string_not_equal(first, f->req.request_id);
}

static bool is_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return strspn(s, "0") != n; /* all zeros is not a valid id */
}

static void test_traceparent_parse(void **state)
{
    svc_traceparent tp;

    (void)state;
    assert_int_equal(
        svc_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tp), 0);
    assert_string_equal(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(tp.parent_id, "00f067aa0ba902b7");
    assert_int_equal(tp.flags, 1);
    assert_int_equal(
        svc_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &tp), 0);
    assert_int_equal(tp.flags, 0);
    /* A later version may append fields after a dash: the first four are read. */
    assert_int_equal(svc_traceparent_parse(
                         "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next", &tp),
                     0);
    assert_string_equal(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_int_equal(tp.flags, 1);

    const char *bad[] = {
        NULL,
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        /* upper-case hex, a non-hex digit, zero ids */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        /* version ff is forbidden; version 00 has exactly 55 characters */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        /* misplaced dashes, a short trace id, spaces */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(svc_traceparent_parse(bad[i], &tp), UV_EINVAL);
}

static void test_request_trace(void **state)
{
    fixture *f = *state;
    char first[SVC_TRACE_ID_LEN + 1];
    char expect[SVC_TRACEPARENT_LEN + 1];

    /* A valid traceparent: the trace continues, with a span of this request's own. */
    svc_request_set_trace(&f->req, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_string_equal(f->req.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_true(is_lower_hex(f->req.span_id, SVC_SPAN_ID_LEN));
    assert_string_not_equal(f->req.span_id, "00f067aa0ba902b7");
    snprintf(expect, sizeof(expect), "00-4bf92f3577b34da6a3ce929d0e0e4736-%s-01", f->req.span_id);
    assert_string_equal(svc_request_traceparent(&f->req), expect);

    /* Absent or invalid: a new trace, never an error; each request gets a new one. */
    const char *bad[] = {NULL, "", "garbage",
                         "00-00000000000000000000000000000000-00f067aa0ba902b7-01"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        strcpy(first, f->req.trace_id);
        svc_request_set_trace(&f->req, bad[i]);
        assert_false(svc_request_has_response(&f->req));
        assert_true(is_lower_hex(f->req.trace_id, SVC_TRACE_ID_LEN));
        assert_true(is_lower_hex(f->req.span_id, SVC_SPAN_ID_LEN));
        assert_string_not_equal(f->req.trace_id, first);
        snprintf(expect, sizeof(expect), "00-%s-%s-00", f->req.trace_id, f->req.span_id);
        assert_string_equal(svc_request_traceparent(&f->req), expect);
    }
}

static void test_request_log_ids(void **state)
{
    fixture *f = *state;
    svc_log_line l;
    char want[128];

    svc_request_set_id(&f->req, "rid-1");
    svc_request_set_trace(&f->req, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_JSON);
    assert_true(svc_log_begin(&l, SVC_LOG_INFO, "x"));
    svc_request_log_ids(&l, &f->req);
    l.buf[l.len] = '\0';
    assert_non_null(strstr(l.buf, "\"request_id\":\"rid-1\""));
    assert_non_null(strstr(l.buf, "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""));
    snprintf(want, sizeof(want), "\"span_id\":\"%s\"", f->req.span_id);
    assert_non_null(strstr(l.buf, want));
}

static void test_respond(void **state)
{
    fixture *f = *state;

    svc_respond_json(&f->req, 201, json_pack("{s:i}", "id", 7));
    assert_int_equal(f->req.status, 201);
    assert_memory_equal(f->req.resp_body, "{\"id\":7}", f->req.resp_len);
    assert_int_equal(svc_respond_header(&f->req, "Idempotent-Replayed", "true"), 0);
    assert_int_equal(f->req.nheaders, 1);

    /* Setting a response again replaces the body and the headers. */
    svc_respond_static(&f->req, 200, "{\"status\":\"ok\"}");
    assert_int_equal(f->req.nheaders, 0);
    assert_true(f->req.resp_static);
    for (int i = 0; i < SVC_MAX_HEADERS; i++)
        assert_int_equal(svc_respond_header(&f->req, "X-N", "v"), 0);
    assert_int_equal(svc_respond_header(&f->req, "X-N", "v"), UV_E2BIG);

    svc_respond_error(&f->req, 409, "conflict", "insufficient balance: %d < %d", 5, 10);
    assert_string_equal(expect_error(&f->req, 409, "conflict"), "insufficient balance: 5 < 10");

    /* NULL body: a status without a body, still no leak. */
    svc_respond_json(&f->req, 204, NULL);
    assert_int_equal(f->req.status, 204);
    assert_int_equal(f->req.resp_len, 0);
}

static void test_respond_uv_error(void **state)
{
    fixture *f = *state;
    struct {
        int err;
        int status;
        const char *code;
        bool retry_after;
    } cases[] = {
        {UV_ETIMEDOUT, 504, "timeout", false},     {UV_ECANCELED, 503, "unavailable", false},
        {UV_ESHUTDOWN, 503, "unavailable", false}, {UV_EBUSY, 503, "unavailable", true},
        {UV_ENOMEM, 503, "unavailable", true},     {UV_ECONNREFUSED, 503, "unavailable", false},
        {UV_EINVAL, 400, "bad_request", false},    {UV_EIO, 500, "internal", false},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        svc_respond_uv_error(&f->req, cases[i].err);
        expect_error(&f->req, cases[i].status, cases[i].code);
        assert_int_equal(f->req.nheaders, cases[i].retry_after ? 1 : 0);
        if (cases[i].retry_after) {
            assert_string_equal(f->req.headers[0].key, "Retry-After");
            assert_string_equal(f->req.headers[0].value, "1");
        }
    }
}

static void test_body_and_db_time(void **state)
{
    fixture *f = *state;
    size_t len = 99;

    assert_null(svc_request_body(&f->req, &len));
    assert_int_equal(len, 0);
    svc_request_set_body(&f->req, "abc", 3);
    assert_memory_equal(svc_request_body(&f->req, &len), "abc", 3);
    assert_int_equal(len, 3);
    svc_request_add_db_time(&f->req, 1500000);
    svc_request_add_db_time(&f->req, 500000);
    assert_int_equal(f->req.db_ns, 2000000);
    assert_null(svc_request_header(&f->req, "Idempotency-Key"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_int, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_int, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_int_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_bool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_param_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test(test_traceparent_parse),
        cmocka_unit_test_setup_teardown(test_request_trace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_log_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_respond, setup, teardown),
        cmocka_unit_test_setup_teardown(test_respond_uv_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_and_db_time, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

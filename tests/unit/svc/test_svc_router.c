/* SPDX-License-Identifier: MIT */
/*
 * test_svc_router.c - the handler table: patterns, parameters, 404, 405 with Allow, /routes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "service/router.h"

static int dummy(svc_request *req, void *state, rt_task **task_out)
{
    (void)req;
    (void)state;
    (void)task_out;
    return 0;
}

static svc_route row(const char *method, const char *pattern, svc_variant v)
{
    svc_route r = {method, pattern, v, "a row", dummy, NULL, 0};

    return r;
}

static svc_router *table(bool before)
{
    svc_router *r = svc_router_new(before);
    svc_route rows[] = {
        row("GET", "/healthz", SVC_VARIANT_NONE),
        row("GET", "/before/users/{id}", SVC_VARIANT_BEFORE),
        row("GET", "/after/users/{id}", SVC_VARIANT_AFTER),
        row("GET", "/after/users/{id}/dashboard", SVC_VARIANT_AFTER),
        row("POST", "/after/users/{id}/welcome", SVC_VARIANT_AFTER),
        row("POST", "/after/batch", SVC_VARIANT_AFTER),
        row("GET", "/accounts/invariant", SVC_VARIANT_NONE),
        row("GET", "/a/{x}/b/{y}", SVC_VARIANT_NONE),
    };

    assert_non_null(r);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        assert_int_equal(svc_router_add(r, &rows[i]), 0);
    return r;
}

static void test_literal_match(void **state)
{
    svc_router *r = table(true);
    svc_match m;

    (void)state;
    assert_int_equal(svc_router_match(r, "GET", "/healthz", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.route->pattern, "/healthz");
    assert_int_equal(m.nparams, 0);
    assert_int_equal(svc_router_match(r, "GET", "/accounts/invariant", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.route->pattern, "/accounts/invariant");
    svc_router_free(r);
}

static void test_params(void **state)
{
    svc_router *r = table(true);
    svc_match m;

    (void)state;
    assert_int_equal(svc_router_match(r, "GET", "/after/users/42", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.route->pattern, "/after/users/{id}");
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].key, "id");
    assert_string_equal(m.params[0].value, "42");

    /* The longer pattern is a different row, not a prefix match of the shorter one. */
    assert_int_equal(svc_router_match(r, "GET", "/after/users/7/dashboard", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.route->pattern, "/after/users/{id}/dashboard");
    assert_string_equal(m.params[0].value, "7");

    assert_int_equal(svc_router_match(r, "GET", "/a/one/b/two", &m), SVC_MATCH_FOUND);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(m.params[0].key, "x");
    assert_string_equal(m.params[0].value, "one");
    assert_string_equal(m.params[1].key, "y");
    assert_string_equal(m.params[1].value, "two");

    /* A parameter is captured as text; whether it is a valid id is the handler's question. */
    assert_int_equal(svc_router_match(r, "GET", "/after/users/abc", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.params[0].value, "abc");
    svc_router_free(r);
}

static void test_not_found(void **state)
{
    svc_router *r = table(true);
    svc_match m;
    char longseg[SVC_PARAM_MAX + 20];

    (void)state;
    assert_int_equal(svc_router_match(r, "GET", "/nope", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/healthz/", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "//healthz", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/after/users", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/after/users/", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/after/users/1/x", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/HEALTHZ", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/healthzz", &m), SVC_MATCH_NOT_FOUND);
    strcpy(longseg, "/after/users/");
    memset(longseg + strlen(longseg), '9', SVC_PARAM_MAX + 1);
    longseg[13 + SVC_PARAM_MAX + 1] = '\0';
    assert_int_equal(svc_router_match(r, "GET", longseg, &m), SVC_MATCH_NOT_FOUND);
    svc_router_free(r);
}

static void test_method_not_allowed(void **state)
{
    svc_router *r = table(true);
    svc_route extra = row("DELETE", "/after/batch", SVC_VARIANT_AFTER);
    svc_match m;

    (void)state;
    assert_int_equal(svc_router_match(r, "POST", "/healthz", &m), SVC_MATCH_BAD_METHOD);
    assert_string_equal(m.allow, "GET, HEAD");
    assert_null(m.route);

    assert_int_equal(svc_router_match(r, "GET", "/after/batch", &m), SVC_MATCH_BAD_METHOD);
    assert_string_equal(m.allow, "POST");
    assert_int_equal(svc_router_add(r, &extra), 0);
    assert_int_equal(svc_router_match(r, "PUT", "/after/batch", &m), SVC_MATCH_BAD_METHOD);
    assert_string_equal(m.allow, "POST, DELETE");

    /* HEAD is answered by the GET row. */
    assert_int_equal(svc_router_match(r, "HEAD", "/healthz", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.route->method, "GET");
    svc_router_free(r);
}

static void test_before_routes_off(void **state)
{
    svc_router *r = table(false);
    svc_match m;

    (void)state;
    assert_int_equal(svc_router_count(r), 7);
    assert_int_equal(svc_router_match(r, "GET", "/before/users/1", &m), SVC_MATCH_NOT_FOUND);
    assert_int_equal(svc_router_match(r, "GET", "/after/users/1", &m), SVC_MATCH_FOUND);
    svc_router_free(r);
}

static void test_invalid_patterns(void **state)
{
    svc_router *r = svc_router_new(true);
    const char *bad[] = {"",
                         "healthz",
                         "/a//b",
                         "/a/",
                         "/user-{id}",
                         "/{}",
                         "/{a}{b}",
                         "/{a",
                         "/a}",
                         "/{a}/{b}/{c}/{d}/{e}",
                         "/{a_name_that_is_far_too_long_to_keep_in_a_row}"};
    svc_route ok = row("GET", "/x/{id}", SVC_VARIANT_NONE);
    svc_route clash = row("GET", "/x/{other}", SVC_VARIANT_NONE);
    svc_route other_method = row("POST", "/x/{id}", SVC_VARIANT_NONE);
    svc_route no_handler = row("GET", "/y", SVC_VARIANT_NONE);

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        svc_route b = row("GET", bad[i], SVC_VARIANT_NONE);

        assert_int_equal(svc_router_add(r, &b), UV_EINVAL);
    }
    assert_int_equal(svc_router_add(r, &ok), 0);
    assert_int_equal(svc_router_add(r, &clash), UV_EEXIST);
    assert_int_equal(svc_router_add(r, &other_method), 0);
    no_handler.handler = NULL;
    assert_int_equal(svc_router_add(r, &no_handler), UV_EINVAL);
    assert_int_equal(svc_router_count(r), 2);
    svc_router_free(r);
}

static void test_first_row_wins_and_index(void **state)
{
    svc_router *r = svc_router_new(true);
    svc_route lit = row("GET", "/users/me", SVC_VARIANT_NONE);
    svc_route par = row("GET", "/users/{id}", SVC_VARIANT_NONE);
    svc_match m;

    (void)state;
    assert_int_equal(svc_router_add(r, &lit), 0);
    assert_int_equal(svc_router_add(r, &par), 0);
    assert_int_equal(svc_router_match(r, "GET", "/users/me", &m), SVC_MATCH_FOUND);
    assert_string_equal(m.route->pattern, "/users/me");
    assert_int_equal(svc_router_index(r, m.route), 0);
    assert_int_equal(svc_router_match(r, "GET", "/users/5", &m), SVC_MATCH_FOUND);
    assert_int_equal(svc_router_index(r, m.route), 1);
    assert_ptr_equal(svc_router_row(r, 1), m.route);
    assert_null(svc_router_row(r, 2));
    svc_router_free(r);
}

static void test_routes_json(void **state)
{
    svc_router *r = table(true);
    json_t *list = svc_router_to_json(r);
    json_t *o;

    (void)state;
    assert_non_null(list);
    assert_int_equal(json_array_size(list), svc_router_count(r));
    o = json_array_get(list, 3);
    assert_string_equal(json_string_value(json_object_get(o, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(o, "pattern")),
                        "/after/users/{id}/dashboard");
    assert_string_equal(json_string_value(json_object_get(o, "path")), "/after/users/1/dashboard");
    assert_string_equal(json_string_value(json_object_get(o, "variant")), "after");
    assert_string_equal(json_string_value(json_object_get(o, "summary")), "a row");
    o = json_array_get(list, 1);
    assert_string_equal(json_string_value(json_object_get(o, "variant")), "before");
    assert_int_equal(json_object_size(o), 5);
    json_decref(list);
    svc_router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_match),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_before_routes_off),
        cmocka_unit_test(test_invalid_patterns),
        cmocka_unit_test(test_first_row_wins_and_index),
        cmocka_unit_test(test_routes_json),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

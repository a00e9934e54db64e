/* SPDX-License-Identifier: MIT */
/*
 * test_svc_framing.c - the request head checks (service/framing.h) without a socket.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "service/framing.h"

#define F(n, v)                                                                                    \
    {                                                                                              \
        n, sizeof(n) - 1, v, sizeof(v) - 1                                                         \
    }

static int check(const svc_header_field *f, size_t n, bool http11)
{
    svc_framing_error err = {0, NULL};

    if (svc_framing_check_fields(f, n, http11, &err))
        return 0;
    assert_non_null(err.message);
    return err.status;
}

static void test_accepts_ordinary_heads(void **state)
{
    const svc_header_field plain[] = {F("Host", "x"), F("Content-Length", "12"),
                                      F("X-Request-Id", "abc")};
    const svc_header_field same_cl[] = {F("Host", "x"), F("Content-Length", "5"),
                                        F("content-length", "5")};
    const svc_header_field chunked[] = {F("host", "x"), F("Transfer-Encoding", "Chunked")};

    (void)state;
    assert_int_equal(check(plain, 3, true), 0);
    assert_int_equal(check(same_cl, 3, true), 0);
    assert_int_equal(check(chunked, 2, true), 0);
    assert_int_equal(check(NULL, 0, false), 0); /* HTTP/1.0 needs no Host */
}

static void test_refuses_ambiguous_framing(void **state)
{
    const svc_header_field cl_te[] = {F("Host", "x"), F("Content-Length", "5"),
                                      F("Transfer-Encoding", "chunked")};
    const svc_header_field two_cl[] = {F("Host", "x"), F("Content-Length", "0"),
                                       F("Content-Length", "40")};
    const svc_header_field neg[] = {F("Host", "x"), F("Content-Length", "-1")};
    const svc_header_field plus[] = {F("Host", "x"), F("Content-Length", "+11")};
    const svc_header_field junk[] = {F("Host", "x"), F("Content-Length", "11abc")};
    const svc_header_field empty[] = {F("Host", "x"), F("Content-Length", "")};
    const svc_header_field space[] = {F("Host", "x"), F("Content-Length ", "5")};
    const svc_header_field fold[] = {F("Host", "x"), F("X-AContent-Length: 5", "a")};
    const svc_header_field te_twice[] = {F("Host", "x"), F("Transfer-Encoding", "chunked"),
                                         F("Transfer-Encoding", "chunked")};
    const svc_header_field te_10[] = {F("Transfer-Encoding", "chunked")};

    (void)state;
    assert_int_equal(check(cl_te, 3, true), 400);
    assert_int_equal(check(two_cl, 3, true), 400);
    assert_int_equal(check(neg, 2, true), 400);
    assert_int_equal(check(plus, 2, true), 400);
    assert_int_equal(check(junk, 2, true), 400);
    assert_int_equal(check(empty, 2, true), 400);
    assert_int_equal(check(space, 2, true), 400);
    assert_int_equal(check(fold, 2, true), 400);
    assert_int_equal(check(te_twice, 3, true), 400);
    assert_int_equal(check(te_10, 1, false), 400);
}

static void test_unknown_coding_is_501(void **state)
{
    const svc_header_field gz[] = {F("Host", "x"), F("Transfer-Encoding", "gzip, chunked")};
    const svc_header_field x[] = {F("Host", "x"), F("Transfer-Encoding", "xchunked")};
    const svc_header_field ws[] = {F("Host", "x"), F("Transfer-Encoding", "chunked ")};

    (void)state;
    assert_int_equal(check(gz, 2, true), 501);
    assert_int_equal(check(x, 2, true), 501);
    assert_int_equal(check(ws, 2, true), 501);
}

static void test_host_and_values(void **state)
{
    const svc_header_field none[] = {F("Accept", "*/*")};
    const svc_header_field two[] = {F("Host", "a"), F("HOST", "b")};
    const svc_header_field nul[] = {F("Host", "x"), {"Idempotency-Key", 15, "ab\0cd", 5}};
    const svc_header_field cr[] = {F("Host", "x"), F("X-A", "a\rb")};

    (void)state;
    assert_int_equal(check(none, 1, true), 400);
    assert_int_equal(check(two, 2, true), 400);
    assert_int_equal(check(two, 2, false), 400);
    assert_int_equal(check(nul, 2, true), 400);
    assert_int_equal(check(cr, 2, true), 400);
}

/* Builds fields over a buffer laid out the way libmicrohttpd 0.9.75 leaves it. */
static void test_layout(void **state)
{
    /* "Host: x\r\nIdempotency-Key: ab\r\n\r\n" after parsing. */
    static const char good[] = "Host\0 x\0\0Idempotency-Key\0 ab\0\0\0\0";
    /* "Idempotency-Key: ab\0cd\r\nHost: x\r\n": the value stops at the NUL. */
    static const char nul[] = "Idempotency-Key\0 ab\0cd\0\0Host\0 x\0\0\0\0";
    /* A fold: the name was copied elsewhere with the continuation glued on. */
    static const char folded_line[] = "X-A\0 a\0\0";
    static const char folded_name[] = "X-Ab";
    svc_header_field f[2];
    svc_framing_error err = {0, NULL};

    (void)state;
    f[0] = (svc_header_field){good, 4, good + 6, 1};
    f[1] = (svc_header_field){good + 9, 15, good + 26, 2};
    assert_true(svc_framing_check_layout(f, 2, &err));
    f[0] = (svc_header_field){nul, 15, nul + 17, 2};
    f[1] = (svc_header_field){nul + 24, 4, nul + 30, 1};
    assert_false(svc_framing_check_layout(f, 2, &err));
    assert_int_equal(err.status, 400);
    f[0] = (svc_header_field){folded_name, 4, folded_line + 5, 1};
    err.status = 0;
    assert_false(svc_framing_check_layout(f, 1, &err));
    assert_int_equal(err.status, 400);
}

static void test_target(void **state)
{
    svc_framing_error err = {0, NULL};

    (void)state;
    assert_true(svc_framing_check_target("/after/users/5?x=%2F", &err));
    assert_true(svc_framing_check_target("/a%20b", &err));
    assert_false(svc_framing_check_target("/after/users/5%00", &err));
    assert_int_equal(err.status, 400);
    assert_false(svc_framing_check_target("/healthz?a=%00", &err));
    assert_false(svc_framing_check_target("/after/users/5%2Fdashboard", &err));
    assert_false(svc_framing_check_target("/after/users/5%2fdashboard", &err));
    assert_string_equal(svc_framing_origin_path("/healthz"), "/healthz");
    assert_string_equal(svc_framing_origin_path("http://x/healthz"), "/healthz");
    assert_string_equal(svc_framing_origin_path("HTTPS://x:8080/a/b"), "/a/b");
    assert_string_equal(svc_framing_origin_path("http://x"), "/");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_ordinary_heads),
        cmocka_unit_test(test_refuses_ambiguous_framing),
        cmocka_unit_test(test_unknown_coding_is_501),
        cmocka_unit_test(test_host_and_values),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_target),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

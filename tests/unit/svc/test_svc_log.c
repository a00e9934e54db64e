/* SPDX-License-Identifier: MIT */
/*
 * test_svc_log.c - log lines: valid JSON with escaping, the text form, the level threshold,
 * and truncation that keeps the line well-formed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "service/log.h"

/* Runs fn with stderr redirected to a pipe and returns what it wrote. */
static const char *capture(void (*fn)(void))
{
    static char out[8192];
    int fds[2];
    int saved = dup(STDERR_FILENO);
    ssize_t n;

    assert_int_equal(pipe(fds), 0);
    dup2(fds[1], STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    n = read(fds[0], out, sizeof(out) - 1);
    close(fds[0]);
    out[n > 0 ? n : 0] = '\0';
    return out;
}

static void write_request_line(void)
{
    svc_log_line l;

    if (svc_log_begin(&l, SVC_LOG_INFO, "request")) {
        svc_log_str(&l, "path", "/a \"quoted\"\n\\path");
        svc_log_int(&l, "status", 200);
        svc_log_ms(&l, "duration_ms", 1.5);
        svc_log_str(&l, "route", NULL);
        svc_log_end(&l);
    }
    svc_log_msg(SVC_LOG_DEBUG, "hidden", "below the threshold");
}

static void test_json_line(void **state)
{
    const char *out;
    json_t *v;

    (void)state;
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_JSON);
    out = capture(write_request_line);
    assert_non_null(strchr(out, '\n'));
    assert_null(strchr(strchr(out, '\n') + 1, '\n')); /* one line: the debug one is dropped */
    v = json_loads(out, 0, NULL);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(v, "event")), "request");
    assert_string_equal(json_string_value(json_object_get(v, "path")), "/a \"quoted\"\n\\path");
    assert_int_equal(json_integer_value(json_object_get(v, "status")), 200);
    assert_true(json_real_value(json_object_get(v, "duration_ms")) == 1.5);
    assert_true(json_is_null(json_object_get(v, "route")));
    assert_non_null(json_object_get(v, "ts"));
    json_decref(v);
}

static void test_text_line(void **state)
{
    const char *out;

    (void)state;
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_TEXT);
    out = capture(write_request_line);
    assert_non_null(strstr(out, " INFO request "));
    assert_non_null(strstr(out, "status=200"));
    assert_non_null(strstr(out, "duration_ms=1.500"));
    assert_non_null(strstr(out, "path=\"/a \\\"quoted\\\" \\\\path\""));
    assert_non_null(strstr(out, "route=-"));
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_JSON);
}

static void write_plain_line(void)
{
    svc_log_msg(SVC_LOG_INFO, "tick", "now");
}

/* The time is formatted by hand (svc_log_begin must be usable from a signal handler): it must
 * say what gmtime_r and strftime say about the same second. */
static void test_timestamp(void **state)
{
    char before[32];
    char after[32];
    char got[32];
    const char *out;
    struct tm tm;
    time_t t0;
    time_t t1;

    (void)state;
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_TEXT);
    t0 = time(NULL);
    out = capture(write_plain_line);
    t1 = time(NULL);
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_JSON);
    strftime(before, sizeof(before), "%Y-%m-%dT%H:%M:%S.", gmtime_r(&t0, &tm));
    strftime(after, sizeof(after), "%Y-%m-%dT%H:%M:%S.", gmtime_r(&t1, &tm));
    assert_true(strlen(out) > 24);
    memcpy(got, out, 20);
    got[20] = '\0';
    if (strcmp(got, before) != 0)
        assert_string_equal(got, after);
    for (int i = 20; i < 23; i++)
        assert_true(out[i] >= '0' && out[i] <= '9');
    assert_int_equal(out[23], 'Z');
    assert_int_equal(out[24], ' ');
}

static void write_client_bytes_line(void)
{
    svc_log_line l;

    /* What a client can put in a path: a stray byte, a character cut short, a real one, and a
     * carriage return that would split a text line. */
    if (svc_log_begin(&l, SVC_LOG_INFO, "request")) {
        svc_log_str(&l, "path", "/\xff/\xc3/\xc3\xa9/a\rb");
        svc_log_end(&l);
    }
}

static void test_client_bytes(void **state)
{
    const char *out;
    json_t *v;

    (void)state;
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_JSON);
    out = capture(write_client_bytes_line);
    v = json_loads(out, 0, NULL); /* jansson refuses a line that is not valid UTF-8 */
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "path")),
                        "/\xef\xbf\xbd/\xef\xbf\xbd/\xc3\xa9/a\rb");
    json_decref(v);
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_TEXT);
    out = capture(write_client_bytes_line);
    assert_null(strchr(out, '\r'));
    assert_string_equal(strchr(out, '\n'), "\n"); /* one line */
    svc_log_setup(SVC_LOG_INFO, SVC_LOG_JSON);
}

static void write_huge_line(void)
{
    char big[600];
    svc_log_line l;

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    if (svc_log_begin(&l, SVC_LOG_WARN, "big")) {
        for (int i = 0; i < 4; i++)
            svc_log_str(&l, "field", big);
        svc_log_end(&l);
    }
}

static void test_truncation(void **state)
{
    const char *out;
    json_t *v;

    (void)state;
    svc_log_setup(SVC_LOG_DEBUG, SVC_LOG_JSON);
    out = capture(write_huge_line);
    v = json_loads(out, 0, NULL);
    assert_non_null(v);
    assert_true(json_is_true(json_object_get(v, "truncated")));
    json_decref(v);
}

static void test_parsers(void **state)
{
    svc_log_level lvl;
    svc_log_format fmt;

    (void)state;
    assert_int_equal(svc_log_level_parse("warn", &lvl), 0);
    assert_int_equal(lvl, SVC_LOG_WARN);
    assert_int_equal(svc_log_level_parse("WARN", &lvl), UV_EINVAL);
    assert_int_equal(svc_log_format_parse("text", &fmt), 0);
    assert_int_equal(fmt, SVC_LOG_TEXT);
    assert_int_equal(svc_log_format_parse("yaml", &fmt), UV_EINVAL);
    svc_log_setup(SVC_LOG_WARN, SVC_LOG_JSON);
    assert_false(svc_log_enabled(SVC_LOG_INFO));
    assert_true(svc_log_enabled(SVC_LOG_ERROR));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_line),    cmocka_unit_test(test_text_line),
        cmocka_unit_test(test_client_bytes), cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_parsers),      cmocka_unit_test(test_timestamp),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

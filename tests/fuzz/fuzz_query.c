/* SPDX-License-Identifier: MIT */
/*
 * fuzz_query.c - query arguments: svc_query_int, svc_query_bool and svc_request_query on what a
 * client can put after the '?'.
 *
 * The input is the raw query string. It is split the way libmicrohttpd splits it before the
 * server collects the arguments (service/server.c, collect_query): pairs at '&', key and value at
 * the first '=', a pair without '=' has no value, %XX decoded in both, and a decoded NUL ends
 * the C string. At most SVC_MAX_QUERY arguments are kept, as in the server. Then the handlers'
 * own questions are asked, and each answer is checked against the value it came from.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes %XX in place; a '%' not followed by two hex digits stays as it is. */
static void unescape(char *s)
{
    char *out = s;

    for (char *p = s; *p != '\0'; p++) {
        if (p[0] == '%' && hex(p[1]) >= 0 && hex(p[2]) >= 0) {
            *out++ = (char)(hex(p[1]) * 16 + hex(p[2]));
            p += 2;
        } else {
            *out++ = *p;
        }
    }
    *out = '\0';
}

/* The integer a client meant by v, decided independently of the service's parser. */
static bool expect_int(const char *v, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long n;

    if (!((v[0] >= '0' && v[0] <= '9') || (v[0] == '-' && v[1] >= '0' && v[1] <= '9')))
        return false;
    errno = 0;
    n = strtoll(v, &end, 10);
    if (*end != '\0' || errno != 0 || n < min || n > max)
        return false;
    *out = n;
    return true;
}

static void ask_int(svc_request *req, const char *name, int64_t min, int64_t max)
{
    const char *v = svc_request_query(req, name);
    int64_t want = 0;
    int64_t got = 0;
    int err = svc_query_int(req, name, min, max, min, &got);

    fuzz_expect_helper(req, err);
    if (v == NULL)
        FUZZ_CHECK(err == 0 && got == min);
    else if (expect_int(v, min, max, &want))
        FUZZ_CHECK(err == 0 && got == want);
    else
        FUZZ_CHECK(err == UV_EINVAL);
}

static void ask_bool(svc_request *req, const char *name)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    const char *v = svc_request_query(req, name);
    int want = v == NULL ? 1 : -1;
    bool got = false;
    int err = svc_query_bool(req, name, true, &got);

    fuzz_expect_helper(req, err);
    for (size_t i = 0; v != NULL && i < 4; i++) {
        if (strcmp(v, yes[i]) == 0)
            want = 1;
        if (strcmp(v, no[i]) == 0)
            want = 0;
    }
    if (want < 0)
        FUZZ_CHECK(err == UV_EINVAL);
    else
        FUZZ_CHECK(err == 0 && got == (want == 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strndup(data, size);
    svc_request req;
    char *pair;
    char *rest = text;

    svc_request_init(&req, NULL, NULL, "GET", "/fuzz");
    while ((pair = strsep(&rest, "&")) != NULL) {
        char *value = strchr(pair, '=');

        if (value != NULL)
            *value++ = '\0';
        unescape(pair);
        if (value != NULL)
            unescape(value);
        if (svc_request_add_query(&req, pair, value) < 0)
            break;
    }
    ask_int(&req, "delay_ms", 0, 10000);
    ask_int(&req, "n", INT64_MIN, INT64_MAX);
    ask_int(&req, "id", 1, INT64_MAX);
    ask_bool(&req, "wait");
    ask_bool(&req, "");
    svc_request_clear_response(&req);
    free(text);
    return 0;
}

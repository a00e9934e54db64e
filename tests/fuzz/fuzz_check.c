/* SPDX-License-Identifier: MIT */
/*
 * fuzz_check.c - the checks fuzz.h promises, shared by every target and both drivers.
 *
 * The error shape is checked by parsing the body the way a client would, strictly (duplicate
 * keys rejected, nothing but the two documented fields), because a 4xx status with a body a
 * client cannot read is as broken as a 500.
 */
#include "fuzz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("fuzz: invariant broken: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

void fuzz_expect_client_error(const svc_request *req)
{
    json_error_t error;
    json_t *body;
    json_t *e;
    const char *code;

    if (req->status < 400 || req->status > 499)
        fuzz_fail("status %d, expected 4xx; body %.*s", req->status, (int)req->resp_len,
                  req->resp_body != NULL ? req->resp_body : "");
    FUZZ_CHECK(req->resp_type != NULL && strncmp(req->resp_type, "application/json", 16) == 0);
    FUZZ_CHECK(req->resp_body != NULL && req->resp_len > 0);
    body = json_loadb(req->resp_body, req->resp_len, JSON_REJECT_DUPLICATES, &error);
    if (body == NULL)
        fuzz_fail("error body is not JSON (%s): %.*s", error.text, (int)req->resp_len,
                  req->resp_body);
    e = json_object_get(body, "error");
    FUZZ_CHECK(json_is_object(body) && json_object_size(body) == 1);
    FUZZ_CHECK(json_is_object(e) && json_object_size(e) == 2);
    code = json_string_value(json_object_get(e, "code"));
    FUZZ_CHECK(code != NULL && code[0] != '\0');
    FUZZ_CHECK(json_is_string(json_object_get(e, "message")));
    json_decref(body);
}

void fuzz_expect_helper(svc_request *req, int err)
{
    if (err == 0) {
        FUZZ_CHECK(!svc_request_has_response(req));
    } else {
        FUZZ_CHECK(err == UV_EINVAL);
        fuzz_expect_client_error(req);
    }
    svc_request_clear_response(req);
}

char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);

    if (s == NULL)
        fuzz_fail("out of memory copying %zu bytes", size);
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

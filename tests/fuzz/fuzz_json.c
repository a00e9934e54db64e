/* SPDX-License-Identifier: MIT */
/*
 * fuzz_json.c - request bodies: svc_request_json, then svc_json_int and svc_json_int_required on
 * the fields the handlers read and on every key the body brings.
 *
 * The input is the body, byte for byte (not NUL-terminated, as the server hands it over). Every
 * helper must succeed or answer a 4xx in the API's shape. What succeeds is checked against the
 * promises of http.h: an object, nested at most SVC_JSON_MAX_DEPTH levels, and integers inside
 * the asked range. Keys from the body are fed back as field names because they reach the error
 * message, which must stay valid JSON whatever bytes (and however many) it quotes.
 */
#include "fuzz.h"

#include <stdlib.h>

typedef struct field {
    const char *key;
    int64_t min;
    int64_t max;
} field;

/* Fields the handlers read (handlers/p2_batch.c, p3_structured.c, p4_transfers.c), with ranges of
 * the same kinds: ids up to INT64_MAX, small bounded counts, and the whole int64 range. */
static const field fields[] = {
    {"from", 1, INT64_MAX},      {"to", 1, INT64_MAX},     {"amount", 1, 1000000000},
    {"delay_ms", 0, 10000},      {"concurrency", 1, 1000}, {"events", 1, 100},
    {"n", INT64_MIN, INT64_MAX},
};

/* Levels of objects and arrays, counting v itself; bounded by the depth limit being checked. */
static size_t depth(const json_t *v)
{
    size_t max = 0;

    if (json_is_object(v)) {
        const char *k;
        json_t *item;

        json_object_foreach((json_t *)(uintptr_t)v, k, item)
        {
            size_t d = depth(item);

            if (d > max)
                max = d;
        }
        return max + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *item;

        json_array_foreach(v, i, item)
        {
            size_t d = depth(item);

            if (d > max)
                max = d;
        }
        return max + 1;
    }
    return 0;
}

static void read_int(svc_request *req, const json_t *body, const char *key, int64_t min,
                     int64_t max, bool required)
{
    const json_t *v = json_object_get(body, key);
    int64_t out = -1;
    int err;

    if (required)
        err = svc_json_int_required(req, body, key, min, max, &out);
    else
        err = svc_json_int(req, body, key, min, max, min, &out);
    fuzz_expect_helper(req, err);
    if (err < 0)
        return;
    FUZZ_CHECK(out >= min && out <= max);
    if (v != NULL && !json_is_null(v))
        FUZZ_CHECK(json_is_integer(v) && json_integer_value(v) == out);
    else
        FUZZ_CHECK(!required && out == min);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    svc_request req;
    json_t *body;
    const char *key;
    json_t *value;
    int err;

    svc_request_init(&req, NULL, NULL, "POST", "/fuzz");
    svc_request_set_body(&req, (const char *)data, size);
    err = svc_request_json(&req, &body);
    fuzz_expect_helper(&req, err);
    if (err < 0) {
        FUZZ_CHECK(body == NULL);
        return 0;
    }
    FUZZ_CHECK(json_is_object(body));
    FUZZ_CHECK(depth(body) <= SVC_JSON_MAX_DEPTH);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        read_int(&req, body, fields[i].key, fields[i].min, fields[i].max, false);
        read_int(&req, body, fields[i].key, fields[i].min, fields[i].max, true);
    }
    json_object_foreach(body, key, value)
    {
        read_int(&req, body, key, 0, 100, false);
        read_int(&req, body, key, INT64_MIN, INT64_MAX, true);
    }
    json_decref(body);
    return 0;
}

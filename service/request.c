/* SPDX-License-Identifier: MIT */
/*
 * request.c - reading requests and setting responses (the helpers of http.h).
 *
 * Validation helpers answer the request themselves: a parser that fails sets a 400 naming the
 * offending field and returns UV_EINVAL, so a handler's validation is a column of
 * `if (helper(...) < 0) return 0;` and every 400 in the service has the same shape and wording.
 *
 * JSON bodies are checked for nesting depth with a cheap scan of the raw bytes before jansson
 * sees them: jansson would accept 2048 levels, and a body of a few thousand brackets should cost
 * a scan, not a tree.
 */
#include "service/request_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <microhttpd.h>

#include "service/log.h"
#include "service/utf8.h"

void svc_request_init(svc_request *req, svc_app *app, struct svc_request_int *in,
                      const char *method, const char *path)
{
    memset(req, 0, offsetof(svc_request, id_buf));
    req->id_buf[0] = '\0';
    req->app = app;
    req->in = in;
    req->method = method;
    req->path = path;
    req->request_id = req->id_buf;
    req->traceparent[0] = '\0';
    req->trace_id_buf[0] = '\0';
    req->span_id_buf[0] = '\0';
    req->trace_id = req->trace_id_buf;
    req->span_id = req->span_id_buf;
    req->deadline = RT_NO_DEADLINE;
    req->start_ns = uv_hrtime();
}

void svc_request_set_match(svc_request *req, const svc_match *m)
{
    req->route = m->route;
    req->nparams = m->nparams;
    memcpy(req->params, m->params, m->nparams * sizeof(m->params[0]));
}

int svc_request_add_query(svc_request *req, const char *key, const char *value)
{
    if (req->nquery == SVC_MAX_QUERY)
        return UV_E2BIG;
    req->query[req->nquery].key = key;
    req->query[req->nquery].value = value;
    req->nquery++;
    return 0;
}

void svc_request_set_body(svc_request *req, const char *body, size_t len)
{
    req->body = body;
    req->body_len = len;
}

bool svc_request_id_is_sane(const char *id)
{
    size_t n = 0;

    if (id == NULL)
        return false;
    for (const char *p = id; *p != '\0'; p++, n++) {
        char c = *p;

        if (n == SVC_REQUEST_ID_MAX)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n > 0;
}

void svc_request_set_id(svc_request *req, const char *client_id)
{
    /* A per-process random prefix and a counter: unique here without a syscall per request,
     * and two replicas are unlikely to share a prefix. Every worker thread calls this: the
     * prefix is set once (atomically), and each thread counts on its own in a range of 2^32
     * ids that starts at its own slot (the top 8 of the counter's 40 bits), so no two loops
     * hand out the same id and the hot path touches nothing shared. */
    static const char hex[] = "0123456789abcdef";
    static uint32_t shared_prefix;
    static uint32_t slots;
    static _Thread_local uint32_t prefix;
    static _Thread_local uint64_t counter;

    if (svc_request_id_is_sane(client_id)) {
        strcpy(req->id_buf, client_id);
        return;
    }
    if (prefix == 0) {
        uint32_t r = 0;
        uint32_t expected = 0;

        while (r == 0) {
            if (uv_random(NULL, NULL, &r, sizeof(r), 0, NULL) < 0)
                r = (uint32_t)uv_hrtime() ^ (uint32_t)uv_os_getpid();
        }
        /* The first thread's value wins; the others adopt it. */
        if (!__atomic_compare_exchange_n(&shared_prefix, &expected, r, false, __ATOMIC_RELAXED,
                                         __ATOMIC_RELAXED))
            r = expected;
        prefix = r;
        counter = (uint64_t)(__atomic_fetch_add(&slots, 1, __ATOMIC_RELAXED) & 0xff) << 32;
    }
    /* "%08x-%010llx", by hand: this runs for every request without an id of its own. */
    counter++;
    for (int i = 0; i < 8; i++)
        req->id_buf[i] = hex[(prefix >> (28 - 4 * i)) & 0xf];
    req->id_buf[8] = '-';
    for (int i = 0; i < 10; i++)
        req->id_buf[9 + i] = hex[(counter >> (36 - 4 * i)) & 0xf];
    req->id_buf[19] = '\0';
}

/* --- trace context ------------------------------------------------------------------------ */

static bool is_hex_digit(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* n lower-case hex digits at s, not all zeros (W3C: an all-zero id is invalid). */
static bool is_trace_id(const char *s, size_t n)
{
    bool nonzero = false;

    for (size_t i = 0; i < n; i++) {
        if (!is_hex_digit(s[i]))
            return false;
        nonzero |= s[i] != '0';
    }
    return nonzero;
}

static int hex_value(char c)
{
    return c <= '9' ? c - '0' : c - 'a' + 10;
}

int svc_traceparent_parse(const char *h, svc_traceparent *out)
{
    size_t n;

    /* "vv-<32 hex>-<16 hex>-ff": dashes at 2, 35 and 52. strnlen reads one past the fields. */
    if (h == NULL)
        return UV_EINVAL;
    n = strnlen(h, SVC_TRACEPARENT_LEN + 1);
    if (n < SVC_TRACEPARENT_LEN || h[2] != '-' || h[35] != '-' || h[52] != '-')
        return UV_EINVAL;
    /* The version: two hex digits, never "ff". Version 00 ends after the flags; a later one may
     * add fields, each after a '-'. */
    if (!is_hex_digit(h[0]) || !is_hex_digit(h[1]) || (h[0] == 'f' && h[1] == 'f'))
        return UV_EINVAL;
    if (n > SVC_TRACEPARENT_LEN && (h[SVC_TRACEPARENT_LEN] != '-' || (h[0] == '0' && h[1] == '0')))
        return UV_EINVAL;
    if (!is_trace_id(h + 3, SVC_TRACE_ID_LEN) || !is_trace_id(h + 36, SVC_SPAN_ID_LEN) ||
        !is_hex_digit(h[53]) || !is_hex_digit(h[54]))
        return UV_EINVAL;
    memcpy(out->trace_id, h + 3, SVC_TRACE_ID_LEN);
    out->trace_id[SVC_TRACE_ID_LEN] = '\0';
    memcpy(out->parent_id, h + 36, SVC_SPAN_ID_LEN);
    out->parent_id[SVC_SPAN_ID_LEN] = '\0';
    out->flags = (uint8_t)(hex_value(h[53]) << 4 | hex_value(h[54]));
    return 0;
}

/*
 * The next 64 random bits for ids: splitmix64 seeded once from the kernel. Trace and span ids
 * must be unique, not secret, and a getrandom() per request would cost more than the rest of a
 * /healthz answer's bookkeeping. The loop thread is the only caller.
 */
static uint64_t trace_random(void)
{
    static uint64_t state;
    static bool seeded;
    uint64_t z;

    if (!seeded) {
        if (uv_random(NULL, NULL, &state, sizeof(state), 0, NULL) < 0)
            state = uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32);
        seeded = true;
    }
    z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Writes a random non-zero id of n hex digits (a multiple of 16) at out. */
static void random_hex_id(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    for (;;) {
        uint64_t any = 0;

        for (size_t i = 0; i < n; i += 16) {
            uint64_t r = trace_random();

            any |= r;
            for (int k = 0; k < 16; k++)
                out[i + (size_t)k] = hex[(r >> (60 - 4 * k)) & 0xf];
        }
        if (any != 0)
            break;
    }
    out[n] = '\0';
}

void svc_request_set_trace(svc_request *req, const char *traceparent)
{
    static const char hex[] = "0123456789abcdef";
    svc_traceparent tp;
    uint8_t flags = 0;
    char *p = req->traceparent;

    if (traceparent != NULL && svc_traceparent_parse(traceparent, &tp) == 0) {
        memcpy(req->trace_id_buf, tp.trace_id, sizeof(req->trace_id_buf));
        /* Only the sampled flag is defined for version 00, which is what we send on. */
        flags = tp.flags & 0x01;
    } else {
        random_hex_id(req->trace_id_buf, SVC_TRACE_ID_LEN);
    }
    random_hex_id(req->span_id_buf, SVC_SPAN_ID_LEN);
    memcpy(p, "00-", 3);
    memcpy(p + 3, req->trace_id_buf, SVC_TRACE_ID_LEN);
    p[35] = '-';
    memcpy(p + 36, req->span_id_buf, SVC_SPAN_ID_LEN);
    p[52] = '-';
    p[53] = hex[flags >> 4];
    p[54] = hex[flags & 0xf];
    p[55] = '\0';
}

const char *svc_request_traceparent(const svc_request *req)
{
    return req->traceparent;
}

void svc_request_log_ids(struct svc_log_line *l, const svc_request *req)
{
    svc_log_str(l, "request_id", req->request_id);
    svc_log_str(l, "trace_id", req->trace_id);
    svc_log_str(l, "span_id", req->span_id);
}

const char *svc_request_param(const svc_request *req, const char *name)
{
    for (size_t i = 0; i < req->nparams; i++) {
        if (strcmp(req->params[i].key, name) == 0)
            return req->params[i].value;
    }
    return NULL;
}

/* Strict decimal: optional '-', digits only, no spaces or '+', within int64. */
static int parse_int64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (s == NULL || !((s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && s[1] >= '0' && s[1] <= '9')))
        return UV_EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (*end != '\0' || errno != 0)
        return UV_EINVAL;
    *out = v;
    return 0;
}

int svc_request_param_id(svc_request *req, const char *name, int64_t *out)
{
    const char *v = svc_request_param(req, name);

    if (parse_int64(v, out) < 0 || *out < 1) {
        svc_respond_error(req, 400, "bad_request", "%s must be a positive integer", name);
        return UV_EINVAL;
    }
    return 0;
}

const char *svc_request_query(const svc_request *req, const char *name)
{
    for (size_t i = 0; i < req->nquery; i++) {
        if (strcmp(req->query[i].key, name) == 0)
            return req->query[i].value != NULL ? req->query[i].value : "";
    }
    return NULL;
}

int svc_query_int(svc_request *req, const char *name, int64_t min, int64_t max, int64_t dflt,
                  int64_t *out)
{
    const char *v = svc_request_query(req, name);

    if (v == NULL) {
        *out = dflt;
        return 0;
    }
    if (parse_int64(v, out) < 0 || *out < min || *out > max) {
        svc_respond_error(req, 400, "bad_request", "%s must be an integer in %" PRId64 "..%" PRId64,
                          name, min, max);
        return UV_EINVAL;
    }
    return 0;
}

int svc_query_bool(svc_request *req, const char *name, bool dflt, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    const char *v = svc_request_query(req, name);

    if (v == NULL) {
        *out = dflt;
        return 0;
    }
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0 || strcmp(v, no[i]) == 0) {
            *out = strcmp(v, yes[i]) == 0;
            return 0;
        }
    }
    svc_respond_error(req, 400, "bad_request", "%s must be true or false", name);
    return UV_EINVAL;
}

const char *svc_request_header(const svc_request *req, const char *name)
{
    if (req->in == NULL || req->in->conn == NULL)
        return NULL;
    return MHD_lookup_connection_value(req->in->conn, MHD_HEADER_KIND, name);
}

const void *svc_request_body(const svc_request *req, size_t *len)
{
    *len = req->body_len;
    return req->body;
}

/* The deepest nesting of objects and arrays in text, not counting brackets inside strings. */
static size_t json_depth(const char *p, size_t n)
{
    size_t depth = 0;
    size_t max = 0;
    bool in_string = false;

    for (size_t i = 0; i < n; i++) {
        char c = p[i];

        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                max = depth;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return max;
}

int svc_request_json(svc_request *req, json_t **out)
{
    json_error_t error;
    json_t *v;

    *out = NULL;
    if (req->body_len == 0) {
        svc_respond_error(req, 400, "bad_request", "a JSON object body is required");
        return UV_EINVAL;
    }
    if (json_depth(req->body, req->body_len) > SVC_JSON_MAX_DEPTH) {
        svc_respond_error(req, 400, "bad_request", "JSON nested deeper than %d levels",
                          SVC_JSON_MAX_DEPTH);
        return UV_EINVAL;
    }
    v = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &error);
    if (v == NULL) {
        svc_respond_error(req, 400, "bad_request", "malformed JSON: %s (line %d, column %d)",
                          error.text, error.line, error.column);
        return UV_EINVAL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        svc_respond_error(req, 400, "bad_request", "the body must be a JSON object");
        return UV_EINVAL;
    }
    *out = v;
    return 0;
}

static int json_int(svc_request *req, const json_t *obj, const char *key, int64_t min, int64_t max,
                    const int64_t *dflt, int64_t *out)
{
    const json_t *v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v)) {
        if (dflt != NULL) {
            *out = *dflt;
            return 0;
        }
        svc_respond_error(req, 400, "bad_request", "%s is required", key);
        return UV_EINVAL;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        svc_respond_error(req, 400, "bad_request", "%s must be an integer in %" PRId64 "..%" PRId64,
                          key, min, max);
        return UV_EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

int svc_json_int(svc_request *req, const json_t *obj, const char *key, int64_t min, int64_t max,
                 int64_t dflt, int64_t *out)
{
    return json_int(req, obj, key, min, max, &dflt, out);
}

int svc_json_int_required(svc_request *req, const json_t *obj, const char *key, int64_t min,
                          int64_t max, int64_t *out)
{
    return json_int(req, obj, key, min, max, NULL, out);
}

void svc_request_add_db_time(svc_request *req, uint64_t ns)
{
    req->db_ns += ns;
}

void svc_request_clear_response(svc_request *req)
{
    if (!req->resp_static)
        free(req->resp_body);
    for (size_t i = 0; i < req->nheaders; i++) {
        free((char *)(uintptr_t)req->headers[i].key);
        free((char *)(uintptr_t)req->headers[i].value);
    }
    req->nheaders = 0;
    req->resp_body = NULL;
    req->resp_len = 0;
    req->resp_static = false;
    req->resp_type = NULL;
    req->status = 0;
}

static const char json_content_type[] = "application/json; charset=utf-8";

void svc_respond_buffer(svc_request *req, int status, const char *content_type, char *buf,
                        size_t len)
{
    svc_request_clear_response(req);
    req->status = status;
    req->resp_body = buf;
    req->resp_len = buf != NULL ? len : 0;
    req->resp_type = content_type;
}

void svc_respond_static(svc_request *req, int status, const char *body)
{
    svc_request_clear_response(req);
    req->status = status;
    req->resp_body = (char *)(uintptr_t)body;
    req->resp_len = body != NULL ? strlen(body) : 0;
    req->resp_static = true;
    req->resp_type = json_content_type;
}

void svc_respond_json(svc_request *req, int status, json_t *body)
{
    char *text = NULL;

    if (body != NULL) {
        text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        if (text == NULL) {
            svc_respond_static(req, 503,
                               "{\"error\":{\"code\":\"unavailable\","
                               "\"message\":\"out of memory\"}}");
            return;
        }
    }
    svc_respond_buffer(req, status, json_content_type, text, text != NULL ? strlen(text) : 0);
}

/*
 * Replaces, in place, each byte that does not begin a valid UTF-8 sequence with '?'. Messages
 * quote the client's bytes (a percent-decoded path, a method, a JSON key), and vsnprintf may cut
 * a character in two at the end of the buffer; jansson refuses a string that is not UTF-8, and a
 * 404 for GET /%ff must not turn into a 500.
 */
static void utf8_scrub(char *s)
{
    unsigned char *p = (unsigned char *)s;

    while (*p != '\0') {
        size_t n = svc_utf8_len(p);

        if (n == 0)
            *p++ = '?';
        else
            p += n;
    }
}

void svc_respond_error(svc_request *req, int status, const char *code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    utf8_scrub(msg);
    svc_respond_json(req, status,
                     json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg));
    /* With msg scrubbed, json_pack fails only without memory: say so rather than answer with an
     * empty body. */
    if (req->resp_body == NULL)
        svc_respond_static(req, status >= 500 ? status : 500,
                           "{\"error\":{\"code\":\"internal\",\"message\":\"error body lost\"}}");
}

void svc_respond_uv_error(svc_request *req, int err)
{
    switch (err) {
    case UV_ETIMEDOUT:
        svc_respond_error(req, 504, "timeout",
                          "the request's deadline passed; its work was cancelled");
        break;
    case UV_ECANCELED:
    case UV_ESHUTDOWN:
        svc_respond_error(req, 503, "unavailable", "the service is shutting down");
        break;
    case UV_EBUSY:
    case UV_ENOMEM:
        svc_respond_error(req, 503, "unavailable", "overloaded, retry later");
        svc_respond_header(req, "Retry-After", "1");
        break;
    case UV_ECONNREFUSED:
    case UV_ECONNRESET:
        svc_respond_error(req, 503, "unavailable", "the database is unavailable");
        break;
    case UV_EINVAL:
        svc_respond_error(req, 400, "bad_request", "invalid request");
        break;
    default:
        svc_respond_error(req, 500, "internal", "internal error: %s", uv_strerror(err));
        break;
    }
}

int svc_respond_header(svc_request *req, const char *name, const char *value)
{
    char *k;
    char *v;

    if (req->nheaders == SVC_MAX_HEADERS)
        return UV_E2BIG;
    k = strdup(name);
    v = strdup(value);
    if (k == NULL || v == NULL) {
        free(k);
        free(v);
        return UV_ENOMEM;
    }
    req->headers[req->nheaders].key = k;
    req->headers[req->nheaders].value = v;
    req->nheaders++;
    return 0;
}

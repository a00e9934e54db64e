/* SPDX-License-Identifier: MIT */
/*
 * fuzz_router.c - matching an arbitrary method and path against the handler table, then what the
 * server does with the result: 404 and 405 answers that quote the request, and the path id.
 *
 * The input is "<method> <path>": the bytes before the first space are the method, the rest the
 * path (MHD has already percent-decoded it, so any byte but NUL can appear). The table has the
 * service's own patterns plus rows it does not have (a third method on a parameter path, four
 * parameters, a parameter at the root), so every branch of the matcher is reachable.
 *
 * A match is checked by rebuilding the path from the pattern and the captured parameters: it
 * must give back the request's path exactly. The 404 and 405 answers are built with the same
 * calls and wording as service/server.c's dispatch, since they put the client's bytes into an
 * error message.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static int never_called(svc_request *req, void *state, rt_task **task_out)
{
    (void)req;
    (void)state;
    (void)task_out;
    abort();
}

static const char *const rows[][2] = {
    {"GET", "/healthz"},
    {"GET", "/readyz"},
    {"GET", "/routes"},
    {"GET", "/metrics"},
    {"GET", "/accounts/invariant"},
    {"GET", "/before/users/{id}"},
    {"GET", "/after/users/{id}"},
    {"GET", "/before/users/{id}/dashboard"},
    {"GET", "/after/users/{id}/dashboard"},
    {"POST", "/before/users/{id}/welcome"},
    {"POST", "/after/users/{id}/welcome"},
    {"POST", "/before/batch"},
    {"POST", "/after/batch"},
    {"POST", "/before/transfers"},
    {"POST", "/after/transfers"},
    {"DELETE", "/after/users/{id}"},
    {"PUT", "/t/{a}/x/{b}/{c}/{id}"},
    {"GET", "/{id}"},
};

static svc_router *table(void)
{
    static svc_router *r;

    if (r != NULL)
        return r;
    r = svc_router_new(true);
    FUZZ_CHECK(r != NULL);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        svc_route row = {.method = rows[i][0],
                         .pattern = rows[i][1],
                         .variant = SVC_VARIANT_NONE,
                         .handler = never_called};

        FUZZ_CHECK(svc_router_add(r, &row) == 0);
    }
    return r;
}

/* The pattern with each {param} replaced by its captured value must be the path itself. */
static void check_found(const svc_match *m, const char *method, const char *path)
{
    const char *p = m->route->pattern;
    const char *q = path;
    size_t k = 0;

    FUZZ_CHECK(strcmp(m->route->method, method) == 0 ||
               (strcmp(method, "HEAD") == 0 && strcmp(m->route->method, "GET") == 0));
    while (*p != '\0') {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const svc_kv *kv;
            size_t vlen;

            FUZZ_CHECK(k < m->nparams);
            kv = &m->params[k++];
            vlen = strlen(kv->value);
            FUZZ_CHECK(strlen(kv->key) == (size_t)(close - p - 1) &&
                       memcmp(kv->key, p + 1, strlen(kv->key)) == 0);
            FUZZ_CHECK(vlen > 0 && vlen <= SVC_PARAM_MAX && strchr(kv->value, '/') == NULL);
            FUZZ_CHECK(strncmp(q, kv->value, vlen) == 0);
            q += vlen;
            p = close + 1;
        } else {
            FUZZ_CHECK(*q == *p);
            p++;
            q++;
        }
    }
    FUZZ_CHECK(*q == '\0' && k == m->nparams);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *space = memchr(data, ' ', size);
    size_t mlen = space != NULL ? (size_t)(space - data) : 0;
    char *method = fuzz_strndup(data, mlen);
    char *path = fuzz_strndup(data + mlen + (space != NULL), size - mlen - (space != NULL));
    svc_request req;
    svc_match m;
    int64_t id;
    int err;

    svc_request_init(&req, NULL, NULL, method, path);
    switch (svc_router_match(table(), method, path, &m)) {
    case SVC_MATCH_NOT_FOUND:
        FUZZ_CHECK(m.route == NULL && m.nparams == 0);
        svc_respond_error(&req, 404, "not_found", "no route for %s", path);
        fuzz_expect_client_error(&req);
        break;
    case SVC_MATCH_BAD_METHOD:
        FUZZ_CHECK(m.route == NULL && m.allow[0] != '\0');
        svc_respond_error(&req, 405, "method_not_allowed", "%s is not allowed here; use %s", method,
                          m.allow);
        FUZZ_CHECK(svc_respond_header(&req, "Allow", m.allow) == 0);
        fuzz_expect_client_error(&req);
        break;
    case SVC_MATCH_FOUND:
        FUZZ_CHECK(m.route != NULL);
        check_found(&m, method, path);
        svc_request_set_match(&req, &m);
        if (svc_request_param(&req, "id") != NULL) {
            err = svc_request_param_id(&req, "id", &id);
            fuzz_expect_helper(&req, err);
            if (err == 0)
                FUZZ_CHECK(id >= 1);
        }
        break;
    }
    svc_request_clear_response(&req);
    free(path);
    free(method);
    return 0;
}

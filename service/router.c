/* SPDX-License-Identifier: MIT */
/*
 * router.c - the handler table and its matcher.
 *
 * Each row's pattern is compiled once into segments (literal or parameter). A path matches a
 * row when it has the same number of segments and every literal segment is equal; parameter
 * segments capture their bytes into the match's own buffer, so the values are NUL-terminated
 * strings without any allocation. Empty segments ("//", a trailing "/") never match: they are
 * almost always a client's typo, and answering 404 is clearer than guessing.
 *
 * The scan is linear. With a few dozen rows it costs less than one hash of the path would, and
 * it keeps "first row wins" trivially true.
 */
#include "service/router.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

typedef struct segment {
    const char *text; /* into the row's pattern: the literal, or the name inside the braces */
    size_t len;
    bool is_param;
} segment;

#define MAX_SEGMENTS 16

#define MAX_NAME 32

typedef struct row {
    svc_route route;
    size_t nseg;
    segment seg[MAX_SEGMENTS];
    char names[SVC_MAX_PARAMS][MAX_NAME]; /* parameter names, NUL-terminated, in path order */
} row;

struct svc_router {
    row *rows;
    size_t n;
    size_t cap;
    bool before_routes;
};

svc_router *svc_router_new(bool before_routes)
{
    svc_router *r = calloc(1, sizeof(*r));

    if (r != NULL)
        r->before_routes = before_routes;
    return r;
}

void svc_router_free(svc_router *r)
{
    if (r == NULL)
        return;
    free(r->rows);
    free(r);
}

static int compile(row *w)
{
    const char *p = w->route.pattern;
    size_t nparams = 0;

    if (p == NULL || p[0] != '/')
        return UV_EINVAL;
    w->nseg = 0;
    while (*p == '/') {
        const char *start = ++p;
        segment *s;

        while (*p != '\0' && *p != '/')
            p++;
        if (p == start || w->nseg == MAX_SEGMENTS)
            return UV_EINVAL;
        s = &w->seg[w->nseg++];
        s->text = start;
        s->len = (size_t)(p - start);
        s->is_param = start[0] == '{';
        if (s->is_param) {
            /* A parameter fills its whole segment: "{id}", never "user-{id}". */
            if (s->len < 3 || s->len - 2 >= MAX_NAME || start[s->len - 1] != '}' ||
                memchr(start + 1, '{', s->len - 1) || memchr(start, '}', s->len - 1) ||
                nparams == SVC_MAX_PARAMS)
                return UV_EINVAL;
            s->text++;
            s->len -= 2;
            memcpy(w->names[nparams], s->text, s->len);
            w->names[nparams][s->len] = '\0';
            nparams++;
        } else if (memchr(start, '{', s->len) || memchr(start, '}', s->len)) {
            return UV_EINVAL;
        }
    }
    return *p == '\0' ? 0 : UV_EINVAL;
}

static bool same_pattern(const row *a, const row *b)
{
    if (a->nseg != b->nseg)
        return false;
    for (size_t i = 0; i < a->nseg; i++) {
        /* Two parameters in the same place clash whatever their names. */
        if (a->seg[i].is_param != b->seg[i].is_param)
            return false;
        if (!a->seg[i].is_param && (a->seg[i].len != b->seg[i].len ||
                                    memcmp(a->seg[i].text, b->seg[i].text, a->seg[i].len) != 0))
            return false;
    }
    return true;
}

int svc_router_add(svc_router *r, const svc_route *route)
{
    row w;
    int err;

    if (route->method == NULL || route->handler == NULL)
        return UV_EINVAL;
    if (route->variant == SVC_VARIANT_BEFORE && !r->before_routes)
        return 0;
    memset(&w, 0, sizeof(w));
    w.route = *route;
    err = compile(&w);
    if (err < 0)
        return err;
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->rows[i].route.method, route->method) == 0 && same_pattern(&r->rows[i], &w))
            return UV_EEXIST;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        row *rows = realloc(r->rows, cap * sizeof(*rows));

        if (rows == NULL)
            return UV_ENOMEM;
        r->rows = rows;
        r->cap = cap;
    }
    /* The segments point into the row's pattern, a literal, so rows may move when the array
     * grows; matches take their name pointers from the row's final place. */
    r->rows[r->n++] = w;
    return 0;
}

/* Matches path against w's segments; on success fills m's params. */
static bool match_path(const row *w, const char *path, svc_match *m)
{
    const char *p = path;
    char *out = m->buf;
    size_t nseg = 0;

    m->nparams = 0;
    if (*p != '/')
        return false;
    while (*p == '/') {
        const char *start = ++p;
        const segment *s;
        size_t len;

        while (*p != '\0' && *p != '/')
            p++;
        len = (size_t)(p - start);
        if (len == 0 || nseg == w->nseg)
            return false;
        s = &w->seg[nseg++];
        if (s->is_param) {
            svc_kv *kv = &m->params[m->nparams++];

            if (len > SVC_PARAM_MAX)
                return false;
            memcpy(out, start, len);
            out[len] = '\0';
            kv->key = w->names[m->nparams - 1];
            kv->value = out;
            out += len + 1;
        } else if (len != s->len || memcmp(start, s->text, len) != 0) {
            return false;
        }
    }
    return *p == '\0' && nseg == w->nseg;
}

static bool method_matches(const char *row_method, const char *method)
{
    if (strcmp(row_method, method) == 0)
        return true;
    return strcmp(method, "HEAD") == 0 && strcmp(row_method, "GET") == 0;
}

static void allow_add(char *allow, size_t cap, const char *method)
{
    size_t len = strlen(allow);
    size_t mlen = strlen(method);

    /* Several rows may share a method on overlapping patterns: list it once. */
    for (const char *p = allow; (p = strstr(p, method)) != NULL; p += mlen) {
        if ((p == allow || p[-1] == ' ') && (p[mlen] == ',' || p[mlen] == '\0'))
            return;
    }
    if (len + mlen + 3 > cap)
        return;
    if (len > 0) {
        memcpy(allow + len, ", ", 2);
        len += 2;
    }
    memcpy(allow + len, method, mlen + 1);
}

svc_match_result svc_router_match(const svc_router *r, const char *method, const char *path,
                                  svc_match *m)
{
    bool path_known = false;

    m->route = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    for (size_t i = 0; i < r->n; i++) {
        const row *w = &r->rows[i];

        if (!match_path(w, path, m))
            continue;
        if (method_matches(w->route.method, method)) {
            m->route = &w->route;
            return SVC_MATCH_FOUND;
        }
        path_known = true;
        allow_add(m->allow, sizeof(m->allow), w->route.method);
        if (strcmp(w->route.method, "GET") == 0)
            allow_add(m->allow, sizeof(m->allow), "HEAD");
    }
    m->nparams = 0;
    return path_known ? SVC_MATCH_BAD_METHOD : SVC_MATCH_NOT_FOUND;
}

size_t svc_router_count(const svc_router *r)
{
    return r->n;
}

const svc_route *svc_router_row(const svc_router *r, size_t i)
{
    return i < r->n ? &r->rows[i].route : NULL;
}

size_t svc_router_index(const svc_router *r, const svc_route *route)
{
    /* The route is the first member of its row, so the row is found without a search. */
    const row *w = (const row *)(const void *)route;

    assert(w >= r->rows && w < r->rows + r->n);
    return (size_t)(w - r->rows);
}

const char *svc_variant_name(svc_variant v)
{
    switch (v) {
    case SVC_VARIANT_BEFORE:
        return "before";
    case SVC_VARIANT_AFTER:
        return "after";
    default:
        return "none";
    }
}

/* The pattern with each parameter replaced by "1"; new, or NULL. */
static char *example_path(const row *w)
{
    size_t cap = strlen(w->route.pattern) + 1;
    char *out = malloc(cap);
    char *o = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < w->nseg; i++) {
        *o++ = '/';
        if (w->seg[i].is_param) {
            *o++ = '1';
        } else {
            memcpy(o, w->seg[i].text, w->seg[i].len);
            o += w->seg[i].len;
        }
    }
    *o = '\0';
    return out;
}

json_t *svc_router_to_json(const svc_router *r)
{
    json_t *list = json_array();

    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < r->n; i++) {
        const row *w = &r->rows[i];
        char *path = example_path(w);
        json_t *o;

        if (path == NULL)
            goto out_free_list;
        o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "method", w->route.method, "path", path,
                      "pattern", w->route.pattern, "variant", svc_variant_name(w->route.variant),
                      "summary", w->route.summary ? w->route.summary : "");
        free(path);
        if (o == NULL || json_array_append_new(list, o) < 0)
            goto out_free_list;
    }
    return list;

out_free_list:
    json_decref(list);
    return NULL;
}

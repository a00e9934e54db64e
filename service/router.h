/* SPDX-License-Identifier: MIT */
/*
 * router.h - the handler table: rows added at startup, matched for every request.
 *
 * The table is an array of rows, each with its pattern split once into segments at add time, so
 * matching a request is a walk over the path's segments with no allocation: literal segments
 * compare bytes, `{name}` segments capture the whole segment. The first row whose method and
 * pattern both match wins. When some pattern matches but no method does, the match reports the
 * methods that would have (the 405's Allow header). HEAD is answered by GET rows.
 *
 * The table is built before the loop serves and never changes afterwards, so it needs no
 * locking and its rows' addresses are stable for the process lifetime.
 */
#ifndef SVC_ROUTER_H
#define SVC_ROUTER_H

#include "service/http.h"

/* The result of a lookup. */
typedef enum svc_match_result {
    SVC_MATCH_FOUND = 0, /* route and params are set */
    SVC_MATCH_NOT_FOUND, /* no pattern matches the path: 404 */
    SVC_MATCH_BAD_METHOD /* a pattern matches but not for this method: 405, allow is set */
} svc_match_result;

/* Longest path parameter value kept (a longer segment does not match a parameter). */
#define SVC_PARAM_MAX 128

typedef struct svc_match {
    const svc_route *route;
    size_t nparams;
    svc_kv params[SVC_MAX_PARAMS]; /* values point into buf */
    char buf[SVC_MAX_PARAMS * (SVC_PARAM_MAX + 1)];
    char allow[64]; /* "GET, POST" for SVC_MATCH_BAD_METHOD */
} svc_match;

/**
 * Creates an empty table. Rows of variant BEFORE are dropped by svc_router_add unless
 * before_routes is true. Returns the table (new: free it with svc_router_free) or NULL.
 */
svc_router *svc_router_new(bool before_routes);

/** Frees the table and its rows. */
void svc_router_free(svc_router *r);

/**
 * Looks up method and path (no query string; both borrowed for the call) and fills m.
 * Never allocates.
 */
svc_match_result svc_router_match(const svc_router *r, const char *method, const char *path,
                                  svc_match *m);

/** Number of rows in the table. */
size_t svc_router_count(const svc_router *r);

/** The i-th row (borrowed for the process lifetime), in the order they were added. */
const svc_route *svc_router_row(const svc_router *r, size_t i);

/** The index of row (which must come from r) in the table: 0..svc_router_count(r)-1. */
size_t svc_router_index(const svc_router *r, const svc_route *row);

/** "before", "after" or "none". */
const char *svc_variant_name(svc_variant v);

/**
 * The table as API.md's GET /routes shows it: [{"method","path","pattern","variant","summary"}]
 * where pattern is the row as written and path an example request path (each {param} filled
 * with 1, so the list can be clicked through). Returns new, or NULL without memory.
 */
json_t *svc_router_to_json(const svc_router *r);

#endif /* SVC_ROUTER_H */

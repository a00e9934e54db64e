/* SPDX-License-Identifier: MIT */
/*
 * request_int.h - the server's side of svc_request: filling it in and emptying it.
 *
 * Handlers see only http.h. The server (and the unit tests, which build requests without a
 * socket) use these to set what a request carries before its handler runs, and to release what
 * the response owns after it has been sent.
 */
#ifndef SVC_REQUEST_INT_H
#define SVC_REQUEST_INT_H

#include "service/http.h"
#include "service/router.h"

struct MHD_Connection;

/* What only the server knows about a request. */
struct svc_request_int {
    struct MHD_Connection *conn; /* NULL in unit tests: header lookups then find nothing */
};

/**
 * Resets req for a new request of method on path (both borrowed until the request ends), with
 * in (borrowed likewise; may be NULL). Sets start_ns. Never allocates.
 */
void svc_request_init(svc_request *req, svc_app *app, struct svc_request_int *in,
                      const char *method, const char *path);

/**
 * Takes the route and path parameters of a match. The match's strings are borrowed: m must live
 * as long as req.
 */
void svc_request_set_match(svc_request *req, const svc_match *m);

/**
 * Adds a query argument (both strings borrowed until the request ends). Returns 0, or UV_E2BIG
 * when SVC_MAX_QUERY arguments are already kept (the extra ones are ignored by the caller).
 */
int svc_request_add_query(svc_request *req, const char *key, const char *value);

/** Points the request's body at body[0..len) (borrowed until the request ends). */
void svc_request_set_body(svc_request *req, const char *body, size_t len);

/** True when id is 1..SVC_REQUEST_ID_MAX characters of [A-Za-z0-9._-]. */
bool svc_request_id_is_sane(const char *id);

/**
 * Sets req->request_id: a copy of client_id when it is sane, else a new id that is unique within
 * the process and unlikely to repeat across processes.
 */
void svc_request_set_id(svc_request *req, const char *client_id);

/* The fields of a W3C traceparent header. */
typedef struct svc_traceparent {
    char trace_id[SVC_TRACE_ID_LEN + 1];
    char parent_id[SVC_SPAN_ID_LEN + 1];
    uint8_t flags;
} svc_traceparent;

/**
 * Parses a traceparent header (W3C Trace Context): "<version>-<trace-id>-<parent-id>-<flags>",
 * lower-case hex only, neither id all zeros, version ff refused. Version 00 is exactly 55
 * characters; a later version may continue after a '-' (the first four fields are read, as the
 * recommendation says). Returns 0, or UV_EINVAL (header may be NULL).
 */
int svc_traceparent_parse(const char *header, svc_traceparent *out);

/**
 * Sets the request's trace context from the client's traceparent (borrowed for the call; NULL or
 * invalid starts a new trace, with flags 00): trace_id, a new span_id, and the traceparent the
 * response carries (version 00, the caller's sampled flag kept). Never fails, never allocates.
 */
void svc_request_set_trace(svc_request *req, const char *traceparent);

/** The traceparent header of the response ("00-<trace_id>-<span_id>-<flags>"), borrowed. */
const char *svc_request_traceparent(const svc_request *req);

/** Frees what the response owns (body, headers) and clears it. The request stays usable. */
void svc_request_clear_response(svc_request *req);

#endif /* SVC_REQUEST_INT_H */

/* SPDX-License-Identifier: MIT */
/*
 * http.h - what a handler sees: the request, the response it sets, and the service around it.
 *
 * The handler table is a list of rows (svc_route). Each row names a method, a path pattern with
 * `{name}` parameters, a variant (before/after/none), a one-line summary, and a type-erased async
 * handler: a function plus the state it was registered with. This is the C form of a table of
 * boxed futures: the server does not know what any handler does, it only knows how to start the
 * task a handler hands back and how to send what the task leaves in the request.
 *
 * A handler is called once per request, on the loop thread, after the whole body has arrived:
 *
 *     int handler(svc_request *req, void *state, rt_task **task_out);
 *
 *  1. Answer at once: set a response (svc_respond_*) and return 0 with *task_out left NULL. The
 *     connection is never suspended; this is the cheap path for probes, /routes, /metrics and
 *     every validation error (the parsing helpers below set the 400 themselves).
 *  2. Answer later: initialize an rt_task (usually embedded in a struct of the handler's own,
 *     released by its vtable) and return 0 with *task_out pointing at it. The server suspends the
 *     connection, spawns the task into the request's scope (req->scope), whose signal fires when
 *     the request's deadline passes (UV_ETIMEDOUT) or when shutdown cancels what is left
 *     (UV_ECANCELED). The task sets the response before it completes. Once the task has been
 *     delivered AND every other child spawned into req->scope has finished (the scope closed),
 *     the response is sent. If the task set none, its status picks one (svc_respond_uv_error):
 *     UV_ETIMEDOUT -> 504, UV_ECANCELED / UV_ESHUTDOWN -> 503, UV_EBUSY -> 503 with Retry-After,
 *     a database that is down -> 503, anything else -> 500 (and 0 without a response -> 500).
 *  3. Fail before starting anything: return a negative UV_E* code (*task_out NULL); it is mapped
 *     like a task status (UV_ENOMEM -> 503).
 *
 * Handlers and their tasks run on the loop thread, inside MHD's callbacks or the runtime's
 * posts: whatever blocks there stalls every connection (the `before` route of pattern 0 does it
 * on purpose, to show exactly that).
 *
 * Lifetimes: req and everything it hands out (params, query values, body) are borrowed until the
 * response has been sent, which is never before req->scope has closed; so a task spawned into
 * req->scope may use req freely, and a task spawned into the service scope must copy what it
 * needs (it outlives the request).
 *
 * Every response gets X-Request-Id, traceparent, Server-Timing (total, and db when
 * svc_request_add_db_time was called), Server and Date from the server; handlers add only what is
 * theirs.
 *
 * Trace context (W3C traceparent): a request continues the trace of a valid `traceparent` header,
 * or starts a new one when it is absent or invalid (an invalid one is ignored, never an error). It
 * always gets a span id of its own, and answers with the traceparent naming that span, so a
 * caller can find the server's log lines of its request. Every log line a request causes carries
 * request_id, trace_id and span_id (svc_request_log_ids).
 *
 * What it deliberately does not expose: libmicrohttpd. Handlers never see a connection, so the
 * suspend/resume contract (resume exactly once, never stop the daemon with a suspended
 * connection) stays inside service/server.c.
 */
#ifndef SVC_HTTP_H
#define SVC_HTTP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "runtime/scope.h"

typedef struct svc_app svc_app;
typedef struct svc_config svc_config;
typedef struct svc_request svc_request;
typedef struct svc_route svc_route;
typedef struct svc_router svc_router;
typedef struct rt_db rt_db;
typedef struct svc_metrics svc_metrics;
struct svc_log_line; /* service/log.h */

/*
 * The service around the handlers, created by main.c. Handlers read it through req->app (or keep
 * the pointer their register function received); every field is read-only to them.
 */
struct svc_app {
    void *data;               /* for main.c only */
    const svc_config *config; /* the parsed configuration (service/config.h) */
    uv_loop_t *loop;          /* this worker's loop: every handler of this app runs on it */
    rt_runtime *rt;           /* the task runtime of that loop */
    rt_db *db;                /* the PostgreSQL pool; NULL when DATABASE_URL is unset */
    svc_metrics *metrics;     /* register a handler's own counters here (service/metrics.h) */
    rt_scope *root_scope;     /* the root of the scope tree: closes last, after the server */
    rt_scope *service_scope;  /* long-lived background work: drained, then cancelled, at shutdown */
    rt_cancel *drain;         /* fires at shutdown step 3: batches stop taking new items */
    rt_cancel *hard_cancel;   /* fires at shutdown step 5: everything left is being cancelled */
    bool draining;            /* shutdown has begun (step 1): readiness answers 503 */
    uint64_t draining_since_ns; /* uv_hrtime() when shutdown began; 0 before (metrics) */
    /* The WORKERS loops (service/workers.h): NULL when the server was assembled without them
     * (the in-process tests); worker_id is this loop's, 0..WORKERS-1. */
    struct svc_workers *workers;
    size_t worker_id;
};

/* Which side of a pattern's before/after pair a row is. */
typedef enum svc_variant {
    SVC_VARIANT_NONE = 0, /* probes, introspection, and routes outside the pairs */
    SVC_VARIANT_BEFORE,   /* the anti-pattern; dropped when BEFORE_ROUTES=off */
    SVC_VARIANT_AFTER     /* the production implementation */
} svc_variant;

/*
 * The handler: see the contract at the top of this file. state is the row's state, returned
 * unchanged. On return, either a response is set, or *task_out holds a task in INIT (the server
 * steals it: the request scope releases it after its completion), or the result is negative.
 */
typedef int (*svc_handler_fn)(svc_request *req, void *state, rt_task **task_out);

/* Row flags. */
enum {
    /* Not logged per request at LOG_LEVEL=info (probes would drown the log and cost throughput);
     * still logged at debug, and still counted in /metrics. */
    SVC_ROUTE_QUIET = 1u << 0
};

/* One row of the handler table. svc_router_add copies the row; the strings are borrowed for the
 * process lifetime (use literals). */
struct svc_route {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/after/users/{id}": literal segments and whole-segment {params} */
    svc_variant variant;
    const char *summary; /* one line, shown by GET /routes */
    svc_handler_fn handler;
    void *state;    /* passed back to handler */
    unsigned flags; /* SVC_ROUTE_* */
};

/* The most path parameters one pattern may have, and the most query arguments kept. */
#define SVC_MAX_PARAMS     4
#define SVC_MAX_QUERY      128
#define SVC_MAX_HEADERS    8
#define SVC_REQUEST_ID_MAX 64

/* W3C trace context: ids in lower-case hex, and the traceparent header of version 00. */
#define SVC_TRACE_ID_LEN    32
#define SVC_SPAN_ID_LEN     16
#define SVC_TRACEPARENT_LEN 55

typedef struct svc_kv {
    const char *key;
    const char *value;
} svc_kv;

/*
 * One request. Fields above `private` are read-only for handlers (except data). The server owns
 * the storage; it is valid until the response has been sent (see the lifetimes above).
 */
struct svc_request {
    void *data; /* for the handler */
    svc_app *app;
    const svc_route *route; /* the matched row */
    const char *method;
    const char *path;       /* without the query string */
    const char *request_id; /* echoed from the client when sane, else generated */
    const char *trace_id;   /* SVC_TRACE_ID_LEN hex: the client's traceparent's, else new */
    const char *span_id;    /* SVC_SPAN_ID_LEN hex: this request's own span, new every time */
    /* The next three are set when the handler's task is started (NULL / RT_NO_DEADLINE while
     * the handler function itself runs): spawn children from the task's start on. */
    rt_scope *scope;   /* the request scope: its children finish before the response */
    rt_cancel *signal; /* == &scope->signal: deadline (UV_ETIMEDOUT) or shutdown */
    uint64_t deadline; /* absolute uv_now() milliseconds (REQUEST_TIMEOUT_MS) */
    uint64_t start_ns; /* uv_hrtime() when the request arrived */
    /* private */
    struct svc_request_int *in; /* the server's part (service/request_int.h) */
    size_t nparams;
    svc_kv params[SVC_MAX_PARAMS];
    size_t nquery;
    svc_kv query[SVC_MAX_QUERY];
    const char *body;
    size_t body_len;
    uint64_t db_ns;
    /* the response */
    int status;      /* 0 until a response is set */
    char *resp_body; /* owned unless resp_static */
    size_t resp_len;
    const char *resp_type; /* borrowed literal */
    bool resp_static;
    size_t nheaders;
    svc_kv headers[SVC_MAX_HEADERS]; /* owned copies */
    char id_buf[SVC_REQUEST_ID_MAX + 1];
    /* "00-<trace_id>-<span_id>-<flags>": the response's traceparent; trace_id and span_id point
     * at the NUL-terminated copies below */
    char traceparent[SVC_TRACEPARENT_LEN + 1];
    char trace_id_buf[SVC_TRACE_ID_LEN + 1];
    char span_id_buf[SVC_SPAN_ID_LEN + 1];
};

/* --- the handler table -------------------------------------------------------------------- */

/**
 * Adds a copy of row to the table. Rows of variant BEFORE are silently dropped (returns 0) when
 * the configuration says BEFORE_ROUTES=off. Returns 0, UV_EINVAL for a malformed pattern (it must
 * start with '/', parameters must fill a whole segment, at most SVC_MAX_PARAMS of them), UV_EEXIST
 * when the same method and pattern are already registered, or UV_ENOMEM. Startup only.
 */
int svc_router_add(svc_router *r, const svc_route *row);

/* --- reading the request ------------------------------------------------------------------ */

/** The path parameter `name` ({name} in the pattern), borrowed; NULL if the pattern has none. */
const char *svc_request_param(const svc_request *req, const char *name);

/**
 * Parses the path parameter `name` as an id: a decimal integer in 1..INT64_MAX. On failure sets
 * a 400 response naming the parameter and returns UV_EINVAL (the handler then returns 0).
 */
int svc_request_param_id(svc_request *req, const char *name, int64_t *out);

/** The query argument `name` (first one wins), borrowed; NULL when absent. */
const char *svc_request_query(const svc_request *req, const char *name);

/**
 * Parses the query argument `name` as a decimal integer in [min, max]; absent -> dflt. On a
 * malformed or out-of-range value sets a 400 response and returns UV_EINVAL; else 0.
 */
int svc_query_int(svc_request *req, const char *name, int64_t min, int64_t max, int64_t dflt,
                  int64_t *out);

/**
 * Parses the query argument `name` as a boolean (true/false/1/0/yes/no/on/off); absent -> dflt.
 * Sets a 400 response and returns UV_EINVAL otherwise.
 */
int svc_query_bool(svc_request *req, const char *name, bool dflt, bool *out);

/** The request header `name` (case-insensitive), borrowed; NULL when absent. */
const char *svc_request_header(const svc_request *req, const char *name);

/**
 * Appends the request's request_id, trace_id and span_id to a log line (service/log.h): every
 * line a request causes carries them, so one trace id finds them all. l and req are borrowed.
 */
void svc_request_log_ids(struct svc_log_line *l, const svc_request *req);

/** The raw body (not NUL-terminated), borrowed; *len receives its length (0 when none). */
const void *svc_request_body(const svc_request *req, size_t *len);

/* Nesting limit for request bodies: far below jansson's own 2048 (docs/architecture.md). */
#define SVC_JSON_MAX_DEPTH 32

/**
 * Parses the body as a JSON object: no duplicate keys, at most SVC_JSON_MAX_DEPTH levels. On
 * success *out is new (json_decref it). On failure (empty, malformed, too deep, duplicate key,
 * not an object) sets a 400 response and returns UV_EINVAL.
 */
int svc_request_json(svc_request *req, json_t **out);

/**
 * Reads obj[key] as an integer in [min, max]; absent or null -> dflt. Sets a 400 response naming
 * the key and returns UV_EINVAL on a wrong type or range. obj is borrowed.
 */
int svc_json_int(svc_request *req, const json_t *obj, const char *key, int64_t min, int64_t max,
                 int64_t dflt, int64_t *out);

/** Like svc_json_int, but an absent key is a 400 too. */
int svc_json_int_required(svc_request *req, const json_t *obj, const char *key, int64_t min,
                          int64_t max, int64_t *out);

/**
 * Adds ns of database time to the request; the sum is reported as `db;dur=` in Server-Timing and
 * as db_ms in the request's log line. Handlers call it from their query completions.
 */
void svc_request_add_db_time(svc_request *req, uint64_t ns);

/* --- answering ---------------------------------------------------------------------------- */

/**
 * Sets the response to status with body serialized compactly. Steals body (even on failure; NULL
 * is allowed and means no body). Setting a response again replaces the previous one, headers
 * included. If serialization fails for lack of memory the response becomes a 503.
 */
void svc_respond_json(svc_request *req, int status, json_t *body);

/**
 * Sets the response to a JSON body given as text. body is borrowed for the process lifetime
 * (a literal): nothing is copied or serialized, which is what keeps /healthz cheap.
 */
void svc_respond_static(svc_request *req, int status, const char *body);

/**
 * Sets the response to an arbitrary body. Steals buf (malloc'd; freed even on failure);
 * content_type is borrowed for the process lifetime.
 */
void svc_respond_buffer(svc_request *req, int status, const char *content_type, char *buf,
                        size_t len);

/**
 * Sets an error response in the API's shape: {"error":{"code":code,"message":<formatted>}}.
 * code is a short snake_case word (bad_request, not_found, conflict, unavailable, ...).
 */
void svc_respond_error(svc_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/**
 * Sets the standard response for a negative UV_E* error: UV_ETIMEDOUT -> 504 timeout,
 * UV_ECANCELED / UV_ESHUTDOWN -> 503 unavailable, UV_EBUSY / UV_ENOMEM -> 503 with Retry-After: 1,
 * UV_EINVAL -> 400, anything else -> 500. This is also what the server does with a task that
 * completed without setting a response.
 */
void svc_respond_uv_error(svc_request *req, int err);

/**
 * Adds a header to the current response (copied). Returns 0, UV_E2BIG when SVC_MAX_HEADERS are
 * already set, or UV_ENOMEM. Headers set before svc_respond_* are cleared by it, so add them after.
 */
int svc_respond_header(svc_request *req, const char *name, const char *value);

/** True once a response has been set. */
static inline bool svc_request_has_response(const svc_request *req)
{
    return req->status != 0;
}

#endif /* SVC_HTTP_H */

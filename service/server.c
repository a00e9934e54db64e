/* SPDX-License-Identifier: MIT */
/*
 * server.c - libmicrohttpd on the libuv loop, and the life of one request.
 *
 * Wiring. MHD runs with MHD_USE_EPOLL and no thread of its own. Its epoll descriptor becomes
 * readable whenever any of its sockets (or its inter-thread channel, which resume writes to) is
 * ready; a uv_poll watches that descriptor and calls MHD_run, which handles what is ready and
 * returns without blocking. After every run the uv_timer is re-armed with MHD_get_timeout, which
 * is how connection timeouts get their turn; when MHD wants another turn at once (timeout 0),
 * it gets it from a uv_idle handle on the next loop iteration, after the loop has polled for
 * I/O, never from a 0 ms timer re-armed in its own callback (run_mhd says why).
 *
 * Connections. MHD tells us when each opens and closes; in between we know which phase it is in
 * (waiting for headers, receiving a body, busy) and hold it to HEADER_TIMEOUT_MS and
 * BODY_TIMEOUT_MS, which MHD's inactivity timeout cannot do (a byte now and then keeps it
 * active). MAX_CONNECTIONS is ours too: beyond it the connection that has waited longest for a
 * request is closed, or the newcomer is answered 503. Where MHD cannot answer (it answers only
 * from the access handler, and only once a request is complete), shed() writes the answer to
 * the socket itself and shuts it down; MHD sees the hang-up and closes the connection. And where
 * MHD would miss a client's FIN (its end of the stream), the server watches for it and shuts the
 * socket's reading side, so that MHD looks again (watch_hup).
 *
 * A request, as MHD calls the access handler for it:
 *
 *   URI log callback         create the request; check the raw target (%00, %2F: framing.h)
 *   call 1 (headers parsed)  echo or make its id and trace context, check the head's framing
 *                            (framing.h), reserve a declared body within MAX_BODY_BUFFER_BYTES;
 *                            return MHD_YES without a response: queueing here makes MHD close
 *                            the connection after it (docs/architecture.md). Exceptions, where
 * closing is the point and the body must not be read: a refused head (400/501), a Content-Length
 * over MAX_BODY_BYTES (413) or over the budget (503). calls with upload data   append to the body,
 * or stop keeping it once it is too large last call (no data)      route and run the handler:
 *                              - answered at once: queue the response (the fast path);
 *                              - a task: open the request scope and deadline, spawn the task,
 *                                MHD_suspend_connection
 *   task delivered           if it set no response, map its status; close the request scope
 *   request scope closed     close the deadline, MHD_resume_connection
 *   call after resume        queue the response
 *   MHD "completed"          log line, metrics, drop MHD's reference
 *
 * The request object has two owners: MHD (until "completed") and the async part (from spawning
 * the task until the deadline handle has closed); it is freed when both have let go. While
 * suspended, MHD cannot time the connection out or notice the client leaving, which is why the
 * deadline exists, and why shutdown must resume every suspended connection before stopping MHD.
 *
 * Memory: MHD gives each connection one buffer (CONNECTION_MEMORY_BYTES) for the request's
 * head and the response's, and zeroes all of it at the end of every request (MHD_pool_reset), so
 * the whole buffer is resident for every idle keep-alive connection: 8 KB makes 10,000 of them
 * cost about 93 MB, and its 32 KB default would cost 330 MB. Request bodies are held outside it,
 * each reserved whole when its length is declared, all of them within MAX_BODY_BUFFER_BYTES.
 *
 * States of a request (asserted on each transition):
 *
 *   RECEIVING --dispatch, answered at once------------------------------> ANSWERED
 *   RECEIVING --dispatch, task spawned--> SUSPENDED --scope closed--> READY --queued--> ANSWERED
 *                                            |                          ^
 *                                            +--svc_server_close (503)--+  (orphaned)
 */
#include "service/server.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <strings.h>
#include <unistd.h>

#include <linux/sockios.h>

#include <microhttpd.h>
/* Its poisoning macros are no-ops in a build without AddressSanitizer. */
#include <sanitizer/asan_interface.h>

#include "service/config.h"
#include "service/framing.h"
#include "service/log.h"
#include "service/request_int.h"
#include "service/workers.h"

/*
 * libmicrohttpd 1.0 parses the request head strictly itself when asked (level 1: RFC 9112's
 * "MUST"s plus its "SHOULD"s for servers: no obs-fold, no whitespace before a colon, no bare LF
 * or NUL in a line); 0.9.75 has no such level, and framing.c finds what it lets through.
 */
#if MHD_VERSION >= 0x00097701
#define HS_MHD_STRICT_PARSING MHD_OPTION_CLIENT_DISCIPLINE_LVL, (int)1,
#else
#define HS_MHD_STRICT_PARSING
#endif

enum req_state { RECEIVING = 0, SUSPENDED, READY, ANSWERED };

/* Where a connection is between its requests, for the deadlines and for eviction. */
enum conn_phase {
    C_WAITING = 0, /* waiting for (or reading) a request's headers: srv->waiting */
    C_BODY,        /* headers parsed, the body is arriving: srv->uploading */
    C_BUSY,        /* dispatched: the request deadline and MHD's own timeout apply */
    C_SHED         /* shut down by the server; MHD closes it on its next turn */
};

typedef struct conn_track conn_track;

typedef struct conn_req {
    svc_request req;
    struct svc_request_int in;
    svc_server *srv;
    svc_match match;
    rt_scope scope;
    rt_deadline deadline;
    rt_cancel_listener on_deadline;
    rt_list link; /* in srv->suspended while SUSPENDED */
    char *body;
    size_t body_len;
    size_t body_cap;      /* counted in *body_gauge while body is held */
    uint64_t *body_gauge; /* the server's, in the metrics (they outlive the server) */
    int state;
    int refs; /* MHD's, and the async part's */
    int task_status;
    svc_framing_error reject; /* a head refused before routing (status 0: none) */
    bool started;             /* the access handler has been called for this request */
    bool too_large;
    bool over_budget;      /* a chunked body outgrew MAX_BODY_BUFFER_BYTES: discarded, then 503 */
    bool orphaned;         /* answered by svc_server_close: never touch the connection again */
    bool chunked;          /* its body comes in chunks (Transfer-Encoding) */
    int outside_status;    /* answered outside the handler: by shed(), or by MHD mid-body */
    uint64_t progress_run; /* the MHD turn that last handed it body bytes (or its headers) */
    conn_track *track;     /* its connection's, while the connection is open; may be NULL */
    conn_track *conn;      /* its connection's from on_uri until on_completed (see open_req) */
} conn_req;

/*
 * Request records freed on a thread, kept for that thread's next requests. A record is about
 * 4 KB, and glibc serves a block of that size only after consolidating its fast bins: with a
 * malloc and a free per request that was a few percent of a /healthz answer's CPU. A record is
 * allocated and freed on its worker's loop thread (it may outlive the server, never the thread),
 * so the cache takes no lock. A cached record is poisoned for AddressSanitizer, which still
 * reports a use after free until the record is reused. A thread's cache is freed when the thread
 * exits (the key's destructor), the main thread's at exit.
 */
enum { SPARE_MAX = 64 };

typedef struct spare_req {
    struct spare_req *next;
    unsigned count; /* records on the list, this one included */
} spare_req;

static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;
static bool spare_ok;

static void spare_free_all(void *head)
{
    spare_req *r = head;

    while (r != NULL) {
        spare_req *next;

        ASAN_UNPOISON_MEMORY_REGION(r, sizeof(conn_req));
        next = r->next;
        free(r);
        r = next;
    }
}

/* At exit, the exiting thread's cache (the main thread's, whose key destructor never runs). */
static void spare_free_mine(void)
{
    spare_free_all(pthread_getspecific(spare_key));
    pthread_setspecific(spare_key, NULL);
}

static void spare_init(void)
{
    spare_ok = pthread_key_create(&spare_key, spare_free_all) == 0 && atexit(spare_free_mine) == 0;
}

static conn_req *req_alloc(void)
{
    spare_req *r;

    pthread_once(&spare_once, spare_init);
    r = spare_ok ? pthread_getspecific(spare_key) : NULL;
    if (r == NULL)
        return calloc(1, sizeof(conn_req));
    ASAN_UNPOISON_MEMORY_REGION(r, sizeof(conn_req));
    pthread_setspecific(spare_key, r->next);
    memset(r, 0, sizeof(conn_req));
    return (conn_req *)(void *)r;
}

static void req_free(conn_req *cr)
{
    spare_req *head = spare_ok ? pthread_getspecific(spare_key) : NULL;
    spare_req *r = (spare_req *)(void *)cr;
    unsigned count = 0;

    if (head != NULL) {
        ASAN_UNPOISON_MEMORY_REGION(head, sizeof(*head));
        count = head->count;
        ASAN_POISON_MEMORY_REGION(head, sizeof(*head));
    }
    if (!spare_ok || count >= SPARE_MAX || pthread_setspecific(spare_key, r) != 0) {
        free(cr);
        return;
    }
    r->next = head;
    r->count = count + 1;
    ASAN_POISON_MEMORY_REGION(r, sizeof(conn_req));
}

/*
 * One per connection, from MHD's "started" notification to its "closed" one (the socket
 * context). The lists it sits on are in phase-entry order, and every entry into a phase adds the
 * same constant, so each list is also in deadline order: the head is the next to expire, and
 * the head of srv->waiting is the connection that has waited longest for a request.
 */
struct conn_track {
    rt_list link; /* in srv->waiting (C_WAITING) or srv->uploading (C_BODY) */
    svc_server *srv;
    struct MHD_Connection *mhd;
    MHD_socket fd;
    int phase;
    bool hup_watched;     /* in srv->hup_fd's set (watch_hup) */
    rt_list hup_link;     /* on on_peer_hup's list while its MHD turn runs */
    uint64_t deadline_ns; /* of the phase, on the uv_hrtime clock */
    conn_req *cr;         /* the request being read or served, while it is */
    /* The request on_uri made and MHD has not reported complete yet. libmicrohttpd 1.0.1 can
     * close a connection without that report (see shed_refused): the close notification then
     * completes the request, so that it is neither leaked nor counted in flight forever. */
    conn_req *open_req;
};

struct svc_server {
    svc_app *app;
    const svc_config *cfg;
    const svc_router *router;
    svc_metrics *metrics;
    rt_scope *requests;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t timer;   /* MHD's own timeout, and the back-off while it keeps asking for turns */
    uv_idle_t again;    /* one more MHD turn on the next loop iteration, after I/O is polled */
    uv_timer_t sweep;   /* the earliest header or body deadline */
    uv_poll_t hup_poll; /* hup_fd: clients that stopped sending (watch_hup) */
    int hup_fd;
    int open_handles;
    rt_list waiting;        /* conn_track in C_WAITING, oldest first */
    rt_list uploading;      /* conn_track in C_BODY, oldest first */
    size_t nconns;          /* connections MHD has open, shed ones included */
    size_t nshed;           /* of which shut down by the server and not yet closed by MHD */
    uint64_t runs;          /* MHD turns so far */
    uint64_t busy_since_ns; /* MHD has asked for an immediate turn after every turn since */
    uint64_t busy_since_run;
    uint64_t stall_checked_ns;
    bool conn_closed; /* a connection closed during the current turn */
    bool mhd_logged;  /* MHD wrote to its error log during the current turn */
    uint64_t *shed_counts[5];
    rt_list suspended;
    size_t in_flight;
    uint64_t *body_buffered; /* bytes held by request bodies (a gauge in the metrics) */
    bool quiesced;
    bool closing;
    uint16_t port;
    char server_header[48];
    char worker_header[24]; /* this worker's id, when there are several; else empty */
    void (*idle_cb)(void *arg);
    void *idle_arg;
    rt_post idle_post;
    void (*close_cb)(void *arg);
    void *close_arg;
};

static void run_mhd(svc_server *s);
static void schedule_turn(svc_server *s);
static void track_enter(conn_track *t, int phase);

/* --- connections: deadlines, eviction, shedding ----------------------------------------------- */

/*
 * After this many nanoseconds of MHD asking for another turn after every turn, the loop stops
 * giving it one per iteration and gives it one per millisecond instead; and after STALL_NS, a
 * request that got no body bytes in all that time is taken to be what MHD is stuck on (a
 * chunk-size or trailer line longer than the connection's buffer, which libmicrohttpd 0.9.75
 * can neither finish reading nor refuse) and is answered 400 and closed.
 */
#define BUSY_TURNS_NS  (10 * 1000000ull)
#define STALL_NS       (1000 * 1000000ull)
#define STALL_CHECK_NS (100 * 1000000ull)
/* Connections MHD may hold beyond MAX_CONNECTIONS: the ones accepted in one turn (it accepts at
 * most 10 per turn) while those shed to make room have not closed yet. */
#define CONNECTION_BACKSTOP 64u
/* How long a connection whose client has stopped sending may still wait for its head (see
 * on_peer_hup). */
#define HUNG_HEAD_NS (1000 * 1000000ull)

/* The reasons shed() counts, in the order of srv->shed_counts. */
enum { SHED_EVICTED, SHED_REFUSED, SHED_HEADER_TIMEOUT, SHED_BODY_TIMEOUT, SHED_UNREADABLE };

static const char *const shed_labels[] = {"reason=\"evicted_idle\"", "reason=\"refused_full\"",
                                          "reason=\"header_timeout\"", "reason=\"body_timeout\"",
                                          "reason=\"unreadable_framing\""};
static const char *const shed_names[] = {"evicted_idle", "refused_full", "header_timeout",
                                         "body_timeout", "unreadable_framing"};

static void on_sweep(uv_timer_t *t);

/* (Re-)arms the sweep timer for the earliest deadline of the two lists, if it is not already due
 * by then. */
static void arm_sweep(svc_server *s)
{
    uint64_t now = uv_hrtime();
    uint64_t earliest = UINT64_MAX;
    uint64_t ms;

    if (s->closing)
        return;
    if (!rt_list_is_empty(&s->waiting))
        earliest = rt_container_of(s->waiting.next, conn_track, link)->deadline_ns;
    if (!rt_list_is_empty(&s->uploading)) {
        uint64_t d = rt_container_of(s->uploading.next, conn_track, link)->deadline_ns;

        if (d < earliest)
            earliest = d;
    }
    if (earliest == UINT64_MAX) {
        uv_timer_stop(&s->sweep);
        return;
    }
    /* At least 1 ms: never a 0 ms timer re-armed from its own callback (see run_mhd). */
    ms = earliest > now + 1000000 ? (earliest - now + 999999) / 1000000 : 1;
    if (uv_is_active((uv_handle_t *)&s->sweep) && uv_timer_get_due_in(&s->sweep) <= ms)
        return;
    uv_timer_start(&s->sweep, on_sweep, ms, 0);
}

/* Moves t into phase, and onto the list (and under the deadline) of that phase. */
static void track_enter(conn_track *t, int phase)
{
    svc_server *s = t->srv;
    rt_list *list = NULL;
    bool was_empty;

    rt_list_remove(&t->link);
    t->phase = phase;
    if (phase == C_WAITING) {
        t->deadline_ns = uv_hrtime() + (uint64_t)s->cfg->header_timeout_ms * 1000000u;
        list = &s->waiting;
    } else if (phase == C_BODY) {
        t->deadline_ns = uv_hrtime() + (uint64_t)s->cfg->body_timeout_ms * 1000000u;
        list = &s->uploading;
    }
    if (list == NULL)
        return;
    /* Appending to a list that has a head cannot move its earliest deadline. */
    was_empty = rt_list_is_empty(list);
    rt_list_push_back(list, &t->link);
    if (was_empty)
        arm_sweep(s);
}

/* Brings the header deadline of t, waiting for its head, forward to deadline (never back),
 * keeping srv->waiting in deadline order. The walk from the front is short: it passes only the
 * connections due before deadline. */
static void track_hurry(conn_track *t, uint64_t deadline)
{
    svc_server *s = t->srv;
    rt_list *pos;

    if (t->phase != C_WAITING || t->deadline_ns <= deadline)
        return;
    rt_list_remove(&t->link);
    t->deadline_ns = deadline;
    pos = s->waiting.next;
    while (pos != &s->waiting && rt_container_of(pos, conn_track, link)->deadline_ns <= deadline)
        pos = pos->next;
    rt_list_push_back(pos, &t->link); /* before pos */
    arm_sweep(s);
}

/* The first call of the access handler: the headers are in, the body (if any) is next. */
static void track_request(svc_server *s, struct MHD_Connection *conn, conn_req *cr)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_track *t = ci != NULL ? ci->socket_context : NULL;

    cr->progress_run = s->runs;
    cr->chunked = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    if (t == NULL || t->phase == C_SHED)
        return;
    t->cr = cr;
    cr->track = t;
    track_enter(t, C_BODY);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    default:
        return "Service Unavailable";
    }
}

/*
 * Answers t's client with status (unless 0) in the API's error shape, outside MHD, and shuts the
 * socket down; MHD sees the hang-up on its next turn and closes the connection. This is for the
 * cases MHD cannot answer itself: a deadline passed while it waits for bytes, or it cannot parse
 * what it has, or the connection is refused at the cap. It never touches a connection whose
 * answer is being sent (phase C_BUSY), and writes nothing while the socket still has unsent
 * bytes (MHD's own error answer, say): then it only closes.
 */
static void shed(conn_track *t, int status, const char *code, const char *msg, int reason)
{
    svc_server *s = t->srv;
    int unsent = 0;
    svc_log_line l;

    if (status != 0 && ioctl(t->fd, SIOCOUTQ, &unsent) == 0 && unsent == 0) {
        svc_request tmp;
        char head[384];
        struct iovec iov[2];
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        int n;

        svc_request_init(&tmp, s->app, NULL, "", "");
        svc_request_set_id(&tmp, t->cr != NULL ? t->cr->req.request_id : NULL);
        svc_respond_error(&tmp, status, code, "%s", msg);
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n%sX-Request-Id: %s\r\n"
                     "Server: %s\r\n\r\n",
                     status, reason_phrase(status), tmp.resp_len,
                     status == 503 ? "Retry-After: 1\r\n" : "", tmp.request_id, s->server_header);
        iov[0] = (struct iovec){head, (size_t)n};
        iov[1] = (struct iovec){tmp.resp_body, tmp.resp_len};
        /* A short write is as good as none: the client learns of the close either way. */
        (void)sendmsg(t->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        svc_request_clear_response(&tmp);
        if (t->cr != NULL)
            t->cr->outside_status = status;
    }
    if (t->cr != NULL)
        t->cr->too_large = true; /* whatever body still arrives is discarded */
    shutdown(t->fd, SHUT_RDWR);
    track_enter(t, C_SHED);
    s->nshed++;
    if (s->shed_counts[reason] != NULL)
        (*s->shed_counts[reason])++;
    if (svc_log_begin(&l, status != 0 ? SVC_LOG_INFO : SVC_LOG_DEBUG, "shed")) {
        svc_log_str(&l, "request_id", t->cr != NULL ? t->cr->req.request_id : NULL);
        svc_log_str(&l, "reason", shed_names[reason]);
        svc_log_int(&l, "status", status);
        svc_log_end(&l);
    }
    /* MHD learns of the hang-up from its epoll set: give it a turn for it. */
    schedule_turn(s);
}

/* Answers 408 and closes every connection of list (kept in deadline order) that is due. */
static void shed_due(rt_list *list, uint64_t now, const char *msg, int reason)
{
    while (!rt_list_is_empty(list)) {
        conn_track *t = rt_container_of(list->next, conn_track, link);

        if (t->deadline_ns > now)
            break;
        shed(t, 408, "request_timeout", msg, reason);
    }
}

static void on_sweep(uv_timer_t *timer)
{
    svc_server *s = timer->data;
    uint64_t now = uv_hrtime();

    shed_due(&s->waiting, now, "the request's headers did not arrive in time", SHED_HEADER_TIMEOUT);
    shed_due(&s->uploading, now, "the request's body did not arrive in time", SHED_BODY_TIMEOUT);
    arm_sweep(s);
}

/*
 * MHD has asked for a turn after every turn for STALL_NS: answer (400) and close each request
 * still reading a chunked body that got no byte of it in all that time. A body that is merely
 * slow waits in MHD's epoll set and does not make MHD ask for turns; the one MHD keeps turning
 * over is the one it can neither read further nor refuse, and only a chunk-size or trailer line
 * can fill its buffer that way (a Content-Length body is handed over as it arrives). A chunked
 * upload that happens to pause inside a chunk-size line during such a streak is shed with it.
 */
static void shed_unreadable(svc_server *s, uint64_t now)
{
    rt_list *pos = s->uploading.next;

    if (now - s->stall_checked_ns < STALL_CHECK_NS)
        return;
    s->stall_checked_ns = now;
    while (pos != &s->uploading) {
        conn_track *t = rt_container_of(pos, conn_track, link);

        pos = pos->next;
        if (t->cr != NULL && t->cr->chunked && t->cr->progress_run <= s->busy_since_run)
            shed(t, 400, "bad_request",
                 "the request's framing could not be read (a chunk line longer than the "
                 "connection's buffer)",
                 SHED_UNREADABLE);
    }
}

/*
 * MHD wrote to its error log during the turn, as it does when it refuses a request itself. Two
 * of its refusals leave the answer unsent: each queues a second answer behind the first, and the
 * second attempt only marks the connection closed. MHD acts on the mark when it next looks at the
 * connection (at its timeout, or when more bytes arrive), and then closes without a word. They
 * are libmicrohttpd 0.9.75's 431 for more query arguments than the connection's buffer can
 * record (it goes on parsing the head after refusing it) and 1.0.1's 413 for an over-long chunk
 * extension. Such a connection is in MHD's closed state with its answer still attached, which
 * its connection info shows in both versions: an answer (HTTP_STATUS) while the head's size is
 * refused (REQUEST_HEADER_SIZE is NULL only before the head is in and once closed, and an answer
 * is attached only after). An answer on its way out is left alone. The server answers those
 * instead, with MHD's status in the API's error shape, and shuts the socket down. (A build of
 * MHD without error messages never logs; such a connection waits for its header or body
 * deadline.)
 */
static void shed_refused(svc_server *s)
{
    rt_list *lists[] = {&s->waiting, &s->uploading};

    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        rt_list *pos = lists[i]->next;

        while (pos != lists[i]) {
            conn_track *t = rt_container_of(pos, conn_track, link);
            const union MHD_ConnectionInfo *own =
                MHD_get_connection_info(t->mhd, MHD_CONNECTION_INFO_HTTP_STATUS);
            int status;

            pos = pos->next;
            if (own == NULL ||
                MHD_get_connection_info(t->mhd, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE) != NULL)
                continue;
            /* 413: a chunk or chunk line too large; 431: a head or trailers too large; else
             * malformed. */
            status =
                own->http_status == 413 || own->http_status == 431 ? (int)own->http_status : 400;
            shed(t, status, status == 413 ? "payload_too_large" : "bad_request",
                 t->phase == C_WAITING
                     ? "the request's head could not be read (more than the connection's buffer "
                       "can hold)"
                     : "the request's body framing could not be read (malformed, or a line "
                       "longer than the connection's buffer)",
                 SHED_UNREADABLE);
        }
    }
}

/*
 * A new connection beyond MAX_CONNECTIONS: close the connection that has waited longest for a
 * request (an idle keep-alive one, or one that has not finished its headers), as nginx reuses its
 * idle connections; when every other connection is busy with a request, answer the new one 503
 * and close it. Either way nobody waits in the kernel's backlog unanswered.
 */
static void make_room(svc_server *s, conn_track *fresh)
{
    conn_track *oldest = rt_container_of(s->waiting.next, conn_track, link);

    if (oldest != fresh)
        shed(oldest, 0, NULL, NULL, SHED_EVICTED);
    else
        shed(fresh, 503, "unavailable", "every connection slot is busy; try again", SHED_REFUSED);
}

static void finish_request(svc_server *s, conn_req *cr, enum MHD_RequestTerminationCode toe);

/*
 * A client's FIN that arrives with its last bytes goes unseen by MHD: its sockets are
 * edge-triggered, and it takes a read shorter than its buffer to mean that nothing more is there,
 * so it never reads the end of the stream. A request left unfinished, which can then never be
 * finished, would hold its connection until CONNECTION_TIMEOUT_S. So the server watches every
 * connection for the client's hang-up (EPOLLRDHUP, reported once, in an epoll set of its own),
 * and then shuts the socket's reading side: that wakes MHD's epoll for the socket, and MHD's next
 * read returns whatever is still buffered, then the end, and MHD closes. A request MHD has read
 * whole is not affected: MHD reads again only to wait for the next one.
 */
static void watch_hup(svc_server *s, conn_track *t)
{
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT, .data.ptr = t};

    rt_list_init(&t->hup_link);
    /* Unwatched (no memory for the entry): MHD's timeout still closes it. */
    t->hup_watched = epoll_ctl(s->hup_fd, EPOLL_CTL_ADD, t->fd, &ev) == 0;
}

static void on_peer_hup(uv_poll_t *p, int status, int events)
{
    svc_server *s = p->data;
    struct epoll_event ev[32];
    rt_list hung;
    int n;

    (void)status;
    (void)events;
    rt_list_init(&hung);
    do {
        n = epoll_wait(s->hup_fd, ev, 32, 0);
        for (int i = 0; i < n; i++)
            rt_list_push_back(&hung, &((conn_track *)ev[i].data.ptr)->hup_link);
    } while (n == 32);
    /* MHD first reads what these sockets hold: a wake-up of theirs it has not consumed yet
     * would swallow the one the shutdown makes (a connection accepted in the turn that reported
     * the hang-up, say). One it closes meanwhile leaves the list (on_connection). */
    run_mhd(s);
    while (!rt_list_is_empty(&hung)) {
        conn_track *t = rt_container_of(hung.next, conn_track, hup_link);

        rt_list_remove(&t->hup_link);
        shutdown(t->fd, SHUT_RD);
        /* A head that has filled MHD's buffer is not read on, the end of the stream included,
         * until more bytes arrive, and none will: a head still incomplete after HUNG_HEAD_NS
         * gets its header deadline's 408 and the close. */
        track_hurry(t, uv_hrtime() + HUNG_HEAD_NS);
    }
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    svc_server *s = cls;
    conn_track *t = *socket_context;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

        s->nconns++;
        t = ci != NULL ? calloc(1, sizeof(*t)) : NULL;
        /* Untracked (no memory): no deadlines for it, but MHD's own timeout still applies. */
        *socket_context = t;
        if (t == NULL)
            return;
        t->srv = s;
        t->mhd = conn;
        t->fd = ci->connect_fd;
        watch_hup(s, t);
        rt_list_init(&t->link);
        track_enter(t, C_WAITING);
        if (s->nconns - s->nshed > (size_t)s->cfg->max_connections)
            make_room(s, t);
        return;
    }
    /* Closed: MHD has one slot more, and re-adds its listening socket only on a later turn. */
    s->nconns--;
    s->conn_closed = true;
    if (t == NULL)
        return;
    if (t->phase == C_SHED)
        s->nshed--;
    /* MHD closes the socket after this notification: leave the set while it is still open. */
    if (t->hup_watched)
        epoll_ctl(s->hup_fd, EPOLL_CTL_DEL, t->fd, NULL);
    rt_list_remove(&t->hup_link);
    rt_list_remove(&t->link);
    if (t->cr != NULL)
        t->cr->track = NULL;
    if (t->open_req != NULL) {
        /* MHD has already freed what the method and path point into: they are not logged. A
         * connection is never closed while its request is suspended, so no handler reads them. */
        t->open_req->req.method = NULL;
        t->open_req->req.path = NULL;
        finish_request(s, t->open_req, MHD_REQUEST_TERMINATED_WITH_ERROR);
    }
    free(t);
}

/* --- requests ---------------------------------------------------------------------------- */

/* Frees the body and gives its bytes back to the budget. */
static void drop_body(conn_req *cr)
{
    if (cr->body_cap != 0)
        *cr->body_gauge -= cr->body_cap;
    free(cr->body);
    cr->body = NULL;
    cr->body_len = cr->body_cap = 0;
}

/*
 * Makes room for cap bytes of body, counted against MAX_BODY_BUFFER_BYTES. Returns 0, UV_EBUSY
 * when the budget has no room (nothing changes), or UV_ENOMEM.
 */
static int reserve_body(conn_req *cr, size_t cap)
{
    uint64_t others = *cr->body_gauge - cr->body_cap;
    char *p;

    if (others + cap > (uint64_t)cr->srv->cfg->max_body_buffer_bytes)
        return UV_EBUSY;
    p = realloc(cr->body, cap);
    if (p == NULL)
        return UV_ENOMEM;
    *cr->body_gauge = others + cap;
    cr->body = p;
    cr->body_cap = cap;
    return 0;
}

static void req_unref(conn_req *cr)
{
    if (--cr->refs > 0)
        return;
    svc_request_clear_response(&cr->req);
    drop_body(cr);
    req_free(cr);
}

/*
 * Appends "<name>;dur=<ms with three decimals>" at out and returns the end. Written by hand
 * because it runs for every response and printf's floating-point path costs as much as a fair
 * share of the rest of a /healthz answer; out must have room for name plus 32 bytes.
 */
static char *format_ms(char *out, const char *name, uint64_t ns)
{
    uint64_t us = ns / 1000;
    uint64_t whole = us / 1000;
    char digits[24];
    int n = 0;

    while (*name != '\0')
        *out++ = *name++;
    memcpy(out, ";dur=", 5);
    out += 5;
    do {
        digits[n++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole != 0);
    while (n > 0)
        *out++ = digits[--n];
    *out++ = '.';
    *out++ = (char)('0' + (us / 100) % 10);
    *out++ = (char)('0' + (us / 10) % 10);
    *out++ = (char)('0' + us % 10);
    *out = '\0';
    return out;
}

/* Builds the MHD response from what the handler set and queues it. */
static enum MHD_Result queue_response(conn_req *cr, struct MHD_Connection *conn)
{
    svc_server *s = cr->srv;
    svc_request *req = &cr->req;
    struct MHD_Response *resp;
    char timing[96];
    char *end;
    enum MHD_Result ret;

    if (req->status == 0)
        svc_respond_error(req, 500, "internal", "the handler set no response");
    resp = MHD_create_response_from_buffer(req->resp_len, req->resp_body,
                                           req->resp_static ? MHD_RESPMEM_PERSISTENT
                                                            : MHD_RESPMEM_MUST_FREE);
    if (resp == NULL)
        return MHD_NO;
    /* MHD frees the body with the response now. */
    if (!req->resp_static)
        req->resp_body = NULL;
    end = format_ms(timing, "total", uv_hrtime() - req->start_ns);
    if (req->db_ns != 0)
        format_ms(end, ", db", req->db_ns);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            req->resp_type ? req->resp_type : "application/json; charset=utf-8");
    MHD_add_response_header(resp, "X-Request-Id", req->request_id);
    MHD_add_response_header(resp, "traceparent", svc_request_traceparent(req));
    MHD_add_response_header(resp, "Server-Timing", timing);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, s->server_header);
    if (s->worker_header[0] != '\0')
        MHD_add_response_header(resp, "X-Worker", s->worker_header);
    for (size_t i = 0; i < req->nheaders; i++)
        MHD_add_response_header(resp, req->headers[i].key, req->headers[i].value);
    if (s->quiesced)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ret = MHD_queue_response(conn, (unsigned int)req->status, resp);
    MHD_destroy_response(resp);
    cr->state = ANSWERED;
    return ret;
}

static void on_deadline_closed(rt_deadline *d)
{
    req_unref(rt_container_of(d, conn_req, deadline));
}

static void on_request_scope_closed(rt_scope *scope)
{
    conn_req *cr = rt_container_of(scope, conn_req, scope);

    rt_cancel_unlisten(&cr->on_deadline);
    rt_deadline_close(&cr->deadline, on_deadline_closed);
    if (cr->orphaned)
        return;
    assert(cr->state == SUSPENDED);
    rt_list_remove(&cr->link);
    cr->state = READY;
    /* MHD calls the access handler again, which queues the response, but only from MHD_run:
     * its own wake-up (the inter-thread channel) does not reliably reach our poll in external
     * epoll mode, so ask for a run on the next loop turn (resumes in one turn share it). */
    MHD_resume_connection(cr->in.conn);
    schedule_turn(cr->srv);
}

static void on_task_done(rt_task *t, int status)
{
    conn_req *cr = t->data;

    cr->task_status = status;
    if (!svc_request_has_response(&cr->req)) {
        if (status == 0)
            svc_respond_error(&cr->req, 500, "internal", "the handler set no response");
        else
            svc_respond_uv_error(&cr->req, status);
    }
    /* The response waits for everything else the handler spawned into the request scope. */
    rt_scope_close(&cr->scope, on_request_scope_closed);
}

static void on_deadline(rt_cancel_listener *l, int reason)
{
    conn_req *cr = l->data;

    rt_scope_cancel(&cr->scope, reason);
}

static void on_unused_scope_closed(rt_scope *scope)
{
    req_unref(rt_container_of(scope, conn_req, scope));
}

/* Runs the handler's task in a new request scope with its own deadline. */
static int start_task(conn_req *cr, rt_task *task, struct MHD_Connection *conn)
{
    svc_server *s = cr->srv;
    svc_request *req = &cr->req;
    int err;

    err = rt_scope_init(&cr->scope, s->app->rt, s->requests, "request");
    if (err < 0) {
        rt_task_release(task);
        return err;
    }
    req->deadline = uv_now(s->app->loop) + (uint64_t)s->cfg->request_timeout_ms;
    err = rt_deadline_init(&cr->deadline, s->app->rt, NULL, req->deadline);
    if (err < 0) {
        rt_task_release(task);
        /* The scope lives in cr and closes on a later turn: keep cr until it has. */
        cr->refs++;
        rt_scope_close(&cr->scope, on_unused_scope_closed);
        return err;
    }
    rt_cancel_listener_init(&cr->on_deadline);
    cr->on_deadline.data = cr;
    rt_cancel_listen(&cr->deadline.signal, &cr->on_deadline, on_deadline);
    req->scope = &cr->scope;
    req->signal = &cr->scope.signal;
    cr->refs++;
    cr->state = SUSPENDED;
    rt_list_push_back(&s->suspended, &cr->link);
    task->data = cr;
    MHD_suspend_connection(conn);
    /* The scope is open and its parent is not closing (init checked), so spawn cannot refuse. */
    err = rt_scope_spawn(&cr->scope, task, on_task_done);
    return RT_NEVER(err < 0) ? err : 0;
}

static enum MHD_Result collect_query(void *arg, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    /* Arguments past SVC_MAX_QUERY are ignored: no route takes that many. */
    return svc_request_add_query(arg, key, value) == 0 ? MHD_YES : MHD_NO;
}

static enum MHD_Result dispatch(conn_req *cr, struct MHD_Connection *conn)
{
    svc_server *s = cr->srv;
    svc_request *req = &cr->req;
    rt_task *task = NULL;
    int err;

    /* Answered out of band already (a deadline passed): close without a second answer. */
    if (cr->outside_status != 0)
        return MHD_NO;
    if (cr->track != NULL && cr->track->phase == C_BODY)
        track_enter(cr->track, C_BUSY);
    if (cr->reject.status != 0) {
        svc_respond_error(req, cr->reject.status,
                          cr->reject.status == 501 ? "not_implemented" : "bad_request", "%s",
                          cr->reject.message);
        svc_respond_header(req, MHD_HTTP_HEADER_CONNECTION, "close");
        return queue_response(cr, conn);
    }
    if (cr->over_budget) {
        svc_respond_error(req, 503, "unavailable",
                          "too many request bodies are being received; retry shortly");
        svc_respond_header(req, "Retry-After", "1");
        svc_respond_header(req, MHD_HTTP_HEADER_CONNECTION, "close");
        return queue_response(cr, conn);
    }
    if (cr->too_large) {
        svc_respond_error(req, 413, "payload_too_large", "the body is larger than %lld bytes",
                          (long long)s->cfg->max_body_bytes);
        return queue_response(cr, conn);
    }
    switch (svc_router_match(s->router, req->method, req->path, &cr->match)) {
    case SVC_MATCH_NOT_FOUND:
        svc_respond_error(req, 404, "not_found", "no route for %s", req->path);
        return queue_response(cr, conn);
    case SVC_MATCH_BAD_METHOD:
        svc_respond_error(req, 405, "method_not_allowed", "%s is not allowed here; use %s",
                          req->method, cr->match.allow);
        svc_respond_header(req, MHD_HTTP_HEADER_ALLOW, cr->match.allow);
        return queue_response(cr, conn);
    case SVC_MATCH_FOUND:
        break;
    }
    svc_request_set_match(req, &cr->match);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, req);
    svc_request_set_body(req, cr->body, cr->body_len);
    err = req->route->handler(req, req->route->state, &task);
    if (err < 0 && task != NULL) {
        /* The contract says no task with an error; keep the promise that the task is stolen. */
        rt_task_release(task);
        task = NULL;
    }
    if (err == 0 && task != NULL) {
        err = start_task(cr, task, conn);
        if (err == 0)
            return MHD_YES;
    }
    if (err < 0)
        svc_respond_uv_error(req, err);
    return queue_response(cr, conn);
}

static enum MHD_Result count_traceparent(void *arg, enum MHD_ValueKind kind, const char *key,
                                         const char *value)
{
    (void)kind;
    (void)value;
    if (strcasecmp(key, "traceparent") == 0)
        (*(int *)arg)++;
    return MHD_YES;
}

/* The client's traceparent header, borrowed; NULL when absent or repeated (W3C: a request with
 * several is treated as having none). Only a request that sent one pays for the count. */
static const char *client_traceparent(struct MHD_Connection *conn)
{
    const char *tp = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent");
    int n = 0;

    if (tp == NULL)
        return NULL;
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_traceparent, &n);
    return n == 1 ? tp : NULL;
}

/* The fields of the request head, for the framing checks. */
typedef struct head_fields {
    svc_header_field *f;
    size_t n;
    size_t cap;
} head_fields;

static enum MHD_Result collect_field(void *arg, enum MHD_ValueKind kind, const char *key,
                                     size_t key_size, const char *value, size_t value_size)
{
    head_fields *h = arg;

    (void)kind;
    if (h->n == h->cap)
        return MHD_NO;
    h->f[h->n++] = (svc_header_field){key, key_size, value, value_size};
    return MHD_YES;
}

/*
 * Checks the head MHD parsed (framing.h). Returns 0 when it was checked (a refusal is then in
 * cr->reject), or UV_ENOMEM.
 */
static int check_head(conn_req *cr, struct MHD_Connection *conn, const char *version)
{
    head_fields h = {0};
    bool http11 = strcmp(version, MHD_HTTP_VERSION_1_1) == 0;

    h.cap = (size_t)MHD_get_connection_values(conn, MHD_HEADER_KIND, NULL, NULL);
    if (h.cap > 0) {
        h.f = malloc(h.cap * sizeof(*h.f));
        if (h.f == NULL)
            return UV_ENOMEM;
        MHD_get_connection_values_n(conn, MHD_HEADER_KIND, collect_field, &h);
    }
#if MHD_VERSION < 0x00097600
    /* 0.9.75 folds obs-fold lines and cuts values at a NUL without a word: find the traces. */
    if (svc_framing_check_fields(h.f, h.n, http11, &cr->reject))
        svc_framing_check_layout(h.f, h.n, &cr->reject);
#else
    svc_framing_check_fields(h.f, h.n, http11, &cr->reject);
#endif
    free(h.f);
    return 0;
}

/*
 * MHD's URI log callback: the one place that sees the target as the client sent it, before
 * percent-decoding turns %00 into the end of the string and %2F into a separator. What it returns
 * becomes *con_cls, so the request is created here; it is freed in on_completed even when MHD
 * refuses the request before the access handler runs.
 */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_req *cr = req_alloc();

    if (cr == NULL)
        return NULL;
    cr->srv = cls;
    svc_framing_check_target(uri, &cr->reject);
    if (ci != NULL && ci->socket_context != NULL) {
        cr->conn = ci->socket_context;
        cr->conn->open_req = cr;
    }
    return cr;
}

/* The first call of the access handler (headers parsed). Returns MHD_YES to read on. */
static enum MHD_Result begin_request(svc_server *s, conn_req *cr, struct MHD_Connection *conn,
                                     const char *url, const char *method, const char *version)
{
    const union MHD_ConnectionInfo *answered;
    const char *cl;

    cr->started = true;
    cr->refs = 1;
    cr->body_gauge = s->body_buffered;
    cr->in.conn = conn;
    rt_list_init(&cr->link);
    svc_request_init(&cr->req, s->app, &cr->in, method, svc_framing_origin_path(url));
    svc_request_set_id(&cr->req,
                       MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"));
    svc_request_set_trace(&cr->req, client_traceparent(conn));
    s->in_flight++;
    svc_metrics_request_begin(s->metrics);
    track_request(s, conn, cr);
    answered = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS);
    if (answered != NULL) {
        /* MHD refused the head itself (a malformed Content-Length) and queued its own answer:
         * there is nothing to add, and no second response may follow it. */
        cr->req.status = (int)answered->http_status;
        cr->state = ANSWERED;
        return MHD_YES;
    }
    if (cr->reject.status == 0) {
        int err = check_head(cr, conn, version);

        if (err < 0)
            return MHD_NO;
    }
    if (cr->reject.status != 0)
        return dispatch(cr, conn); /* queued now: the body is never read, the connection closes */
    cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg->max_body_bytes) {
        /* Answering now closes the connection without reading the body: here that is the
         * point (the one exception to "never queue on the first call"). */
        cr->too_large = true;
        return dispatch(cr, conn);
    }
    if (cl != NULL && cl[0] != '0') {
        /* The declared length is known: hold exactly that (and its NUL), or refuse at once. */
        int err = reserve_body(cr, (size_t)strtoull(cl, NULL, 10) + 1);

        if (err == UV_ENOMEM)
            return MHD_NO;
        if (err < 0) {
            cr->over_budget = true;
            return dispatch(cr, conn);
        }
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    svc_server *s = cls;
    conn_req *cr = *con_cls;

    if (cr == NULL || !cr->started) {
        if (cr == NULL) {
            /* on_uri could not allocate. */
            cr = req_alloc();
            if (cr == NULL)
                return MHD_NO;
            cr->srv = s;
            *con_cls = cr;
        }
        return begin_request(s, cr, conn, url, method, version);
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;

        *upload_data_size = 0;
        cr->progress_run = s->runs;
        if (cr->too_large || cr->over_budget)
            return MHD_YES;
        if (cr->body_len + n > (uint64_t)s->cfg->max_body_bytes) {
            /* A chunked body grew too large: keep discarding it and answer 413 at its end. */
            cr->too_large = true;
            drop_body(cr);
            return MHD_YES;
        }
        if (cr->body_len + n + 1 > cr->body_cap) {
            /* Only a chunked body grows here (a declared one was reserved whole): double, but
             * never past what MAX_BODY_BYTES allows. */
            size_t cap = (cr->body_len + n + 1) * 2;
            int err;

            if (cap > (size_t)s->cfg->max_body_bytes + 1)
                cap = (size_t)s->cfg->max_body_bytes + 1;
            err = reserve_body(cr, cap);
            if (err == UV_ENOMEM)
                return MHD_NO;
            if (err < 0) {
                /* Over the budget: discard the rest and answer 503 at its end. */
                cr->over_budget = true;
                drop_body(cr);
                return MHD_YES;
            }
        }
        memcpy(cr->body + cr->body_len, upload_data, n);
        cr->body_len += n;
        cr->body[cr->body_len] = '\0';
        return MHD_YES;
    }
    switch (cr->state) {
    case RECEIVING:
        return dispatch(cr, conn);
    case READY:
        return queue_response(cr, conn);
    case ANSWERED:
        /* A 413 queued before the body was read: nothing is left to do. */
        return MHD_YES;
    default:
        /* MHD never calls for a suspended connection. */
        assert(!"access handler called for a suspended request");
        return MHD_NO;
    }
}

static void log_request(const conn_req *cr, int status, uint64_t ns)
{
    const svc_request *req = &cr->req;
    svc_log_level level = status >= 500 ? SVC_LOG_WARN : SVC_LOG_INFO;
    svc_log_line l;

    /* Probes are polled constantly, and a draining /readyz answers 503 by design. */
    if (req->route != NULL && (req->route->flags & SVC_ROUTE_QUIET))
        level = SVC_LOG_DEBUG;
    if (!svc_log_begin(&l, level, "request"))
        return;
    svc_request_log_ids(&l, req);
    svc_log_str(&l, "method", req->method);
    svc_log_str(&l, "path", req->path);
    svc_log_str(&l, "route", req->route ? req->route->pattern : NULL);
    svc_log_str(&l, "variant",
                svc_variant_name(req->route ? req->route->variant : SVC_VARIANT_NONE));
    svc_log_int(&l, "status", status);
    svc_log_ms(&l, "duration_ms", (double)ns / 1e6);
    svc_log_ms(&l, "db_ms", (double)req->db_ns / 1e6);
    if (cr->task_status != 0)
        svc_log_str(&l, "task_status", uv_err_name(cr->task_status));
    svc_log_end(&l);
}

static void on_idle_post(rt_post *p)
{
    svc_server *s = rt_container_of(p, svc_server, idle_post);

    if (s->in_flight == 0 && s->idle_cb != NULL)
        s->idle_cb(s->idle_arg);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    conn_req *cr = *con_cls;

    if (cr == NULL)
        return;
    *con_cls = NULL;
    if (cr->started && cr->state == RECEIVING && cr->outside_status == 0) {
        /* MHD refused the body itself (a malformed chunk line, say) and answered: that answer
         * is what the client got, not 499. */
        const union MHD_ConnectionInfo *own =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS);

        if (own != NULL)
            cr->outside_status = (int)own->http_status;
    }
    finish_request(cls, cr, toe);
}

/* The end of a request as MHD sees it: logged, counted, and let go of. */
static void finish_request(svc_server *s, conn_req *cr, enum MHD_RequestTerminationCode toe)
{
    uint64_t ns;
    int status;

    if (cr->conn != NULL) {
        cr->conn->open_req = NULL;
        cr->conn = NULL;
    }
    if (!cr->started) {
        /* MHD refused the request before the access handler saw it (on_uri made cr). */
        req_free(cr);
        return;
    }
    ns = uv_hrtime() - cr->req.start_ns;
    /* 499 (the client went away before an answer), as nginx logs it. */
    status =
        cr->state == ANSWERED && toe != MHD_REQUEST_TERMINATED_CLIENT_ABORT ? cr->req.status : 499;
    if (cr->outside_status != 0)
        status = cr->outside_status;
    if (cr->track != NULL) {
        /* The connection waits for its next request now (or is about to close). */
        cr->track->cr = NULL;
        if (cr->track->phase != C_SHED)
            track_enter(cr->track, C_WAITING);
        cr->track = NULL;
    }
    svc_metrics_request_end(s->metrics, cr->req.route, status, ns);
    log_request(cr, status, ns);
    cr->in.conn = NULL;
    req_unref(cr);
    /* The idle callback may stop the daemon, which must not happen inside MHD_run: post it. */
    if (--s->in_flight == 0 && s->idle_cb != NULL)
        rt_post_submit(s->app->rt, &s->idle_post, on_idle_post);
}

/* --- the loop wiring ---------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    run_mhd(t->data);
}

static void on_again(uv_idle_t *h)
{
    run_mhd(h->data);
}

/* Another MHD turn on the next loop iteration: after the loop has polled for I/O (an active idle
 * handle makes that poll return at once), never in the same pass as this one. */
static void schedule_turn(svc_server *s)
{
    if (!s->closing)
        uv_idle_start(&s->again, on_again);
}

/*
 * One MHD turn, then the next one arranged. MHD_get_timeout says 0 when MHD has more to do at
 * once; re-arming the timer with 0 from its own callback would make libuv 1.44 run it again in
 * the same pass, forever if MHD keeps saying 0 (it does, for a connection it can neither read
 * nor answer): the loop would then never poll, and no signal, database reply or other timer
 * would ever be seen. So an immediate turn goes to the idle handle, one per loop iteration; if
 * MHD keeps asking for BUSY_TURNS_NS, one per millisecond; after STALL_NS, the request it is
 * stuck on is shed.
 */
static void run_mhd(svc_server *s)
{
    MHD_UNSIGNED_LONG_LONG ms;
    uint64_t now;

    uv_idle_stop(&s->again);
    s->conn_closed = false;
    s->mhd_logged = false;
    s->runs++;
    MHD_run(s->mhd);
    if (s->mhd_logged)
        shed_refused(s);
    /* A connection closed in this turn: MHD re-adds its listening socket (dropped at its
     * connection limit) at the start of a turn, which nothing else may ever cause once the last
     * connection is gone. */
    if (s->conn_closed)
        schedule_turn(s);
    if (MHD_get_timeout(s->mhd, &ms) != MHD_YES) {
        s->busy_since_ns = 0;
        uv_timer_stop(&s->timer);
        return;
    }
    if (ms > 0) {
        s->busy_since_ns = 0;
        uv_timer_start(&s->timer, on_timer, ms, 0);
        return;
    }
    now = uv_hrtime();
    if (s->busy_since_ns == 0) {
        s->busy_since_ns = now;
        s->busy_since_run = s->runs;
    }
    if (now - s->busy_since_ns < BUSY_TURNS_NS) {
        schedule_turn(s);
        return;
    }
    uv_timer_start(&s->timer, on_timer, 1, 0);
    if (now - s->busy_since_ns >= STALL_NS)
        shed_unreadable(s, now);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run_mhd(p->data);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[256];
    size_t n;

    ((svc_server *)cls)->mhd_logged = true; /* see shed_refused */
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    svc_log_msg(SVC_LOG_WARN, "http", msg);
}

static void on_handle_closed(uv_handle_t *h)
{
    svc_server *s = h->data;
    void (*cb)(void *arg) = s->close_cb;
    void *arg = s->close_arg;

    if (--s->open_handles > 0)
        return;
    free(s);
    if (cb != NULL)
        cb(arg);
}

int svc_server_open(svc_server **out, svc_app *app, const svc_router *router, svc_metrics *metrics,
                    rt_scope *requests_scope)
{
    const svc_config *cfg = app->config;
    const union MHD_DaemonInfo *info;
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } addr;
    /* Where to listen: the first worker binds HOST:PORT; every worker after it serves worker 0's
     * listening socket (a dup of it: each daemon closes its own at quiesce, and the socket
     * closes when the last one has). libmicrohttpd 1.0 refuses to be given both. */
    struct MHD_OptionItem listen_opt[] = {{MHD_OPTION_SOCK_ADDR, 0, &addr.sa},
                                          {MHD_OPTION_END, 0, NULL}};
    svc_server *s;
    int err;

    if (app->workers != NULL && svc_workers_listen_fd(app->workers) >= 0) {
        int fd = dup(svc_workers_listen_fd(app->workers));

        if (fd < 0)
            return uv_translate_sys_error(errno);
        listen_opt[0] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        if (listen_opt[0].option == MHD_OPTION_LISTEN_SOCKET)
            close((int)listen_opt[0].value);
        return UV_ENOMEM;
    }
    s->hup_fd = -1;
    s->app = app;
    s->cfg = cfg;
    s->router = router;
    s->metrics = metrics;
    s->requests = requests_scope;
    rt_list_init(&s->suspended);
    rt_list_init(&s->waiting);
    rt_list_init(&s->uploading);
    for (size_t i = 0; i < sizeof(shed_labels) / sizeof(shed_labels[0]); i++)
        s->shed_counts[i] =
            svc_metrics_counter(metrics, "hs_http_connections_shed_total", shed_labels[i],
                                "Connections the server answered or closed on its own, by reason.");
    rt_post_init(&s->idle_post);
    s->body_buffered = svc_metrics_gauge(metrics, "hs_http_body_buffered_bytes", "",
                                         "Bytes held for request bodies being received or served "
                                         "(MAX_BODY_BUFFER_BYTES caps it).");
    if (s->body_buffered == NULL) {
        err = UV_ENOMEM;
        goto out_free;
    }
    s->hup_fd = epoll_create1(EPOLL_CLOEXEC);
    if (s->hup_fd < 0) {
        err = uv_translate_sys_error(errno);
        goto out_free;
    }
    snprintf(s->server_header, sizeof(s->server_header), "hindsight/%s", HS_VERSION);
    if (app->workers != NULL && svc_workers_count(app->workers) > 1)
        snprintf(s->worker_header, sizeof(s->worker_header), "%zu", app->worker_id);
    /* HOST was checked by the configuration parser; an IPv6 literal needs MHD's IPv6 mode. */
    if (uv_ip4_addr(cfg->host, cfg->port, &addr.in4) != 0) {
        if (uv_ip6_addr(cfg->host, cfg->port, &addr.in6) != 0) {
            err = UV_EINVAL;
            goto out_free;
        }
        flags |= MHD_USE_IPv6;
    }
    /* MAX_CONNECTIONS is enforced here (on_connection), where a new connection beyond it can
     * still be answered; MHD's own limit is only a backstop above it, for connections accepted
     * in one turn before the shed ones have closed. A per-IP limit below MAX_CONNECTIONS is
     * MHD's: it closes the extra connection at once. */
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections + CONNECTION_BACKSTOP,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)(cfg->max_connections_per_ip < cfg->max_connections
                           ? cfg->max_connections_per_ip
                           : 0),
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)cfg->connection_memory_bytes, MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
        HS_MHD_STRICT_PARSING MHD_OPTION_ARRAY, listen_opt, MHD_OPTION_END);
    if (s->mhd == NULL) {
        err = UV_EADDRINUSE;
        goto out_free;
    }
    if (app->workers != NULL && svc_workers_listen_fd(app->workers) < 0 &&
        svc_workers_count(app->workers) > 1) {
        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_LISTEN_FD);
        if (info == NULL) {
            err = UV_EIO;
            goto out_stop;
        }
        svc_workers_set_listen_fd(app->workers, (int)info->listen_fd);
    }
    info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info != NULL ? info->port : (uint16_t)cfg->port;
    info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        err = UV_EIO;
        goto out_stop;
    }
    err = uv_timer_init(app->loop, &s->timer);
    if (err < 0)
        goto out_stop;
    s->timer.data = s;
    s->open_handles++;
    /* Neither fails once the loop is initialized (libuv only fills the handle in). */
    uv_idle_init(app->loop, &s->again);
    s->again.data = s;
    s->open_handles++;
    uv_timer_init(app->loop, &s->sweep);
    s->sweep.data = s;
    s->open_handles++;
    err = uv_poll_init(app->loop, &s->hup_poll, s->hup_fd);
    if (err < 0)
        goto out_close_timer;
    s->hup_poll.data = s;
    s->open_handles++;
    err = uv_poll_init(app->loop, &s->poll, info->epoll_fd);
    if (err < 0)
        goto out_close_hup;
    s->poll.data = s;
    s->open_handles++;
    err = uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (err == 0)
        err = uv_poll_start(&s->hup_poll, UV_READABLE, on_peer_hup);
    if (err < 0)
        goto out_close_poll;
    run_mhd(s);
    *out = s;
    return 0;

    /* Handles close asynchronously: s is freed by the last close callback (on_handle_closed). */
out_close_poll:
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
out_close_hup:
    uv_close((uv_handle_t *)&s->hup_poll, on_handle_closed);
out_close_timer:
    s->closing = true;
    MHD_stop_daemon(s->mhd);
    close(s->hup_fd);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->again, on_handle_closed);
    uv_close((uv_handle_t *)&s->sweep, on_handle_closed);
    return err;
out_stop:
    MHD_stop_daemon(s->mhd);
out_free:
    if (listen_opt[0].option == MHD_OPTION_LISTEN_SOCKET && s->mhd == NULL)
        close((int)listen_opt[0].value);
    if (s->hup_fd >= 0)
        close(s->hup_fd);
    free(s);
    return err;
}

uint16_t svc_server_port(const svc_server *s)
{
    return s->port;
}

size_t svc_server_in_flight(const svc_server *s)
{
    return s->in_flight;
}

void svc_server_on_idle(svc_server *s, void (*cb)(void *arg), void *arg)
{
    s->idle_cb = cb;
    s->idle_arg = arg;
}

void svc_server_quiesce(svc_server *s)
{
    MHD_socket fd;

    if (s->quiesced)
        return;
    s->quiesced = true;
    fd = MHD_quiesce_daemon(s->mhd);
    /* MHD hands the listening socket back and no longer watches it; closing it makes new
     * connection attempts fail at once instead of waiting in the backlog. */
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void svc_server_close(svc_server *s, void (*cb)(void *arg), void *arg)
{
    rt_list moved;

    assert(!s->closing);
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    /* Stopping MHD with a suspended connection breaks its contract (docs/architecture.md), so
     * every one is answered and resumed first, and MHD gets a few turns to send those answers. */
    rt_list_move(&s->suspended, &moved);
    while (!rt_list_is_empty(&moved)) {
        conn_req *cr = rt_container_of(moved.next, conn_req, link);

        rt_list_remove(&cr->link);
        cr->orphaned = true;
        cr->state = READY;
        svc_respond_error(&cr->req, 503, "unavailable",
                          "the service stopped before this request ended");
        MHD_resume_connection(cr->in.conn);
    }
    for (int i = 0; i < 3; i++)
        MHD_run(s->mhd);
    /* The poll must stop before MHD closes the descriptor it watches. */
    uv_poll_stop(&s->poll);
    uv_poll_stop(&s->hup_poll);
    uv_timer_stop(&s->timer);
    uv_idle_stop(&s->again);
    uv_timer_stop(&s->sweep);
    s->idle_cb = NULL;
    rt_post_cancel(&s->idle_post);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    /* Closing its connections took each out of hup_fd's set, which may close now. */
    close(s->hup_fd);
    uv_close((uv_handle_t *)&s->hup_poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->again, on_handle_closed);
    uv_close((uv_handle_t *)&s->sweep, on_handle_closed);
}

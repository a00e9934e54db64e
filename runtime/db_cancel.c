/* SPDX-License-Identifier: MIT */
/*
 * db_cancel.c - cancel requests sent from the loop, without blocking and without a thread.
 *
 * A cancel request is a separate connection to the server carrying one 16-byte packet (the
 * backend's PID and secret key); the server acts on it and closes. libpq's PQcancel does this
 * with blocking calls and no timeout of its own, so a server (or a middlebox) that never closes
 * would hold a thread forever; libuv's thread pool has four, shared with name resolution.
 * Here the request is a non-blocking socket watched by a uv_poll handle on the loop:
 *
 *  - libpq >= 17 (LIBPQ_HAS_ASYNC_CANCEL): PQcancelCreate/PQcancelStart, then PQcancelPoll on
 *    each event of PQcancelSocket, exactly like a connection handshake;
 *  - older libpq has no non-blocking cancel and no getter for the secret key, so the request is
 *    built here from the PGcancel that PQgetCancel returns. Its leading fields (the server's
 *    address, the backend's PID and key; libpq-int.h's struct pg_cancel, unchanged from
 *    PostgreSQL 10 to 17) are read through a mirror of that layout, and only after checking
 *    that they describe this very connection (the PID equals PQbackendPID, the address family is
 *    one libpq uses, the address length fits). A libpq whose layout differs fails the check,
 *    and then no request is sent: the connection's bound discards the connection instead.
 *
 * A request that has gone out is never hung up on before the peer closes it, except at its
 * bound: a pooler (PgBouncer) forwards it on a connection of its own, and PgBouncer 1.18 dies
 * when that forward completes for a client that has already hung up. So when the connection
 * that asked is discarded or closed, its request is detached (rt__db_cancel_detach), not
 * dropped: it keeps its socket until the peer closes it or cancel_timeout_ms, counted from when
 * it started, has passed; a detached request has a timer of its own for that bound (while the
 * connection waits, the connection's bound does the timing, and discards the connection when it
 * expires, which then leaves the detached request nothing or next to nothing of its time).
 * Its handles count in the pool's watches, so closing the pool waits for it, within that bound.
 * Nothing waits for a detached request: the connection that asked takes new work (or
 * reconnects) at once, and a request is for one backend (PID and key), so a late one can never
 * hit a newer backend.
 */
#include "db_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CANCEL_REQUEST_CODE ((1234u << 16) | 5678u)

struct db_cancel {
    uv_poll_t poll;
    uv_timer_t timer; /* the bound of a detached request */
    rt_db *db;
    db_conn *conn; /* NULL once detached */
    int fd;
    uint64_t deadline; /* loop time: started + cancel_timeout_ms */
#ifdef LIBPQ_HAS_ASYNC_CANCEL
    PGcancelConn *pc;
#else
    uint32_t pkt[4];
    bool sent;
#endif
    bool polling; /* poll initialised: it must be closed */
    bool timing;  /* timer initialised: it must be closed */
    bool ended;   /* its handles are closing: nothing more is done for it */
    int closing;  /* handles whose close callback has not come yet */
};

static void cancel_close_socket(db_cancel *k);

static void cancel_closed(uv_handle_t *h)
{
    db_cancel *k = h->data;
    rt_db *db = k->db;

    db->watches--;
    if (--k->closing > 0)
        return;
    cancel_close_socket(k);
    rt_free(k);
    rt__db_maybe_closed(db);
}

/* The socket of k, closed (libpq >= 17: with everything else PQcancelFinish frees). */
static void cancel_close_socket(db_cancel *k)
{
#ifdef LIBPQ_HAS_ASYNC_CANCEL
    if (k->pc != NULL)
        PQcancelFinish(k->pc);
#else
    if (k->fd >= 0)
        close(k->fd);
#endif
}

/* Releases k. A polled socket is closed only once its handle is (epoll must let go of it
 * first); uv_close stops the polling at once, so nothing more is delivered for k. */
static void cancel_free(db_cancel *k)
{
    k->conn = NULL;
    k->ended = true;
    if (k->polling) {
        k->closing++;
        uv_close((uv_handle_t *)&k->poll, cancel_closed);
    }
    if (k->timing) {
        k->closing++;
        uv_close((uv_handle_t *)&k->timer, cancel_closed);
    }
    if (k->closing > 0)
        return;
    cancel_close_socket(k);
    rt_free(k);
}

/* The request ended: landed (the server closed it) or failed. */
static void cancel_end(db_cancel *k, bool landed)
{
    db_conn *c = k->conn;

    if (c != NULL)
        c->cancel = NULL;
    cancel_free(k);
    if (c != NULL)
        rt__db_conn_cancel_done(c, landed);
}

static void cancel_on_poll(uv_poll_t *h, int status, int events);

static int cancel_watch(db_cancel *k, int events)
{
    if (!k->polling) {
        int err = uv_poll_init(k->db->loop, &k->poll, k->fd);

        if (err < 0)
            return err;
        k->polling = true;
        k->poll.data = k;
        k->db->watches++;
    }
    return uv_poll_start(&k->poll, events, cancel_on_poll);
}

#ifdef LIBPQ_HAS_ASYNC_CANCEL

static void cancel_on_poll(uv_poll_t *h, int status, int events)
{
    db_cancel *k = rt_container_of(h, db_cancel, poll);
    PostgresPollingStatusType r;

    (void)events;
    if (k->ended)
        return;
    if (status < 0) {
        cancel_end(k, false);
        return;
    }
    r = PQcancelPoll(k->pc);
    if (r == PGRES_POLLING_OK || r == PGRES_POLLING_FAILED) {
        cancel_end(k, r == PGRES_POLLING_OK);
        return;
    }
    /* The request goes to the one address the connection uses: its socket never changes. */
    if (PQcancelSocket(k->pc) != k->fd ||
        cancel_watch(k, r == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE) < 0)
        cancel_end(k, false);
}

static int cancel_open(db_cancel *k, PGconn *pg)
{
    k->pc = PQcancelCreate(pg);
    if (k->pc == NULL)
        return UV_ENOMEM;
    if (!PQcancelStart(k->pc))
        return UV_EIO;
    k->fd = PQcancelSocket(k->pc);
    if (k->fd < 0)
        return UV_EBADF;
    /* libpq's rule, as for PQconnectStart: act as if the poll had asked for writability. */
    return cancel_watch(k, UV_WRITABLE);
}

#else /* !LIBPQ_HAS_ASYNC_CANCEL */

/* The leading fields of libpq's struct pg_cancel (libpq-int.h, PostgreSQL 10 to 17). */
struct db_pgcancel_head {
    struct {
        struct sockaddr_storage addr;
        socklen_t salen;
    } raddr;
    int be_pid;
    int be_key;
};

static void cancel_on_poll(uv_poll_t *h, int status, int events)
{
    db_cancel *k = rt_container_of(h, db_cancel, poll);
    char buf[64];
    ssize_t n;

    if (k->ended)
        return;
    if (status < 0) {
        cancel_end(k, false);
        return;
    }
    if (!k->sent) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);

        if (!(events & UV_WRITABLE))
            return;
        if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0 ||
            send(k->fd, k->pkt, sizeof(k->pkt), MSG_NOSIGNAL) != (ssize_t)sizeof(k->pkt)) {
            cancel_end(k, false);
            return;
        }
        k->sent = true;
        if (cancel_watch(k, UV_READABLE) < 0)
            cancel_end(k, false);
        return;
    }
    /* The server sends nothing back: it closes once it has acted on the request. */
    do
        n = recv(k->fd, buf, sizeof(buf), 0);
    while (n > 0);
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        cancel_end(k, n == 0);
}

static int cancel_open(db_cancel *k, PGconn *pg)
{
    PGcancel *pc = PQgetCancel(pg);
    struct db_pgcancel_head head;
    int family;

    if (pc == NULL)
        return UV_ENOMEM;
    memcpy(&head, pc, sizeof(head));
    PQfreeCancel(pc);
    family = head.raddr.addr.ss_family;
    if (PQlibVersion() >= 180000 || head.be_pid != PQbackendPID(pg) || head.be_pid == 0 ||
        head.raddr.salen == 0 || head.raddr.salen > sizeof(head.raddr.addr) ||
        (family != AF_INET && family != AF_INET6 && family != AF_UNIX))
        return UV_ENOTSUP;
    k->pkt[0] = htonl(16);
    k->pkt[1] = htonl(CANCEL_REQUEST_CODE);
    k->pkt[2] = htonl((uint32_t)head.be_pid);
    k->pkt[3] = htonl((uint32_t)head.be_key);
    k->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (k->fd < 0)
        return uv_translate_sys_error(errno);
    if (connect(k->fd, (struct sockaddr *)&head.raddr.addr, head.raddr.salen) != 0 &&
        errno != EINPROGRESS)
        return uv_translate_sys_error(errno);
    return cancel_watch(k, UV_WRITABLE);
}

#endif /* LIBPQ_HAS_ASYNC_CANCEL */

int rt__db_cancel_start(db_conn *c)
{
    db_cancel *k;
    int err;

    assert(c->cancel == NULL && c->pg != NULL);
    k = rt_calloc(1, sizeof(*k));
    if (k == NULL)
        return UV_ENOMEM;
    k->db = c->db;
    k->fd = -1;
    k->deadline = uv_now(c->db->loop) + c->db->cfg.cancel_timeout_ms;
    err = cancel_open(k, c->pg);
    if (err < 0) {
        cancel_free(k);
        return err;
    }
    k->conn = c;
    c->cancel = k;
    return 0;
}

/* A detached request reached its bound: it is hung up on. */
static void cancel_on_bound(uv_timer_t *t)
{
    db_cancel *k = t->data;

    if (!k->ended)
        cancel_end(k, false);
}

void rt__db_cancel_detach(db_conn *c)
{
    db_cancel *k = c->cancel;
    uint64_t now;

    if (k == NULL)
        return;
    c->cancel = NULL;
    k->conn = NULL;
    if (!k->polling) {
        cancel_free(k);
        return;
    }
    now = uv_now(k->db->loop);
    uv_timer_init(k->db->loop, &k->timer);
    k->timer.data = k;
    k->timing = true;
    k->db->watches++;
    uv_timer_start(&k->timer, cancel_on_bound, k->deadline > now ? k->deadline - now : 0, 0);
}

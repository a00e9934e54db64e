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
 * Nothing here has a timer: the connection that asked arms its bound (cancel_timeout_ms) and,
 * when it expires, discards itself and abandons the request (rt__db_cancel_abandon), which
 * closes the socket at once. A request is for one backend (PID and key); a connection that is
 * discarded abandons its request, and a newer backend has another PID and key, so a late request
 * can never hit a newer backend.
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
    rt_db *db;
    db_conn *conn; /* NULL once abandoned or finished */
    int fd;
#ifdef LIBPQ_HAS_ASYNC_CANCEL
    PGcancelConn *pc;
#else
    uint32_t pkt[4];
    bool sent;
#endif
    bool polling; /* poll initialised: it must be closed */
};

static void cancel_close_socket(db_cancel *k);

static void cancel_closed(uv_handle_t *h)
{
    db_cancel *k = rt_container_of((uv_poll_t *)h, db_cancel, poll);
    rt_db *db = k->db;

    cancel_close_socket(k);
    rt_free(k);
    db->watches--;
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
    if (k->polling) {
        uv_close((uv_handle_t *)&k->poll, cancel_closed);
        return;
    }
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
    if (k->conn == NULL)
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

    if (k->conn == NULL)
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
    err = cancel_open(k, c->pg);
    if (err < 0) {
        cancel_free(k);
        return err;
    }
    k->conn = c;
    c->cancel = k;
    return 0;
}

void rt__db_cancel_abandon(db_conn *c)
{
    db_cancel *k = c->cancel;

    if (k == NULL)
        return;
    c->cancel = NULL;
    cancel_free(k);
}

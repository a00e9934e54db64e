/* SPDX-License-Identifier: MIT */
/*
 * e2e.h - running the built binary and talking real HTTP to it, for the end-to-end tests.
 *
 * A test starts the service ($HINDSIGHT_BIN) as a child process on a free port, with the
 * database from TEST_DATABASE_URL when that is set, its stderr (the log) going to a file the test
 * can read, and waits until /healthz answers. Requests go through libcurl, one easy handle per
 * request, so every request is a real TCP exchange with the real server.
 */
#ifndef HS_E2E_H
#define HS_E2E_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct e2e_proc {
    pid_t pid;
    int port;
    char log_path[256];
} e2e_proc;

typedef struct e2e_resp {
    long status;
    char *body; /* NUL-terminated; owned */
    size_t body_len;
    char *headers; /* raw header block, NUL-terminated; owned */
    double total_s;
    int curl_error; /* CURLE_OK when the exchange completed */
} e2e_resp;

/** A TCP port nobody listens on right now (bound to 0, read back, closed). */
int e2e_free_port(void);

/**
 * Starts the service with extra environment entries env ("NAME=value", NULL-terminated; may be
 * NULL) and extra argv entries args (NULL-terminated; may be NULL). PORT, LOG_LEVEL (info) and
 * DATABASE_URL (from TEST_DATABASE_URL, when set and not overridden in env) are provided. With
 * wait_ready, waits up to 60 s for /healthz to answer 200 and fails the test otherwise.
 */
void e2e_start(e2e_proc *p, const char *const *env, const char *const *args, bool wait_ready);

/** Sends sig to the service. */
void e2e_signal(e2e_proc *p, int sig);

/**
 * Waits up to timeout_ms for the service to exit; returns its exit status (or 128+signal), or -1
 * on timeout (then it is killed).
 */
int e2e_wait_exit(e2e_proc *p, int timeout_ms);

/** Stops the service with SIGTERM and asserts it exits 0 within 15 s. */
void e2e_stop(e2e_proc *p);

/**
 * Kills (SIGKILL) and reaps every service this process started that is still running. Group
 * teardowns call it, so a test that fails half-way (a failed assertion skips its own e2e_stop)
 * leaves no server behind.
 */
void e2e_kill_all(void);

/** The service's log so far (owned by the caller; free it). */
char *e2e_log(const e2e_proc *p);

/**
 * The log line of the request whose id is rid (its "event":"request" line), waiting up to
 * timeout_ms for it: the line is written when MHD reports the request complete, which may come
 * just after the answer. Returns a copy without the newline (free it), or NULL.
 */
char *e2e_request_line(const e2e_proc *p, const char *rid, int timeout_ms);

/**
 * One request: method, path (with query), body (may be NULL), and extra headers
 * ("Name: value", NULL-terminated; may be NULL). Fills r; release with e2e_resp_free.
 */
void e2e_request(const e2e_proc *p, const char *method, const char *path, const char *body,
                 const char *const *headers, e2e_resp *r);

/** GET path. */
void e2e_get(const e2e_proc *p, const char *path, e2e_resp *r);

/** The value of response header name (case-insensitive) copied into out; false if absent. */
bool e2e_header(const e2e_resp *r, const char *name, char *out, size_t cap);

void e2e_resp_free(e2e_resp *r);

/**
 * The value of an unlabelled series of GET /metrics (name as rendered, e.g.
 * "hs_http_requests_in_flight"), or -1 when the answer is not a 200 or has no such series.
 */
long long e2e_metric(const e2e_proc *p, const char *name);

/**
 * Polls e2e_metric until it reads want or timeout_ms have passed; returns what it read last.
 * The /metrics request counts itself in hs_http_requests_in_flight.
 */
long long e2e_wait_metric(const e2e_proc *p, const char *name, long long want, int timeout_ms);

/** Milliseconds on a monotonic clock. */
uint64_t e2e_now_ms(void);

/** Sleeps ms milliseconds. */
void e2e_sleep_ms(int ms);

/**
 * The major version of the libmicrohttpd the service binary runs with, from its --version: 0
 * for 0.9.x, 1 for 1.0.x. With 1 the library refuses some malformed heads itself, with its own
 * HTML 400 (docs/architecture.md, "Facts about our dependencies").
 */
int e2e_library_major(void);

/** A connected TCP socket to the service, or -1. */
int e2e_connect(const e2e_proc *p);

/**
 * Waits up to timeout_ms for the peer to close fd (read returns 0 or an error), discarding any
 * data; returns the elapsed ms, or -1 if it stayed open.
 */
int e2e_wait_closed(int fd, int timeout_ms);

#endif /* HS_E2E_H */

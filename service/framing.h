/* SPDX-License-Identifier: MIT */
/*
 * framing.h - what RFC 9112 forbids in a request's head, checked before anything is routed.
 *
 * A request whose framing two parsers could read differently (Content-Length with
 * Transfer-Encoding, two Content-Lengths, a field name with whitespace before its colon, an
 * obs-fold line, a transfer coding other than chunked) is how a body gets smuggled in as a
 * second request on a kept-alive connection. libmicrohttpd 0.9.75 accepts all of these, so the
 * server checks the parsed head itself on the first call of its access handler and answers a
 * violation with one 400 (501 for an unknown transfer coding) and Connection: close; the body is
 * never read.
 *
 * The functions here are pure: they look at strings and pointers they are given and keep
 * nothing, so the unit tests drive them without a socket.
 */
#ifndef SVC_FRAMING_H
#define SVC_FRAMING_H

#include <stdbool.h>
#include <stddef.h>

/* One field of the request head as the parser stored it (all borrowed). */
typedef struct svc_header_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} svc_header_field;

/* A rejected head: the status to answer and why (a literal). status 0 means accepted. */
typedef struct svc_framing_error {
    int status;
    const char *message;
} svc_framing_error;

/**
 * Checks the head's fields: every name a token; no NUL, CR or LF in a value; at most one
 * Content-Length value, 1*DIGIT; Transfer-Encoding only as exactly `chunked` (else 501) and never
 * with Content-Length; exactly one Host when http11. Returns true when accepted; else fills *err.
 */
bool svc_framing_check_fields(const svc_header_field *f, size_t n, bool http11,
                              svc_framing_error *err);

/**
 * libmicrohttpd 0.9.75 only: finds what its parser hides in the stored fields. It reports an
 * obs-fold line by gluing the continuation to the field's NAME (so the name moves away from its
 * value), and a raw NUL in a value by ending the value there; a field it parsed from one
 * CRLF-terminated line has its value right after `name` `\0` OWS and followed by `\0\0` (the CRLF,
 * zeroed). Anything else is rejected with 400. f[i] must point into the parser's buffer.
 */
bool svc_framing_check_layout(const svc_header_field *f, size_t n, svc_framing_error *err);

/**
 * Checks the request target as the client sent it (before percent-decoding): no `%00` anywhere,
 * no `%2F` in the path (an encoded slash is never a path separator, and no route has one inside
 * a segment). Returns true when accepted; else fills *err with a 400.
 */
bool svc_framing_check_target(const char *raw, svc_framing_error *err);

/**
 * The path to route for a decoded target: the target itself in origin form, or what follows
 * `scheme://authority` in absolute form ("/" when nothing does). Borrowed from url.
 */
const char *svc_framing_origin_path(const char *url);

#endif /* SVC_FRAMING_H */

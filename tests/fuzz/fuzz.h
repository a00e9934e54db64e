/* SPDX-License-Identifier: MIT */
/*
 * fuzz.h - what every fuzz target shares: a request built without a server, the check that an
 * answer is a clean 4xx in the API's error shape, and how a target reports a broken invariant.
 *
 * A target is one LLVMFuzzerTestOneInput(data, size) in fuzz_<name>.c. The same file links either
 * with libFuzzer (clang, HS_FUZZ=ON) or with standalone.c, the replay-and-mutate driver that runs
 * as a ctest test with any compiler. Either driver learns of a failure the same way: a target
 * calls fuzz_fail (or trips a sanitizer), the process aborts, and the driver keeps the input.
 *
 * The requests here are the ones the unit tests build: svc_request_init with no app and no
 * connection (service/request_int.h), so header lookups find nothing and nothing touches a loop.
 */
#ifndef HS_FUZZ_H
#define HS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "service/request_int.h"

/* The entry point of every target, as libFuzzer calls it. Always returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/** Reports a broken invariant with the target's message and aborts. Never returns. */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Checks cond, naming it in the failure message. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail("%s:%d: %s", __FILE__, __LINE__, #cond);                                     \
    } while (0)

/**
 * Checks that req carries an error answer in the API's shape: status 400..499, a JSON body that
 * is exactly {"error":{"code":<non-empty string>,"message":<string>}}. Fails otherwise.
 */
void fuzz_expect_client_error(const svc_request *req);

/**
 * Checks the outcome of a parsing helper: err == 0 with no response set, or err == UV_EINVAL
 * with a client error (fuzz_expect_client_error). Then clears the response, so the next helper
 * starts from none.
 */
void fuzz_expect_helper(svc_request *req, int err);

/**
 * Copies data[0..size) into a new NUL-terminated string; bytes after an embedded NUL are lost,
 * as they are in a C string the server hands over. Aborts without memory (a fuzz run has no
 * better answer).
 */
char *fuzz_strndup(const uint8_t *data, size_t size);

#endif /* HS_FUZZ_H */

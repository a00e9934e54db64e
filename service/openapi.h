/* SPDX-License-Identifier: MIT */
/*
 * openapi.h - the OpenAPI 3.1 document of the HTTP contract, embedded in the binary.
 *
 * The repository's openapi.json is the machine-readable form of API.md. The build embeds it
 * (service/embed_file.cmake), so GET /openapi.json answers with the contract of the very binary
 * that serves it, and a deployed instance never drifts from its own description.
 */
#ifndef SVC_OPENAPI_H
#define SVC_OPENAPI_H

#include <stddef.h>

/* The document's bytes, NUL-terminated (the NUL is not counted in svc_openapi_json_len). */
extern const char svc_openapi_json[];
extern const size_t svc_openapi_json_len;

#endif /* SVC_OPENAPI_H */

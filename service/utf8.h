/* SPDX-License-Identifier: MIT */
/*
 * utf8.h - is this a valid UTF-8 sequence? One answer for every place that copies a client's
 * bytes into JSON: error messages (jansson refuses invalid UTF-8, which would turn a 404 into a
 * 500) and log lines (a log shipper refuses the whole line).
 */
#ifndef SVC_UTF8_H
#define SVC_UTF8_H

#include <stddef.h>
#include <stdint.h>

/**
 * The length (1..4) of the valid UTF-8 sequence that starts at p, or 0 when the byte at p does
 * not begin one (stray continuation byte, overlong form, surrogate, beyond U+10FFFF, or cut
 * short). p points into a NUL-terminated string and *p is not NUL; a NUL is never a continuation
 * byte, so this never reads past the string.
 */
static inline size_t svc_utf8_len(const unsigned char *p)
{
    size_t n;
    size_t i;
    uint32_t cp;

    if (*p < 0x80)
        return 1;
    if (*p >= 0xc2 && *p <= 0xdf) {
        n = 2;
        cp = *p & 0x1f;
    } else if (*p >= 0xe0 && *p <= 0xef) {
        n = 3;
        cp = *p & 0x0f;
    } else if (*p >= 0xf0 && *p <= 0xf4) {
        n = 4;
        cp = *p & 0x07;
    } else {
        return 0;
    }
    for (i = 1; i < n && (p[i] & 0xc0) == 0x80; i++)
        cp = (cp << 6) | (p[i] & 0x3f);
    if (i < n || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

#endif /* SVC_UTF8_H */

/* SPDX-License-Identifier: MIT */
/*
 * framing.c - the request head checks of framing.h.
 */
#include "service/framing.h"

#include <string.h>
#include <strings.h>

static bool reject(svc_framing_error *err, int status, const char *message)
{
    err->status = status;
    err->message = message;
    return false;
}

/* RFC 9110 section 5.6.2: tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool name_is(const svc_header_field *f, const char *name)
{
    size_t len = strlen(name);

    return f->name_len == len && strncasecmp(f->name, name, len) == 0;
}

static bool value_is(const svc_header_field *f, const char *v)
{
    size_t len = strlen(v);

    return f->value_len == len && strncasecmp(f->value, v, len) == 0;
}

bool svc_framing_check_fields(const svc_header_field *f, size_t n, bool http11,
                              svc_framing_error *err)
{
    const svc_header_field *cl = NULL;
    size_t hosts = 0, te = 0;
    bool te_chunked = true;

    for (size_t i = 0; i < n; i++) {
        if (f[i].name_len == 0)
            return reject(err, 400, "a header field has an empty name");
        for (size_t j = 0; j < f[i].name_len; j++) {
            if (!is_tchar((unsigned char)f[i].name[j]))
                return reject(err, 400,
                              "a header field name is not a token (whitespace before the colon, "
                              "or a folded line)");
        }
        if (memchr(f[i].value, '\0', f[i].value_len) != NULL ||
            memchr(f[i].value, '\r', f[i].value_len) != NULL ||
            memchr(f[i].value, '\n', f[i].value_len) != NULL)
            return reject(err, 400, "a header field value contains NUL, CR or LF");
        if (name_is(&f[i], "Content-Length")) {
            if (f[i].value_len == 0)
                return reject(err, 400, "Content-Length is not a decimal number");
            for (size_t j = 0; j < f[i].value_len; j++) {
                if (f[i].value[j] < '0' || f[i].value[j] > '9')
                    return reject(err, 400, "Content-Length is not a decimal number");
            }
            if (cl != NULL && (cl->value_len != f[i].value_len ||
                               memcmp(cl->value, f[i].value, f[i].value_len) != 0))
                return reject(err, 400, "two different Content-Length values");
            cl = &f[i];
        } else if (name_is(&f[i], "Transfer-Encoding")) {
            te++;
            if (!value_is(&f[i], "chunked"))
                te_chunked = false;
        } else if (name_is(&f[i], "Host")) {
            hosts++;
        }
    }
    if (te > 0) {
        if (cl != NULL)
            return reject(err, 400, "Content-Length and Transfer-Encoding together");
        if (!http11)
            return reject(err, 400, "Transfer-Encoding in a request older than HTTP/1.1");
        if (!te_chunked)
            return reject(err, 501, "the only transfer coding supported is chunked");
        if (te > 1)
            return reject(err, 400, "chunked applied more than once");
    }
    if (hosts > 1)
        return reject(err, 400, "more than one Host header");
    if (http11 && hosts == 0)
        return reject(err, 400, "an HTTP/1.1 request needs a Host header");
    return true;
}

bool svc_framing_check_layout(const svc_header_field *f, size_t n, svc_framing_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = f[i].name + f[i].name_len;
        const char *v = f[i].value;

        /* name '\0' (the colon) OWS value: a folded field's name was copied elsewhere. */
        if (v <= p || *p != '\0')
            return reject(err, 400, "a folded header line (obs-fold)");
        for (p++; p < v; p++) {
            if (*p != ' ' && *p != '\t')
                return reject(err, 400, "a folded header line (obs-fold)");
        }
        /* value '\0' '\0': the CRLF, zeroed. A NUL inside the value ends it earlier, so what
         * follows its first '\0' is the rest of the value, not the LF. (A bare LF looks the
         * same and is refused with it: RFC 9112 lets a server insist on CRLF.) */
        if (v[f[i].value_len] != '\0' || v[f[i].value_len + 1] != '\0')
            return reject(err, 400, "a header field value contains NUL, or a line ends without CR");
    }
    return true;
}

bool svc_framing_check_target(const char *raw, svc_framing_error *err)
{
    const char *query = strchr(raw, '?');

    for (const char *p = raw; (p = strchr(p, '%')) != NULL; p++) {
        if (p[1] == '0' && p[2] == '0')
            return reject(err, 400, "the target contains %00");
        if ((query == NULL || p < query) && p[1] == '2' && (p[2] == 'F' || p[2] == 'f'))
            return reject(err, 400, "an encoded slash (%2F) in the path");
    }
    return true;
}

const char *svc_framing_origin_path(const char *url)
{
    const char *p;

    if (strncasecmp(url, "http://", 7) == 0)
        p = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        p = url + 8;
    else
        return url;
    p = strchr(p, '/');
    return p != NULL ? p : "/";
}

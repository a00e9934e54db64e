/* SPDX-License-Identifier: MIT */
/*
 * log.c - the structured log line builder (see log.h).
 *
 * JSON lines look like {"ts":"2026-01-01T10:00:00.123Z","level":"info","event":"request",...};
 * text lines like `2026-01-01T10:00:00.123Z INFO request key=value ...`, with values quoted only
 * when they contain a space, a quote or '='. Every line goes to stderr, which keeps stdout free
 * for what --help and --version print.
 */
#include "service/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "service/utf8.h"

static svc_log_level threshold = SVC_LOG_INFO;
static svc_log_format format = SVC_LOG_JSON;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_upper[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void svc_log_setup(svc_log_level level, svc_log_format fmt)
{
    threshold = level;
    format = fmt;
}

bool svc_log_enabled(svc_log_level level)
{
    return level >= threshold;
}

int svc_log_level_parse(const char *s, svc_log_level *out)
{
    for (int i = SVC_LOG_DEBUG; i <= SVC_LOG_ERROR; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (svc_log_level)i;
            return 0;
        }
    }
    return UV_EINVAL;
}

int svc_log_format_parse(const char *s, svc_log_format *out)
{
    if (strcmp(s, "json") == 0)
        *out = SVC_LOG_JSON;
    else if (strcmp(s, "text") == 0)
        *out = SVC_LOG_TEXT;
    else
        return UV_EINVAL;
    return 0;
}

/* Room kept for the closing brace, "truncated" marker and newline. */
#define RESERVE 32

static void put(svc_log_line *l, const char *s, size_t n)
{
    if (l->truncated)
        return;
    if (l->len + n > sizeof(l->buf) - RESERVE) {
        l->truncated = true;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void putf(svc_log_line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void putf(svc_log_line *l, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        put(l, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Client bytes (a path, a method) may be anything: control characters are escaped, and a byte
 * that does not begin valid UTF-8 becomes U+FFFD, so every line stays valid JSON. */
static void put_json_string(svc_log_line *l, const char *s)
{
    put(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0';) {
        size_t n = svc_utf8_len(p);

        if (n == 0) {
            put(l, "\\ufffd", 6);
            p++;
            continue;
        }
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            put(l, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            putf(l, "\\u%04x", *p);
        } else {
            put(l, (const char *)p, n);
        }
        p += n;
    }
    put(l, "\"", 1);
}

/* key=value text: a value with a space, a quote, an equals sign or a control character is
 * quoted, and control characters inside become spaces, so one event stays one line. */
static void put_text_value(svc_log_line *l, const char *s)
{
    bool plain = s[0] != '\0';

    for (const unsigned char *p = (const unsigned char *)s; plain && *p != '\0'; p++)
        plain = *p > 0x20 && *p != '"' && *p != '=' && *p != 0x7f;
    if (plain) {
        put(l, s, strlen(s));
        return;
    }
    put(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            put(l, "\\", 1);
        put(l, *p < 0x20 || *p == 0x7f ? " " : (const char *)p, 1);
    }
    put(l, "\"", 1);
}

static void put_key(svc_log_line *l, const char *key)
{
    if (format == SVC_LOG_JSON) {
        put(l, ",\"", 2);
        put(l, key, strlen(key));
        put(l, "\":", 2);
    } else {
        put(l, " ", 1);
        put(l, key, strlen(key));
        put(l, "=", 1);
    }
}

/* Writes the time as 2026-01-01T10:00:00.123Z (24 bytes and a NUL) from clock_gettime and plain
 * arithmetic (days to civil date, proleptic Gregorian), without gmtime_r/strftime: those take
 * glibc's time zone lock, and svc_log_begin must stay usable from a signal handler. */
static size_t format_ts(char ts[32])
{
    struct timespec now;
    int64_t secs, days, sod, era, doe, yoe, doy, mp, y, m, d;
    int64_t f[7];
    const int width[7] = {4, 2, 2, 2, 2, 2, 3};
    const char sep[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    size_t n = 0;

    clock_gettime(CLOCK_REALTIME, &now);
    secs = (int64_t)now.tv_sec;
    days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    sod = secs - days * 86400;
    days += 719468;
    era = (days >= 0 ? days : days - 146096) / 146097;
    doe = days - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = yoe + era * 400 + (m <= 2);
    f[0] = y;
    f[1] = m;
    f[2] = d;
    f[3] = sod / 3600;
    f[4] = sod / 60 % 60;
    f[5] = sod % 60;
    f[6] = (int64_t)now.tv_nsec / 1000000;
    for (int i = 0; i < 7; i++) {
        int64_t v = f[i] < 0 ? 0 : f[i];

        for (int k = width[i] - 1; k >= 0; k--) {
            ts[n + (size_t)k] = (char)('0' + v % 10);
            v /= 10;
        }
        n += (size_t)width[i];
        ts[n++] = sep[i];
    }
    ts[n] = '\0';
    return n;
}

bool svc_log_begin(svc_log_line *l, svc_log_level level, const char *event)
{
    char ts[32];

    if (level < threshold)
        return false;
    l->len = 0;
    l->truncated = false;
    format_ts(ts);
    if (format == SVC_LOG_JSON) {
        put(l, "{\"ts\":\"", 7);
        put(l, ts, strlen(ts));
        put(l, "\",\"level\":\"", 11);
        put(l, level_names[level], strlen(level_names[level]));
        put(l, "\",\"event\":", 10);
        put_json_string(l, event);
    } else {
        put(l, ts, strlen(ts));
        put(l, " ", 1);
        put(l, level_upper[level], strlen(level_upper[level]));
        put(l, " ", 1);
        put(l, event, strlen(event));
    }
    return true;
}

/* A field that does not fit is dropped whole, so the line stays well-formed. */
static void field_end(svc_log_line *l, size_t mark, bool was_truncated)
{
    if (l->truncated && !was_truncated)
        l->len = mark;
}

void svc_log_str(svc_log_line *l, const char *key, const char *value)
{
    size_t mark = l->len;
    bool was = l->truncated;

    put_key(l, key);
    if (format == SVC_LOG_JSON) {
        if (value == NULL)
            put(l, "null", 4);
        else
            put_json_string(l, value);
    } else {
        put_text_value(l, value == NULL ? "-" : value);
    }
    field_end(l, mark, was);
}

void svc_log_int(svc_log_line *l, const char *key, int64_t value)
{
    size_t mark = l->len;
    bool was = l->truncated;

    put_key(l, key);
    putf(l, "%lld", (long long)value);
    field_end(l, mark, was);
}

void svc_log_ms(svc_log_line *l, const char *key, double value)
{
    size_t mark = l->len;
    bool was = l->truncated;

    put_key(l, key);
    putf(l, "%.3f", value);
    field_end(l, mark, was);
}

void svc_log_end(svc_log_line *l)
{
    ssize_t w;
    size_t off = 0;

    /* put() kept RESERVE bytes free for exactly this tail. */
    if (l->truncated) {
        const char *mark = format == SVC_LOG_JSON ? ",\"truncated\":true" : " truncated=true";

        memcpy(l->buf + l->len, mark, strlen(mark));
        l->len += strlen(mark);
    }
    if (format == SVC_LOG_JSON)
        l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    while (off < l->len) {
        w = write(STDERR_FILENO, l->buf + off, l->len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}

void svc_log_msg(svc_log_level level, const char *event, const char *msg)
{
    svc_log_line l;

    if (!svc_log_begin(&l, level, event))
        return;
    svc_log_str(&l, "msg", msg);
    svc_log_end(&l);
}

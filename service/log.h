/* SPDX-License-Identifier: MIT */
/*
 * log.h - structured log lines on stderr: one JSON object per line, or key=value text.
 *
 * A line is built field by field into a fixed buffer on the caller's stack and written with one
 * write(2), so lines from the loop never interleave and building one never allocates (the
 * per-request line is on the hot path). A line that would not fit is cut at a field boundary and
 * marked "truncated": losing the tail of a log line beats losing the line.
 *
 *     svc_log_line l;
 *     if (svc_log_begin(&l, SVC_LOG_INFO, "shutdown")) {
 *         svc_log_str(&l, "step", "drain");
 *         svc_log_int(&l, "in_flight", n);
 *         svc_log_end(&l);
 *     }
 *
 * The level and format are process-wide, set once at startup before any thread exists.
 *
 * svc_log_begin, svc_log_str (for values without control characters) and svc_log_end call only
 * async-signal-safe functions (the time comes from clock_gettime, formatted by hand), so a signal
 * handler may write a line with them; svc_log_int and svc_log_ms format with snprintf and may not.
 */
#ifndef SVC_LOG_H
#define SVC_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum svc_log_level {
    SVC_LOG_DEBUG = 0,
    SVC_LOG_INFO,
    SVC_LOG_WARN,
    SVC_LOG_ERROR
} svc_log_level;

typedef enum svc_log_format { SVC_LOG_JSON = 0, SVC_LOG_TEXT } svc_log_format;

typedef struct svc_log_line {
    size_t len;
    bool truncated;
    char buf[1024];
} svc_log_line;

/** Sets the threshold and the format. Startup only. */
void svc_log_setup(svc_log_level level, svc_log_format format);

/** True when lines at level are written (skip building a line nobody reads). */
bool svc_log_enabled(svc_log_level level);

/**
 * Starts a line with the time, the level and the event name (borrowed for the call). Returns
 * false, doing nothing, when level is below the threshold; the other calls are then not made.
 */
bool svc_log_begin(svc_log_line *l, svc_log_level level, const char *event);

/** Appends a string field (escaped as needed; NULL is written as null / "-"). */
void svc_log_str(svc_log_line *l, const char *key, const char *value);

/** Appends an integer field. */
void svc_log_int(svc_log_line *l, const char *key, int64_t value);

/** Appends a number field with three decimals (durations in milliseconds). */
void svc_log_ms(svc_log_line *l, const char *key, double value);

/** Finishes the line and writes it to stderr in one write. */
void svc_log_end(svc_log_line *l);

/** Convenience: a line with only an event and a message string. */
void svc_log_msg(svc_log_level level, const char *event, const char *msg);

/** Parses "debug|info|warn|error"; returns 0 or UV_EINVAL. */
int svc_log_level_parse(const char *s, svc_log_level *out);

/** Parses "json|text"; returns 0 or UV_EINVAL. */
int svc_log_format_parse(const char *s, svc_log_format *out);

#endif /* SVC_LOG_H */

/*
 * log.h -- one line per event, to stderr, as text (`<id> <event> key=value ...`)
 * or as JSON lines (log.format = json), for the same calls.
 *
 * A line is built field by field and written whole: log_begin, log_str/log_uint
 * ..., log_end. Each thread formats into its own buffer; a worker turns on
 * batching and calls log_flush() once per loop turn, so a busy worker makes one
 * write(2) per turn instead of one per line.
 */
#ifndef RINGMX_CORE_LOG_H
#define RINGMX_CORE_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"

#define LOG_LINE_MAX   4096        /* longer lines are cut and end in "..." */
#define LOG_VALUE_MAX  1024        /* bytes of one value; longer ones end in "..." */
#define LOG_BUFFER_MAX (64 * 1024) /* per-thread batch before a forced flush */

struct log_line;

/* Process-wide settings, set once before any thread starts. */
void log_setup(enum config_log_level level, enum config_log_format format);

/* Names this thread in every line ("main", "w0", ...); batch: buffer until log_flush(). */
void log_thread(const char *name, bool batch);

/* Starts a line; returns NULL when level is filtered out (the other calls accept NULL). */
struct log_line *log_begin(enum config_log_level level, const char *queue_id, const char *event);
void log_str(struct log_line *l, const char *key, const char *value);
void log_uint(struct log_line *l, const char *key, uint64_t value);
void log_end(struct log_line *l);

/* A free-text message line (start-up, errors) with event "msg"-like text. */
void log_msg(enum config_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void log_flush(void);

#endif

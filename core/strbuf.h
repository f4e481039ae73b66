/*
 * strbuf.h -- a growable byte string with a hard limit, for control-socket replies
 * and other text built off the hot path.
 */
#ifndef RINGMX_CORE_STRBUF_H
#define RINGMX_CORE_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
	char *data; /* NUL-terminated when non-NULL */
	size_t len;
	size_t cap;
	size_t limit;  /* appends past this set `overflow` and are dropped */
	bool overflow; /* also set when memory runs out */
};

void strbuf_init(struct strbuf *sb, size_t limit);
void strbuf_free(struct strbuf *sb);
void strbuf_append(struct strbuf *sb, const char *s, size_t n);
void strbuf_puts(struct strbuf *sb, const char *s);
void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The JSON form of one byte inside a string literal: itself, \" or \\, or \u00XX for
 * control bytes and DEL (other bytes, UTF-8 included, pass as they are). Returns its
 * length (at most 6); out is not NUL-terminated.
 */
size_t strbuf_json_char(unsigned char c, char out[6]);

/* Appends s as a JSON string literal, quotes included. */
void strbuf_json_string(struct strbuf *sb, const char *s);

#endif

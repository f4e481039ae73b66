/* reply.h -- incremental SMTP reply parser for ringmx-bench (pure: bytes in, lines out).
 *
 * Feed bytes as they arrive; the parser stops after each complete reply line and reports
 * whether it was a continuation ("250-...") or the last line ("250 ..."). Lines longer than
 * REPLY_LINE_MAX, a missing or bad 3-digit code, or a code change inside a multi-line reply
 * are errors: the caller must drop the connection (the parser state is then undefined until
 * reply_parser_init). A bare LF ends a line too: we measure servers, we do not police them.
 */
#ifndef RINGMX_BENCH_REPLY_H
#define RINGMX_BENCH_REPLY_H

#include <stddef.h>
#include <stdint.h>

#define REPLY_LINE_MAX 1024 /* bytes of one reply line, CRLF excluded */

enum reply_status {
	REPLY_NEED_MORE = 0, /* all input consumed, no complete line yet */
	REPLY_LINE = 1,      /* a continuation line is in parser->line */
	REPLY_END = 2,       /* the last line of a reply is in parser->line */
};

enum reply_error {
	REPLY_ETOOLONG = 1,  /* a line exceeded REPLY_LINE_MAX */
	REPLY_EMALFORMED = 2 /* no valid code, or the code changed inside a reply */
};

struct reply_parser {
	int code;     /* code of the current reply (100..599), valid after a line */
	size_t len;   /* bytes in line */
	int in_reply; /* a continuation line was seen: the next line must repeat the code */
	int complete; /* line holds a finished line (reset at the next feed) */
	char line[REPLY_LINE_MAX + 1]; /* the line without CRLF, NUL-terminated */
};

void reply_parser_init(struct reply_parser *p);

/* Consumes bytes up to and including the end of the next complete line. Stores the number
 * of bytes used in *used. Returns enum reply_status, or -REPLY_ETOOLONG / -REPLY_EMALFORMED. */
int reply_parser_feed(struct reply_parser *p, const uint8_t *in, size_t len, size_t *used);

/* Text after "NNN " / "NNN-" of the line just returned (may be empty). */
const char *reply_parser_text(const struct reply_parser *p);

#endif

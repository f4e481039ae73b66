/*
 * fuzz_smtp_server.c -- libFuzzer target for the SMTP server state machine.
 *
 * The first 4 octets choose the session (flags, size, recipient and error
 * limits); the rest is client input in segments separated by "\0TLS\0", at
 * whose end a pending STARTTLS handshake completes. Each input runs twice, fed
 * whole and one octet at a time: the replies and events must be identical,
 * every reply line well formed, and every message within the size limit.
 *
 *   clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_smtp_server.c \
 *         core/smtp_server.c core/address.c
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem(), when built by hand without the project's flags */
#endif
#include "core/smtp_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_LOG_MAX (1024 * 1024) /* transcript bytes compared between the two runs */
#define FUZZ_HEADER  4
#define FUZZ_SEGMENT "\0TLS\0"
#define FUZZ_SEG_LEN 5

struct fuzz_log {
	char *buf;
	size_t len;
	unsigned events;
};

static void
fuzz_log(struct fuzz_log *l, const void *p, size_t n)
{
	if (n > FUZZ_LOG_MAX - l->len)
		n = FUZZ_LOG_MAX - l->len;
	memcpy(l->buf + l->len, p, n);
	l->len += n;
}

/* Every reply line is "NNN-text" or "NNN text" and the output ends with CRLF. */
static void
fuzz_output(struct smtp_server *s, struct fuzz_log *l)
{
	size_t len;
	const uint8_t *out = smtp_server_output(s, &len);

	if (len > 0 && (len < 6 || out[len - 2] != '\r' || out[len - 1] != '\n'))
		abort();
	for (size_t i = 0; i < len;) {
		const uint8_t *eol = memchr(out + i, '\n', len - i);

		if (out[i] < '2' || out[i] > '5' || (out[i + 3] != ' ' && out[i + 3] != '-'))
			abort();
		i = (size_t)(eol - out) + 1;
	}
	fuzz_log(l, out, len);
	smtp_server_output_consume(s, len);
}

static void
fuzz_event(struct smtp_server *s, const struct smtp_event *ev, size_t size_max, struct fuzz_log *l)
{
	static const enum smtp_store_result store[] = {SMTP_STORE_OK, SMTP_STORE_NOSPACE,
	                                               SMTP_STORE_ERROR};
	char mark[64];
	int n = snprintf(mark, sizeof(mark), "<ev %d %u>", (int)ev->type, l->events);

	if (ev->type != SMTP_EV_NONE)
		fuzz_log(l, mark, (size_t)n);
	switch (ev->type) {
	case SMTP_EV_RCPT:
		smtp_server_rcpt_done(s, l->events++ % 3 == 2 ? "550 5.1.1 No such user" : NULL);
		break;
	case SMTP_EV_MESSAGE:
		if (ev->envelope->body == NULL || ev->envelope->body_len > size_max ||
		    ev->envelope->rcpt_count == 0)
			abort();
		fuzz_log(l, ev->envelope->body, ev->envelope->body_len);
		smtp_server_message_done(s, store[l->events++ % 3], "QID");
		break;
	case SMTP_EV_NONE:
	case SMTP_EV_STARTTLS:
	case SMTP_EV_CLOSE:
		break;
	}
	fuzz_output(s, l);
}

static void
fuzz_feed(struct smtp_server *s, const uint8_t *in, size_t len, size_t size_max, struct fuzz_log *l)
{
	while (len > 0 && smtp_server_state(s) != SMTP_SERVER_CLOSING) {
		struct smtp_event ev;
		size_t used = smtp_server_feed(s, in, len, &ev);

		if (used > len || (used == 0 && ev.type == SMTP_EV_NONE))
			abort();
		fuzz_output(s, l);
		fuzz_event(s, &ev, size_max, l);
		in += used;
		len -= used;
	}
}

static void
fuzz_run(const uint8_t *data, size_t size, bool bytewise, struct fuzz_log *l)
{
	struct smtp_server_params params = {
	    .hostname = "mx.fuzz.test",
	    .starttls_offer = data[0] & 1,
	    .tls_required = data[0] & 2,
	    .auth_required = data[0] & 4,
	    .tls_active = data[0] & 8,
	    .bare_newline = data[0] & 16 ? SMTP_BARE_NEWLINE_REJECT : SMTP_BARE_NEWLINE_NORMALIZE,
	};
	struct smtp_server_limits limits = {
	    .message_size_max = (size_t)data[1] * 16 + 1,
	    .rcpt_count_max = data[2] % 8 + 1u,
	    .error_count_max = data[3] % 32 + 1u,
	};
	struct smtp_server *s = smtp_server_new(&params, &limits);
	const uint8_t *in = data + FUZZ_HEADER, *end = data + size;

	fuzz_output(s, l);
	while (in < end) {
		const uint8_t *seg = memmem(in, (size_t)(end - in), FUZZ_SEGMENT, FUZZ_SEG_LEN);
		size_t n = seg != NULL ? (size_t)(seg - in) : (size_t)(end - in);

		for (size_t i = 0; bytewise && i < n; i++)
			fuzz_feed(s, in + i, 1, limits.message_size_max, l);
		if (!bytewise)
			fuzz_feed(s, in, n, limits.message_size_max, l);
		if (smtp_server_state(s) == SMTP_SERVER_TLS_WAIT)
			smtp_server_tls_done(s);
		in += n + (seg != NULL ? FUZZ_SEG_LEN : 0);
	}
	smtp_server_timeout(s);
	fuzz_output(s, l);
	smtp_server_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_log whole = {.buf = malloc(FUZZ_LOG_MAX)};
	struct fuzz_log bytes = {.buf = malloc(FUZZ_LOG_MAX)};

	if (size >= FUZZ_HEADER) {
		fuzz_run(data, size, false, &whole);
		fuzz_run(data, size, true, &bytes);
		if (whole.len != bytes.len || memcmp(whole.buf, bytes.buf, whole.len) != 0)
			abort();
	}
	free(whole.buf);
	free(bytes.buf);
	return 0;
}

/*
 * test_smtp_server.c -- dialogue transcripts (tests/fixtures/smtp, *.txt), each
 * run with its input whole, one byte at a time and split in two at every
 * point; plus checks of limits that transcripts cannot express well.
 *
 * Transcript lines ("X: " prefix, then the text):
 *   # ...            comment (blank lines are ignored too)
 *   P: words         session set-up: starttls tls_required auth_required tls_active
 *                    reject host=NAME size=N rcpts=N errors=N
 *   C: bytes         client input; escapes \r \n \t \\ \xHH and \[N]c (c N times)
 *   S: text          one expected reply line (its CRLF implied)
 *   E: event         expected event: RCPT <addr> [params=...] | MESSAGE from=<a> to=<b>,<c>
 *                    [8bitmime] [smtputf8] [params=...] [rcpt_params=...|...] | STARTTLS |
 *                    CLOSE quit|errors|tls_required_quit
 *   B: bytes         expected body of the MESSAGE event before it (escapes as C:)
 *   A: answer        answer to the next RCPT (ok | a reply line) or MESSAGE event
 *                    (queued ID | nospace | error), in order
 *   X: action        tls_done | timeout | shutdown: done once the input before it is
 *                    fed; input after it is fed afterwards (it ends a "segment")
 *   K: counts        expected "commands=N errors=N messages=N rcpts=N/N helo=H
 *                    esmtp=0|1 state=NAME" at this point (also ends a segment)
 * Splits happen only inside a segment, as a client cannot send what comes after
 * a TLS handshake before it.
 */
#include "core/smtp_server.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/unit/check.h"

#define FIXTURE_DIR      "../fixtures/smtp"
#define TRANSCRIPT_LINES 512
#define TRANSCRIPT_BYTES (256 * 1024)
#define TRANSCRIPT_FILES 64
#define SEGMENTS_MAX     16
#define TRACE_LINE_MAX   (64 * 1024)
#define TRANSCRIPT_PATH  512



struct segment {
	size_t start, len; /* into transcript.input */
	char action[16];   /* "tls_done", "timeout", "shutdown", "counts" or "" */
};

struct transcript {
	char name[TRANSCRIPT_PATH];
	struct smtp_server_params params;
	struct smtp_server_limits limits;
	char host[SMTP_HELO_MAX + 1];
	uint8_t input[TRANSCRIPT_BYTES];
	size_t input_len;
	struct segment seg[SEGMENTS_MAX];
	size_t seg_count;
	char *expect[TRANSCRIPT_LINES];
	size_t expect_count;
	char *answer[TRANSCRIPT_LINES];
	size_t answer_count;
};

struct trace {
	char *line[TRANSCRIPT_LINES * 4];
	size_t count;
	char partial[TRACE_LINE_MAX];
	size_t partial_len;
	size_t answer_next;
};

static void trace_add(struct trace *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
trace_add(struct trace *t, const char *fmt, ...)
{
	char buf[TRACE_LINE_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (t->count < sizeof(t->line) / sizeof(t->line[0]))
		t->line[t->count++] = strdup(buf);
}

static void
trace_free(struct trace *t)
{
	for (size_t i = 0; i < t->count; i++)
		free(t->line[i]);
	t->count = 0;
}

/* Decodes the C:/B: escapes; returns the length or -1 on a malformed escape. */
static long
unescape(const char *text, uint8_t *out, size_t size)
{
	size_t n = 0;

	for (const char *p = text; *p != '\0'; p++) {
		unsigned v = (unsigned char)*p, count = 1;

		if (*p == '\\') {
			p++;
			if (*p == 'r')
				v = '\r';
			else if (*p == 'n')
				v = '\n';
			else if (*p == 't')
				v = '\t';
			else if (*p == '\\')
				v = '\\';
			else if (*p == 'x' && sscanf(p + 1, "%2x", &v) == 1)
				p += 2;
			else if (*p == '[' && sscanf(p + 1, "%u", &count) == 1 && strchr(p, ']'))
				p = strchr(p, ']') + 1, v = (unsigned char)*p;
			else
				return -1;
			if (*p == '\0')
				return -1;
		}
		if (n + count > size)
			return -1;
		memset(out + n, (int)v, count);
		n += count;
	}
	return (long)n;
}

static void
escape(const uint8_t *in, size_t len, char *out, size_t size)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n + 5 < size; i++) {
		if (in[i] == '\r')
			n += (size_t)snprintf(out + n, size - n, "\\r");
		else if (in[i] == '\n')
			n += (size_t)snprintf(out + n, size - n, "\\n");
		else if (in[i] == '\\')
			n += (size_t)snprintf(out + n, size - n, "\\\\");
		else if (in[i] < 0x20 || in[i] > 0x7e)
			n += (size_t)snprintf(out + n, size - n, "\\x%02x", in[i]);
		else
			out[n++] = (char)in[i];
	}
	out[n] = '\0';
}

static int
transcript_param(struct transcript *t, const char *word)
{
	unsigned long v;

	if (strcmp(word, "starttls") == 0)
		t->params.starttls_offer = true;
	else if (strcmp(word, "tls_required") == 0)
		t->params.tls_required = true;
	else if (strcmp(word, "auth_required") == 0)
		t->params.auth_required = true;
	else if (strcmp(word, "tls_active") == 0)
		t->params.tls_active = true;
	else if (strcmp(word, "reject") == 0)
		t->params.bare_newline = SMTP_BARE_NEWLINE_REJECT;
	else if (sscanf(word, "host=%255s", t->host) == 1)
		return 0;
	else if (sscanf(word, "size=%lu", &v) == 1)
		t->limits.message_size_max = v;
	else if (sscanf(word, "rcpts=%lu", &v) == 1)
		t->limits.rcpt_count_max = (unsigned)v;
	else if (sscanf(word, "errors=%lu", &v) == 1)
		t->limits.error_count_max = (unsigned)v;
	else
		return -1;
	return 0;
}

static void
transcript_end_segment(struct transcript *t, const char *action)
{
	struct segment *seg = &t->seg[t->seg_count - 1];

	if (strlen(action) >= sizeof(seg->action))
		action = "too-long-action";
	memcpy(seg->action, action, strlen(action) + 1);
	seg = &t->seg[t->seg_count++];
	seg->start = t->input_len;
	seg->len = 0;
	seg->action[0] = '\0';
}

/* One transcript line; returns -1 when it is malformed. */
static int
transcript_line(struct transcript *t, char kind, char *text)
{
	char buf[TRACE_LINE_MAX];
	static uint8_t bytes[TRANSCRIPT_BYTES];
	long n;

	if (kind == 'C' || kind == 'B') {
		n = unescape(text, kind == 'C' ? t->input + t->input_len : bytes,
		             kind == 'C' ? sizeof(t->input) - t->input_len : sizeof(bytes));
		if (n < 0)
			return -1;
		if (kind == 'C') {
			t->input_len += (size_t)n;
			t->seg[t->seg_count - 1].len += (size_t)n;
			return 0;
		}
		escape(bytes, (size_t)n, buf, sizeof(buf));
		text = buf;
	}
	if (kind == 'P') {
		for (char *w = strtok(text, " "); w != NULL; w = strtok(NULL, " ")) {
			if (transcript_param(t, w) < 0)
				return -1;
		}
		return 0;
	}
	if (kind == 'A') {
		t->answer[t->answer_count++] = strdup(text);
		return 0;
	}
	if (kind == 'X' || kind == 'K') {
		if (t->seg_count == SEGMENTS_MAX)
			return -1;
		transcript_end_segment(t, kind == 'K' ? "counts" : text);
		if (kind == 'X')
			return 0;
	}
	if (kind != 'S' && kind != 'E' && kind != 'B' && kind != 'K')
		return -1;
	t->expect[t->expect_count] = malloc(strlen(text) + 4);
	sprintf(t->expect[t->expect_count++], "%c: %s", kind, text);
	return 0;
}

static int
transcript_load(struct transcript *t, const char *path)
{
	char line[TRACE_LINE_MAX];
	FILE *f = fopen(path, "r");
	int lineno = 0;

	if (f == NULL)
		return -1;
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", path);
	snprintf(t->host, sizeof(t->host), "mx.example.test");
	t->limits = (struct smtp_server_limits){
	    .message_size_max = 10 * 1024 * 1024, .rcpt_count_max = 100, .error_count_max = 10};
	t->seg_count = 1;
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strcspn(line, "\n");

		lineno++;
		line[len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		if (len < 3 || line[1] != ':' || line[2] != ' ' ||
		    t->expect_count == TRANSCRIPT_LINES || t->answer_count == TRANSCRIPT_LINES ||
		    transcript_line(t, line[0], line + 3) < 0) {
			printf("%s:%d: malformed transcript line\n", path, lineno);
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	t->params.hostname = t->host;
	return 0;
}

static void
transcript_free(struct transcript *t)
{
	for (size_t i = 0; i < t->expect_count; i++)
		free(t->expect[i]);
	for (size_t i = 0; i < t->answer_count; i++)
		free(t->answer[i]);
}

/* Moves the server's output into the trace, one "S: " entry per reply line. */
static void
run_output(struct smtp_server *s, struct trace *tr)
{
	size_t len;
	const uint8_t *out = smtp_server_output(s, &len);

	for (size_t i = 0; i < len; i++) {
		if (tr->partial_len + 1 >= sizeof(tr->partial))
			break;
		tr->partial[tr->partial_len++] = (char)out[i];
		if (tr->partial_len >= 2 && tr->partial[tr->partial_len - 2] == '\r' &&
		    tr->partial[tr->partial_len - 1] == '\n') {
			tr->partial[tr->partial_len - 2] = '\0';
			trace_add(tr, "S: %s", tr->partial);
			tr->partial_len = 0;
		}
	}
	smtp_server_output_consume(s, len);
}

static const char *
run_answer(const struct transcript *t, struct trace *tr)
{
	if (tr->answer_next == t->answer_count) {
		trace_add(tr, "! an event without an A: answer");
		return "ok";
	}
	return t->answer[tr->answer_next++];
}

/* "<local@domain>", escaped as in transcripts; "<local>" without a domain. */
static void
format_addr(const struct address *a, char *buf, size_t size)
{
	char raw[ADDRESS_PATH_MAX + 8];
	int n = snprintf(raw, sizeof(raw), "<%s%s%s>", a->local, a->domain[0] != '\0' ? "@" : "",
	                 a->domain);

	escape((const uint8_t *)raw, (size_t)n, buf, size);
}

/* " rcpt_params=A|B" with each recipient's parameters as the caller stores them; "" if none. */
static const char *
run_rcpt_params(const struct smtp_envelope *env, char *buf, size_t size)
{
	size_t n = 0;
	bool any = false;

	for (unsigned i = 0; i < env->rcpt_count; i++)
		any = any || env->rcpts[i].params[0] != '\0';
	buf[0] = '\0';
	for (unsigned i = 0; any && i < env->rcpt_count && n < size; i++)
		n += (size_t)snprintf(buf + n, size - n, "%s%s",
		                      i ? "|" : " rcpt_params=", env->rcpts[i].params);
	return buf;
}

static void
run_message(struct smtp_server *s, const struct transcript *t, struct trace *tr,
            const struct smtp_envelope *env)
{
	static char body[TRACE_LINE_MAX], rcpt_params[TRACE_LINE_MAX];
	char line[TRACE_LINE_MAX], addr[4 * ADDRESS_PATH_MAX + 8];
	const char *a;
	size_t n;

	format_addr(&env->sender, addr, sizeof(addr));
	n = (size_t)snprintf(line, sizeof(line), "E: MESSAGE from=%s to=", addr);
	for (unsigned i = 0; i < env->rcpt_count; i++) {
		format_addr(&env->rcpts[i].addr, addr, sizeof(addr));
		n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s", i ? "," : "", addr);
	}
	n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s%s%s",
	                      env->body_8bitmime ? " 8bitmime" : "",
	                      env->smtputf8 ? " smtputf8" : "",
	                      env->sender_params[0] ? " params=" : "", env->sender_params);
	trace_add(tr, "%s%s", line, run_rcpt_params(env, rcpt_params, sizeof(rcpt_params)));
	escape(env->body, env->body_len, body, sizeof(body));
	trace_add(tr, "B: %s", body);
	a = run_answer(t, tr);
	if (strncmp(a, "queued ", 7) == 0)
		smtp_server_message_done(s, SMTP_STORE_OK, a + 7);
	else
		smtp_server_message_done(
		    s, strcmp(a, "nospace") == 0 ? SMTP_STORE_NOSPACE : SMTP_STORE_ERROR, NULL);
}

static void
run_event(struct smtp_server *s, const struct transcript *t, struct trace *tr,
          const struct smtp_event *ev)
{
	static const char *const why[] = {"quit", "errors", "tls_required_quit", "shutdown",
	                                  "timeout"};
	char addr[4 * ADDRESS_PATH_MAX + 8];
	const char *a;

	switch (ev->type) {
	case SMTP_EV_NONE:
		break;
	case SMTP_EV_RCPT:
		format_addr(&ev->rcpt->addr, addr, sizeof(addr));
		trace_add(tr, "E: RCPT %s%s%s", addr, ev->rcpt->params[0] ? " params=" : "",
		          ev->rcpt->params);
		a = run_answer(t, tr);
		smtp_server_rcpt_done(s, strcmp(a, "ok") == 0 ? NULL : a);
		break;
	case SMTP_EV_MESSAGE:
		run_message(s, t, tr, ev->envelope);
		break;
	case SMTP_EV_STARTTLS:
		trace_add(tr, "E: STARTTLS");
		break;
	case SMTP_EV_CLOSE:
		trace_add(tr, "E: CLOSE %s", why[ev->close]);
		break;
	}
	run_output(s, tr);
}

static void
run_chunk(struct smtp_server *s, const struct transcript *t, struct trace *tr, const uint8_t *in,
          size_t len)
{
	while (len > 0) {
		struct smtp_event ev;
		size_t used = smtp_server_feed(s, in, len, &ev);

		if (used > len) {
			trace_add(tr, "! feed used %zu of %zu", used, len);
			return;
		}
		run_output(s, tr);
		run_event(s, t, tr, &ev);
		in += used;
		len -= used;
		if (smtp_server_state(s) == SMTP_SERVER_CLOSING)
			return;
		if (used == 0 && ev.type == SMTP_EV_NONE) {
			trace_add(tr, "! feed made no progress");
			return;
		}
	}
}

static void
run_action(struct smtp_server *s, struct trace *tr, const char *action)
{
	struct smtp_server_counts c;

	if (strcmp(action, "tls_done") == 0 && smtp_server_state(s) == SMTP_SERVER_TLS_WAIT)
		smtp_server_tls_done(s);
	else if (strcmp(action, "timeout") == 0)
		smtp_server_timeout(s);
	else if (strcmp(action, "shutdown") == 0)
		smtp_server_shutdown(s);
	else if (strcmp(action, "counts") == 0) {
		smtp_server_counts(s, &c);
		trace_add(
		    tr,
		    "K: commands=%u errors=%u messages=%u rcpts=%u/%u helo=%s esmtp=%d state=%s",
		    c.commands, c.errors, c.messages, c.rcpts_accepted, c.rcpts_refused,
		    smtp_server_helo(s), smtp_server_esmtp(s),
		    smtp_server_state_name(smtp_server_state(s)));
	} else if (action[0] != '\0')
		trace_add(tr, "! action %s in state %s", action,
		          smtp_server_state_name(smtp_server_state(s)));
	run_output(s, tr);
}

/*
 * Runs the transcript with segment split_seg cut at split_at (0: whole), or
 * every segment fed one byte at a time when split_at is SIZE_MAX.
 */
static void
run(const struct transcript *t, size_t split_seg, size_t split_at, struct trace *tr)
{
	struct smtp_server *s = smtp_server_new(&t->params, &t->limits);

	memset(tr, 0, sizeof(*tr));
	run_output(s, tr);
	for (size_t i = 0; i < t->seg_count; i++) {
		const struct segment *seg = &t->seg[i];
		const uint8_t *in = t->input + seg->start;

		if (split_at == SIZE_MAX) {
			for (size_t b = 0; b < seg->len; b++)
				run_chunk(s, t, tr, in + b, 1);
		} else if (i == split_seg && split_at > 0) {
			run_chunk(s, t, tr, in, split_at);
			run_chunk(s, t, tr, in + split_at, seg->len - split_at);
		} else {
			run_chunk(s, t, tr, in, seg->len);
		}
		run_action(s, tr, seg->action);
	}
	if (tr->partial_len > 0)
		trace_add(tr, "! output ends without CRLF");
	if (tr->answer_next != t->answer_count)
		trace_add(tr, "! %zu A: answers left over", t->answer_count - tr->answer_next);
	smtp_server_free(s);
}

/* Compares a run with the expectation; reports the first difference. */
static bool
run_compare(const struct transcript *t, const struct trace *tr, const char *how)
{
	size_t n = tr->count > t->expect_count ? tr->count : t->expect_count;

	for (size_t i = 0; i < n; i++) {
		const char *want = i < t->expect_count ? t->expect[i] : "(end)";
		const char *got = i < tr->count ? tr->line[i] : "(end)";

		if (strcmp(want, got) != 0) {
			printf("%s (%s): line %zu:\n  want %.300s\n  got  %.300s\n", t->name, how,
			       i + 1, want, got);
			return false;
		}
	}
	return true;
}

static void
test_transcript(const struct transcript *t)
{
	struct trace *tr = malloc(sizeof(*tr));
	char how[64];
	bool ok = true;

	run(t, 0, 0, tr);
	CHECK(run_compare(t, tr, "whole"));
	trace_free(tr);
	run(t, 0, SIZE_MAX, tr);
	CHECK(run_compare(t, tr, "byte at a time"));
	trace_free(tr);
	for (size_t i = 0; i < t->seg_count && ok; i++) {
		for (size_t k = 1; k < t->seg[i].len && ok; k++) {
			run(t, i, k, tr);
			snprintf(how, sizeof(how), "segment %zu split at %zu", i, k);
			ok = run_compare(t, tr, how);
			trace_free(tr);
		}
	}
	CHECK(ok);
	free(tr);
}

static int
name_compare(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
test_transcripts(void)
{
	char *names[TRANSCRIPT_FILES];
	size_t count = 0;
	DIR *d = opendir(FIXTURE_DIR);
	struct transcript *t = malloc(sizeof(*t));
	struct dirent *e;

	CHECK(d != NULL);
	while (d != NULL && (e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);

		if (len > 4 && strcmp(e->d_name + len - 4, ".txt") == 0 && count < TRANSCRIPT_FILES)
			names[count++] = strdup(e->d_name);
	}
	if (d != NULL)
		closedir(d);
	CHECK(count >= 10);
	qsort(names, count, sizeof(names[0]), name_compare);
	for (size_t i = 0; i < count; i++) {
		char path[TRANSCRIPT_PATH];

		snprintf(path, sizeof(path), "%s/%s", FIXTURE_DIR, names[i]);
		CHECK(transcript_load(t, path) == 0);
		test_transcript(t);
		transcript_free(t);
		free(names[i]);
	}
	free(t);
}

static const struct smtp_server_params test_params = {.hostname = "mx.example.test"};
static const struct smtp_server_limits test_limits = {
    .message_size_max = 1024 * 1024, .rcpt_count_max = 50, .error_count_max = 10};

/* Feeds all of in, answering every event with acceptance; returns the output size seen. */
static size_t
feed_all(struct smtp_server *s, const char *in, size_t len, unsigned *events)
{
	size_t out_total = 0, out_len;

	while (len > 0 && smtp_server_state(s) != SMTP_SERVER_CLOSING) {
		struct smtp_event ev;
		size_t used = smtp_server_feed(s, (const uint8_t *)in, len, &ev);

		in += used;
		len -= used;
		if (ev.type == SMTP_EV_RCPT)
			smtp_server_rcpt_done(s, NULL);
		else if (ev.type == SMTP_EV_MESSAGE)
			smtp_server_message_done(s, SMTP_STORE_OK, "Q1");
		if (events != NULL && ev.type != SMTP_EV_NONE)
			(*events)++;
		smtp_server_output(s, &out_len);
		CHECK(out_len <= SMTP_OUTPUT_MAX + 4096);
		out_total += out_len;
		smtp_server_output_consume(s, out_len);
	}
	return out_total;
}

/* A flood of pipelined commands stops at SMTP_OUTPUT_MAX and resumes when drained. */
static void
test_output_limit(void)
{
	static const char noop[] = "NOOP\r\n";
	size_t count = 3 * SMTP_OUTPUT_MAX / (sizeof("250 2.0.0 Ok\r\n") - 1);
	size_t len = count * (sizeof(noop) - 1), used, out_len;
	char *in = malloc(len);
	struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
	struct smtp_event ev;

	for (size_t i = 0; i < count; i++)
		memcpy(in + i * (sizeof(noop) - 1), noop, sizeof(noop) - 1);
	used = smtp_server_feed(s, (const uint8_t *)in, len, &ev);
	CHECK(ev.type == SMTP_EV_NONE);
	CHECK(used < len);
	CHECK(smtp_server_output_full(s));
	smtp_server_output(s, &out_len);
	CHECK(out_len >= SMTP_OUTPUT_MAX);
	CHECK(smtp_server_feed(s, (const uint8_t *)in + used, len - used, &ev) == 0);
	smtp_server_output_consume(s, 100);
	CHECK(smtp_server_output_full(s) == false);
	/* feed_all() sees what was left unconsumed, then the rest */
	CHECK(feed_all(s, in + used, len - used, NULL) + 100 ==
	      sizeof("220 mx.example.test ESMTP ringmx\r\n") - 1 +
	          count * (sizeof("250 2.0.0 Ok\r\n") - 1));
	smtp_server_free(s);
	free(in);
}

static void
test_state_names(void)
{
	const char *seen[SMTP_SERVER_CLOSING + 1];

	for (int i = 0; i <= SMTP_SERVER_CLOSING; i++) {
		seen[i] = smtp_server_state_name((enum smtp_server_state)i);
		CHECK(strcmp(seen[i], "invalid") != 0);
		for (int j = 0; j < i; j++)
			CHECK(strcmp(seen[i], seen[j]) != 0);
	}
	CHECK(strcmp(smtp_server_state_name((enum smtp_server_state)99), "invalid") == 0);
}

/* The envelope as the caller sees it, and a body far bigger than the first allocation. */
static void
test_envelope(void)
{
	static const char head[] =
	    "EHLO c.test\r\nMAIL FROM:<s@a.test> SIZE=900000 BODY=8BITMIME\r\n"
	    "RCPT TO:<r@b.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n";
	struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
	size_t line = 1000, lines = 900, used;
	char *body = malloc(line * lines + 8);
	struct smtp_event ev;

	for (size_t i = 0; i < lines; i++) {
		memset(body + i * line, 'a' + (int)(i % 26), line - 2);
		memcpy(body + i * line + line - 2, "\r\n", 2);
	}
	memcpy(body + line * lines, ".\r\n", 3);
	CHECK(feed_all(s, head, sizeof(head) - 1, NULL) > 0);
	CHECK(smtp_server_in_data(s));
	used = smtp_server_feed(s, (const uint8_t *)body, line * lines + 3, &ev);
	CHECK(used == line * lines + 3);
	CHECK(ev.type == SMTP_EV_MESSAGE);
	if (ev.type == SMTP_EV_MESSAGE) {
		const struct smtp_envelope *env = ev.envelope;

		CHECK(strcmp(env->sender.local, "s") == 0);
		CHECK(strcmp(env->sender_params, "SIZE=900000 BODY=8BITMIME") == 0);
		CHECK(env->body_8bitmime);
		CHECK(!env->smtputf8);
		CHECK(env->rcpt_count == 2);
		CHECK(strcmp(env->rcpts[1].addr.local, "postmaster") == 0);
		CHECK(env->rcpts[1].addr.domain[0] == '\0');
		CHECK(env->body_len == line * lines);
		CHECK(memcmp(env->body, body, line * lines) == 0);
		smtp_server_message_done(s, SMTP_STORE_OK, "Q1");
	}
	CHECK(smtp_server_state(s) == SMTP_SERVER_READY);
	smtp_server_free(s);
	free(body);
}

/* The recipient array grows to exactly rcpt_count_max, then 452. */
static void
test_rcpt_growth(void)
{
	struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
	char cmd[64];
	size_t len;
	const uint8_t *out;
	struct smtp_server_counts c;

	feed_all(s, "EHLO c\r\nMAIL FROM:<>\r\n", 22, NULL);
	for (unsigned i = 0; i <= test_limits.rcpt_count_max; i++) {
		len = (size_t)snprintf(cmd, sizeof(cmd), "RCPT TO:<r%u@b.test>\r\n", i);
		feed_all(s, cmd, len, NULL);
	}
	smtp_server_counts(s, &c);
	CHECK(c.rcpts_accepted == test_limits.rcpt_count_max);
	smtp_server_feed(s, (const uint8_t *)"RCPT TO:<x@b.test>\r\n", 20, &(struct smtp_event){0});
	out = smtp_server_output(s, &len);
	CHECK(len == sizeof("452 4.5.3 Too many recipients\r\n") - 1);
	CHECK(memcmp(out, "452 4.5.3 Too many recipients\r\n", len) == 0);
	smtp_server_free(s);
}

/* A shutdown while the caller decides: the late answers send nothing after the 421. */
static void
test_close_while_waiting(void)
{
	static const char in[] = "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@b.test>\r\n"
	                         "RCPT TO:<r2@b.test>\r\nDATA\r\nbody\r\n.\r\n";
	struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
	struct smtp_event ev;
	size_t used = smtp_server_feed(s, (const uint8_t *)in, sizeof(in) - 1, &ev), len;
	const uint8_t *out;

	CHECK(ev.type == SMTP_EV_RCPT);
	smtp_server_rcpt_done(s, NULL);
	used += smtp_server_feed(s, (const uint8_t *)in + used, sizeof(in) - 1 - used, &ev);
	CHECK(ev.type == SMTP_EV_RCPT);
	smtp_server_shutdown(s);
	smtp_server_rcpt_done(s, NULL);
	smtp_server_output(s, &len);
	smtp_server_output_consume(s, len - 33);
	out = smtp_server_output(s, &len);
	CHECK(len == 33);
	CHECK(memcmp(out, "421 4.3.2 Service shutting down\r\n", 33) == 0);
	CHECK(smtp_server_feed(s, (const uint8_t *)in + used, sizeof(in) - 1 - used, &ev) == 0);
	smtp_server_free(s);

	s = smtp_server_new(&test_params, &test_limits);
	CHECK(feed_all(s, in, sizeof(in) - 4, NULL) > 0);
	CHECK(smtp_server_feed(s, (const uint8_t *)".\r\n", 3, &ev) == 3);
	CHECK(ev.type == SMTP_EV_MESSAGE);
	smtp_server_timeout(s);
	if (ev.type == SMTP_EV_MESSAGE) {
		CHECK(ev.envelope->body_len == 6);
		CHECK(memcmp(ev.envelope->body, "body\r\n", 6) == 0);
		smtp_server_message_done(s, SMTP_STORE_OK, "Q1");
	}
	out = smtp_server_output(s, &len);
	CHECK(len > 0 && memcmp(out, "421 4.4.2 ", 10) == 0);
	CHECK(smtp_server_state(s) == SMTP_SERVER_CLOSING);
	smtp_server_free(s);
}

/* RFC 3461 xtext, which the server checks ENVID and ORCPT with (core/address.c). */
static void
test_xtext_decode(void)
{
	static const char *const bad[] = {"+ZZ", "+2",   "+",    "a+2b",      "a+2G", "a=b",
	                                  "a b", "\x7f", "\x80", "+\xc3\xa9", "\t"};
	char out[16];

	CHECK(address_xtext_decode("abc~!", 5, out, sizeof(out)) == 5);
	CHECK(strcmp(out, "abc~!") == 0);
	CHECK(address_xtext_decode("+2B+3Dx+20", 10, out, sizeof(out)) == 4);
	CHECK(strcmp(out, "+=x ") == 0);
	CHECK(address_xtext_decode("", 0, out, sizeof(out)) == 0);
	CHECK(out[0] == '\0');
	CHECK(address_xtext_decode("a+00b", 5, out, sizeof(out)) == 3);
	CHECK(memcmp(out, "a\0b", 4) == 0);
	CHECK(address_xtext_decode("+FF", 3, out, sizeof(out)) == 1);
	CHECK((unsigned char)out[0] == 0xff);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(address_xtext_decode(bad[i], strlen(bad[i]), out, sizeof(out)) == -1);
	/* Only len octets are read: a "+2B" cut after "+2" is malformed. */
	CHECK(address_xtext_decode("+2B", 2, out, sizeof(out)) == -1);
	/* Measured without a buffer, and cut to the buffer like snprintf. */
	CHECK(address_xtext_decode("ab+41cd", 7, NULL, 0) == 5);
	CHECK(address_xtext_decode("ab+41cd", 7, out, 4) == 5);
	CHECK(strcmp(out, "abA") == 0);
	CHECK(address_xtext_decode("ab+ZZ", 5, NULL, 0) == -1);
}

static void
test_xtext_encode(void)
{
	char in[256], enc[3 * sizeof(in) + 1], dec[sizeof(in) + 1];
	int n;

	CHECK(address_xtext_encode("a+b=c d\xe9", 8, enc, sizeof(enc)) == 16);
	CHECK(strcmp(enc, "a+2Bb+3Dc+20d+E9") == 0);
	CHECK(address_xtext_encode("", 0, enc, sizeof(enc)) == 0);
	CHECK(enc[0] == '\0');
	CHECK(address_xtext_encode("x=y", 3, NULL, 0) == 5);
	CHECK(address_xtext_encode("x=y", 3, enc, 3) == 5);
	CHECK(strcmp(enc, "x+") == 0);
	/* Every octet: the encoding is valid xtext with upper-case hex and decodes back. */
	for (int i = 0; i < 256; i++)
		in[i] = (char)i;
	n = address_xtext_encode(in, sizeof(in), enc, sizeof(enc));
	CHECK(n == 92 + 3 * (256 - 92)); /* '!'..'~' but '+' and '=' stay as they are */
	CHECK(n >= 0 && (size_t)n < sizeof(enc));
	for (char *p = strchr(enc, '+'); p != NULL; p = strchr(p + 1, '+'))
		CHECK(strspn(p + 1, "0123456789ABCDEF") >= 2);
	CHECK(address_xtext_decode(enc, (size_t)n, dec, sizeof(dec)) == 256);
	CHECK(memcmp(dec, in, sizeof(in)) == 0);
}

static void
test_atom(void)
{
	CHECK(address_atom_valid("rfc822", 6));
	CHECK(address_atom_valid("UTF-8", 5));
	CHECK(address_atom_valid("x!#$%&'*+/=?^_`{|}~", 19));
	CHECK(!address_atom_valid("", 0));
	CHECK(!address_atom_valid("rf(c", 4));
	CHECK(!address_atom_valid("a b", 3));
	CHECK(!address_atom_valid("a.b", 3));
	CHECK(!address_atom_valid("\xc3\xa9", 2));
	CHECK(address_atom_valid("rfc822;x", 6));
}

int
main(void)
{
	test_transcripts();
	test_output_limit();
	test_state_names();
	test_envelope();
	test_rcpt_growth();
	test_close_while_waiting();
	test_xtext_decode();
	test_xtext_encode();
	test_atom();
	printf("%d passed, %d failed\n", passed, failed);
	return failed > 0;
}

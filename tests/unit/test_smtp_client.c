/*
 * test_smtp_client.c -- dialogue transcripts (tests/fixtures/smtp_client, *.txt), each
 * run with the server's replies whole, one byte at a time (with output also consumed
 * one byte at a time) and split in two at every point; plus checks of limits, output
 * segmentation and API misuse that transcripts cannot express well.
 *
 * Transcript lines ("X: " prefix, then the text):
 *   # ...       comment (blank lines are ignored too)
 *   P: words    session set-up: helo=NAME tls=none|may|required tls_active line=N
 *               lines=N rcpts=N
 *   S: text     one server reply line, fed with CRLF added; escapes \r \n \t \\ \xHH and
 *               \[N]c (c N times)
 *   F: bytes    server bytes fed as they are (escapes as S:)
 *   C: bytes    expected client output: everything pending at that point, drained
 *               (escaped, so "C: MAIL ...\r\nRCPT ...\r\nDATA\r\n" is one batch)
 *   E: event    expected event: READY | STARTTLS | TXN_DONE | CLOSED REPLY | FAILED REPLY
 *               | ERROR -N (smtp_client_send/quit refused); REPLY is "[status remote|local]
 *               text"
 *   R: REPLY    one per recipient, after TXN_DONE or a FAILED during a transaction
 *   A: action   done once the input before it is fed (it ends a "segment"):
 *               rcpt ADDR [notify=V] [orcpt=V] | body BYTES (escapes) | send [from=ADDR]
 *               [8bit] [utf8] [ret=V] [envid=V] | quit | tls_done | abort lost|timeout|tls
 *               | new (a fresh session with the same set-up)
 *   K: state    expected "state=NAME caps=A,B size=N tls=0|1 last=REPLY" (ends a segment)
 * Splits happen only inside a segment, as no server answers what was not yet sent.
 */
#include "core/smtp_client.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/unit/check.h"

#define FIXTURE_DIR      "../fixtures/smtp_client"
#define TRANSCRIPT_LINES 512
#define TRANSCRIPT_BYTES (64 * 1024)
#define TRANSCRIPT_FILES 64
#define SEGMENTS_MAX     128
#define TRACE_LINE_MAX   (16 * 1024)
#define TRANSCRIPT_PATH  512
#define RUN_RCPTS_MAX    16
#define RUN_IOV_MAX      3 /* small, so output is described over several calls */
#define BODY_MAX         4096



struct segment {
	size_t start, len; /* into transcript.input */
	char *action;      /* the A: text, "counts" for K:, NULL for the last segment */
};

struct transcript {
	char name[TRANSCRIPT_PATH];
	struct smtp_client_params params;
	char helo[256];
	uint8_t input[TRANSCRIPT_BYTES];
	size_t input_len;
	struct segment seg[SEGMENTS_MAX];
	size_t seg_count;
	char *expect[TRANSCRIPT_LINES];
	size_t expect_count;
};

/* What the A: lines build up for the next send. */
struct pending {
	struct smtp_client_rcpt rcpt[RUN_RCPTS_MAX];
	char *words[RUN_RCPTS_MAX][3];
	unsigned rcpt_count;
	uint8_t body[BODY_MAX];
	size_t body_len;
};

struct trace {
	char *line[TRANSCRIPT_LINES * 2];
	size_t count;
	bool byte_output; /* consume output one byte at a time */
	struct pending pend;
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
pending_clear(struct pending *p)
{
	for (unsigned i = 0; i < p->rcpt_count; i++) {
		for (int k = 0; k < 3; k++)
			free(p->words[i][k]);
	}
	p->rcpt_count = 0;
}

static void
trace_free(struct trace *t)
{
	for (size_t i = 0; i < t->count; i++)
		free(t->line[i]);
	t->count = 0;
	pending_clear(&t->pend);
}

/* Decodes the escapes; returns the length or -1 on a malformed escape. */
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

	if (strcmp(word, "tls=none") == 0)
		t->params.tls_mode = SMTP_CLIENT_TLS_NONE;
	else if (strcmp(word, "tls=may") == 0)
		t->params.tls_mode = SMTP_CLIENT_TLS_MAY;
	else if (strcmp(word, "tls=required") == 0)
		t->params.tls_mode = SMTP_CLIENT_TLS_REQUIRED;
	else if (strcmp(word, "tls_active") == 0)
		t->params.tls_active = true;
	else if (sscanf(word, "helo=%255s", t->helo) == 1)
		return 0;
	else if (sscanf(word, "line=%lu", &v) == 1)
		t->params.reply_line_max = v;
	else if (sscanf(word, "lines=%lu", &v) == 1)
		t->params.reply_lines_max = (unsigned)v;
	else if (sscanf(word, "rcpts=%lu", &v) == 1)
		t->params.rcpt_count_max = (unsigned)v;
	else
		return -1;
	return 0;
}

static int
transcript_input(struct transcript *t, const char *text, bool crlf)
{
	long n = unescape(text, t->input + t->input_len, sizeof(t->input) - t->input_len - 2);

	if (n < 0)
		return -1;
	if (crlf) {
		memcpy(t->input + t->input_len + n, "\r\n", 2);
		n += 2;
	}
	t->input_len += (size_t)n;
	t->seg[t->seg_count - 1].len += (size_t)n;
	return 0;
}

/* One transcript line; returns -1 when it is malformed. */
static int
transcript_line(struct transcript *t, char kind, char *text)
{
	if (kind == 'S' || kind == 'F')
		return transcript_input(t, text, kind == 'S');
	if (kind == 'P') {
		for (char *w = strtok(text, " "); w != NULL; w = strtok(NULL, " ")) {
			if (transcript_param(t, w) < 0)
				return -1;
		}
		return 0;
	}
	if (kind == 'A' || kind == 'K') {
		struct segment *seg = &t->seg[t->seg_count - 1];

		if (t->seg_count == SEGMENTS_MAX)
			return -1;
		seg->action = strdup(kind == 'K' ? "counts" : text);
		t->seg[t->seg_count++] = (struct segment){.start = t->input_len};
		if (kind == 'A')
			return 0;
	}
	if (kind != 'C' && kind != 'E' && kind != 'R' && kind != 'K')
		return -1;
	if (kind == 'C') {
		static uint8_t bytes[TRANSCRIPT_BYTES];
		static char norm[4 * TRANSCRIPT_BYTES];
		long n = unescape(text, bytes, sizeof(bytes));

		if (n < 0)
			return -1;
		escape(bytes, (size_t)n, norm, sizeof(norm));
		text = norm;
	}
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
	snprintf(t->helo, sizeof(t->helo), "relay.example.org");
	t->params = (struct smtp_client_params){.tls_mode = SMTP_CLIENT_TLS_NONE,
	                                        .reply_line_max = 512,
	                                        .reply_lines_max = 100,
	                                        .rcpt_count_max = 100};
	t->seg_count = 1;
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strcspn(line, "\n");

		lineno++;
		line[len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		if (len < 3 || line[1] != ':' || line[2] != ' ' ||
		    t->expect_count == TRANSCRIPT_LINES ||
		    transcript_line(t, line[0], line + 3) < 0) {
			printf("%s:%d: malformed transcript line\n", path, lineno);
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	t->params.helo_name = t->helo;
	return 0;
}

static void
transcript_free(struct transcript *t)
{
	for (size_t i = 0; i < t->expect_count; i++)
		free(t->expect[i]);
	for (size_t i = 0; i < t->seg_count; i++)
		free(t->seg[i].action);
}

static void
format_reply(const struct smtp_client_reply *r, char *buf, size_t size)
{
	snprintf(buf, size, "[%s %s] %s", r->status, r->remote ? "remote" : "local", r->text);
}

/* Drains all pending output into one "C: " line. */
static void
run_output(struct smtp_client *c, struct trace *tr)
{
	static uint8_t bytes[TRANSCRIPT_BYTES];
	static char text[4 * TRANSCRIPT_BYTES];
	struct iovec iov[RUN_IOV_MAX];
	size_t n = 0;
	unsigned cnt;

	while ((cnt = smtp_client_output(c, iov, RUN_IOV_MAX)) > 0) {
		size_t got = 0;

		for (unsigned i = 0; i < cnt; i++) {
			size_t take = iov[i].iov_len;

			if (tr->byte_output)
				take = got == 0 ? 1 : 0;
			if (take > sizeof(bytes) - n)
				take = sizeof(bytes) - n;
			memcpy(bytes + n, iov[i].iov_base, take);
			n += take;
			got += take;
		}
		if (got == 0) {
			trace_add(tr, "! output does not drain");
			return;
		}
		smtp_client_output_consume(c, got);
	}
	if (n == 0)
		return;
	escape(bytes, n, text, sizeof(text));
	trace_add(tr, "C: %s", text);
}

static void
run_results(struct trace *tr, const struct smtp_client_event *ev)
{
	char buf[2 * SMTP_CLIENT_REPLY_TEXT_MAX];

	for (unsigned i = 0; i < ev->rcpt_count; i++) {
		format_reply(&ev->results[i], buf, sizeof(buf));
		trace_add(tr, "R: %s", buf);
	}
}

static void
run_event(struct trace *tr, const struct smtp_client_event *ev)
{
	char buf[2 * SMTP_CLIENT_REPLY_TEXT_MAX];

	switch (ev->type) {
	case SMTP_CLIENT_EV_NONE:
		break;
	case SMTP_CLIENT_EV_READY:
		trace_add(tr, "E: READY");
		break;
	case SMTP_CLIENT_EV_STARTTLS:
		trace_add(tr, "E: STARTTLS");
		break;
	case SMTP_CLIENT_EV_TXN_DONE:
		trace_add(tr, "E: TXN_DONE");
		run_results(tr, ev);
		break;
	case SMTP_CLIENT_EV_FAILED:
	case SMTP_CLIENT_EV_CLOSED:
		format_reply(ev->reply, buf, sizeof(buf));
		trace_add(tr, "E: %s %s", ev->type == SMTP_CLIENT_EV_FAILED ? "FAILED" : "CLOSED",
		          buf);
		run_results(tr, ev);
		break;
	}
}

static void
run_chunk(struct smtp_client *c, struct trace *tr, const uint8_t *in, size_t len)
{
	while (len > 0) {
		struct smtp_client_event ev;
		size_t used = smtp_client_feed(c, in, len, &ev);
		bool pending = smtp_client_output_pending(c);

		if (used > len) {
			trace_add(tr, "! feed used %zu of %zu", used, len);
			return;
		}
		run_output(c, tr);
		run_event(tr, &ev);
		in += used;
		len -= used;
		if (used == 0 && ev.type == SMTP_CLIENT_EV_NONE && !pending) {
			trace_add(tr, "! feed made no progress");
			return;
		}
	}
}

static void
run_caps(struct smtp_client *c, struct trace *tr)
{
	static const char *const names[] = {
	    "PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "DSN", "STARTTLS", "ENHANCEDSTATUSCODES"};
	char caps[256] = "", last[2 * SMTP_CLIENT_REPLY_TEXT_MAX];
	size_t n = 0;

	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (smtp_client_caps(c) & (1u << i))
			n += (size_t)snprintf(caps + n, sizeof(caps) - n, "%s%s", n ? "," : "",
			                      names[i]);
	}
	format_reply(smtp_client_last_reply(c), last, sizeof(last));
	trace_add(tr, "K: state=%s caps=%s size=%zu tls=%d last=%s",
	          smtp_client_state_name(smtp_client_state(c)), caps, smtp_client_size_max(c),
	          smtp_client_tls_active(c), last);
}

/* A word of an A: line with its escapes decoded (so tests can put CR or LF in values). */
static char *
word_dup(const char *w)
{
	uint8_t buf[1024];
	long n = unescape(w, buf, sizeof(buf) - 1);
	char *out;

	if (n < 0)
		n = 0;
	out = malloc((size_t)n + 1);
	memcpy(out, buf, (size_t)n);
	out[n] = '\0';
	return out;
}

/* "rcpt ADDR [notify=V] [orcpt=V]" */
static void
run_rcpt(struct trace *tr, char *args)
{
	struct pending *p = &tr->pend;
	struct smtp_client_rcpt *r = &p->rcpt[p->rcpt_count];
	char **w = p->words[p->rcpt_count];
	char *save = NULL;

	if (p->rcpt_count == RUN_RCPTS_MAX) {
		trace_add(tr, "! too many rcpt actions");
		return;
	}
	memset(r, 0, sizeof(*r));
	w[0] = w[1] = w[2] = NULL;
	for (char *a = strtok_r(args, " ", &save); a != NULL; a = strtok_r(NULL, " ", &save)) {
		if (strncmp(a, "notify=", 7) == 0)
			r->notify = w[1] = word_dup(a + 7);
		else if (strncmp(a, "orcpt=", 6) == 0)
			r->orcpt = w[2] = word_dup(a + 6);
		else
			r->address = w[0] = word_dup(a);
	}
	if (r->address == NULL)
		r->address = w[0] = strdup("");
	p->rcpt_count++;
}

/* "send [from=ADDR] [8bit] [utf8] [ret=V] [envid=V]"; the rcpt list starts over after. */
static void
run_send(struct smtp_client *c, struct trace *tr, char *args)
{
	struct smtp_client_txn t = {.rcpts = tr->pend.rcpt};
	struct smtp_client_event ev;
	char *save = NULL, *from = NULL, *ret = NULL, *envid = NULL;
	int r;

	for (char *a = strtok_r(args, " ", &save); a != NULL; a = strtok_r(NULL, " ", &save)) {
		if (strncmp(a, "from=", 5) == 0)
			from = word_dup(a + 5);
		else if (strcmp(a, "8bit") == 0)
			t.body_8bit = true;
		else if (strcmp(a, "utf8") == 0)
			t.smtputf8 = true;
		else if (strncmp(a, "ret=", 4) == 0)
			ret = word_dup(a + 4);
		else if (strncmp(a, "envid=", 6) == 0)
			envid = word_dup(a + 6);
		else
			trace_add(tr, "! send: unknown word %s", a);
	}
	t.sender = from != NULL ? from : "";
	t.ret = ret;
	t.envid = envid;
	t.rcpt_count = tr->pend.rcpt_count;
	t.body = tr->pend.body;
	t.body_len = tr->pend.body_len;
	r = smtp_client_send(c, &t, &ev);
	/* The session keeps no pointer into the txn but its body: ASan checks that it does not. */
	pending_clear(&tr->pend);
	free(from);
	free(ret);
	free(envid);
	if (r < 0)
		trace_add(tr, "E: ERROR %d", r);
	run_event(tr, &ev);
}

static void
run_abort(struct smtp_client *c, struct trace *tr, const char *why)
{
	struct smtp_client_event ev;

	if (strcmp(why, "lost") == 0)
		smtp_client_abort(c, SMTP_CLIENT_ABORT_LOST, &ev);
	else if (strcmp(why, "timeout") == 0)
		smtp_client_abort(c, SMTP_CLIENT_ABORT_TIMEOUT, &ev);
	else
		smtp_client_abort(c, SMTP_CLIENT_ABORT_TLS, &ev);
	run_event(tr, &ev);
}

static void
run_action(struct smtp_client **cp, const struct transcript *t, struct trace *tr,
           const char *action)
{
	char buf[TRACE_LINE_MAX];
	long n;
	int r;

	snprintf(buf, sizeof(buf), "%s", action);
	if (strcmp(buf, "counts") == 0) {
		run_caps(*cp, tr);
	} else if (strncmp(buf, "rcpt", 4) == 0) {
		run_rcpt(tr, buf + 4);
	} else if (strncmp(buf, "body ", 5) == 0 || strcmp(buf, "body") == 0) {
		n = unescape(buf + 4 + (buf[4] == ' '), tr->pend.body, sizeof(tr->pend.body));
		tr->pend.body_len = n < 0 ? 0 : (size_t)n;
	} else if (strncmp(buf, "send", 4) == 0) {
		run_send(*cp, tr, buf + 4);
	} else if (strcmp(buf, "quit") == 0) {
		r = smtp_client_quit(*cp);
		if (r < 0)
			trace_add(tr, "E: ERROR %d", r);
	} else if (strcmp(buf, "tls_done") == 0 && smtp_client_state(*cp) == SMTP_CLIENT_TLS_WAIT) {
		smtp_client_tls_done(*cp);
	} else if (strncmp(buf, "abort ", 6) == 0) {
		run_abort(*cp, tr, buf + 6);
	} else if (strcmp(buf, "new") == 0) {
		smtp_client_free(*cp);
		*cp = smtp_client_new(&t->params);
	} else {
		trace_add(tr, "! unknown action %s", buf);
	}
	run_output(*cp, tr);
}

/*
 * Runs the transcript with segment split_seg cut at split_at (0: whole), or
 * every segment fed one byte at a time when split_at is SIZE_MAX.
 */
static void
run(const struct transcript *t, size_t split_seg, size_t split_at, struct trace *tr)
{
	struct smtp_client *c = smtp_client_new(&t->params);

	memset(tr, 0, sizeof(*tr));
	tr->byte_output = split_at == SIZE_MAX;
	for (size_t i = 0; i < t->seg_count; i++) {
		const struct segment *seg = &t->seg[i];
		const uint8_t *in = t->input + seg->start;

		if (split_at == SIZE_MAX) {
			for (size_t b = 0; b < seg->len; b++)
				run_chunk(c, tr, in + b, 1);
		} else if (i == split_seg && split_at > 0) {
			run_chunk(c, tr, in, split_at);
			run_chunk(c, tr, in + split_at, seg->len - split_at);
		} else {
			run_chunk(c, tr, in, seg->len);
		}
		if (seg->action != NULL)
			run_action(&c, t, tr, seg->action);
	}
	smtp_client_free(c);
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
			printf("%s (%s): line %zu:\n  want %.400s\n  got  %.400s\n", t->name, how,
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

static const struct smtp_client_params test_params = {.helo_name = "relay.example.org",
                                                      .tls_mode = SMTP_CLIENT_TLS_NONE,
                                                      .reply_line_max = 512,
                                                      .reply_lines_max = 100,
                                                      .rcpt_count_max = 1000};

/* Feeds text whole; returns the event type of the last feed. */
static enum smtp_client_event_type
feed_text(struct smtp_client *c, const char *text, struct smtp_client_event *ev)
{
	size_t len = strlen(text);

	ev->type = SMTP_CLIENT_EV_NONE;
	while (len > 0 && ev->type == SMTP_CLIENT_EV_NONE) {
		size_t used = smtp_client_feed(c, (const uint8_t *)text, len, ev);

		if (used == 0)
			break;
		text += used;
		len -= used;
	}
	return ev->type;
}

/* Sends everything pending; returns the byte count. */
static size_t
drain(struct smtp_client *c)
{
	struct iovec iov[8];
	size_t total = 0;
	unsigned n;

	while ((n = smtp_client_output(c, iov, 8)) > 0) {
		size_t sum = 0;

		for (unsigned i = 0; i < n; i++)
			sum += iov[i].iov_len;
		smtp_client_output_consume(c, sum);
		total += sum;
	}
	return total;
}

static struct smtp_client *
ready_session(const struct smtp_client_params *p, const char *ehlo)
{
	struct smtp_client *c = smtp_client_new(p);
	struct smtp_client_event ev;

	CHECK(feed_text(c, "220 mx\r\n", &ev) == SMTP_CLIENT_EV_NONE);
	CHECK(drain(c) > 0);
	CHECK(feed_text(c, ehlo, &ev) == SMTP_CLIENT_EV_READY);
	return c;
}

/* The dot-stuffed body as the RFC says it, built the plain way. */
static size_t
ref_stuff(const uint8_t *b, size_t len, uint8_t *out)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		if (b[i] == '.' && (i == 0 || b[i - 1] == '\r' || b[i - 1] == '\n'))
			out[n++] = '.';
		out[n++] = b[i];
	}
	if (len > 0 && (len < 2 || b[len - 2] != '\r' || b[len - 1] != '\n')) {
		memcpy(out + n, "\r\n", 2);
		n += 2;
	}
	memcpy(out + n, ".\r\n", 3);
	return n + 3;
}

static uint32_t
rng_next(uint32_t *state)
{
	*state = *state * 1103515245u + 12345u;
	return *state >> 8;
}

/* Drains the body with max iovecs a call and odd consume sizes; checks bytes and no copy. */
static bool
body_drain_check(struct smtp_client *c, const uint8_t *body, size_t len, unsigned max,
                 uint32_t *rng)
{
	static uint8_t got[2 * BODY_MAX + 8], want[2 * BODY_MAX + 8];
	size_t n = 0, want_len = ref_stuff(body, len, want);
	struct iovec iov[4];
	unsigned cnt;

	while ((cnt = smtp_client_output(c, iov, max)) > 0) {
		size_t avail = 0, take;

		for (unsigned i = 0; i < cnt; i++) {
			const uint8_t *p = iov[i].iov_base;
			bool in_body = len > 0 && p >= body && p + iov[i].iov_len <= body + len;

			if (!in_body && iov[i].iov_len > 5)
				return false;
			if (n + avail + iov[i].iov_len > sizeof(got))
				return false;
			memcpy(got + n + avail, p, iov[i].iov_len);
			avail += iov[i].iov_len;
		}
		take = 1 + rng_next(rng) % avail;
		smtp_client_output_consume(c, take);
		n += take;
	}
	return n == want_len && memcmp(got, want, n) == 0;
}

/* Random bodies of '.', CR, LF and 'a', every iovec budget: same bytes as plain stuffing. */
static void
test_body_segments(void)
{
	static uint8_t body[BODY_MAX];
	struct smtp_client_rcpt rcpt = {.address = "bob@example.test"};
	uint32_t rng = 7;
	bool ok = true;

	for (int round = 0; round < 400 && ok; round++) {
		struct smtp_client *c = ready_session(&test_params, "250-mx\r\n250 PIPELINING\r\n");
		struct smtp_client_txn t = {
		    .sender = "a@example.org", .rcpts = &rcpt, .rcpt_count = 1, .body = body};
		struct smtp_client_event ev;

		t.body_len = rng_next(&rng) % (round < 300 ? 40 : BODY_MAX);
		for (size_t i = 0; i < t.body_len; i++)
			body[i] = (uint8_t) ".\r\na"[rng_next(&rng) % 4];
		CHECK(smtp_client_send(c, &t, &ev) == 0);
		drain(c);
		CHECK(feed_text(c, "250 ok\r\n250 ok\r\n354 go\r\n", &ev) == SMTP_CLIENT_EV_NONE);
		ok = body_drain_check(c, body, t.body_len, 1 + (unsigned)round % 4, &rng);
		CHECK(feed_text(c, "250 ok\r\n", &ev) == SMTP_CLIENT_EV_TXN_DONE);
		CHECK(ev.rcpt_count == 1 && ev.results[0].code == 250);
		smtp_client_free(c);
	}
	CHECK(ok);
}

/* A reply is not read while the command it answers is still unsent. */
static void
test_stall(void)
{
	struct smtp_client *c = ready_session(&test_params, "250-mx\r\n250 PIPELINING\r\n");
	struct smtp_client_rcpt rcpt = {.address = "bob@example.test"};
	struct smtp_client_txn t = {.sender = "", .rcpts = &rcpt, .rcpt_count = 1};
	struct smtp_client_event ev;
	struct iovec iov[1];

	CHECK(smtp_client_send(c, &t, &ev) == 0);
	CHECK(ev.type == SMTP_CLIENT_EV_NONE);
	CHECK(smtp_client_send(c, &t, &ev) == -EBUSY);
	CHECK(smtp_client_feed(c, (const uint8_t *)"250 ok\r\n", 8, &ev) == 0);
	CHECK(ev.type == SMTP_CLIENT_EV_NONE);
	CHECK(smtp_client_output(c, iov, 1) == 1);
	smtp_client_output_consume(c, iov[0].iov_len - 1);
	CHECK(smtp_client_feed(c, (const uint8_t *)"250 ok\r\n", 8, &ev) == 0);
	smtp_client_output_consume(c, 1);
	CHECK(!smtp_client_output_pending(c));
	CHECK(smtp_client_feed(c, (const uint8_t *)"250 ok\r\n", 8, &ev) == 8);
	CHECK(smtp_client_state(c) == SMTP_CLIENT_RCPT);
	/* A failure drops what is pending; a late write completion changes nothing. */
	smtp_client_abort(c, SMTP_CLIENT_ABORT_LOST, &ev);
	CHECK(ev.type == SMTP_CLIENT_EV_FAILED);
	CHECK(!smtp_client_output_pending(c));
	smtp_client_output_consume(c, 100);
	smtp_client_abort(c, SMTP_CLIENT_ABORT_TIMEOUT, &ev);
	CHECK(ev.type == SMTP_CLIENT_EV_NONE);
	CHECK(smtp_client_feed(c, (const uint8_t *)"250 ok\r\n", 8, &ev) == 8);
	CHECK(ev.type == SMTP_CLIENT_EV_NONE);
	smtp_client_free(c);
}

/* Reply text is cut at SMTP_CLIENT_REPLY_TEXT_MAX - 1; a flood of lines stops at the limit. */
static void
test_reply_limits(void)
{
	struct smtp_client *c = smtp_client_new(&test_params);
	struct smtp_client_event ev;
	char line[600];
	size_t lines = 0;

	memset(line, 'z', sizeof(line));
	memcpy(line, "220 ", 4);
	memcpy(line + 505, "\r\n", 3);
	CHECK(feed_text(c, line, &ev) == SMTP_CLIENT_EV_NONE);
	CHECK(strlen(smtp_client_last_reply(c)->text) == SMTP_CLIENT_REPLY_TEXT_MAX - 1);
	CHECK(strncmp(smtp_client_last_reply(c)->text, "220 zzz", 7) == 0);
	drain(c);
	while (feed_text(c, "250-x\r\n", &ev) == SMTP_CLIENT_EV_NONE && lines < 100000)
		lines++;
	CHECK(lines == test_params.reply_lines_max);
	CHECK(ev.type == SMTP_CLIENT_EV_FAILED);
	CHECK(ev.reply->code == 451);
	CHECK(strcmp(ev.reply->status, "4.4.2") == 0);
	CHECK(!ev.reply->remote);
	smtp_client_free(c);
}

/* rcpt_count_max recipients in one pipelined batch, each with long DSN values. */
static void
test_large_batch(void)
{
	static struct smtp_client_rcpt rcpts[1000];
	static char addr[1000][80], orcpt[SMTP_CLIENT_ORCPT_MAX + 2];
	struct smtp_client *c =
	    ready_session(&test_params, "250-mx\r\n250-PIPELINING\r\n250 DSN\r\n");
	struct smtp_client_txn t = {.sender = "a@example.org", .rcpts = rcpts, .rcpt_count = 1000};
	struct smtp_client_event ev;
	size_t out;

	memset(orcpt, 'o', SMTP_CLIENT_ORCPT_MAX);
	for (int i = 0; i < 1000; i++) {
		snprintf(addr[i], sizeof(addr[i]), "user%d@example.test", i);
		rcpts[i] = (struct smtp_client_rcpt){
		    .address = addr[i], .notify = "SUCCESS,FAILURE,DELAY", .orcpt = orcpt};
	}
	CHECK(smtp_client_send(c, &t, &ev) == 0);
	out = drain(c);
	CHECK(out > 1000 * SMTP_CLIENT_ORCPT_MAX);
	CHECK(feed_text(c, "250 ok\r\n", &ev) == SMTP_CLIENT_EV_NONE);
	for (int i = 0; i < 1000; i++)
		feed_text(c, i % 2 ? "250 ok\r\n" : "550 5.1.1 no\r\n", &ev);
	CHECK(feed_text(c, "354 go\r\n", &ev) == SMTP_CLIENT_EV_NONE);
	CHECK(drain(c) == 3);
	CHECK(feed_text(c, "250 2.0.0 done\r\n", &ev) == SMTP_CLIENT_EV_TXN_DONE);
	CHECK(ev.rcpt_count == 1000);
	CHECK(ev.results[0].code == 550 && ev.results[999].code == 250);
	CHECK(strcmp(ev.results[1].text, "250 2.0.0 done") == 0);
	/* One value too long for a command line is refused, nothing queued. */
	orcpt[SMTP_CLIENT_ORCPT_MAX] = 'o';
	CHECK(smtp_client_send(c, &t, &ev) == -EINVAL);
	CHECK(!smtp_client_output_pending(c));
	smtp_client_free(c);
}

static void
test_send_misuse(void)
{
	struct smtp_client *c = ready_session(&test_params, "250 mx\r\n");
	struct smtp_client_rcpt rcpt = {.address = "bob@example.test"};
	struct smtp_client_txn t = {.sender = NULL, .rcpts = &rcpt, .rcpt_count = 1};
	struct smtp_client_event ev;

	CHECK(smtp_client_send(c, &t, &ev) == -EINVAL);
	t.sender = "";
	t.body_len = 5;
	CHECK(smtp_client_send(c, &t, &ev) == -EINVAL);
	t.body_len = 0;
	t.rcpt_count = 0;
	CHECK(smtp_client_send(c, &t, &ev) == -EINVAL);
	t.rcpt_count = 1001;
	CHECK(smtp_client_send(c, &t, &ev) == -E2BIG);
	CHECK(!smtp_client_output_pending(c));
	CHECK(smtp_client_state(c) == SMTP_CLIENT_READY);
	smtp_client_free(c);
	CHECK(strcmp(smtp_client_state_name(SMTP_CLIENT_CLOSED), "closed") == 0);
	CHECK(strcmp(smtp_client_state_name((enum smtp_client_state)99), "invalid") == 0);
}

int
main(void)
{
	test_transcripts();
	test_body_segments();
	test_stall();
	test_reply_limits();
	test_large_batch();
	test_send_misuse();
	printf("%d passed, %d failed\n", passed, failed);
	return failed > 0;
}

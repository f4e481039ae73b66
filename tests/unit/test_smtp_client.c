/*
 * test_smtp_client.c -- dialogue transcripts (tests/fixtures/smtp_client, *.txt), each
 * run with the server's replies whole, one byte at a time (with output also consumed
 * one byte at a time) and split in two at every point (tests/unit/transcript.c); plus
 * checks of limits, output segmentation and API misuse that transcripts cannot express
 * well.
 *
 * Transcript lines ("X: " prefix, then the text):
 *   # ...       comment (blank lines are ignored too)
 *   P: words    session set-up: helo=NAME tls=none|may|required tls_active line=N
 *               lines=N rcpts=N chunking window=N (BDAT transactions in flight, <= 8)
 *   S: text     one server reply line, fed with CRLF added; escapes \r \n \t \\ \xHH and
 *               \[N]c (c N times)
 *   F: bytes    server bytes fed as they are (escapes as S:)
 *   C: bytes    expected client output: everything pending at that point, drained
 *               (escaped, so "C: MAIL ...\r\nRCPT ...\r\nDATA\r\n" is one batch)
 *   E: event    expected event: READY | STARTTLS | TXN_DONE | CLOSED REPLY | FAILED REPLY
 *               | ERROR -N (smtp_client_send/quit refused); REPLY is "[status remote|local]
 *               text"; a FAILED is followed by those smtp_client_next_failed() gives
 *   R: REPLY    one per recipient, after TXN_DONE or a FAILED during a transaction
 *   A: action   done once the input before it is fed (it ends a "segment"):
 *               rcpt ADDR [notify=V] [orcpt=V] | body BYTES (escapes) | send [from=ADDR]
 *               [8bit] [utf8] [ret=V] [envid=V] | quit | tls_done | abort lost|timeout|tls
 *               | new (a fresh session with the same set-up)
 *   K: state    expected "state=NAME caps=A,B size=N tls=0|1 last=REPLY" (ends a segment)
 * Splits happen only inside a segment, as no server answers what was not yet sent.
 */
#include "core/smtp_client.h"

#include "tests/unit/check.h"
#include "tests/unit/transcript.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE_DIR   "../fixtures/smtp_client"
#define OUTPUT_MAX    (64 * 1024) /* client output drained into one C: line */
#define RUN_RCPTS_MAX 16
#define RUN_IOV_MAX   3 /* small, so output is described over several calls */
#define BODY_MAX      4096
#define RUN_BODIES    8 /* bodies of transactions in flight at once */

/* What a transcript's P: line sets up. */
struct client_setup {
	struct smtp_client_params params;
	char helo[256];
};

/* What the A: lines build up for the next send. */
struct pending {
	struct smtp_client_rcpt rcpt[RUN_RCPTS_MAX];
	char *words[RUN_RCPTS_MAX][3];
	unsigned rcpt_count;
	uint8_t body[RUN_BODIES][BODY_MAX]; /* a ring: each send takes the next */
	size_t body_len;
	unsigned body_next;
};

/* One run of a transcript. */
struct client_run {
	struct smtp_client *c;
	const struct client_setup *setup;
	struct transcript_trace *tr;
	bool byte_output; /* consume output one byte at a time */
	struct pending pend;
};

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
setup_reset(void *arg)
{
	struct client_setup *su = arg;

	memset(su, 0, sizeof(*su));
	snprintf(su->helo, sizeof(su->helo), "relay.example.org");
	su->params = (struct smtp_client_params){.helo_name = su->helo,
	                                         .tls_mode = SMTP_CLIENT_TLS_NONE,
	                                         .reply_line_max = 512,
	                                         .reply_lines_max = 100,
	                                         .rcpt_count_max = 100,
	                                         .txn_window = 1};
}

static int
setup_param(void *arg, const char *word)
{
	struct client_setup *su = arg;
	unsigned long v;

	if (strcmp(word, "tls=none") == 0)
		su->params.tls_mode = SMTP_CLIENT_TLS_NONE;
	else if (strcmp(word, "tls=may") == 0)
		su->params.tls_mode = SMTP_CLIENT_TLS_MAY;
	else if (strcmp(word, "tls=required") == 0)
		su->params.tls_mode = SMTP_CLIENT_TLS_REQUIRED;
	else if (strcmp(word, "tls_active") == 0)
		su->params.tls_active = true;
	else if (sscanf(word, "helo=%255s", su->helo) == 1)
		return 0;
	else if (sscanf(word, "line=%lu", &v) == 1)
		su->params.reply_line_max = v;
	else if (sscanf(word, "lines=%lu", &v) == 1)
		su->params.reply_lines_max = (unsigned)v;
	else if (sscanf(word, "rcpts=%lu", &v) == 1)
		su->params.rcpt_count_max = (unsigned)v;
	else if (strcmp(word, "chunking") == 0)
		su->params.chunking = true;
	else if (sscanf(word, "window=%lu", &v) == 1 && v >= 1 && v <= RUN_BODIES)
		su->params.txn_window = (unsigned)v;
	else
		return -1;
	return 0;
}

/* A line of a kind the helper leaves to this test; returns -1 when it is malformed. */
static int
setup_line(void *arg, struct transcript *t, char kind, char *text)
{
	switch (kind) {
	case 'S':
	case 'F':
		return transcript_input(t, text, kind == 'S');
	case 'C':
		return transcript_expect(t, kind, text, true);
	case 'E':
	case 'R':
		return transcript_expect(t, kind, text, false);
	case 'A':
		return transcript_segment_end(t, text);
	default:
		return -1;
	}
}

static void
format_reply(const struct smtp_client_reply *r, char *buf, size_t size)
{
	snprintf(buf, size, "[%s %s] %s", r->status, r->remote ? "remote" : "local", r->text);
}

/* Drains all pending output into one "C: " line. */
static void
run_output(struct client_run *r)
{
	static uint8_t bytes[OUTPUT_MAX];
	static char text[4 * OUTPUT_MAX + 1];
	struct iovec iov[RUN_IOV_MAX];
	size_t n = 0;
	unsigned cnt;

	while ((cnt = smtp_client_output(r->c, iov, RUN_IOV_MAX)) > 0) {
		size_t got = 0;

		for (unsigned i = 0; i < cnt; i++) {
			size_t take = iov[i].iov_len;

			if (r->byte_output)
				take = got == 0 ? 1 : 0;
			if (take > sizeof(bytes) - n)
				take = sizeof(bytes) - n;
			memcpy(bytes + n, iov[i].iov_base, take);
			n += take;
			got += take;
		}
		if (got == 0) {
			transcript_trace_add(r->tr, "! output does not drain");
			return;
		}
		smtp_client_output_consume(r->c, got);
	}
	if (n == 0)
		return;
	transcript_escape(bytes, n, text, sizeof(text));
	transcript_trace_add(r->tr, "C: %s", text);
}

static void
run_results(struct transcript_trace *tr, const struct smtp_client_event *ev)
{
	char buf[2 * SMTP_CLIENT_REPLY_TEXT_MAX];

	for (unsigned i = 0; i < ev->rcpt_count; i++) {
		format_reply(&ev->results[i], buf, sizeof(buf));
		transcript_trace_add(tr, "R: %s", buf);
	}
}

static void
run_event_one(struct transcript_trace *tr, const struct smtp_client_event *ev)
{
	char buf[2 * SMTP_CLIENT_REPLY_TEXT_MAX];

	switch (ev->type) {
	case SMTP_CLIENT_EV_NONE:
		break;
	case SMTP_CLIENT_EV_READY:
		transcript_trace_add(tr, "E: READY");
		break;
	case SMTP_CLIENT_EV_STARTTLS:
		transcript_trace_add(tr, "E: STARTTLS");
		break;
	case SMTP_CLIENT_EV_TXN_DONE:
		transcript_trace_add(tr, "E: TXN_DONE");
		run_results(tr, ev);
		break;
	case SMTP_CLIENT_EV_FAILED:
	case SMTP_CLIENT_EV_CLOSED:
		format_reply(ev->reply, buf, sizeof(buf));
		transcript_trace_add(tr, "E: %s %s",
		                     ev->type == SMTP_CLIENT_EV_FAILED ? "FAILED" : "CLOSED", buf);
		run_results(tr, ev);
		break;
	}
}

static void
run_event(struct transcript_trace *tr, struct smtp_client *c, const struct smtp_client_event *ev)
{
	struct smtp_client_event more;

	run_event_one(tr, ev);
	if (ev->type != SMTP_CLIENT_EV_FAILED)
		return;
	for (smtp_client_next_failed(c, &more); more.type != SMTP_CLIENT_EV_NONE;
	     smtp_client_next_failed(c, &more))
		run_event_one(tr, &more);
}

static void
run_feed(void *arg, const uint8_t *in, size_t len)
{
	struct client_run *r = arg;

	while (len > 0) {
		struct smtp_client_event ev;
		size_t used = smtp_client_feed(r->c, in, len, &ev);
		bool pending = smtp_client_output_pending(r->c);

		if (used > len) {
			transcript_trace_add(r->tr, "! feed used %zu of %zu", used, len);
			return;
		}
		run_output(r);
		run_event(r->tr, r->c, &ev);
		in += used;
		len -= used;
		if (used == 0 && ev.type == SMTP_CLIENT_EV_NONE && !pending) {
			transcript_trace_add(r->tr, "! feed made no progress");
			return;
		}
	}
}

static void
run_caps(struct client_run *r)
{
	static const char *const names[] = {
	    "PIPELINING",          "SIZE",    "8BITMIME", "SMTPUTF8", "DSN", "STARTTLS",
	    "ENHANCEDSTATUSCODES", "CHUNKING"};
	char caps[256] = "", last[2 * SMTP_CLIENT_REPLY_TEXT_MAX];
	size_t n = 0;

	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (smtp_client_caps(r->c) & (1u << i))
			n += (size_t)snprintf(caps + n, sizeof(caps) - n, "%s%s", n ? "," : "",
			                      names[i]);
	}
	format_reply(smtp_client_last_reply(r->c), last, sizeof(last));
	transcript_trace_add(r->tr, "K: state=%s caps=%s size=%zu tls=%d last=%s",
	                     smtp_client_state_name(smtp_client_state(r->c)), caps,
	                     smtp_client_size_max(r->c), smtp_client_tls_active(r->c), last);
}

/* A word of an A: line with its escapes decoded (so tests can put CR or LF in values). */
static char *
word_dup(const char *w)
{
	uint8_t buf[1024];
	long n = transcript_unescape(w, buf, sizeof(buf) - 1);
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
run_rcpt(struct client_run *run, char *args)
{
	struct pending *p = &run->pend;
	struct smtp_client_rcpt *r = &p->rcpt[p->rcpt_count];
	char **w = p->words[p->rcpt_count];
	char *save = NULL;

	if (p->rcpt_count == RUN_RCPTS_MAX) {
		transcript_trace_add(run->tr, "! too many rcpt actions");
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
run_send(struct client_run *run, char *args)
{
	struct smtp_client_txn t = {.rcpts = run->pend.rcpt};
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
			transcript_trace_add(run->tr, "! send: unknown word %s", a);
	}
	t.sender = from != NULL ? from : "";
	t.ret = ret;
	t.envid = envid;
	t.rcpt_count = run->pend.rcpt_count;
	t.body = run->pend.body[run->pend.body_next];
	t.body_len = run->pend.body_len;
	/* the next send gets the same body in a slot of its own, unless a body action follows */
	run->pend.body_next = (run->pend.body_next + 1) % RUN_BODIES;
	memcpy(run->pend.body[run->pend.body_next], t.body, t.body_len);
	r = smtp_client_send(run->c, &t, &ev);
	/* The session keeps no pointer into the txn but its body: ASan checks that it does not. */
	pending_clear(&run->pend);
	free(from);
	free(ret);
	free(envid);
	if (r < 0)
		transcript_trace_add(run->tr, "E: ERROR %d", r);
	run_event(run->tr, run->c, &ev);
}

static void
run_abort(struct client_run *r, const char *why)
{
	struct smtp_client_event ev;

	if (strcmp(why, "lost") == 0)
		smtp_client_abort(r->c, SMTP_CLIENT_ABORT_LOST, &ev);
	else if (strcmp(why, "timeout") == 0)
		smtp_client_abort(r->c, SMTP_CLIENT_ABORT_TIMEOUT, &ev);
	else
		smtp_client_abort(r->c, SMTP_CLIENT_ABORT_TLS, &ev);
	run_event(r->tr, r->c, &ev);
}

static void
run_action(void *arg, const char *action)
{
	struct client_run *r = arg;
	char buf[TRANSCRIPT_LINE_MAX];
	long n;
	int rc;

	if (action == NULL) /* the end of the input, its output already drained */
		return;
	snprintf(buf, sizeof(buf), "%s", action);
	if (strcmp(buf, "counts") == 0) {
		run_caps(r);
	} else if (strncmp(buf, "rcpt", 4) == 0) {
		run_rcpt(r, buf + 4);
	} else if (strncmp(buf, "body ", 5) == 0 || strcmp(buf, "body") == 0) {
		n = transcript_unescape(buf + 4 + (buf[4] == ' '), r->pend.body[r->pend.body_next],
		                        sizeof(r->pend.body[0]));
		r->pend.body_len = n < 0 ? 0 : (size_t)n;
	} else if (strncmp(buf, "send", 4) == 0) {
		run_send(r, buf + 4);
	} else if (strcmp(buf, "quit") == 0) {
		rc = smtp_client_quit(r->c);
		if (rc < 0)
			transcript_trace_add(r->tr, "E: ERROR %d", rc);
	} else if (strcmp(buf, "tls_done") == 0 &&
	           smtp_client_state(r->c) == SMTP_CLIENT_TLS_WAIT) {
		smtp_client_tls_done(r->c);
	} else if (strncmp(buf, "abort ", 6) == 0) {
		run_abort(r, buf + 6);
	} else if (strcmp(buf, "new") == 0) {
		smtp_client_free(r->c);
		r->c = smtp_client_new(&r->setup->params);
	} else {
		transcript_trace_add(r->tr, "! unknown action %s", buf);
	}
	run_output(r);
}

static void *
run_start(const void *setup, struct transcript_trace *tr, bool bytewise)
{
	struct client_run *r = calloc(1, sizeof(*r));

	r->setup = setup;
	r->tr = tr;
	r->byte_output = bytewise;
	r->c = smtp_client_new(&r->setup->params);
	return r;
}

static void
run_stop(void *arg)
{
	struct client_run *r = arg;

	smtp_client_free(r->c);
	pending_clear(&r->pend);
	free(r);
}

static void
test_transcripts(void)
{
	static const struct transcript_engine engine = {
	    .setup_size = sizeof(struct client_setup),
	    .reset = setup_reset,
	    .param = setup_param,
	    .line = setup_line,
	    .start = run_start,
	    .feed = run_feed,
	    .action = run_action,
	    .stop = run_stop,
	};

	transcript_test_dir(FIXTURE_DIR, &engine, &passed, &failed);
}

static const struct smtp_client_params test_params = {.helo_name = "relay.example.org",
                                                      .tls_mode = SMTP_CLIENT_TLS_NONE,
                                                      .reply_line_max = 512,
                                                      .reply_lines_max = 100,
                                                      .rcpt_count_max = 1000,
                                                      .txn_window = 1};

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

/*
 * BDAT: a window of transactions goes out as text + body each, bodies by reference and
 * never stuffed; a reply waits until its whole transaction is written, not the later ones.
 */
static void
test_chunk_window(void)
{
	static uint8_t body[4][BODY_MAX];
	static uint8_t got[5 * BODY_MAX];
	struct smtp_client_params p = test_params;
	struct smtp_client_rcpt rcpt = {.address = "bob@example.test"};
	struct smtp_client_txn t = {.sender = "a@example.org", .rcpts = &rcpt, .rcpt_count = 1};
	struct smtp_client_event ev;
	struct smtp_client *c;
	uint32_t rng = 11;
	size_t n = 0, want = 0, first_end = 0;
	struct iovec iov[4];
	unsigned cnt;

	p.chunking = true;
	p.txn_window = 4;
	c = ready_session(&p, "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
	for (int k = 0; k < 4; k++) {
		t.body = body[k];
		t.body_len = 100 + rng_next(&rng) % (BODY_MAX - 100);
		for (size_t i = 0; i < t.body_len; i++)
			body[k][i] = (uint8_t) ".\r\na"[rng_next(&rng) % 4];
		memcpy(body[k] + t.body_len - 2, "\r\n", 2);
		CHECK(smtp_client_send(c, &t, &ev) == 0 && ev.type == SMTP_CLIENT_EV_NONE);
		want += t.body_len;
		if (k == 0)
			first_end = t.body_len;
	}
	CHECK(smtp_client_send(c, &t, &ev) == -EBUSY);
	CHECK(smtp_client_input_blocked(c));
	/* the first transaction's text and body: then its replies may be read */
	while ((cnt = smtp_client_output(c, iov, 2)) > 0 && n < sizeof(got)) {
		size_t take = 1 + rng_next(&rng) % iov[0].iov_len;

		memcpy(got + n, iov[0].iov_base, take);
		n += take;
		smtp_client_output_consume(c, take);
		if (!smtp_client_input_blocked(c))
			break;
	}
	CHECK(memmem(got, n, "BDAT", 4) != NULL);
	CHECK(n >= first_end && memcmp(got + n - first_end, body[0], first_end) == 0);
	CHECK(feed_text(c, "250 ok\r\n250 ok\r\n250 done\r\n", &ev) == SMTP_CLIENT_EV_TXN_DONE);
	CHECK(ev.rcpt_count == 1 && ev.results[0].code == 250);
	/* the second one's RSET reply waits for the second one's bytes */
	CHECK(smtp_client_input_blocked(c));
	CHECK(smtp_client_feed(c, (const uint8_t *)"250 reset\r\n", 11, &ev) == 0);
	CHECK(smtp_client_can_send(c));
	CHECK(drain(c) > want - first_end);
	CHECK(!smtp_client_input_blocked(c));
	CHECK(smtp_client_quit(c) == -EBUSY);
	smtp_client_abort(c, SMTP_CLIENT_ABORT_TIMEOUT, &ev);
	for (int k = 1; k < 4; k++) {
		CHECK(ev.type == SMTP_CLIENT_EV_FAILED && ev.rcpt_count == 1);
		CHECK(ev.results != NULL && ev.results[0].code == 451);
		smtp_client_next_failed(c, &ev);
	}
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
	test_chunk_window();
	test_reply_limits();
	test_large_batch();
	test_send_misuse();
	printf("%d passed, %d failed\n", passed, failed);
	return failed > 0;
}

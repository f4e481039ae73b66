/*
 * test_smtp_server.c -- dialogue transcripts (tests/fixtures/smtp, *.txt), each
 * run with its input whole, one byte at a time and split in two at every
 * point (tests/unit/transcript.c); plus checks of limits that transcripts
 * cannot express well.
 *
 * Transcript lines ("X: " prefix, then the text):
 *   # ...            comment (blank lines are ignored too)
 *   P: words         session set-up: starttls tls_required auth_required tls_active
 *                    reject host=NAME size=N rcpts=N errors=N
 *   C: bytes         client input; escapes \r \n \t \\ \xHH and \[N]c (c N times)
 *   S: text          one expected reply line (its CRLF implied)
 *   E: event         expected event: RCPT <addr> [params=...] | MESSAGE from=<a> to=<b>,<c>
 *                    [8bitmime] [smtputf8] [params=...] [rcpt_params=...|...] | STARTTLS |
 *                    CLOSE quit|errors|tls_required_quit|chunk_unframed
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

#include "tests/unit/check.h"
#include "tests/unit/transcript.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE_DIR "../fixtures/smtp"
#define ANSWERS_MAX 512 /* A: lines of one transcript */

/* What a transcript's P: and A: lines set up. */
struct server_setup {
	struct smtp_server_params params;
	struct smtp_server_limits limits;
	char host[SMTP_HELO_MAX + 1];
	char *answer[ANSWERS_MAX];
	size_t answer_count;
};

/* One run of a transcript. */
struct server_run {
	struct smtp_server *s;
	const struct server_setup *setup;
	struct transcript_trace *tr;
	char partial[TRANSCRIPT_LINE_MAX]; /* a reply line until its CRLF */
	size_t partial_len;
	size_t answer_next;
};

static void
setup_reset(void *arg)
{
	struct server_setup *su = arg;

	for (size_t i = 0; i < su->answer_count; i++)
		free(su->answer[i]);
	memset(su, 0, sizeof(*su));
	snprintf(su->host, sizeof(su->host), "mx.example.test");
	su->params.hostname = su->host;
	su->limits = (struct smtp_server_limits){
	    .message_size_max = 10 * 1024 * 1024, .rcpt_count_max = 100, .error_count_max = 10};
}

static int
setup_param(void *arg, const char *word)
{
	struct server_setup *su = arg;
	unsigned long v;

	if (strcmp(word, "starttls") == 0)
		su->params.starttls_offer = true;
	else if (strcmp(word, "tls_required") == 0)
		su->params.tls_required = true;
	else if (strcmp(word, "auth_required") == 0)
		su->params.auth_required = true;
	else if (strcmp(word, "tls_active") == 0)
		su->params.tls_active = true;
	else if (strcmp(word, "reject") == 0)
		su->params.bare_newline = SMTP_BARE_NEWLINE_REJECT;
	else if (sscanf(word, "host=%255s", su->host) == 1)
		return 0;
	else if (sscanf(word, "size=%lu", &v) == 1)
		su->limits.message_size_max = v;
	else if (sscanf(word, "rcpts=%lu", &v) == 1)
		su->limits.rcpt_count_max = (unsigned)v;
	else if (sscanf(word, "errors=%lu", &v) == 1)
		su->limits.error_count_max = (unsigned)v;
	else
		return -1;
	return 0;
}

/* A line of a kind the helper leaves to this test; returns -1 when it is malformed. */
static int
setup_line(void *arg, struct transcript *t, char kind, char *text)
{
	struct server_setup *su = arg;

	switch (kind) {
	case 'C':
		return transcript_input(t, text, false);
	case 'S':
	case 'E':
		return transcript_expect(t, kind, text, false);
	case 'B':
		return transcript_expect(t, kind, text, true);
	case 'X':
		return transcript_segment_end(t, text);
	case 'A':
		if (su->answer_count == ANSWERS_MAX)
			return -1;
		su->answer[su->answer_count++] = strdup(text);
		return 0;
	default:
		return -1;
	}
}

/* Moves the server's output into the trace, one "S: " entry per reply line. */
static void
run_output(struct server_run *r)
{
	size_t len;
	const uint8_t *out = smtp_server_output(r->s, &len);

	for (size_t i = 0; i < len; i++) {
		if (r->partial_len + 1 >= sizeof(r->partial))
			break;
		r->partial[r->partial_len++] = (char)out[i];
		if (r->partial_len >= 2 && r->partial[r->partial_len - 2] == '\r' &&
		    r->partial[r->partial_len - 1] == '\n') {
			r->partial[r->partial_len - 2] = '\0';
			transcript_trace_add(r->tr, "S: %s", r->partial);
			r->partial_len = 0;
		}
	}
	smtp_server_output_consume(r->s, len);
}

static const char *
run_answer(struct server_run *r)
{
	if (r->answer_next == r->setup->answer_count) {
		transcript_trace_add(r->tr, "! an event without an A: answer");
		return "ok";
	}
	return r->setup->answer[r->answer_next++];
}

/* "<local@domain>", escaped as in transcripts; "<local>" without a domain. */
static void
format_addr(const struct address *a, char *buf, size_t size)
{
	char raw[ADDRESS_PATH_MAX + 8];
	int n = snprintf(raw, sizeof(raw), "<%s%s%s>", a->local, a->domain[0] != '\0' ? "@" : "",
	                 a->domain);

	transcript_escape((const uint8_t *)raw, (size_t)n, buf, size);
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
run_message(struct server_run *r, const struct smtp_envelope *env)
{
	static char body[TRANSCRIPT_LINE_MAX], rcpt_params[TRANSCRIPT_LINE_MAX];
	char line[TRANSCRIPT_LINE_MAX], addr[4 * ADDRESS_PATH_MAX + 8];
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
	transcript_trace_add(r->tr, "%s%s", line,
	                     run_rcpt_params(env, rcpt_params, sizeof(rcpt_params)));
	transcript_escape(env->body, env->body_len, body, sizeof(body));
	transcript_trace_add(r->tr, "B: %s", body);
	a = run_answer(r);
	if (strncmp(a, "queued ", 7) == 0)
		smtp_server_message_done(r->s, SMTP_STORE_OK, a + 7);
	else
		smtp_server_message_done(
		    r->s, strcmp(a, "nospace") == 0 ? SMTP_STORE_NOSPACE : SMTP_STORE_ERROR, NULL);
}

static void
run_event(struct server_run *r, const struct smtp_event *ev)
{
	static const char *const why[] = {"quit",     "errors",  "tls_required_quit",
	                                  "shutdown", "timeout", "chunk_unframed"};
	char addr[4 * ADDRESS_PATH_MAX + 8];
	const char *a;

	switch (ev->type) {
	case SMTP_EV_NONE:
		break;
	case SMTP_EV_RCPT:
		format_addr(&ev->rcpt->addr, addr, sizeof(addr));
		transcript_trace_add(r->tr, "E: RCPT %s%s%s", addr,
		                     ev->rcpt->params[0] ? " params=" : "", ev->rcpt->params);
		a = run_answer(r);
		smtp_server_rcpt_done(r->s, strcmp(a, "ok") == 0 ? NULL : a);
		break;
	case SMTP_EV_MESSAGE:
		run_message(r, ev->envelope);
		break;
	case SMTP_EV_STARTTLS:
		transcript_trace_add(r->tr, "E: STARTTLS");
		break;
	case SMTP_EV_CLOSE:
		transcript_trace_add(r->tr, "E: CLOSE %s", why[ev->close]);
		break;
	}
	run_output(r);
}

static void *
run_start(const void *setup, struct transcript_trace *tr, bool bytewise)
{
	struct server_run *r = calloc(1, sizeof(*r));

	/* bytewise is not used: replies are whole lines however the input comes */
	r->setup = setup;
	r->tr = tr;
	r->s = smtp_server_new(&r->setup->params, &r->setup->limits);
	run_output(r);
	return r;
}

static void
run_feed(void *arg, const uint8_t *in, size_t len)
{
	struct server_run *r = arg;

	while (len > 0) {
		struct smtp_event ev;
		size_t used = smtp_server_feed(r->s, in, len, &ev);

		if (used > len) {
			transcript_trace_add(r->tr, "! feed used %zu of %zu", used, len);
			return;
		}
		run_output(r);
		run_event(r, &ev);
		in += used;
		len -= used;
		if (smtp_server_state(r->s) == SMTP_SERVER_CLOSING)
			return;
		if (used == 0 && ev.type == SMTP_EV_NONE) {
			transcript_trace_add(r->tr, "! feed made no progress");
			return;
		}
	}
}

static void
run_counts(struct server_run *r)
{
	struct smtp_server_counts c;

	smtp_server_counts(r->s, &c);
	transcript_trace_add(
	    r->tr, "K: commands=%u errors=%u messages=%u rcpts=%u/%u helo=%s esmtp=%d state=%s",
	    c.commands, c.errors, c.messages, c.rcpts_accepted, c.rcpts_refused,
	    smtp_server_helo(r->s), smtp_server_esmtp(r->s),
	    smtp_server_state_name(smtp_server_state(r->s)));
}

static void
run_action(void *arg, const char *action)
{
	struct server_run *r = arg;
	enum smtp_server_state state = smtp_server_state(r->s);

	if (action == NULL) /* the end of the input, its output already drained */
		return;
	if (strcmp(action, "tls_done") == 0 && state == SMTP_SERVER_TLS_WAIT)
		smtp_server_tls_done(r->s);
	else if (strcmp(action, "timeout") == 0)
		smtp_server_timeout(r->s);
	else if (strcmp(action, "shutdown") == 0)
		smtp_server_shutdown(r->s);
	else if (strcmp(action, "counts") == 0)
		run_counts(r);
	else
		transcript_trace_add(r->tr, "! action %s in state %s", action,
		                     smtp_server_state_name(state));
	run_output(r);
}

static void
run_stop(void *arg)
{
	struct server_run *r = arg;

	if (r->partial_len > 0)
		transcript_trace_add(r->tr, "! output ends without CRLF");
	if (r->answer_next != r->setup->answer_count)
		transcript_trace_add(r->tr, "! %zu A: answers left over",
		                     r->setup->answer_count - r->answer_next);
	smtp_server_free(r->s);
	free(r);
}

static void
test_transcripts(void)
{
	static const struct transcript_engine engine = {
	    .setup_size = sizeof(struct server_setup),
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

/* Feeds in in pieces of at most step octets; returns the stored body of the message. */
static size_t
body_of(const uint8_t *in, size_t len, size_t step, uint8_t *out, size_t cap)
{
	static const char head[] = "EHLO c.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\n";
	struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
	size_t got = 0;

	feed_all(s, head, sizeof(head) - 1, NULL);
	while (len > 0 && got == 0) {
		struct smtp_event ev;
		size_t used = smtp_server_feed(s, in, len < step ? len : step, &ev);
		size_t out_len;

		in += used;
		len -= used;
		if (ev.type == SMTP_EV_MESSAGE && ev.envelope->body_len <= cap) {
			got = ev.envelope->body_len + 1; /* + 1: an empty body is a result too */
			memcpy(out, ev.envelope->body, ev.envelope->body_len);
		}
		smtp_server_output(s, &out_len);
		smtp_server_output_consume(s, out_len);
		if (used == 0 && ev.type == SMTP_EV_NONE)
			break;
	}
	smtp_server_free(s);
	return got;
}

/*
 * Random content of '.', CR, LF and 'a' by DATA and by BDAT: stored the same whether the
 * engine sees it whole (long runs copied at once) or one octet at a time.
 */
static void
test_body_random(void)
{
	static uint8_t wire[2048], whole[2048], bytes[2048];
	uint32_t rng = 5;

	for (int round = 0; round < 2000; round++) {
		bool bdat = round % 2;
		size_t n = 0, body_len = 1 + (rng = rng * 1103515245u + 12345u) % 1000;

		n = (size_t)snprintf((char *)wire, sizeof(wire),
		                     bdat ? "BDAT %zu LAST\r\n" : "DATA\r\n", body_len);
		for (size_t i = 0; i < body_len; i++) {
			rng = rng * 1103515245u + 12345u;
			wire[n++] = (uint8_t) ".\r\na"[(rng >> 16) % 4];
		}
		if (!bdat) {
			memcpy(wire + n, "\r\n.\r\n", 5);
			n += 5;
		}
		size_t a = body_of(wire, n, n, whole, sizeof(whole));
		size_t b = body_of(wire, n, 1, bytes, sizeof(bytes));
		CHECK(a > 0 && a == b && memcmp(whole, bytes, a - 1) == 0);
	}
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

/* BDAT lines whose size can't be read close the session; readable ones frame their octets. */
static void
test_bdat_syntax(void)
{
	static const char *const bad[] = {
	    "BDAT",           "BDAT ",        "BDAT -1",
	    "BDAT +1",        "BDAT 0x1",     "BDAT 1 LAST x",
	    "BDAT 1  LAST",   "BDAT 1LAST",   "BDAT 1 L",
	    "BDAT 1 LASTING", "BDAT  1",      "BDAT 1 LAST\t",
	    "BDAT 1 2",       "BDAT 1\rLAST", "BDAT 000000000000000000001",
	};
	static const char *const good[] = {"BDAT 1 LAST ", "bdat 1 last", "BDAT 1 LaSt",
	                                   "BDAT 00000000000000000001 LAST"};
	char in[128];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
		int n = snprintf(in, sizeof(in), "EHLO c\r\n%s\r\nNOOP\r\n", bad[i]);

		feed_all(s, in, (size_t)n, NULL);
		CHECK(smtp_server_state(s) == SMTP_SERVER_CLOSING);
		smtp_server_free(s);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
		unsigned events = 0;
		int n =
		    snprintf(in, sizeof(in),
		             "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<r@b.test>\r\n%s\r\nx", good[i]);

		feed_all(s, in, (size_t)n, &events);
		CHECK(events == 2); /* the RCPT and the message */
		CHECK(smtp_server_state(s) == SMTP_SERVER_READY);
		smtp_server_free(s);
	}
}

/*
 * A chunk 256 times the limit, with bare LFs, fed in pieces: read to its end
 * (the body buffer never grows past message_size_max), then 552.
 */
static void
test_bdat_huge(void)
{
	static const char head[] = "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<r@b.test>\r\n"
	                           "BDAT 268435456 LAST\r\n";
	static const char tail[] = "NOOP\r\n";
	size_t piece = 64 * 1024, total = 268435456, len;
	char *buf = malloc(piece);
	struct smtp_server *s = smtp_server_new(&test_params, &test_limits);
	struct smtp_event ev;
	const uint8_t *out;

	memset(buf, 'z', piece);
	for (size_t i = 0; i < piece; i += 100)
		buf[i] = '\n';
	feed_all(s, head, sizeof(head) - 1, NULL);
	CHECK(smtp_server_state(s) == SMTP_SERVER_BDAT);
	CHECK(smtp_server_in_data(s));
	for (size_t fed = 0; fed < total; fed += piece) {
		if (smtp_server_feed(s, (const uint8_t *)buf, piece, &ev) != piece ||
		    ev.type != SMTP_EV_NONE) {
			CHECK(!"every octet of the chunk is taken as content");
			break;
		}
	}
	CHECK(smtp_server_state(s) == SMTP_SERVER_READY);
	CHECK(!smtp_server_in_data(s));
	CHECK(smtp_server_feed(s, (const uint8_t *)tail, sizeof(tail) - 1, &ev) ==
	      sizeof(tail) - 1);
	out = smtp_server_output(s, &len);
	CHECK(len == 41);
	CHECK(len == 41 && memcmp(out, "552 5.3.4 Message too big\r\n250 2.0.0 Ok\r\n", 41) == 0);
	smtp_server_free(s);
	free(buf);
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
	test_body_random();
	test_rcpt_growth();
	test_close_while_waiting();
	test_bdat_syntax();
	test_bdat_huge();
	test_xtext_decode();
	test_xtext_encode();
	test_atom();
	printf("%d passed, %d failed\n", passed, failed);
	return failed > 0;
}

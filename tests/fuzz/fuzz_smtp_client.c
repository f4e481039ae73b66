/*
 * fuzz_smtp_client.c -- libFuzzer target for the reply parser and the feed path.
 *
 * The first two octets pick the set-up (TLS mode, chunk sizes, BDAT and its window);
 * the rest is what the server says. The driver sends a transaction whenever the
 * session can take one, answers STARTTLS, drains output in odd pieces and feeds the input
 * in chunks. Beyond memory safety it checks what the scheduler relies on: feed never
 * claims more than it was given, every result has a 2/4/5 code and a status of the
 * same class, output drains, and a session ends in at most one FAILED or CLOSED.
 */
#include "core/smtp_client.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_SENDS_MAX 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t fuzz_body[] = ".start\r\nline\r\n.\r\nx\n.y\r.z";

static void
check_reply(const struct smtp_client_reply *r)
{
	unsigned cls = r->code / 100;

	assert(cls == 2 || cls == 4 || cls == 5);
	assert(r->status[0] == (char)('0' + cls));
	assert(strlen(r->text) < SMTP_CLIENT_REPLY_TEXT_MAX);
	for (const char *p = r->text; *p != '\0'; p++)
		assert(*p >= 0x20 && *p <= 0x7e);
}

static void
check_event(const struct smtp_client_event *ev)
{
	if (ev->type == SMTP_CLIENT_EV_FAILED || ev->type == SMTP_CLIENT_EV_TXN_DONE) {
		for (unsigned i = 0; i < ev->rcpt_count; i++)
			check_reply(&ev->results[i]);
	}
	if (ev->type == SMTP_CLIENT_EV_FAILED)
		check_reply(ev->reply);
}

static void
drain(struct smtp_client *c, unsigned step)
{
	struct iovec iov[3];
	unsigned n;

	while ((n = smtp_client_output(c, iov, 3)) > 0) {
		size_t sum = 0;

		for (unsigned i = 0; i < n; i++)
			sum += iov[i].iov_len;
		assert(sum > 0);
		smtp_client_output_consume(c, step < sum ? step : sum);
	}
}

static void
act(struct smtp_client *c, const struct smtp_client_event *ev, unsigned *sends, bool utf8)
{
	static const struct smtp_client_rcpt rcpts[] = {
	    {.address = "bob@example.test", .notify = "SUCCESS,FAILURE"},
	    {.address = "carol@example.test", .orcpt = "rfc822;carol@example.test"},
	    {.address = "dave@example.test"},
	};
	struct smtp_client_txn t = {.sender = "alice@example.org",
	                            .ret = "HDRS",
	                            .envid = "E1",
	                            .smtputf8 = utf8,
	                            .rcpts = rcpts,
	                            .rcpt_count = 3,
	                            .body = fuzz_body,
	                            .body_len = sizeof(fuzz_body) - 1};
	struct smtp_client_event now;

	if (ev->type == SMTP_CLIENT_EV_STARTTLS)
		smtp_client_tls_done(c);
	if (ev->type == SMTP_CLIENT_EV_FAILED) {
		/* the other transactions in flight end with it */
		for (smtp_client_next_failed(c, &now); now.type != SMTP_CLIENT_EV_NONE;
		     smtp_client_next_failed(c, &now)) {
			assert(now.type == SMTP_CLIENT_EV_FAILED);
			check_event(&now);
		}
	}
	while (smtp_client_can_send(c) && *sends < FUZZ_SENDS_MAX) {
		(*sends)++;
		assert(smtp_client_send(c, &t, &now) == 0);
		check_event(&now);
	}
	if (*sends == FUZZ_SENDS_MAX && smtp_client_state(c) == SMTP_CLIENT_READY)
		assert(smtp_client_quit(c) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_client_params p = {.helo_name = "relay.example.org",
	                               .reply_line_max = SMTP_CLIENT_REPLY_LINE_MIN,
	                               .reply_lines_max = 8,
	                               .rcpt_count_max = 3};
	struct smtp_client *c;
	unsigned sends = 0, ends = 0, chunk, step;

	if (size < 2)
		return 0;
	p.tls_mode = (enum smtp_client_tls_mode)(data[0] % 3);
	chunk = 1 + (data[0] >> 2) % 7;
	step = 1 + (data[0] >> 5);
	p.chunking = data[1] & 1;
	p.txn_window = 1 + (data[1] >> 1) % FUZZ_SENDS_MAX;
	c = smtp_client_new(&p);
	assert(c != NULL);
	data += 2;
	size -= 2;
	while (size > 0) {
		struct smtp_client_event ev;
		size_t len = size < chunk ? size : chunk;
		size_t used = smtp_client_feed(c, data, len, &ev);

		assert(used <= len);
		check_event(&ev);
		if (ev.type == SMTP_CLIENT_EV_FAILED || ev.type == SMTP_CLIENT_EV_CLOSED)
			ends++;
		assert(ends <= 1);
		drain(c, step);
		act(c, &ev, &sends, (data[0] & 1) != 0);
		drain(c, step);
		/* Output was drained before every feed, so the feed always made progress. */
		assert(used > 0);
		data += used;
		size -= used;
	}
	smtp_client_free(c);
	return 0;
}

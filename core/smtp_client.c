#include "core/smtp_client.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/address.h"

#define SMTP_CLIENT_HELO_MAX    255 /* our EHLO name, as the server's SMTP_HELO_MAX */
#define SMTP_CLIENT_SIZE_DIGITS 20  /* a SIZE value longer than this is taken as no limit */

static_assert(SMTP_CLIENT_HELO_MAX + 8 <= SMTP_CLIENT_CMD_MAX, "EHLO fits in a command");
static_assert(ADDRESS_PATH_MAX + SMTP_CLIENT_ORCPT_MAX + SMTP_CLIENT_NOTIFY_MAX + 40 <=
                  SMTP_CLIENT_CMD_MAX,
              "a RCPT with all its DSN parameters fits in a command");
static_assert(SMTP_CLIENT_REPLY_LINE_MIN <= SMTP_CLIENT_REPLY_LINE_CAP, "line limits ordered");
static_assert(SMTP_CLIENT_STATUS_MAX > sizeof("5.123.123") - 1, "the longest status fits");

/* Where the body output is: dot-stuffing is done by segmenting, never by copying. */
struct body_cursor {
	size_t pos;      /* next body octet to send */
	bool dotted;     /* the stuffing "." before pos was sent */
	size_t tail_off; /* octets of the end-of-data tail sent once pos reached the end */
};

struct rcpt_state {
	size_t cmd_end; /* end of its RCPT command in the batch (DATA transactions) */
	bool accepted;  /* RCPT got a 2xx */
	bool final;     /* its result is known; a later failure does not replace it */
};

/* Command text; grows up to cap_max. */
struct cmd_buf {
	char *p;
	size_t len, cap, cap_max;
};

/* One transaction: a DATA one alone, or one of the BDAT ones in flight. */
struct txn_slot {
	struct smtp_client_reply *results;
	struct rcpt_state *rs;
	unsigned rcpt_cap, rcpt_count, rcpt_next, accepted;
	bool mail_refused;
	const uint8_t *body;
	size_t body_len;

	/* BDAT: its own command text; text, body and crlf go out in that order */
	bool bdat;
	bool rset;        /* the text starts with RSET, whose reply comes first */
	bool crlf;        /* "\r\n" follows a body that does not end a line */
	unsigned replies; /* replies taken */
	struct cmd_buf text;
	size_t out_off; /* octets of text, body and crlf written */
};

struct smtp_client {
	struct smtp_client_params params;
	enum smtp_client_state state;
	unsigned caps;
	size_t size_max;
	bool tls_active;

	char *line; /* the reply line being assembled, params.reply_line_max octets */
	size_t line_len;
	struct smtp_client_reply reply; /* the reply being assembled */
	unsigned reply_lines;
	size_t text_len;
	struct smtp_client_reply last;    /* the last complete reply */
	struct smtp_client_reply failure; /* what ended the session */

	/* session commands and DATA transactions; [cmd_start, cmd_end) is pending */
	struct cmd_buf cmd;
	size_t cmd_start, cmd_end;
	size_t mail_end, data_end; /* ends of MAIL and DATA in the batch */
	bool pipelining;

	/* transactions in flight: a ring of params.txn_window, oldest at slot_head */
	struct txn_slot *slots;
	unsigned slot_head, slot_count;
	size_t chunk_unsent; /* BDAT octets not yet written */
	bool need_rset;      /* the last BDAT transaction did not end with a 2xx */

	bool body_queued; /* the output after the command text: body and ".\r\n" */
	const uint8_t *out_body;
	size_t out_body_len;
	struct body_cursor cur;
};

#define STATE_BIT(st) (1u << (st))

static const unsigned smtp_client_transitions[] = {
    [SMTP_CLIENT_GREETING] = STATE_BIT(SMTP_CLIENT_EHLO) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_EHLO] = STATE_BIT(SMTP_CLIENT_HELO) | STATE_BIT(SMTP_CLIENT_STARTTLS) |
                         STATE_BIT(SMTP_CLIENT_READY) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_HELO] = STATE_BIT(SMTP_CLIENT_READY) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_STARTTLS] = STATE_BIT(SMTP_CLIENT_TLS_WAIT) | STATE_BIT(SMTP_CLIENT_READY) |
                             STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_TLS_WAIT] = STATE_BIT(SMTP_CLIENT_EHLO) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_READY] = STATE_BIT(SMTP_CLIENT_MAIL) | STATE_BIT(SMTP_CLIENT_CHUNK) |
                          STATE_BIT(SMTP_CLIENT_QUIT) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_MAIL] =
        STATE_BIT(SMTP_CLIENT_RCPT) | STATE_BIT(SMTP_CLIENT_RSET) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_RCPT] = STATE_BIT(SMTP_CLIENT_RCPT) | STATE_BIT(SMTP_CLIENT_DATA) |
                         STATE_BIT(SMTP_CLIENT_RSET) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_DATA] =
        STATE_BIT(SMTP_CLIENT_BODY) | STATE_BIT(SMTP_CLIENT_RSET) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_BODY] = STATE_BIT(SMTP_CLIENT_READY) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_RSET] = STATE_BIT(SMTP_CLIENT_READY) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_CHUNK] = STATE_BIT(SMTP_CLIENT_READY) | STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_QUIT] = STATE_BIT(SMTP_CLIENT_CLOSED),
    [SMTP_CLIENT_CLOSED] = 0,
};

static void
smtp_client_state_set(struct smtp_client *c, enum smtp_client_state st)
{
	assert((unsigned)c->state < sizeof(smtp_client_transitions) / sizeof(unsigned));
	assert(smtp_client_transitions[c->state] & STATE_BIT(st));
	c->state = st;
}

const char *
smtp_client_state_name(enum smtp_client_state st)
{
	static const char *const names[] = {
	    [SMTP_CLIENT_GREETING] = "greeting", [SMTP_CLIENT_EHLO] = "ehlo",
	    [SMTP_CLIENT_HELO] = "helo",         [SMTP_CLIENT_STARTTLS] = "starttls",
	    [SMTP_CLIENT_TLS_WAIT] = "tls_wait", [SMTP_CLIENT_READY] = "ready",
	    [SMTP_CLIENT_MAIL] = "mail",         [SMTP_CLIENT_RCPT] = "rcpt",
	    [SMTP_CLIENT_DATA] = "data",         [SMTP_CLIENT_BODY] = "body",
	    [SMTP_CLIENT_RSET] = "rset",         [SMTP_CLIENT_QUIT] = "quit",
	    [SMTP_CLIENT_CLOSED] = "closed",     [SMTP_CLIENT_CHUNK] = "chunk",
	};
	if ((unsigned)st >= sizeof(names) / sizeof(names[0]))
		return "invalid";
	return names[st];
}

static char
ascii_upper(char ch)
{
	return ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
}

/* Locale-independent: a worker may run under any LC_CTYPE. */
static bool
ascii_equal(const char *text, size_t len, const char *upper)
{
	if (len != strlen(upper))
		return false;
	for (size_t i = 0; i < len; i++) {
		if (ascii_upper(text[i]) != upper[i])
			return false;
	}
	return true;
}

static bool
is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

/* Replies */

/* A reply we make up ourselves: "CODE STATUS text". */
__attribute__((format(printf, 4, 5))) static void
reply_make(struct smtp_client_reply *r, unsigned code, const char *status, const char *fmt, ...)
{
	va_list ap;
	int n;

	assert(strlen(status) < sizeof(r->status));
	memset(r, 0, sizeof(*r));
	r->code = code;
	r->remote = false;
	memcpy(r->status, status, strlen(status) + 1);
	n = snprintf(r->text, sizeof(r->text), "%u %s ", code, status);
	assert(n > 0);
	assert((size_t)n < sizeof(r->text));
	va_start(ap, fmt);
	vsnprintf(r->text + n, sizeof(r->text) - (size_t)n, fmt, ap);
	va_end(ap);
}

/* Reply text is kept printable: it ends up in logs and in DSN Diagnostic-Code fields. */
static void
reply_text_put(struct smtp_client *c, const char *s, size_t n)
{
	for (size_t i = 0; i < n && c->text_len + 1 < sizeof(c->reply.text); i++) {
		char ch = s[i] >= 0x20 && s[i] <= 0x7e ? s[i] : '?';

		c->reply.text[c->text_len++] = ch;
	}
	c->reply.text[c->text_len] = '\0';
}

static size_t
digits_at(const char *s, size_t n, size_t i)
{
	size_t d = 0;

	while (i + d < n && is_digit(s[i + d]))
		d++;
	return d;
}

/* RFC 3463 "class.subject.detail" at the start of the first line, class matching the code. */
static void
reply_status_parse(struct smtp_client_reply *r, const char *s, size_t n)
{
	char cls = (char)('0' + r->code / 100);
	size_t i = 2, d;

	r->status[0] = '\0';
	if (cls != '2' && cls != '4' && cls != '5')
		return;
	snprintf(r->status, sizeof(r->status), "%c.0.0", cls);
	if (n < 5 || s[0] != cls || s[1] != '.')
		return;
	d = digits_at(s, n, i);
	if (d == 0 || d > 3 || i + d >= n || s[i + d] != '.')
		return;
	i += d + 1;
	d = digits_at(s, n, i);
	if (d == 0 || d > 3 || (i + d < n && s[i + d] != ' '))
		return;
	i += d;
	memcpy(r->status, s, i);
	r->status[i] = '\0';
}

static const struct {
	const char *keyword;
	unsigned bit;
} smtp_client_cap_table[] = {
    {"PIPELINING", SMTP_CLIENT_CAP_PIPELINING},
    {"SIZE", SMTP_CLIENT_CAP_SIZE},
    {"8BITMIME", SMTP_CLIENT_CAP_8BITMIME},
    {"SMTPUTF8", SMTP_CLIENT_CAP_SMTPUTF8},
    {"DSN", SMTP_CLIENT_CAP_DSN},
    {"STARTTLS", SMTP_CLIENT_CAP_STARTTLS},
    {"ENHANCEDSTATUSCODES", SMTP_CLIENT_CAP_ENHANCEDSTATUSCODES},
    {"CHUNKING", SMTP_CLIENT_CAP_CHUNKING},
};

/* RFC 1870: "SIZE" alone or "SIZE 0" means no fixed limit; so does a value we cannot hold. */
static size_t
cap_size_parse(const char *s, size_t n)
{
	size_t v = 0;

	if (n == 0 || n > SMTP_CLIENT_SIZE_DIGITS)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit(s[i]) || v > (SIZE_MAX - 9) / 10)
			return 0;
		v = v * 10 + (size_t)(s[i] - '0');
	}
	return v;
}

/* One EHLO keyword line ("SIZE 10240000"); unknown keywords are ignored. */
static void
cap_parse(struct smtp_client *c, const char *s, size_t n)
{
	const char *sp = memchr(s, ' ', n);
	size_t kw = sp != NULL ? (size_t)(sp - s) : n;

	for (size_t i = 0; i < sizeof(smtp_client_cap_table) / sizeof(smtp_client_cap_table[0]);
	     i++) {
		if (!ascii_equal(s, kw, smtp_client_cap_table[i].keyword))
			continue;
		c->caps |= smtp_client_cap_table[i].bit;
		if (smtp_client_cap_table[i].bit == SMTP_CLIENT_CAP_SIZE)
			c->size_max = sp != NULL ? cap_size_parse(sp + 1, n - kw - 1) : 0;
	}
}

/* Command output */

static void
cmd_reset(struct smtp_client *c)
{
	assert(c->cmd_start == c->cmd_end);
	c->cmd.len = 0;
	c->cmd_start = 0;
	c->cmd_end = 0;
}

/* A command line being built; over is set when it would pass SMTP_CLIENT_CMD_MAX. */
struct cmd_line {
	char buf[SMTP_CLIENT_CMD_MAX + 1];
	size_t len;
	bool over;
};

__attribute__((format(printf, 2, 3))) static void
cmd_line_add(struct cmd_line *l, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (l->over)
		return;
	va_start(ap, fmt);
	n = vsnprintf(l->buf + l->len, sizeof(l->buf) - l->len, fmt, ap);
	va_end(ap);
	assert(n >= 0);
	if ((size_t)n >= sizeof(l->buf) - l->len) {
		l->over = true;
		return;
	}
	l->len += (size_t)n;
}

/* Appends a finished line (not yet released to the output). */
static int
cmd_put(struct cmd_buf *b, const struct cmd_line *l)
{
	if (l->over || l->len > SMTP_CLIENT_CMD_MAX)
		return -E2BIG;
	if (b->len + l->len > b->cap) {
		size_t cap = b->cap > 0 ? b->cap : SMTP_CLIENT_CMD_MAX;
		char *p;

		while (cap < b->len + l->len)
			cap *= 2;
		if (cap > b->cap_max)
			cap = b->cap_max;
		if (cap < b->len + l->len)
			return -E2BIG;
		p = realloc(b->p, cap);
		if (p == NULL)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, l->buf, l->len);
	b->len += l->len;
	return 0;
}

/* A single session command; the buffer starts at SMTP_CLIENT_CMD_MAX, so it always fits. */
__attribute__((format(printf, 2, 3))) static void
cmd_send(struct smtp_client *c, const char *fmt, ...)
{
	struct cmd_line l = {.len = 0};
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(l.buf, sizeof(l.buf), fmt, ap);
	va_end(ap);
	assert(n > 0);
	assert((size_t)n < sizeof(l.buf));
	l.len = (size_t)n;
	cmd_reset(c);
	n = cmd_put(&c->cmd, &l);
	assert(n == 0);
	c->cmd_end = c->cmd.len;
}

/* Releases the batch's text up to end (non-pipelined: one command at a time). */
static void
cmd_release(struct smtp_client *c, size_t end)
{
	assert(c->cmd_start == c->cmd_end);
	assert(end > c->cmd_end);
	assert(end <= c->cmd.len);
	c->cmd_end = end;
}

/* Transactions in flight */

/* The k-th transaction from the oldest in flight; k == slot_count is the next free one. */
static struct txn_slot *
slot_at(const struct smtp_client *c, unsigned k)
{
	assert(k <= c->slot_count && k < c->params.txn_window);
	return &c->slots[(c->slot_head + k) % c->params.txn_window];
}

static struct txn_slot *
txn_head(const struct smtp_client *c)
{
	assert(c->slot_count > 0);
	return slot_at(c, 0);
}

/* The oldest transaction is over; its results stay valid until its slot is used again. */
static struct txn_slot *
txn_pop(struct smtp_client *c)
{
	struct txn_slot *t = txn_head(c);

	c->slot_head = (c->slot_head + 1) % c->params.txn_window;
	c->slot_count--;
	return t;
}

static size_t
slot_out_len(const struct txn_slot *t)
{
	return t->text.len + t->body_len + (t->crlf ? 2 : 0);
}

static void
txn_event(struct smtp_client_event *ev, enum smtp_client_event_type type, const struct txn_slot *t)
{
	ev->type = type;
	ev->results = t->results;
	ev->rcpt_count = t->rcpt_count;
}

/* Session steps */

static void
session_ehlo(struct smtp_client *c)
{
	c->caps = 0;
	c->size_max = 0;
	cmd_send(c, "EHLO %s\r\n", c->params.helo_name);
	smtp_client_state_set(c, SMTP_CLIENT_EHLO);
}

static void
session_fail(struct smtp_client *c, const struct smtp_client_reply *r, struct smtp_client_event *ev)
{
	c->failure = *r;
	for (unsigned k = 0; k < c->slot_count; k++) {
		struct txn_slot *t = slot_at(c, k);

		for (unsigned i = 0; i < t->rcpt_count; i++) {
			if (!t->rs[i].final)
				t->results[i] = *r;
			t->rs[i].final = true;
		}
	}
	/* Nothing more goes out: what was pending would only confuse a dying session. */
	c->cmd_start = c->cmd_end = c->cmd.len = 0;
	c->body_queued = false;
	c->chunk_unsent = 0;
	smtp_client_state_set(c, SMTP_CLIENT_CLOSED);
	if (c->slot_count > 0)
		txn_event(ev, SMTP_CLIENT_EV_FAILED, txn_head(c));
	else
		ev->type = SMTP_CLIENT_EV_FAILED;
	ev->reply = &c->failure;
}

static void
session_protocol_error(struct smtp_client *c, const char *what, struct smtp_client_event *ev)
{
	struct smtp_client_reply r;

	reply_make(&r, 451, "4.4.2", "Protocol error: %s (state %s)", what,
	           smtp_client_state_name(c->state));
	session_fail(c, &r, ev);
}

/* The peer refused what the session needs: its 4xx/5xx ends the session; anything else is bogus. */
static void
session_refused(struct smtp_client *c, const char *what, struct smtp_client_event *ev)
{
	unsigned cls = c->reply.code / 100;

	if (cls == 4 || cls == 5)
		session_fail(c, &c->reply, ev);
	else
		session_protocol_error(c, what, ev);
}

static void
session_ready(struct smtp_client *c, struct smtp_client_event *ev)
{
	smtp_client_state_set(c, SMTP_CLIENT_READY);
	ev->type = SMTP_CLIENT_EV_READY;
}

/* After EHLO or HELO: STARTTLS per tls_mode, or ready. */
static void
session_hello_done(struct smtp_client *c, struct smtp_client_event *ev)
{
	struct smtp_client_reply r;

	if (c->params.tls_mode == SMTP_CLIENT_TLS_NONE || c->tls_active) {
		session_ready(c, ev);
	} else if (c->caps & SMTP_CLIENT_CAP_STARTTLS) {
		cmd_send(c, "STARTTLS\r\n");
		smtp_client_state_set(c, SMTP_CLIENT_STARTTLS);
	} else if (c->params.tls_mode == SMTP_CLIENT_TLS_REQUIRED) {
		reply_make(&r, 451, "4.7.4", "TLS required but not offered by the peer");
		session_fail(c, &r, ev);
	} else {
		session_ready(c, ev);
	}
}

static void
txn_done(struct smtp_client *c, struct smtp_client_event *ev)
{
	smtp_client_state_set(c, SMTP_CLIENT_READY);
	txn_event(ev, SMTP_CLIENT_EV_TXN_DONE, txn_pop(c));
}

/* The transaction did not end cleanly: RSET, then TXN_DONE on its reply. */
static void
txn_rset(struct smtp_client *c)
{
	cmd_send(c, "RSET\r\n");
	smtp_client_state_set(c, SMTP_CLIENT_RSET);
}

static void
txn_result_all(struct txn_slot *t, const struct smtp_client_reply *r, bool accepted_only)
{
	for (unsigned i = 0; i < t->rcpt_count; i++) {
		if (t->rs[i].final || (accepted_only && !t->rs[i].accepted))
			continue;
		t->results[i] = *r;
		t->rs[i].final = true;
	}
}

/* The reply to MAIL; false when it ended the session. */
static bool
txn_on_mail(struct smtp_client *c, struct txn_slot *t, struct smtp_client_event *ev)
{
	unsigned cls = c->reply.code / 100;

	if (cls != 2 && cls != 4 && cls != 5) {
		session_protocol_error(c, "unexpected reply to MAIL", ev);
		return false;
	}
	if (cls != 2) {
		txn_result_all(t, &c->reply, false);
		t->mail_refused = true;
	}
	return true;
}

/* The reply to the next RCPT; after a refused MAIL it means nothing. */
static bool
txn_on_rcpt(struct smtp_client *c, struct txn_slot *t, struct smtp_client_event *ev)
{
	unsigned cls = c->reply.code / 100, i = t->rcpt_next;

	assert(i < t->rcpt_count);
	if (!t->mail_refused && cls == 2) {
		t->rs[i].accepted = true;
		t->accepted++;
	} else if (!t->mail_refused && (cls == 4 || cls == 5)) {
		t->results[i] = c->reply;
		t->rs[i].final = true;
	} else if (!t->mail_refused) {
		session_protocol_error(c, "unexpected reply to RCPT", ev);
		return false;
	}
	t->rcpt_next++;
	return true;
}

/* The final reply of a transaction goes to its accepted recipients. */
static bool
txn_on_final(struct smtp_client *c, struct txn_slot *t, const char *what,
             struct smtp_client_event *ev)
{
	unsigned cls = c->reply.code / 100;

	if (t->accepted > 0 && cls != 2 && cls != 4 && cls != 5) {
		session_protocol_error(c, what, ev);
		return false;
	}
	/* With nobody accepted it ended an empty message: its reply means nothing. */
	txn_result_all(t, &c->reply, true);
	return true;
}

/* Queues the body (or, with no recipient accepted, an empty one to end DATA). */
static void
txn_body_queue(struct smtp_client *c, const uint8_t *body, size_t len)
{
	assert(c->cmd_start == c->cmd_end);
	c->out_body = body;
	c->out_body_len = len;
	memset(&c->cur, 0, sizeof(c->cur));
	c->body_queued = true;
	smtp_client_state_set(c, SMTP_CLIENT_BODY);
}

/* Reply handlers, one per state waiting for a reply; a 421 never gets here. */

static void
on_greeting(struct smtp_client *c, struct smtp_client_event *ev)
{
	if (c->reply.code == 220)
		session_ehlo(c);
	else
		session_refused(c, "unexpected greeting", ev);
}

static void
on_ehlo(struct smtp_client *c, struct smtp_client_event *ev)
{
	unsigned cls = c->reply.code / 100;

	if (cls == 2) {
		session_hello_done(c, ev);
	} else if (cls == 5) {
		/* RFC 5321 §3.2: an old server refuses EHLO; HELO gets a plain SMTP session. */
		c->caps = 0;
		c->size_max = 0;
		cmd_send(c, "HELO %s\r\n", c->params.helo_name);
		smtp_client_state_set(c, SMTP_CLIENT_HELO);
	} else {
		session_refused(c, "unexpected reply to EHLO", ev);
	}
}

static void
on_helo(struct smtp_client *c, struct smtp_client_event *ev)
{
	if (c->reply.code / 100 == 2)
		session_hello_done(c, ev);
	else
		session_refused(c, "unexpected reply to HELO", ev);
}

static void
on_starttls(struct smtp_client *c, struct smtp_client_event *ev)
{
	struct smtp_client_reply r;

	if (c->reply.code == 220) {
		smtp_client_state_set(c, SMTP_CLIENT_TLS_WAIT);
		ev->type = SMTP_CLIENT_EV_STARTTLS;
	} else if (c->reply.code / 100 != 4 && c->reply.code / 100 != 5) {
		session_protocol_error(c, "unexpected reply to STARTTLS", ev);
	} else if (c->params.tls_mode == SMTP_CLIENT_TLS_REQUIRED) {
		reply_make(&r, 451, "4.7.4", "TLS required but STARTTLS refused: %s",
		           c->reply.text);
		session_fail(c, &r, ev);
	} else {
		/* RFC 3207 §4.1: a refused STARTTLS leaves the session as it was. */
		session_ready(c, ev);
	}
}

static void
on_mail(struct smtp_client *c, struct smtp_client_event *ev)
{
	struct txn_slot *t = txn_head(c);

	if (!txn_on_mail(c, t, ev))
		return;
	if (c->pipelining) {
		/* The RCPT and DATA replies still come, and are consumed in order. */
		smtp_client_state_set(c, SMTP_CLIENT_RCPT);
	} else if (t->mail_refused) {
		txn_rset(c);
	} else {
		cmd_release(c, t->rs[0].cmd_end);
		smtp_client_state_set(c, SMTP_CLIENT_RCPT);
	}
}

static void
on_rcpt(struct smtp_client *c, struct smtp_client_event *ev)
{
	struct txn_slot *t = txn_head(c);

	if (!txn_on_rcpt(c, t, ev))
		return;
	if (c->pipelining) {
		if (t->rcpt_next == t->rcpt_count)
			smtp_client_state_set(c, SMTP_CLIENT_DATA);
	} else if (t->rcpt_next < t->rcpt_count) {
		cmd_release(c, t->rs[t->rcpt_next].cmd_end);
	} else if (t->accepted > 0) {
		cmd_release(c, c->data_end);
		smtp_client_state_set(c, SMTP_CLIENT_DATA);
	} else {
		txn_rset(c);
	}
}

static void
on_data(struct smtp_client *c, struct smtp_client_event *ev)
{
	struct txn_slot *t = txn_head(c);
	unsigned cls = c->reply.code / 100;

	if (cls == 3 && t->accepted == 0) {
		/* Pipelined DATA took although no RCPT did: end it empty, as Postfix does. */
		txn_body_queue(c, NULL, 0);
	} else if (cls == 3) {
		txn_body_queue(c, t->body, t->body_len);
	} else if (cls == 4 || cls == 5) {
		txn_result_all(t, &c->reply, true);
		txn_rset(c);
	} else {
		session_protocol_error(c, "unexpected reply to DATA", ev);
	}
}

static void
on_body(struct smtp_client *c, struct smtp_client_event *ev)
{
	if (txn_on_final(c, txn_head(c), "unexpected reply to end of data", ev))
		txn_done(c, ev);
}

/* Replies of BDAT transactions, in order: [RSET], MAIL, each RCPT, BDAT. */
static void
on_chunk(struct smtp_client *c, struct smtp_client_event *ev)
{
	struct txn_slot *t = txn_head(c);
	unsigned step = t->replies++;

	if (t->rset && step == 0) {
		if (c->reply.code / 100 != 2)
			session_refused(c, "unexpected reply to RSET", ev);
		return;
	}
	step -= t->rset ? 1 : 0;
	if (step == 0) {
		txn_on_mail(c, t, ev);
	} else if (step <= t->rcpt_count) {
		txn_on_rcpt(c, t, ev);
	} else if (txn_on_final(c, t, "unexpected reply to BDAT", ev)) {
		c->need_rset = c->reply.code / 100 != 2;
		txn_event(ev, SMTP_CLIENT_EV_TXN_DONE, txn_pop(c));
		if (c->slot_count == 0)
			smtp_client_state_set(c, SMTP_CLIENT_READY);
	}
}

static void
on_rset(struct smtp_client *c, struct smtp_client_event *ev)
{
	if (c->reply.code / 100 == 2)
		txn_done(c, ev);
	else
		session_refused(c, "unexpected reply to RSET", ev);
}

static void
on_quit(struct smtp_client *c, struct smtp_client_event *ev)
{
	c->failure = c->reply;
	smtp_client_state_set(c, SMTP_CLIENT_CLOSED);
	ev->type = SMTP_CLIENT_EV_CLOSED;
	ev->reply = &c->failure;
}

static void
on_unexpected(struct smtp_client *c, struct smtp_client_event *ev)
{
	session_protocol_error(c, "reply without a command", ev);
}

static void (*const smtp_client_reply_handlers[])(struct smtp_client *c,
                                                  struct smtp_client_event *ev) = {
    [SMTP_CLIENT_GREETING] = on_greeting, [SMTP_CLIENT_EHLO] = on_ehlo,
    [SMTP_CLIENT_HELO] = on_helo,         [SMTP_CLIENT_STARTTLS] = on_starttls,
    [SMTP_CLIENT_TLS_WAIT] = NULL,        [SMTP_CLIENT_READY] = on_unexpected,
    [SMTP_CLIENT_MAIL] = on_mail,         [SMTP_CLIENT_RCPT] = on_rcpt,
    [SMTP_CLIENT_DATA] = on_data,         [SMTP_CLIENT_BODY] = on_body,
    [SMTP_CLIENT_RSET] = on_rset,         [SMTP_CLIENT_QUIT] = on_quit,
    [SMTP_CLIENT_CLOSED] = NULL,          [SMTP_CLIENT_CHUNK] = on_chunk,
};

static void
reply_dispatch(struct smtp_client *c, struct smtp_client_event *ev)
{
	c->last = c->reply;
	/* RFC 5321 §3.8: 421 may come at any time and ends the session. */
	if (c->reply.code == 421 && c->state != SMTP_CLIENT_QUIT) {
		session_fail(c, &c->reply, ev);
		return;
	}
	assert(smtp_client_reply_handlers[c->state] != NULL);
	smtp_client_reply_handlers[c->state](c, ev);
}

/* Reply lines */

/* "NNN", "NNN text" or "NNN-text"; codes as RFC 5321 §4.2 grammar allows. */
static bool
line_code(const char *s, size_t n, unsigned *code)
{
	if (n < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '5' || !is_digit(s[2]))
		return false;
	if (n > 3 && s[3] != ' ' && s[3] != '-')
		return false;
	*code = (unsigned)((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0'));
	return true;
}

/* One complete line (LF removed). */
static void
line_done(struct smtp_client *c, struct smtp_client_event *ev)
{
	const char *s = c->line;
	size_t n = c->line_len;
	unsigned code;

	c->line_len = 0;
	if (n > 0 && s[n - 1] == '\r')
		n--;
	if (!line_code(s, n, &code)) {
		session_protocol_error(c, "malformed reply", ev);
		return;
	}
	if (c->reply_lines == 0) {
		memset(&c->reply, 0, sizeof(c->reply));
		c->reply.code = code;
		c->reply.remote = true;
		c->text_len = 0;
		reply_text_put(c, s, 3);
		reply_status_parse(&c->reply, s + 4, n > 4 ? n - 4 : 0);
	} else if (code != c->reply.code) {
		session_protocol_error(c, "reply code changed within a multiline reply", ev);
		return;
	}
	if (++c->reply_lines > c->params.reply_lines_max) {
		session_protocol_error(c, "too many reply lines", ev);
		return;
	}
	if (n > 4) {
		reply_text_put(c, " ", 1);
		reply_text_put(c, s + 4, n - 4);
	}
	if (c->state == SMTP_CLIENT_EHLO && code / 100 == 2 && c->reply_lines > 1)
		cap_parse(c, s + 4, n > 4 ? n - 4 : 0);
	if (n > 3 && s[3] == '-')
		return;
	c->reply_lines = 0;
	reply_dispatch(c, ev);
}

/* Appends up to the next LF; the length limit is checked before the line ends. */
static size_t
line_feed(struct smtp_client *c, const uint8_t *in, size_t len, struct smtp_client_event *ev)
{
	const uint8_t *lf = memchr(in, '\n', len);
	size_t n = lf != NULL ? (size_t)(lf - in) : len;

	if (c->line_len + n + 1 > c->params.reply_line_max) {
		session_protocol_error(c, "reply line too long", ev);
		return len;
	}
	memcpy(c->line + c->line_len, in, n);
	c->line_len += n;
	if (lf == NULL)
		return len;
	line_done(c, ev);
	return n + 1;
}

size_t
smtp_client_feed(struct smtp_client *c, const uint8_t *in, size_t len, struct smtp_client_event *ev)
{
	size_t used = 0;

	assert(c);
	assert(in || len == 0);
	assert(ev);
	memset(ev, 0, sizeof(*ev));
	while (used < len && ev->type == SMTP_CLIENT_EV_NONE) {
		if (c->state == SMTP_CLIENT_TLS_WAIT || c->state == SMTP_CLIENT_CLOSED)
			return len;
		/* A reply is only read once the command it answers has gone out. */
		if (smtp_client_input_blocked(c))
			return used;
		used += line_feed(c, in + used, len - used, ev);
	}
	/* Bytes after the 220 to STARTTLS are dropped, never read as replies (RFC 3207 §5). */
	if (ev->type == SMTP_CLIENT_EV_STARTTLS || c->state == SMTP_CLIENT_CLOSED)
		return len;
	return used;
}

/* Transactions */

/* "<addr>" must parse as a mailbox with nothing left over; sets *utf8 for non-ASCII. */
static int
txn_check_address(const char *addr, bool allow_null, bool *utf8)
{
	char path[ADDRESS_PATH_MAX + 1];
	struct address a;
	size_t len = strlen(addr), end = 0;

	if (len + 2 > ADDRESS_PATH_MAX)
		return -EINVAL;
	if (len == 0)
		return allow_null ? 0 : -EINVAL;
	path[0] = '<';
	memcpy(path + 1, addr, len);
	path[len + 1] = '>';
	if (address_parse_path(path, len + 2, false, true, &a, &end) != ADDRESS_OK ||
	    end != len + 2 || a.source_route)
		return -EINVAL;
	*utf8 = *utf8 || a.utf8;
	return 0;
}

/* An xtext value (RFC 3461 §4): printable ASCII without '=' or space; NULL is no value. */
static int
txn_check_xtext(const char *v, size_t max)
{
	size_t len;

	if (v == NULL)
		return 0;
	len = strlen(v);
	if (len == 0 || len > max)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (v[i] < 0x21 || v[i] > 0x7e || v[i] == '=')
			return -EINVAL;
	}
	return 0;
}

static int
txn_check(const struct smtp_client_txn *t, bool *utf8)
{
	int r;

	if (t->sender == NULL || t->rcpts == NULL || t->rcpt_count == 0 ||
	    (t->body == NULL && t->body_len > 0))
		return -EINVAL;
	if (t->ret != NULL && !ascii_equal(t->ret, strlen(t->ret), "FULL") &&
	    !ascii_equal(t->ret, strlen(t->ret), "HDRS"))
		return -EINVAL;
	r = txn_check_address(t->sender, true, utf8);
	if (r == 0)
		r = txn_check_xtext(t->envid, SMTP_CLIENT_ENVID_MAX);
	for (unsigned i = 0; r == 0 && i < t->rcpt_count; i++) {
		const struct smtp_client_rcpt *rc = &t->rcpts[i];

		if (rc->address == NULL)
			return -EINVAL;
		r = txn_check_address(rc->address, false, utf8);
		if (r == 0)
			r = txn_check_xtext(rc->notify, SMTP_CLIENT_NOTIFY_MAX);
		if (r == 0)
			r = txn_check_xtext(rc->orcpt, SMTP_CLIENT_ORCPT_MAX);
	}
	return r;
}

static int
txn_reserve(struct txn_slot *t, unsigned count)
{
	struct smtp_client_reply *res;
	struct rcpt_state *rs;

	if (count <= t->rcpt_cap)
		return 0;
	res = realloc(t->results, count * sizeof(*res));
	if (res == NULL)
		return -ENOMEM;
	t->results = res;
	rs = realloc(t->rs, count * sizeof(*rs));
	if (rs == NULL)
		return -ENOMEM;
	t->rs = rs;
	t->rcpt_cap = count;
	return 0;
}

/*
 * MAIL, every RCPT and DATA into the session's batch; or, for BDAT, [RSET], MAIL,
 * every RCPT and BDAT into the transaction's text. Extensions only where the peer
 * has them.
 */
static int
txn_format(struct smtp_client *c, struct txn_slot *t, const struct smtp_client_txn *tx, bool utf8)
{
	struct cmd_buf *b = t->bdat ? &t->text : &c->cmd;
	bool dsn = c->caps & SMTP_CLIENT_CAP_DSN;
	struct cmd_line l = {.len = 0};
	int r = 0;

	if (t->rset) {
		cmd_line_add(&l, "RSET\r\n");
		r = cmd_put(b, &l);
		l.len = 0;
	}
	cmd_line_add(&l, "MAIL FROM:<%s>", tx->sender);
	if (c->caps & SMTP_CLIENT_CAP_SIZE)
		cmd_line_add(&l, " SIZE=%zu", tx->body_len);
	if (tx->body_8bit && (c->caps & SMTP_CLIENT_CAP_8BITMIME))
		cmd_line_add(&l, " BODY=8BITMIME");
	if (utf8)
		cmd_line_add(&l, " SMTPUTF8");
	if (dsn && tx->ret != NULL)
		cmd_line_add(&l, " RET=%s", tx->ret);
	if (dsn && tx->envid != NULL)
		cmd_line_add(&l, " ENVID=%s", tx->envid);
	cmd_line_add(&l, "\r\n");
	if (r == 0)
		r = cmd_put(b, &l);
	c->mail_end = b->len;
	for (unsigned i = 0; r == 0 && i < tx->rcpt_count; i++) {
		const struct smtp_client_rcpt *rc = &tx->rcpts[i];

		l.len = 0;
		cmd_line_add(&l, "RCPT TO:<%s>", rc->address);
		if (dsn && rc->notify != NULL)
			cmd_line_add(&l, " NOTIFY=%s", rc->notify);
		if (dsn && rc->orcpt != NULL)
			cmd_line_add(&l, " ORCPT=%s", rc->orcpt);
		cmd_line_add(&l, "\r\n");
		r = cmd_put(b, &l);
		t->rs[i] = (struct rcpt_state){.cmd_end = b->len};
	}
	l.len = 0;
	if (t->bdat)
		cmd_line_add(&l, "BDAT %zu LAST\r\n", tx->body_len + (t->crlf ? 2 : 0));
	else
		cmd_line_add(&l, "DATA\r\n");
	if (r == 0)
		r = cmd_put(b, &l);
	c->data_end = b->len;
	return r;
}

static void
txn_start(struct smtp_client *c, struct txn_slot *t, const struct smtp_client_txn *tx)
{
	const uint8_t *end = tx->body + tx->body_len;

	t->bdat = c->params.chunking && (c->caps & SMTP_CLIENT_CAP_PIPELINING) &&
	          (c->caps & SMTP_CLIENT_CAP_CHUNKING);
	/* as DATA's end does, a body that does not end a line gets one */
	t->crlf =
	    t->bdat && tx->body_len > 0 && (tx->body_len < 2 || end[-2] != '\r' || end[-1] != '\n');
	t->rset = t->bdat && (c->slot_count > 0 || c->need_rset);
	t->mail_refused = false;
	t->rcpt_count = tx->rcpt_count;
	t->rcpt_next = 0;
	t->accepted = 0;
	t->replies = 0;
	t->out_off = 0;
	t->text.len = 0;
	t->body = tx->body;
	t->body_len = tx->body_len;
	memset(t->results, 0, tx->rcpt_count * sizeof(t->results[0]));
}

/* Every recipient refused before anything was sent; the transaction is not in flight. */
static void
txn_refuse(struct txn_slot *t, const struct smtp_client_reply *r, struct smtp_client_event *ev)
{
	for (unsigned i = 0; i < t->rcpt_count; i++)
		t->results[i] = *r;
	txn_event(ev, SMTP_CLIENT_EV_TXN_DONE, t);
}

/* Nothing can be sent that the peer would take: the refusal, or NULL. */
static bool
txn_refusal(const struct smtp_client *c, const struct smtp_client_txn *tx, bool utf8,
            struct smtp_client_reply *r)
{
	if (c->size_max > 0 && tx->body_len > c->size_max) {
		reply_make(r, 552, "5.3.4", "Message size %zu exceeds the peer's limit %zu",
		           tx->body_len, c->size_max);
		return true;
	}
	if (utf8 && !(c->caps & SMTP_CLIENT_CAP_SMTPUTF8)) {
		reply_make(r, 553, "5.6.7",
		           "SMTPUTF8 is required, but was not offered by the peer");
		return true;
	}
	return false;
}

/* The formatted transaction goes out. */
static void
txn_push(struct smtp_client *c, struct txn_slot *t)
{
	c->slot_count++;
	if (!t->bdat) {
		cmd_release(c, c->pipelining ? c->data_end : c->mail_end);
		smtp_client_state_set(c, SMTP_CLIENT_MAIL);
		return;
	}
	c->need_rset = false;
	c->chunk_unsent += slot_out_len(t);
	if (c->state != SMTP_CLIENT_CHUNK)
		smtp_client_state_set(c, SMTP_CLIENT_CHUNK);
}

int
smtp_client_send(struct smtp_client *c, const struct smtp_client_txn *tx,
                 struct smtp_client_event *ev)
{
	struct smtp_client_reply refusal;
	struct txn_slot *t;
	bool utf8;
	int r;

	assert(c);
	assert(tx);
	assert(ev);
	memset(ev, 0, sizeof(*ev));
	if (!smtp_client_can_send(c))
		return -EBUSY;
	if (tx->rcpt_count > c->params.rcpt_count_max)
		return -E2BIG;
	utf8 = tx->smtputf8;
	r = txn_check(tx, &utf8);
	if (r < 0)
		return r;
	t = slot_at(c, c->slot_count);
	r = txn_reserve(t, tx->rcpt_count);
	if (r < 0)
		return r;
	c->pipelining = c->caps & SMTP_CLIENT_CAP_PIPELINING;
	txn_start(c, t, tx);
	if (!t->bdat)
		cmd_reset(c);
	r = txn_format(c, t, tx, utf8 && (c->caps & SMTP_CLIENT_CAP_SMTPUTF8));
	if (r < 0 || txn_refusal(c, tx, utf8, &refusal)) {
		c->cmd.len = 0;
		t->text.len = 0;
		if (r == 0)
			txn_refuse(t, &refusal, ev);
		return r;
	}
	txn_push(c, t);
	return 0;
}

bool
smtp_client_can_send(const struct smtp_client *c)
{
	assert(c);
	return c->state == SMTP_CLIENT_READY ||
	       (c->state == SMTP_CLIENT_CHUNK && c->slot_count < c->params.txn_window);
}

void
smtp_client_next_failed(struct smtp_client *c, struct smtp_client_event *ev)
{
	assert(c);
	assert(ev);
	memset(ev, 0, sizeof(*ev));
	if (c->state != SMTP_CLIENT_CLOSED || c->slot_count == 0)
		return;
	txn_pop(c);
	if (c->slot_count > 0) {
		txn_event(ev, SMTP_CLIENT_EV_FAILED, txn_head(c));
		ev->reply = &c->failure;
	}
}

int
smtp_client_quit(struct smtp_client *c)
{
	assert(c);
	if (c->state != SMTP_CLIENT_READY)
		return -EBUSY;
	cmd_send(c, "QUIT\r\n");
	smtp_client_state_set(c, SMTP_CLIENT_QUIT);
	return 0;
}

void
smtp_client_tls_done(struct smtp_client *c)
{
	assert(c);
	assert(c->state == SMTP_CLIENT_TLS_WAIT);
	/* RFC 3207 §4.2: forget what the peer said before the handshake, and ask again. */
	c->tls_active = true;
	c->line_len = 0;
	c->reply_lines = 0;
	session_ehlo(c);
}

void
smtp_client_abort(struct smtp_client *c, enum smtp_client_abort_reason why,
                  struct smtp_client_event *ev)
{
	struct smtp_client_reply r;
	const char *state;

	assert(c);
	assert(ev);
	memset(ev, 0, sizeof(*ev));
	state = smtp_client_state_name(c->state);
	switch (why) {
	case SMTP_CLIENT_ABORT_LOST:
		reply_make(&r, 451, "4.4.2", "Connection lost (state %s)", state);
		break;
	case SMTP_CLIENT_ABORT_TIMEOUT:
		reply_make(&r, 451, "4.4.2", "Timeout (state %s)", state);
		break;
	case SMTP_CLIENT_ABORT_TLS:
		reply_make(&r, 451, "4.7.5", "TLS handshake failed (state %s)", state);
		break;
	}
	if (c->state != SMTP_CLIENT_CLOSED)
		session_fail(c, &r, ev);
}

/* Body output: the body in segments, a "." before each line that starts with one. */

/* A dot after CR or LF is stuffed: bare ones too, so no receiver can see an early end. */
static bool
body_stuff_at(const uint8_t *b, size_t pos)
{
	return b[pos] == '.' && (pos == 0 || b[pos - 1] == '\n' || b[pos - 1] == '\r');
}

/* The first position >= from (from >= 1) that needs a stuffing dot, or len. */
static size_t
body_stuff_next(const uint8_t *b, size_t len, size_t from)
{
	while (from < len) {
		const uint8_t *dot = memchr(b + from, '.', len - from);
		size_t q;

		if (dot == NULL)
			return len;
		q = (size_t)(dot - b);
		if (body_stuff_at(b, q))
			return q;
		from = q + 1;
	}
	return len;
}

/* "\r\n.\r\n" when the body does not end a line itself, else ".\r\n". */
static const char *
body_tail(const struct smtp_client *c, size_t *len)
{
	const uint8_t *b = c->out_body;
	size_t n = c->out_body_len;
	bool open = n > 0 && (n < 2 || b[n - 2] != '\r' || b[n - 1] != '\n');

	*len = open ? 5 : 3;
	return open ? "\r\n.\r\n" : ".\r\n";
}

/* The segment at cur: its bytes in *p, its length returned (0 when all is out). */
static size_t
body_segment(const struct smtp_client *c, const struct body_cursor *cur, const void **p)
{
	const uint8_t *b = c->out_body;
	size_t len = c->out_body_len, tail_len;
	const char *tail;

	if (cur->pos < len && body_stuff_at(b, cur->pos) && !cur->dotted) {
		*p = ".";
		return 1;
	}
	if (cur->pos < len) {
		*p = b + cur->pos;
		return body_stuff_next(b, len, cur->pos + 1) - cur->pos;
	}
	tail = body_tail(c, &tail_len);
	*p = tail + cur->tail_off;
	return tail_len - cur->tail_off;
}

/* Moves cur by n octets, n at most the length of its current segment. */
static void
body_advance(const struct smtp_client *c, struct body_cursor *cur, size_t n)
{
	if (cur->pos < c->out_body_len && body_stuff_at(c->out_body, cur->pos) && !cur->dotted) {
		assert(n == 1);
		cur->dotted = true;
	} else if (cur->pos < c->out_body_len) {
		cur->pos += n;
		cur->dotted = false;
	} else {
		cur->tail_off += n;
	}
}

/* BDAT transactions: text, body and crlf of each, from the first not yet written. */

/* The part of t's output at off: its bytes in *p, its length returned (0 when all is out). */
static size_t
chunk_segment(const struct txn_slot *t, size_t off, const void **p)
{
	if (off < t->text.len) {
		*p = t->text.p + off;
		return t->text.len - off;
	}
	off -= t->text.len;
	if (off < t->body_len) {
		*p = t->body + off;
		return t->body_len - off;
	}
	off -= t->body_len;
	*p = "\r\n" + off;
	return t->crlf && off < 2 ? 2 - off : 0;
}

static unsigned
chunk_output(const struct smtp_client *c, struct iovec *iov, unsigned n, unsigned max)
{
	for (unsigned k = 0; k < c->slot_count && n < max; k++) {
		const struct txn_slot *t = slot_at(c, k);
		size_t off = t->out_off, len;
		const void *p;

		while (n < max && (len = chunk_segment(t, off, &p)) > 0) {
			iov[n++] = (struct iovec){(void *)p, len};
			off += len;
		}
	}
	return n;
}

static void
chunk_consume(struct smtp_client *c, size_t n)
{
	assert(n <= c->chunk_unsent);
	c->chunk_unsent -= n;
	for (unsigned k = 0; k < c->slot_count && n > 0; k++) {
		struct txn_slot *t = slot_at(c, k);
		size_t take = slot_out_len(t) - t->out_off;

		take = n < take ? n : take;
		t->out_off += take;
		n -= take;
	}
}

unsigned
smtp_client_output(const struct smtp_client *c, struct iovec *iov, unsigned max)
{
	struct body_cursor cur;
	unsigned n = 0;
	const void *p;
	size_t len;

	assert(c);
	assert(iov || max == 0);
	if (c->chunk_unsent > 0)
		return chunk_output(c, iov, n, max);
	if (c->cmd_start < c->cmd_end && n < max)
		iov[n++] = (struct iovec){c->cmd.p + c->cmd_start, c->cmd_end - c->cmd_start};
	if (!c->body_queued)
		return n;
	cur = c->cur;
	while (n < max && (len = body_segment(c, &cur, &p)) > 0) {
		iov[n++] = (struct iovec){(void *)p, len};
		body_advance(c, &cur, len);
	}
	return n;
}

void
smtp_client_output_consume(struct smtp_client *c, size_t n)
{
	size_t take = c->cmd_end - c->cmd_start;
	const void *p;

	assert(c);
	/* After a failure nothing is pending: late write completions change nothing. */
	if (c->state == SMTP_CLIENT_CLOSED)
		return;
	if (c->chunk_unsent > 0) {
		chunk_consume(c, n);
		return;
	}
	assert(n <= take || c->body_queued);
	take = n < take ? n : take;
	c->cmd_start += take;
	n -= take;
	while (n > 0) {
		size_t len;

		assert(c->body_queued);
		len = body_segment(c, &c->cur, &p);
		assert(len > 0);
		take = n < len ? n : len;
		body_advance(c, &c->cur, take);
		n -= take;
	}
	if (c->body_queued && body_segment(c, &c->cur, &p) == 0)
		c->body_queued = false;
}

bool
smtp_client_output_pending(const struct smtp_client *c)
{
	assert(c);
	return c->cmd_start < c->cmd_end || c->body_queued || c->chunk_unsent > 0;
}

bool
smtp_client_input_blocked(const struct smtp_client *c)
{
	assert(c);
	if (c->state == SMTP_CLIENT_CHUNK) {
		const struct txn_slot *t = txn_head(c);

		return t->out_off < slot_out_len(t);
	}
	return smtp_client_output_pending(c);
}

/* Session */

struct smtp_client *
smtp_client_new(const struct smtp_client_params *p)
{
	struct smtp_client *c;

	assert(p);
	assert(p->helo_name);
	assert(strlen(p->helo_name) > 0);
	assert(strlen(p->helo_name) <= SMTP_CLIENT_HELO_MAX);
	assert(p->reply_line_max >= SMTP_CLIENT_REPLY_LINE_MIN);
	assert(p->reply_line_max <= SMTP_CLIENT_REPLY_LINE_CAP);
	assert(p->reply_lines_max > 0);
	assert(p->rcpt_count_max > 0);
	assert(p->txn_window >= 1 && p->txn_window <= SMTP_CLIENT_TXN_WINDOW_MAX);
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->line = malloc(p->reply_line_max);
	c->cmd.p = malloc(SMTP_CLIENT_CMD_MAX);
	c->slots = calloc(p->txn_window, sizeof(*c->slots));
	if (c->line == NULL || c->cmd.p == NULL || c->slots == NULL)
		goto fail;
	c->params = *p;
	c->cmd.cap = SMTP_CLIENT_CMD_MAX;
	c->cmd.cap_max = ((size_t)p->rcpt_count_max + 2) * SMTP_CLIENT_CMD_MAX;
	for (unsigned k = 0; k < p->txn_window; k++)
		c->slots[k].text.cap_max = ((size_t)p->rcpt_count_max + 3) * SMTP_CLIENT_CMD_MAX;
	c->tls_active = p->tls_active;
	c->state = SMTP_CLIENT_GREETING;
	return c;
fail:
	free(c->line);
	free(c->cmd.p);
	free(c->slots);
	free(c);
	return NULL;
}

void
smtp_client_free(struct smtp_client *c)
{
	if (c == NULL)
		return;
	free(c->line);
	free(c->cmd.p);
	for (unsigned k = 0; k < c->params.txn_window; k++) {
		free(c->slots[k].results);
		free(c->slots[k].rs);
		free(c->slots[k].text.p);
	}
	free(c->slots);
	free(c);
}

enum smtp_client_state
smtp_client_state(const struct smtp_client *c)
{
	assert(c);
	return c->state;
}

unsigned
smtp_client_caps(const struct smtp_client *c)
{
	assert(c);
	return c->caps;
}

size_t
smtp_client_size_max(const struct smtp_client *c)
{
	assert(c);
	return c->size_max;
}

bool
smtp_client_tls_active(const struct smtp_client *c)
{
	assert(c);
	return c->tls_active;
}

const struct smtp_client_reply *
smtp_client_last_reply(const struct smtp_client *c)
{
	assert(c);
	return &c->last;
}

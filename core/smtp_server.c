#include "core/smtp_server.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMTP_REPLY_MAX      1024 /* one reply with all its lines and CRLFs */
#define SMTP_REPLY_LINE_MAX 512  /* RFC 5321 §4.5.3.1.5, with CRLF */
/* Room past SMTP_OUTPUT_MAX for the replies that may follow the last full check. */
#define SMTP_OUTPUT_CAP  (SMTP_OUTPUT_MAX + 4 * SMTP_REPLY_MAX)
#define SMTP_BODY_CHUNK  4096 /* first body allocation without a SIZE hint */
#define SMTP_RCPT_CHUNK  8    /* first recipient-array allocation */
#define SMTP_SIZE_DIGITS 20   /* SIZE= and BDAT sizes longer than this cannot be a size_t */

static_assert(SMTP_LINE_MAX <= SMTP_LINE_EXT_MAX, "the extended line limit is the larger");
static_assert(SMTP_HELO_MAX + 16 <= SMTP_REPLY_LINE_MAX, "the hostname fits in a reply line");
/* The parameters are part of a command line, so they always fit their buffer. */
static_assert(SMTP_PARAMS_MAX >= SMTP_LINE_EXT_MAX, "a line's parameters fit SMTP_PARAMS_MAX");
static_assert(SMTP_ORCPT_MAX >= SMTP_ENVID_MAX, "one decoding buffer serves both");

enum smtp_body_state {
	BODY_LINE_START, /* after a real CRLF (or the DATA line): a dot is special; not in BDAT */
	BODY_DOT,        /* line start, then '.' */
	BODY_DOT_CR,     /* line start, then ".\r": an LF ends the message */
	BODY_TEXT,       /* inside a line */
	BODY_CR,         /* inside a line, then '\r' */
};

/* A MAIL or RCPT argument as parsed by the check, committed by the proceed. */
struct smtp_path_cmd {
	struct address addr;
	char params[SMTP_PARAMS_MAX];                   /* as in smtp_server.h */
	struct address_param param[ADDRESS_PARAMS_MAX]; /* values point into the line */
	size_t param_count;
	bool body_8bitmime;
	bool smtputf8;
	size_t size_hint;
};

struct smtp_server {
	struct smtp_server_params params;
	struct smtp_server_limits limits;
	enum smtp_server_state state;
	bool esmtp;
	char helo[SMTP_HELO_MAX + 1];

	char line[SMTP_LINE_EXT_MAX + 1]; /* the command being assembled, NUL added when done */
	size_t line_len;
	size_t line_total;       /* octets of the completed line with its terminator */
	bool line_discard;       /* over its limit: dropped up to the next LF */
	bool line_discard_chunk; /* ... and it was a BDAT: its chunk's end is unknown */

	uint8_t *out; /* SMTP_OUTPUT_CAP bytes; pending replies are [out_start, out_len) */
	size_t out_start, out_len;

	struct smtp_path_cmd cmd;
	struct smtp_envelope env;
	struct smtp_rcpt *rcpts;
	unsigned rcpt_cap;
	struct smtp_rcpt pending;
	size_t size_hint;

	uint8_t *body;
	size_t body_len, body_cap;
	enum smtp_body_state body_state;
	bool body_bare, body_too_big, body_nomem;
	bool body_chunked; /* the body comes by BDAT: DATA and RCPT are refused */

	size_t chunk_size, chunk_left; /* of the BDAT chunk being read, or skipped if refused */
	bool chunk_last;

	unsigned errors;
	struct smtp_server_counts counts;
};

#define CMD_PRE_TLS   0x1u /* allowed while TLS is required but not active */
#define CMD_NEED_HELO 0x2u /* 503 before EHLO/HELO */
#define CMD_LONG_LINE 0x4u /* ESMTP parameters may take it to SMTP_LINE_EXT_MAX */
#define CMD_CHUNK     0x8u /* octets follow the line (BDAT): read even when refused */

/* check validates and returns a refusal (or NULL); proceed acts and may raise an event. */
struct smtp_cmd {
	const char *verb;
	unsigned flags;
	const char *(*check)(struct smtp_server *s, const char *args, size_t len);
	enum smtp_event_type (*proceed)(struct smtp_server *s, const char *args, size_t len,
	                                struct smtp_event *ev);
};

static const char reply_unknown[] = "500 5.5.2 Error: command not recognized";
static const char reply_too_long[] = "500 5.5.2 Error: line too long";
static const char reply_ok[] = "250 2.0.0 Ok";
static const char reply_nomem[] = "452 4.3.1 Insufficient system storage";
static const char reply_need_mail[] = "503 5.5.1 Error: need MAIL command";
static const char reply_params[] = "501 5.5.4 Syntax error in parameters";
static const char reply_unsupported[] = "555 5.5.4 Unsupported parameter";
static const char reply_bdat_started[] = "503 5.5.1 Error: BDAT transaction in progress";

#define STATE_BIT(st) (1u << (st))

static const unsigned smtp_server_transitions[] = {
    [SMTP_SERVER_GREETING] = STATE_BIT(SMTP_SERVER_GREETING) | STATE_BIT(SMTP_SERVER_READY) |
                             STATE_BIT(SMTP_SERVER_TLS_WAIT) | STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_READY] = STATE_BIT(SMTP_SERVER_READY) | STATE_BIT(SMTP_SERVER_MAIL) |
                          STATE_BIT(SMTP_SERVER_TLS_WAIT) | STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_MAIL] = STATE_BIT(SMTP_SERVER_READY) | STATE_BIT(SMTP_SERVER_RCPT_WAIT) |
                         STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_RCPT] = STATE_BIT(SMTP_SERVER_READY) | STATE_BIT(SMTP_SERVER_RCPT_WAIT) |
                         STATE_BIT(SMTP_SERVER_DATA) | STATE_BIT(SMTP_SERVER_BDAT) |
                         STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_DATA] = STATE_BIT(SMTP_SERVER_DATA_WAIT) | STATE_BIT(SMTP_SERVER_READY) |
                         STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_BDAT] = STATE_BIT(SMTP_SERVER_RCPT) | STATE_BIT(SMTP_SERVER_DATA_WAIT) |
                         STATE_BIT(SMTP_SERVER_READY) | STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_DATA_WAIT] = STATE_BIT(SMTP_SERVER_READY) | STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_RCPT_WAIT] =
        STATE_BIT(SMTP_SERVER_MAIL) | STATE_BIT(SMTP_SERVER_RCPT) | STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_TLS_WAIT] = STATE_BIT(SMTP_SERVER_GREETING) | STATE_BIT(SMTP_SERVER_CLOSING),
    [SMTP_SERVER_CLOSING] = 0,
};

static void
smtp_server_state_set(struct smtp_server *s, enum smtp_server_state st)
{
	assert((unsigned)s->state < sizeof(smtp_server_transitions) / sizeof(unsigned));
	assert(smtp_server_transitions[s->state] & STATE_BIT(st));
	s->state = st;
}

const char *
smtp_server_state_name(enum smtp_server_state st)
{
	static const char *const names[] = {
	    [SMTP_SERVER_GREETING] = "greeting",   [SMTP_SERVER_READY] = "ready",
	    [SMTP_SERVER_MAIL] = "mail",           [SMTP_SERVER_RCPT] = "rcpt",
	    [SMTP_SERVER_DATA] = "data",           [SMTP_SERVER_BDAT] = "bdat",
	    [SMTP_SERVER_DATA_WAIT] = "data_wait", [SMTP_SERVER_RCPT_WAIT] = "rcpt_wait",
	    [SMTP_SERVER_TLS_WAIT] = "tls_wait",   [SMTP_SERVER_CLOSING] = "closing",
	};
	if ((unsigned)st >= sizeof(names) / sizeof(names[0]))
		return "invalid";
	return names[st];
}

static char
ascii_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* Locale-independent: a worker may run under any LC_CTYPE. */
static bool
ascii_prefix(const char *text, size_t len, const char *upper)
{
	size_t n = strlen(upper);

	if (len < n)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (ascii_upper(text[i]) != upper[i])
			return false;
	}
	return true;
}

static bool
ascii_equal(const char *text, size_t len, const char *upper)
{
	return len == strlen(upper) && ascii_prefix(text, len, upper);
}

/* Output: replies are queued whole, so a reply never straddles a flush. */

__attribute__((format(printf, 2, 3))) static void
smtp_server_printf(struct smtp_server *s, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (s->out_start > 0 && s->out_len + SMTP_REPLY_MAX > SMTP_OUTPUT_CAP) {
		memmove(s->out, s->out + s->out_start, s->out_len - s->out_start);
		s->out_len -= s->out_start;
		s->out_start = 0;
	}
	va_start(ap, fmt);
	n = vsnprintf((char *)s->out + s->out_len, SMTP_OUTPUT_CAP - s->out_len, fmt, ap);
	va_end(ap);
	assert(n >= 0);
	assert((size_t)n < SMTP_OUTPUT_CAP - s->out_len);
	s->out_len += (size_t)n;
}

static void
smtp_server_reply(struct smtp_server *s, const char *line)
{
	smtp_server_printf(s, "%s\r\n", line);
}

/* Transaction state: dropped on RSET, EHLO, after each message and at free. */
static void
smtp_server_reset_transaction(struct smtp_server *s)
{
	free(s->body);
	s->body = NULL;
	s->body_len = 0;
	s->body_cap = 0;
	free(s->rcpts);
	s->rcpts = NULL;
	s->rcpt_cap = 0;
	memset(&s->env, 0, sizeof(s->env));
	s->size_hint = 0;
	s->body_chunked = false;
}

static enum smtp_event_type
smtp_server_close(struct smtp_server *s, enum smtp_close_reason why, struct smtp_event *ev)
{
	smtp_server_state_set(s, SMTP_SERVER_CLOSING);
	ev->type = SMTP_EV_CLOSE;
	ev->close = why;
	return SMTP_EV_CLOSE;
}

/* Every 5xx refusal of a command counts towards limits.error_count_max. */
static enum smtp_event_type
smtp_server_refuse(struct smtp_server *s, const char *reply, struct smtp_event *ev)
{
	smtp_server_reply(s, reply);
	if (reply[0] != '5')
		return SMTP_EV_NONE;
	s->errors++;
	s->counts.errors++;
	if (s->errors < s->limits.error_count_max)
		return SMTP_EV_NONE;
	smtp_server_printf(s, "421 4.7.0 %s Error: too many errors\r\n", s->params.hostname);
	return smtp_server_close(s, SMTP_CLOSE_ERRORS, ev);
}

/* EHLO and HELO */

static const char *
smtp_check_helo(struct smtp_server *s, const char *args, size_t len)
{
	while (len > 0 && args[len - 1] == ' ')
		len--;
	if (len == 0 || len > SMTP_HELO_MAX || memchr(args, ' ', len) != NULL)
		return "501 5.5.4 Syntax: EHLO/HELO hostname";
	return NULL;
}

static void
smtp_server_set_helo(struct smtp_server *s, const char *args, size_t len, bool esmtp)
{
	while (len > 0 && args[len - 1] == ' ')
		len--;
	assert(len <= SMTP_HELO_MAX);
	memcpy(s->helo, args, len);
	s->helo[len] = '\0';
	s->esmtp = esmtp;
	/* RFC 5321 §4.1.4: EHLO/HELO in a transaction acts as RSET */
	smtp_server_reset_transaction(s);
	smtp_server_state_set(s, SMTP_SERVER_READY);
}

static enum smtp_event_type
smtp_proceed_ehlo(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	char size[40];
	const char *lines[10];
	size_t n = 0;

	smtp_server_set_helo(s, args, len, true);
	snprintf(size, sizeof(size), "SIZE %zu", s->limits.message_size_max);
	lines[n++] = s->params.hostname;
	lines[n++] = "PIPELINING";
	lines[n++] = size;
	lines[n++] = "8BITMIME";
	lines[n++] = "CHUNKING";
	lines[n++] = "ENHANCEDSTATUSCODES";
	lines[n++] = "DSN";
	lines[n++] = "SMTPUTF8";
	if (s->params.starttls_offer && !s->params.tls_active)
		lines[n++] = "STARTTLS";
	assert(n <= sizeof(lines) / sizeof(lines[0]));
	for (size_t i = 0; i < n; i++)
		smtp_server_printf(s, "250%c%s\r\n", i + 1 < n ? '-' : ' ', lines[i]);
	return SMTP_EV_NONE;
}

static enum smtp_event_type
smtp_proceed_helo(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_set_helo(s, args, len, false);
	smtp_server_printf(s, "250 %s\r\n", s->params.hostname);
	return SMTP_EV_NONE;
}

/* MAIL and RCPT */

static const char *
smtp_address_reply(enum address_error err)
{
	switch (err) {
	case ADDRESS_ESYNTAX:
		return "501 5.5.4 Syntax error in address";
	case ADDRESS_EMAILBOX:
	case ADDRESS_ETOOLONG:
		return "501 5.1.3 Bad address syntax";
	case ADDRESS_EUTF8:
		return "553 5.6.7 Non-ASCII address requires SMTPUTF8";
	case ADDRESS_EPARAMS:
		return reply_params;
	case ADDRESS_OK:
		break;
	}
	assert(!"no reply for ADDRESS_OK");
	return reply_unknown;
}

/*
 * Parses "FROM:<path> params" or "TO:<path> params" into s->cmd. Spaces after
 * the colon and after the path are tolerated, as Postfix does.
 */
static const char *
smtp_server_parse_path(struct smtp_server *s, const char *args, size_t len, const char *keyword,
                       bool allow_utf8)
{
	struct smtp_path_cmd *c = &s->cmd;
	size_t skip = strlen(keyword), end = 0;
	enum address_error err;

	if (!ascii_prefix(args, len, keyword))
		return "501 5.5.4 Syntax: MAIL FROM:<address> or RCPT TO:<address>";
	while (skip < len && args[skip] == ' ')
		skip++;
	args += skip;
	len -= skip;
	while (len > 0 && args[len - 1] == ' ')
		len--;
	err = address_parse_path(args, len, true, allow_utf8, &c->addr, &end);
	if (err != ADDRESS_OK)
		return smtp_address_reply(err);
	assert(end <= len);
	if (end < len && args[end] != ' ')
		return smtp_address_reply(ADDRESS_ESYNTAX);
	/* Only ESMTP parameters may take a MAIL or RCPT line past SMTP_LINE_MAX. */
	if (end == len && s->line_total > SMTP_LINE_MAX)
		return reply_too_long;
	c->param_count = 0;
	c->params[0] = '\0';
	if (end == len)
		return NULL;
	err = address_parse_params(args + end, len - end, c->param, &c->param_count);
	return err == ADDRESS_OK ? NULL : smtp_address_reply(err);
}

/* Values that are keywords get one spelling, so the relay can match them exactly. */
static bool
smtp_param_value_is_keyword(const char *keyword)
{
	return strcmp(keyword, "BODY") == 0 || strcmp(keyword, "RET") == 0 ||
	       strcmp(keyword, "NOTIFY") == 0;
}

/*
 * Writes the accepted parameters into c->params as smtp_server.h describes. The
 * result is never longer than the parameter text of the line, so it fits.
 */
static void
smtp_server_params_format(struct smtp_path_cmd *c)
{
	size_t n = 0;

	for (size_t i = 0; i < c->param_count; i++) {
		const struct address_param *p = &c->param[i];
		size_t klen = strlen(p->keyword);
		bool upper = smtp_param_value_is_keyword(p->keyword);

		assert(n + 1 + klen + 1 + p->value_len < sizeof(c->params));
		if (i > 0)
			c->params[n++] = ' ';
		memcpy(c->params + n, p->keyword, klen);
		n += klen;
		if (p->value == NULL)
			continue;
		c->params[n++] = '=';
		for (size_t j = 0; j < p->value_len; j++)
			c->params[n++] = upper ? ascii_upper(p->value[j]) : p->value[j];
	}
	c->params[n] = '\0';
}

/* RFC 1870 SIZE=: digits only; anything past the limit is refused, so no overflow. */
static const char *
smtp_server_param_size(struct smtp_server *s, const struct address_param *p)
{
	size_t v = 0;

	if (p->value == NULL || p->value_len == 0 || p->value_len > SMTP_SIZE_DIGITS)
		return reply_params;
	for (size_t i = 0; i < p->value_len; i++) {
		if (p->value[i] < '0' || p->value[i] > '9')
			return reply_params;
		if (v > s->limits.message_size_max)
			continue;
		v = v * 10 + (size_t)(p->value[i] - '0');
	}
	if (v > s->limits.message_size_max)
		return "552 5.3.4 Message size exceeds fixed limit";
	s->cmd.size_hint = v;
	return NULL;
}

/* DSN parameters (RFC 3461 §4) */

/*
 * An ENVID or ORCPT address: valid xtext decoding to 1..max octets of printable ASCII,
 * as the DSN that may quote it (RFC 3464) is a text message. Returns the refusal or NULL.
 */
static const char *
smtp_server_check_xtext(const char *v, size_t len, size_t max, const char *bad,
                        const char *too_long)
{
	char text[SMTP_ORCPT_MAX + 1];
	int n;

	assert(max < sizeof(text));
	n = address_xtext_decode(v, len, text, max + 1);
	if (n <= 0)
		return bad;
	if ((size_t)n > max)
		return too_long;
	for (int i = 0; i < n; i++) {
		if (text[i] < 0x20 || text[i] > 0x7e)
			return bad;
	}
	return NULL;
}

static const char *
smtp_server_param_ret(const struct address_param *p)
{
	if (p->value == NULL || (!ascii_equal(p->value, p->value_len, "FULL") &&
	                         !ascii_equal(p->value, p->value_len, "HDRS")))
		return "501 5.5.4 Bad RET parameter: FULL or HDRS";
	return NULL;
}

static const char *
smtp_server_param_envid(const struct address_param *p)
{
	if (p->value == NULL)
		return "501 5.5.4 Bad ENVID parameter: xtext expected";
	return smtp_server_check_xtext(
	    p->value, p->value_len, SMTP_ENVID_MAX, "501 5.5.4 Bad ENVID parameter: xtext expected",
	    "501 5.5.4 ENVID parameter too long: 100 characters at most");
}

/* NEVER, or a list of SUCCESS, FAILURE and DELAY, each once (RFC 3461 §4.1). */
static const char *
smtp_server_param_notify(const struct address_param *p)
{
	static const char *const words[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
	static const char bad[] = "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS,FAILURE,DELAY";
	const size_t nwords = sizeof(words) / sizeof(words[0]);
	unsigned seen = 0;

	for (size_t i = 0; p->value != NULL && i <= p->value_len;) {
		const char *w = p->value + i;
		const char *comma = memchr(w, ',', p->value_len - i);
		size_t n = comma != NULL ? (size_t)(comma - w) : p->value_len - i, k = 0;

		while (k < nwords && !ascii_equal(w, n, words[k]))
			k++;
		if (k == nwords || (seen & 1u << k))
			return bad;
		seen |= 1u << k;
		i += n + 1;
	}
	/* NEVER is bit 0: alone, or not at all. */
	if (seen == 0 || ((seen & 1u) && seen != 1u))
		return bad;
	return NULL;
}

/* addr-type ";" xtext (RFC 3461 §4.2); addr-type is an atom such as rfc822 or utf-8. */
static const char *
smtp_server_param_orcpt(const struct address_param *p)
{
	static const char bad[] = "501 5.5.4 Bad ORCPT parameter: addr-type;xtext expected";
	const char *semi = p->value != NULL ? memchr(p->value, ';', p->value_len) : NULL;
	size_t type_len;

	if (semi == NULL)
		return bad;
	type_len = (size_t)(semi - p->value);
	if (!address_atom_valid(p->value, type_len))
		return bad;
	return smtp_server_check_xtext(
	    semi + 1, p->value_len - type_len - 1, SMTP_ORCPT_MAX, bad,
	    "501 5.5.4 ORCPT parameter too long: 500 characters at most");
}

static const char *
smtp_server_rcpt_param(const struct address_param *p)
{
	if (strcmp(p->keyword, "NOTIFY") == 0)
		return smtp_server_param_notify(p);
	if (strcmp(p->keyword, "ORCPT") == 0)
		return smtp_server_param_orcpt(p);
	return reply_unsupported;
}

static const char *
smtp_server_mail_param(struct smtp_server *s, const struct address_param *p)
{
	if (strcmp(p->keyword, "SIZE") == 0)
		return smtp_server_param_size(s, p);
	if (strcmp(p->keyword, "BODY") == 0) {
		if (p->value != NULL && ascii_equal(p->value, p->value_len, "8BITMIME"))
			s->cmd.body_8bitmime = true;
		else if (p->value == NULL || !ascii_equal(p->value, p->value_len, "7BIT"))
			return reply_params;
		return NULL;
	}
	if (strcmp(p->keyword, "SMTPUTF8") == 0) {
		s->cmd.smtputf8 = true;
		return p->value == NULL ? NULL : reply_params;
	}
	if (strcmp(p->keyword, "RET") == 0)
		return smtp_server_param_ret(p);
	if (strcmp(p->keyword, "ENVID") == 0)
		return smtp_server_param_envid(p);
	return reply_unsupported;
}

static const char *
smtp_check_mail(struct smtp_server *s, const char *args, size_t len)
{
	const char *refusal;

	if (s->state != SMTP_SERVER_READY)
		return "503 5.5.1 Error: nested MAIL command";
	if (s->params.auth_required)
		return "530 5.7.0 Authentication required";
	s->cmd.body_8bitmime = false;
	s->cmd.smtputf8 = false;
	s->cmd.size_hint = 0;
	/*
	 * SMTPUTF8 follows the path, so the path is read permitting UTF-8 (which
	 * still validates it) and refused afterwards if SMTPUTF8 was not given.
	 */
	refusal = smtp_server_parse_path(s, args, len, "FROM:", true);
	for (size_t i = 0; refusal == NULL && i < s->cmd.param_count; i++)
		refusal = smtp_server_mail_param(s, &s->cmd.param[i]);
	if (refusal == NULL && s->cmd.addr.utf8 && !s->cmd.smtputf8)
		refusal = smtp_address_reply(ADDRESS_EUTF8);
	if (refusal == NULL)
		smtp_server_params_format(&s->cmd);
	return refusal;
}

static enum smtp_event_type
smtp_proceed_mail(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_reset_transaction(s);
	s->env.sender = s->cmd.addr;
	memcpy(s->env.sender_params, s->cmd.params, sizeof(s->env.sender_params));
	s->env.body_8bitmime = s->cmd.body_8bitmime;
	s->env.smtputf8 = s->cmd.smtputf8;
	s->size_hint = s->cmd.size_hint;
	smtp_server_state_set(s, SMTP_SERVER_MAIL);
	smtp_server_reply(s, "250 2.1.0 Ok");
	return SMTP_EV_NONE;
}

static bool
smtp_server_rcpt_reserve(struct smtp_server *s)
{
	unsigned max = s->limits.rcpt_count_max;
	unsigned cap = s->rcpt_cap == 0        ? SMTP_RCPT_CHUNK
	               : s->rcpt_cap > max / 2 ? max
	                                       : s->rcpt_cap * 2;
	struct smtp_rcpt *r;

	if (s->env.rcpt_count < s->rcpt_cap)
		return true;
	if (cap > max)
		cap = max;
	assert(cap > s->env.rcpt_count);
	r = realloc(s->rcpts, cap * sizeof(*r));
	if (r == NULL)
		return false;
	s->rcpts = r;
	s->rcpt_cap = cap;
	return true;
}

static const char *
smtp_check_rcpt(struct smtp_server *s, const char *args, size_t len)
{
	const char *refusal;

	if (s->state != SMTP_SERVER_MAIL && s->state != SMTP_SERVER_RCPT)
		return reply_need_mail;
	/* The envelope is fixed once content has come. */
	if (s->body_chunked)
		return reply_bdat_started;
	refusal = smtp_server_parse_path(s, args, len, "TO:", s->env.smtputf8);
	if (refusal != NULL)
		return refusal;
	if (s->cmd.addr.null)
		return "501 5.1.3 Bad recipient address syntax";
	for (size_t i = 0; i < s->cmd.param_count; i++) {
		refusal = smtp_server_rcpt_param(&s->cmd.param[i]);
		if (refusal != NULL)
			return refusal;
	}
	smtp_server_params_format(&s->cmd);
	if (s->env.rcpt_count >= s->limits.rcpt_count_max)
		return "452 4.5.3 Too many recipients";
	if (!smtp_server_rcpt_reserve(s))
		return reply_nomem;
	return NULL;
}

static enum smtp_event_type
smtp_proceed_rcpt(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	s->pending.addr = s->cmd.addr;
	memcpy(s->pending.params, s->cmd.params, sizeof(s->pending.params));
	smtp_server_state_set(s, SMTP_SERVER_RCPT_WAIT);
	ev->type = SMTP_EV_RCPT;
	ev->rcpt = &s->pending;
	return SMTP_EV_RCPT;
}

void
smtp_server_rcpt_done(struct smtp_server *s, const char *reply)
{
	assert(s);
	/* A timeout or shutdown came first: the 421 was the last word. */
	if (s->state == SMTP_SERVER_CLOSING)
		return;
	assert(s->state == SMTP_SERVER_RCPT_WAIT);
	if (reply == NULL) {
		assert(s->env.rcpt_count < s->rcpt_cap);
		s->rcpts[s->env.rcpt_count++] = s->pending;
		s->env.rcpts = s->rcpts;
		s->counts.rcpts_accepted++;
		smtp_server_reply(s, "250 2.1.5 Ok");
	} else {
		assert(reply[0] >= '4' && reply[0] <= '5');
		assert(strlen(reply) + 2 <= SMTP_REPLY_LINE_MAX);
		assert(strpbrk(reply, "\r\n") == NULL);
		s->counts.rcpts_refused++;
		smtp_server_reply(s, reply);
	}
	smtp_server_state_set(s, s->env.rcpt_count > 0 ? SMTP_SERVER_RCPT : SMTP_SERVER_MAIL);
}

/* DATA, BDAT and the message body */

/* Both ways of sending content need a transaction with a recipient. */
static const char *
smtp_server_check_content(const struct smtp_server *s)
{
	if (s->state == SMTP_SERVER_MAIL)
		return "554 5.5.1 No valid recipients";
	if (s->state != SMTP_SERVER_RCPT)
		return reply_need_mail;
	return NULL;
}

static const char *
smtp_check_data(struct smtp_server *s, const char *args, size_t len)
{
	const char *refusal = smtp_server_check_content(s);

	if (refusal != NULL)
		return refusal;
	/* RFC 3030 §2: a transaction's content comes by DATA or by BDAT, never both. */
	if (s->body_chunked)
		return reply_bdat_started;
	if (len > 0)
		return "501 5.5.4 Syntax: DATA";
	return NULL;
}

/* Grows the body geometrically, never past limits.message_size_max. */
static bool
smtp_server_body_reserve(struct smtp_server *s, size_t need)
{
	size_t max = s->limits.message_size_max;
	size_t cap = s->body_cap > 0 ? s->body_cap : SMTP_BODY_CHUNK;
	uint8_t *b;

	assert(need <= max);
	if (need <= s->body_cap)
		return true;
	while (cap < need)
		cap = cap > max / 2 ? max : cap * 2;
	if (cap > max)
		cap = max;
	b = realloc(s->body, cap);
	if (b == NULL)
		return false;
	s->body = b;
	s->body_cap = cap;
	return true;
}

/* The first octet of content, by DATA or by the first BDAT of the transaction. */
static void
smtp_server_body_begin(struct smtp_server *s, bool chunked)
{
	/* BDAT has no dot rules, so its content never is at a "line start". */
	s->body_state = chunked ? BODY_TEXT : BODY_LINE_START;
	s->body_chunked = chunked;
	s->body_bare = false;
	s->body_too_big = false;
	s->body_nomem = false;
	/* A SIZE= hint sizes the buffer once, so an honest client's body is never moved. */
	if (s->size_hint > 0)
		(void)smtp_server_body_reserve(s, s->size_hint);
}

static enum smtp_event_type
smtp_proceed_data(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_body_begin(s, false);
	smtp_server_state_set(s, SMTP_SERVER_DATA);
	smtp_server_reply(s, "354 End data with <CR><LF>.<CR><LF>");
	return SMTP_EV_NONE;
}

static bool
smtp_server_body_discarding(const struct smtp_server *s)
{
	return s->body_too_big || s->body_nomem ||
	       (s->body_bare && s->params.bare_newline == SMTP_BARE_NEWLINE_REJECT);
}

static void
smtp_server_body_put(struct smtp_server *s, const uint8_t *p, size_t n)
{
	if (n == 0 || smtp_server_body_discarding(s))
		return;
	/* Too big: read on to the end without storing, then refuse. */
	if (n > s->limits.message_size_max - s->body_len) {
		s->body_too_big = true;
		return;
	}
	if (!smtp_server_body_reserve(s, s->body_len + n)) {
		s->body_nomem = true;
		return;
	}
	memcpy(s->body + s->body_len, p, n);
	s->body_len += n;
}

/*
 * A bare LF or CR never ends a line for the end-of-data or dot-unstuffing
 * rules (SMTP smuggling); NORMALIZE stores it as CRLF, so a relayed body
 * has only CRLF line ends and a downstream parser cannot be confused.
 */
static void
smtp_server_body_bare(struct smtp_server *s)
{
	smtp_server_body_put(s, (const uint8_t *)"\r\n", 2);
	s->body_bare = true;
}

static void
smtp_server_body_text(struct smtp_server *s, uint8_t c)
{
	s->body_state = BODY_TEXT;
	if (c == '\r')
		s->body_state = BODY_CR;
	else if (c == '\n')
		smtp_server_body_bare(s);
	else
		smtp_server_body_put(s, &c, 1);
}

/* One octet of the body outside a plain text run; true when it ends the message. */
static bool
smtp_server_body_byte(struct smtp_server *s, uint8_t c)
{
	switch (s->body_state) {
	case BODY_LINE_START:
		if (c == '.') {
			s->body_state = BODY_DOT;
			return false;
		}
		break;
	case BODY_DOT:
		/* The leading dot of any other line is the stuffing dot: dropped. */
		if (c == '\r') {
			s->body_state = BODY_DOT_CR;
			return false;
		}
		break;
	case BODY_DOT_CR:
		if (c == '\n')
			return true;
		smtp_server_body_bare(s);
		break;
	case BODY_CR:
		if (c == '\n') {
			smtp_server_body_put(s, (const uint8_t *)"\r\n", 2);
			s->body_state = s->body_chunked ? BODY_TEXT : BODY_LINE_START;
			return false;
		}
		smtp_server_body_bare(s);
		break;
	case BODY_TEXT:
		break;
	}
	smtp_server_body_text(s, c);
	return false;
}

static enum smtp_event_type
smtp_server_data_end(struct smtp_server *s, struct smtp_event *ev)
{
	const char *refusal = NULL;

	if (s->body_bare && s->params.bare_newline == SMTP_BARE_NEWLINE_REJECT)
		refusal = "550 5.5.2 Bare LF/CR not allowed";
	else if (s->body_too_big)
		refusal = "552 5.3.4 Message too big";
	else if (s->body_nomem)
		refusal = reply_nomem;
	if (refusal != NULL) {
		smtp_server_reply(s, refusal);
		smtp_server_reset_transaction(s);
		smtp_server_state_set(s, SMTP_SERVER_READY);
		return SMTP_EV_NONE;
	}
	s->env.rcpts = s->rcpts;
	s->env.body = s->body != NULL ? s->body : (const uint8_t *)"";
	s->env.body_len = s->body_len;
	smtp_server_state_set(s, SMTP_SERVER_DATA_WAIT);
	ev->type = SMTP_EV_MESSAGE;
	ev->envelope = &s->env;
	return SMTP_EV_MESSAGE;
}

/*
 * The longest run of in, from inside a line, that is stored as it is: lines ended by
 * CRLF, none of them (in DATA) starting with '.'. It stops before a bare CR or LF, a CR
 * that may be the last octet of the input, and after a CRLF followed by '.' or by the
 * end of the input (*line_start is then set: the next octet starts a DATA line).
 */
static size_t
smtp_server_body_run(const uint8_t *in, size_t len, bool chunked, bool *line_start)
{
	size_t i = 0;

	*line_start = false;
	for (;;) {
		const uint8_t *lf = memchr(in + i, '\n', len - i);
		size_t stop = lf != NULL ? (size_t)(lf - in) : len;
		const uint8_t *cr = memchr(in + i, '\r', stop - i);

		if (cr != NULL && (lf == NULL || (size_t)(cr - in) + 1 != stop))
			return (size_t)(cr - in); /* bare, or waiting for its LF */
		if (cr == NULL)
			return stop; /* the end of the input, or a bare LF */
		i = stop + 1;
		if (!chunked && (i == len || in[i] == '.')) {
			*line_start = true;
			return i;
		}
	}
}

/* Runs content through the line-end rules; returns the octets used, *end after DATA's end. */
static size_t
smtp_server_body_scan(struct smtp_server *s, const uint8_t *in, size_t len, bool *end)
{
	size_t i = 0;

	*end = false;
	while (i < len) {
		if (s->body_state == BODY_TEXT) {
			bool line_start;
			size_t run =
			    smtp_server_body_run(in + i, len - i, s->body_chunked, &line_start);

			smtp_server_body_put(s, in + i, run);
			i += run;
			if (line_start)
				s->body_state = BODY_LINE_START;
			if (i == len)
				break;
		}
		if (smtp_server_body_byte(s, in[i++])) {
			*end = true;
			break;
		}
	}
	return i;
}

static size_t
smtp_server_data_feed(struct smtp_server *s, const uint8_t *in, size_t len, struct smtp_event *ev)
{
	bool end;
	size_t used = smtp_server_body_scan(s, in, len, &end);

	if (end)
		smtp_server_data_end(s, ev);
	return used;
}

/*
 * "<size>" or "<size> LAST" (RFC 3030 §2; trailing spaces tolerated) into
 * chunk_size, chunk_left and chunk_last; -1 when it cannot be read.
 */
static int
smtp_server_chunk_parse(struct smtp_server *s, const char *args, size_t len)
{
	size_t digits = 0, v = 0;

	while (len > 0 && args[len - 1] == ' ')
		len--;
	while (digits < len && args[digits] >= '0' && args[digits] <= '9') {
		size_t d = (size_t)(args[digits++] - '0');

		if (digits > SMTP_SIZE_DIGITS || v > (SIZE_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	if (digits == 0)
		return -1;
	s->chunk_last = ascii_equal(args + digits, len - digits, " LAST");
	if (!s->chunk_last && digits != len)
		return -1;
	s->chunk_size = v;
	s->chunk_left = v;
	return 0;
}

/*
 * Where a chunk ends is unknown, so whatever follows could be message bytes:
 * never run them as commands, close instead.
 */
static enum smtp_event_type
smtp_server_chunk_unframed(struct smtp_server *s, const char *reply, struct smtp_event *ev)
{
	if (smtp_server_refuse(s, reply, ev) == SMTP_EV_CLOSE)
		return SMTP_EV_CLOSE;
	smtp_server_printf(s, "421 4.5.0 %s Error: BDAT chunk size unreadable, closing\r\n",
	                   s->params.hostname);
	return smtp_server_close(s, SMTP_CLOSE_CHUNK_UNFRAMED, ev);
}

/* A refused BDAT: its octets are skipped by feed(); a LAST still ends the transaction. */
static void
smtp_server_chunk_refused(struct smtp_server *s)
{
	if (!s->chunk_last || (s->state != SMTP_SERVER_MAIL && s->state != SMTP_SERVER_RCPT))
		return;
	smtp_server_reset_transaction(s);
	smtp_server_state_set(s, SMTP_SERVER_READY);
}

/* A LAST chunk's content may end anywhere; the stored body ends with CRLF as DATA's does. */
static void
smtp_server_chunk_finish(struct smtp_server *s)
{
	if (s->body_state == BODY_CR)
		smtp_server_body_bare(s);
	if (s->body_len > 0 && (s->body_len < 2 || s->body[s->body_len - 2] != '\r' ||
	                        s->body[s->body_len - 1] != '\n'))
		smtp_server_body_put(s, (const uint8_t *)"\r\n", 2);
}

static enum smtp_event_type
smtp_server_chunk_end(struct smtp_server *s, struct smtp_event *ev)
{
	assert(s->chunk_left == 0);
	if (s->chunk_last) {
		smtp_server_chunk_finish(s);
		return smtp_server_data_end(s, ev);
	}
	smtp_server_state_set(s, SMTP_SERVER_RCPT);
	smtp_server_printf(s, "250 2.0.0 %zu octets received\r\n", s->chunk_size);
	return SMTP_EV_NONE;
}

static const char *
smtp_check_bdat(struct smtp_server *s, const char *args, size_t len)
{
	return smtp_server_check_content(s);
}

static enum smtp_event_type
smtp_proceed_bdat(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	if (!s->body_chunked)
		smtp_server_body_begin(s, true);
	/* Too big by its size alone: none of it is buffered, it is read to the end. */
	if (s->chunk_size > s->limits.message_size_max - s->body_len)
		s->body_too_big = true;
	smtp_server_state_set(s, SMTP_SERVER_BDAT);
	if (s->chunk_left > 0)
		return SMTP_EV_NONE;
	return smtp_server_chunk_end(s, ev);
}

/* The octets of an accepted chunk: content, not commands, whatever they hold. */
static size_t
smtp_server_chunk_feed(struct smtp_server *s, const uint8_t *in, size_t len, struct smtp_event *ev)
{
	size_t n = len < s->chunk_left ? len : s->chunk_left;
	bool end;
	size_t used = smtp_server_body_scan(s, in, n, &end);

	/* Without dot rules nothing in the content ends it early. */
	assert(used == n);
	assert(!end);
	s->chunk_left -= n;
	if (s->chunk_left == 0)
		smtp_server_chunk_end(s, ev);
	return n;
}

/* The octets of a refused chunk: read and dropped (RFC 3030 §2). */
static size_t
smtp_server_chunk_skip(struct smtp_server *s, size_t len)
{
	size_t n = len < s->chunk_left ? len : s->chunk_left;

	s->chunk_left -= n;
	return n;
}

void
smtp_server_message_done(struct smtp_server *s, enum smtp_store_result r, const char *queue_id)
{
	assert(s);
	if (s->state == SMTP_SERVER_CLOSING)
		return;
	assert(s->state == SMTP_SERVER_DATA_WAIT);
	switch (r) {
	case SMTP_STORE_OK:
		assert(queue_id);
		assert(strlen(queue_id) + 40 <= SMTP_REPLY_LINE_MAX);
		smtp_server_printf(s, "250 2.0.0 Ok: queued as %s\r\n", queue_id);
		s->counts.messages++;
		break;
	case SMTP_STORE_NOSPACE:
		smtp_server_reply(s, reply_nomem);
		break;
	case SMTP_STORE_ERROR:
		smtp_server_reply(s, "451 4.3.0 Error: local error in processing");
		break;
	case SMTP_STORE_LOOP:
		smtp_server_reply(s, "554 5.4.6 Too many hops: mail loop detected");
		break;
	}
	smtp_server_reset_transaction(s);
	smtp_server_state_set(s, SMTP_SERVER_READY);
}

/* The other commands */

static const char *
smtp_check_no_args(struct smtp_server *s, const char *args, size_t len)
{
	return len > 0 ? "501 5.5.4 Syntax error: no arguments allowed" : NULL;
}

static enum smtp_event_type
smtp_proceed_rset(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_reset_transaction(s);
	smtp_server_state_set(s, s->helo[0] != '\0' ? SMTP_SERVER_READY : SMTP_SERVER_GREETING);
	smtp_server_reply(s, reply_ok);
	return SMTP_EV_NONE;
}

static enum smtp_event_type
smtp_proceed_noop(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_reply(s, reply_ok);
	return SMTP_EV_NONE;
}

static enum smtp_event_type
smtp_proceed_quit(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	bool tls_missing = s->params.tls_required && !s->params.tls_active;

	smtp_server_reply(s, "221 2.0.0 Bye");
	return smtp_server_close(s, tls_missing ? SMTP_CLOSE_TLS_REQUIRED_QUIT : SMTP_CLOSE_QUIT,
	                         ev);
}

static const char *
smtp_check_vrfy(struct smtp_server *s, const char *args, size_t len)
{
	return len == 0 ? "501 5.5.4 Syntax: VRFY address" : NULL;
}

static enum smtp_event_type
smtp_proceed_vrfy(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_reply(s, "252 2.5.2 Cannot VRFY user, but will accept message");
	return SMTP_EV_NONE;
}

static enum smtp_event_type
smtp_proceed_help(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_reply(s, "214 2.0.0 See RFC 5321");
	return SMTP_EV_NONE;
}

static const char *
smtp_check_starttls(struct smtp_server *s, const char *args, size_t len)
{
	if (len > 0)
		return "501 5.5.4 Syntax: STARTTLS";
	if (s->params.tls_active)
		return "503 5.5.1 Error: TLS already active";
	if (!s->params.starttls_offer)
		return "454 4.7.0 TLS not available";
	if (s->state != SMTP_SERVER_GREETING && s->state != SMTP_SERVER_READY)
		return "503 5.5.1 Error: MAIL transaction in progress";
	return NULL;
}

static enum smtp_event_type
smtp_proceed_starttls(struct smtp_server *s, const char *args, size_t len, struct smtp_event *ev)
{
	smtp_server_reply(s, "220 2.0.0 Ready to start TLS");
	smtp_server_state_set(s, SMTP_SERVER_TLS_WAIT);
	ev->type = SMTP_EV_STARTTLS;
	return SMTP_EV_STARTTLS;
}

/* AUTH comes with its own issue; until then it is known but never offered. */
static const char *
smtp_check_auth(struct smtp_server *s, const char *args, size_t len)
{
	return "503 5.5.1 Error: authentication not enabled";
}

static const struct smtp_cmd smtp_cmds[] = {
    {"EHLO", CMD_PRE_TLS, smtp_check_helo, smtp_proceed_ehlo},
    {"HELO", CMD_PRE_TLS, smtp_check_helo, smtp_proceed_helo},
    {"MAIL", CMD_NEED_HELO | CMD_LONG_LINE, smtp_check_mail, smtp_proceed_mail},
    {"RCPT", CMD_NEED_HELO | CMD_LONG_LINE, smtp_check_rcpt, smtp_proceed_rcpt},
    {"DATA", CMD_NEED_HELO, smtp_check_data, smtp_proceed_data},
    {"BDAT", CMD_NEED_HELO | CMD_CHUNK, smtp_check_bdat, smtp_proceed_bdat},
    {"RSET", CMD_PRE_TLS, smtp_check_no_args, smtp_proceed_rset},
    {"NOOP", CMD_PRE_TLS, NULL, smtp_proceed_noop},
    {"QUIT", CMD_PRE_TLS, NULL, smtp_proceed_quit},
    {"VRFY", 0, smtp_check_vrfy, smtp_proceed_vrfy},
    {"HELP", CMD_PRE_TLS, NULL, smtp_proceed_help},
    {"STARTTLS", CMD_PRE_TLS, smtp_check_starttls, smtp_proceed_starttls},
    {"AUTH", 0, smtp_check_auth, NULL},
};

/* The verb is everything up to the first space; NULL when it is not ours. */
static const struct smtp_cmd *
smtp_cmd_find(const char *line, size_t len, size_t *verb_len)
{
	const char *sp = memchr(line, ' ', len);
	size_t n = sp != NULL ? (size_t)(sp - line) : len;

	*verb_len = n;
	for (size_t i = 0; i < sizeof(smtp_cmds) / sizeof(smtp_cmds[0]); i++) {
		if (ascii_equal(line, n, smtp_cmds[i].verb))
			return &smtp_cmds[i];
	}
	return NULL;
}

static enum smtp_event_type
smtp_server_dispatch(struct smtp_server *s, const char *line, size_t len, struct smtp_event *ev)
{
	size_t verb_len;
	const struct smtp_cmd *cmd = smtp_cmd_find(line, len, &verb_len);
	const char *args = line + verb_len + (verb_len < len);
	size_t args_len = len - verb_len - (verb_len < len);
	const char *refusal = NULL;

	s->counts.commands++;
	/* The chunk's size comes first: its octets must be read even if BDAT is refused. */
	if (cmd != NULL && (cmd->flags & CMD_CHUNK) &&
	    smtp_server_chunk_parse(s, args, args_len) < 0)
		return smtp_server_chunk_unframed(s, "501 5.5.4 Syntax: BDAT size [LAST]", ev);
	if (cmd == NULL)
		refusal = reply_unknown;
	else if (s->params.tls_required && !s->params.tls_active && !(cmd->flags & CMD_PRE_TLS))
		refusal = "530 5.7.0 Must issue a STARTTLS command first";
	else if ((cmd->flags & CMD_NEED_HELO) && s->helo[0] == '\0')
		refusal = "503 5.5.1 Error: send HELO/EHLO first";
	else if (cmd->check != NULL)
		refusal = cmd->check(s, args, args_len);
	if (refusal != NULL && cmd != NULL && (cmd->flags & CMD_CHUNK))
		smtp_server_chunk_refused(s);
	if (refusal != NULL)
		return smtp_server_refuse(s, refusal, ev);
	assert(cmd->proceed);
	return cmd->proceed(s, args, args_len, ev);
}

/* Command lines */

static size_t
smtp_server_line_limit(const struct smtp_server *s)
{
	size_t verb_len;
	const struct smtp_cmd *cmd;

	if (s->line_len < SMTP_LINE_MAX)
		return SMTP_LINE_MAX;
	cmd = smtp_cmd_find(s->line, s->line_len, &verb_len);
	return cmd != NULL && (cmd->flags & CMD_LONG_LINE) ? SMTP_LINE_EXT_MAX : SMTP_LINE_MAX;
}

/* Checked before the line ends, so a peer cannot make us buffer more than a line. */
static void
smtp_server_line_append(struct smtp_server *s, const uint8_t *p, size_t n)
{
	size_t room = SMTP_LINE_EXT_MAX - 1 - s->line_len; /* leaves room for the LF */
	size_t take = n < room ? n : room;

	memcpy(s->line + s->line_len, p, take);
	s->line_len += take;
	if (take < n || s->line_len + 1 > smtp_server_line_limit(s)) {
		size_t verb_len;
		const struct smtp_cmd *cmd = smtp_cmd_find(s->line, s->line_len, &verb_len);

		s->line_discard = true;
		s->line_discard_chunk = cmd != NULL && (cmd->flags & CMD_CHUNK);
		s->line_len = 0;
	}
}

static void
smtp_server_line_done(struct smtp_server *s, struct smtp_event *ev)
{
	size_t len = s->line_len;

	s->line_total = len + 1;
	s->line_len = 0;
	if (s->line_discard) {
		s->line_discard = false;
		s->counts.commands++;
		if (s->line_discard_chunk)
			smtp_server_chunk_unframed(s, reply_too_long, ev);
		else
			smtp_server_refuse(s, reply_too_long, ev);
		return;
	}
	/* CRLF or a bare LF ends a command line; a bare CR stays in it. */
	if (len > 0 && s->line[len - 1] == '\r')
		len--;
	s->line[len] = '\0';
	smtp_server_dispatch(s, s->line, len, ev);
}

static size_t
smtp_server_line_feed(struct smtp_server *s, const uint8_t *in, size_t len, struct smtp_event *ev)
{
	const uint8_t *lf = memchr(in, '\n', len);
	size_t n = lf != NULL ? (size_t)(lf - in) : len;

	if (!s->line_discard)
		smtp_server_line_append(s, in, n);
	if (lf == NULL)
		return len;
	smtp_server_line_done(s, ev);
	return n + 1;
}

size_t
smtp_server_feed(struct smtp_server *s, const uint8_t *in, size_t len, struct smtp_event *ev)
{
	size_t used = 0;

	assert(s);
	assert(in || len == 0);
	assert(ev);
	assert(s->state != SMTP_SERVER_RCPT_WAIT);
	assert(s->state != SMTP_SERVER_DATA_WAIT);
	memset(ev, 0, sizeof(*ev));
	while (used < len && ev->type == SMTP_EV_NONE) {
		switch (s->state) {
		case SMTP_SERVER_CLOSING:
			return used;
		case SMTP_SERVER_TLS_WAIT:
			/* Bytes pipelined after STARTTLS are dropped, never executed. */
			return len;
		case SMTP_SERVER_DATA:
			used += smtp_server_data_feed(s, in + used, len - used, ev);
			break;
		case SMTP_SERVER_BDAT:
			used += smtp_server_chunk_feed(s, in + used, len - used, ev);
			break;
		default:
			if (s->chunk_left > 0) {
				used += smtp_server_chunk_skip(s, len - used);
				break;
			}
			if (smtp_server_output_full(s))
				return used;
			used += smtp_server_line_feed(s, in + used, len - used, ev);
			break;
		}
	}
	if (ev->type != SMTP_EV_STARTTLS)
		return used;
	ev->discarded = len - used;
	return len;
}

/* Session */

struct smtp_server *
smtp_server_new(const struct smtp_server_params *params, const struct smtp_server_limits *limits)
{
	struct smtp_server *s;

	assert(params);
	assert(params->hostname);
	assert(strlen(params->hostname) <= SMTP_HELO_MAX);
	assert(limits);
	assert(limits->message_size_max > 0);
	assert(limits->rcpt_count_max > 0);
	assert(limits->error_count_max > 0);
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->out = malloc(SMTP_OUTPUT_CAP);
	if (s->out == NULL) {
		free(s);
		return NULL;
	}
	s->params = *params;
	s->limits = *limits;
	s->state = SMTP_SERVER_GREETING;
	smtp_server_printf(s, "220 %s ESMTP ringmx\r\n", params->hostname);
	return s;
}

void
smtp_server_free(struct smtp_server *s)
{
	if (s == NULL)
		return;
	smtp_server_reset_transaction(s);
	free(s->out);
	free(s);
}

void
smtp_server_tls_done(struct smtp_server *s)
{
	assert(s);
	assert(s->state == SMTP_SERVER_TLS_WAIT);
	/* RFC 3207 §4.2: forget everything learnt before the handshake. */
	s->params.tls_active = true;
	s->helo[0] = '\0';
	s->esmtp = false;
	smtp_server_reset_transaction(s);
	smtp_server_state_set(s, SMTP_SERVER_GREETING);
}

void
smtp_server_timeout(struct smtp_server *s)
{
	assert(s);
	if (s->state == SMTP_SERVER_CLOSING)
		return;
	smtp_server_printf(s, "421 4.4.2 %s Error: timeout exceeded\r\n", s->params.hostname);
	smtp_server_state_set(s, SMTP_SERVER_CLOSING);
}

void
smtp_server_shutdown(struct smtp_server *s)
{
	assert(s);
	if (s->state == SMTP_SERVER_CLOSING)
		return;
	smtp_server_reply(s, "421 4.3.2 Service shutting down");
	smtp_server_state_set(s, SMTP_SERVER_CLOSING);
}

const uint8_t *
smtp_server_output(const struct smtp_server *s, size_t *len)
{
	assert(s);
	assert(len);
	*len = s->out_len - s->out_start;
	return s->out + s->out_start;
}

void
smtp_server_output_consume(struct smtp_server *s, size_t n)
{
	assert(s);
	assert(n <= s->out_len - s->out_start);
	s->out_start += n;
	if (s->out_start == s->out_len) {
		s->out_start = 0;
		s->out_len = 0;
	}
}

bool
smtp_server_output_full(const struct smtp_server *s)
{
	assert(s);
	return s->out_len - s->out_start >= SMTP_OUTPUT_MAX;
}

enum smtp_server_state
smtp_server_state(const struct smtp_server *s)
{
	assert(s);
	return s->state;
}

bool
smtp_server_in_data(const struct smtp_server *s)
{
	assert(s);
	return s->state == SMTP_SERVER_DATA || s->state == SMTP_SERVER_BDAT || s->chunk_left > 0;
}

const char *
smtp_server_helo(const struct smtp_server *s)
{
	assert(s);
	return s->helo;
}

bool
smtp_server_esmtp(const struct smtp_server *s)
{
	assert(s);
	return s->esmtp;
}

void
smtp_server_counts(const struct smtp_server *s, struct smtp_server_counts *c)
{
	assert(s);
	assert(c);
	*c = s->counts;
}

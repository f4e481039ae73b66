#include "queue/dsn.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define DSN_LINE_MAX           998 /* RFC 5322 §2.1.1, octets before CRLF */
#define DSN_FOLD_WIDTH         78  /* RFC 5322 §2.1.1 "SHOULD" */
#define DSN_BOUNDARY_TRIES_MAX 32  /* candidates tried before giving up with -EEXIST */
#define DSN_BOUNDARY_LEN       70  /* RFC 2046 §5.1.1 */
#define DSN_DATE_LEN           40
#define DSN_ENCODED_MAX        (DSN_ADDRESS_MAX * 6) /* "+" becomes "\x{2B}" */
#define DSN_PARTS_MAX          3

static_assert(DSN_FOLD_WIDTH < DSN_LINE_MAX, "folding must stay under the hard limit");
static_assert(DSN_QUEUE_ID_MAX + 26 <= DSN_BOUNDARY_LEN, "a boundary holds queue id and date");

static const char *const dsn_action_names[] = {
    [DSN_ACTION_FAILED] = "failed",       [DSN_ACTION_DELAYED] = "delayed",
    [DSN_ACTION_DELIVERED] = "delivered", [DSN_ACTION_RELAYED] = "relayed",
    [DSN_ACTION_EXPANDED] = "expanded",
};

bool
dsn_should_bounce(const char *sender)
{
	assert(sender);
	return sender[0] != '\0';
}

size_t
dsn_header_section_len(const char *msg, size_t len)
{
	assert(msg || len == 0);
	size_t line = 0; /* start of the current line */

	for (size_t i = 0; i < len; i++) {
		if (msg[i] != '\n' && msg[i] != '\r')
			continue;
		if (i == line)
			return line;
		if (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n')
			i++;
		line = i + 1;
	}
	return len;
}

/* RFC 5322 date-time in UTC; false for a time gmtime cannot represent. */
static bool
dsn_date_format(time_t t, char buf[DSN_DATE_LEN])
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 1900)
		return false;
	snprintf(buf, DSN_DATE_LEN, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
	         tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	         tm.tm_sec);
	return true;
}

/*
 * Decodes one UTF-8 sequence at s; returns its length and sets *cp, or 0 when it is
 * invalid (overlong, surrogate, beyond U+10FFFF, truncated).
 */
static size_t
dsn_utf8_decode(const unsigned char *s, uint32_t *cp)
{
	static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
	size_t n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 1;
	uint32_t v = n == 1 ? s[0] : s[0] & (0x3fu >> (n - 1));

	if (s[0] >= 0x80 && n == 1)
		return 0;
	if (s[0] >= 0xf8)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3fu);
	}
	if (v < min[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

/* An address we may print: non-empty, within DSN_ADDRESS_MAX, valid UTF-8, no controls. */
static bool
dsn_address_valid(const char *a, bool *utf8)
{
	size_t len = strlen(a);
	uint32_t cp;

	*utf8 = false;
	if (len == 0 || len > DSN_ADDRESS_MAX)
		return false;
	for (size_t i = 0; i < len; i += dsn_utf8_decode((const unsigned char *)a + i, &cp)) {
		if ((unsigned char)a[i] < 0x20 || a[i] == 0x7f)
			return false;
		if ((unsigned char)a[i] >= 0x80) {
			*utf8 = true;
			if (dsn_utf8_decode((const unsigned char *)a + i, &cp) == 0)
				return false;
		}
	}
	return true;
}

/*
 * RFC 6533 §3 utf-8-addr-xtext: printable ASCII except "\", "+", "=" as is, everything
 * else as "\x{HEX}". The address is already valid.
 */
static size_t
dsn_address_encode(const char *a, char out[DSN_ENCODED_MAX + 1])
{
	size_t o = 0;
	uint32_t cp;

	for (size_t i = 0; a[i]; i += dsn_utf8_decode((const unsigned char *)a + i, &cp)) {
		unsigned char c = (unsigned char)a[i];
		if (c > 0x20 && c < 0x7f && c != '\\' && c != '+' && c != '=') {
			out[o++] = (char)c;
			continue;
		}
		dsn_utf8_decode((const unsigned char *)a + i, &cp);
		o += (size_t)snprintf(out + o, DSN_ENCODED_MAX + 1 - o, "\\x{%X}", (unsigned)cp);
	}
	assert(o <= DSN_ENCODED_MAX);
	out[o] = '\0';
	return o;
}

/*
 * Remote text as one line of printable ASCII: controls and line breaks become spaces,
 * 8-bit octets '?', runs of spaces one space, no space at either end; cut to cap - 1.
 */
static size_t
dsn_text_clean(const char *src, char *dst, size_t cap)
{
	size_t o = 0;
	bool space = false;

	assert(cap > 0);
	for (const unsigned char *p = (const unsigned char *)src; *p && o + 1 < cap; p++) {
		if (*p <= 0x20 || *p == 0x7f) {
			space = o > 0;
			continue;
		}
		if (space) {
			if (o + 2 >= cap)
				break; /* cut at a word boundary rather than join two words */
			dst[o++] = ' ';
		}
		space = false;
		dst[o++] = *p >= 0x80 ? '?' : (char)*p;
	}
	dst[o] = '\0';
	return o;
}

/*
 * Appends s[0..n) after col octets already on the line, ending with CRLF: broken before
 * a space so lines stay within DSN_FOLD_WIDTH where words allow, and a run without
 * spaces broken with CRLF SP at DSN_LINE_MAX. s has no CR or LF. A header field is
 * folded (the space starts the next line, RFC 5322 §2.2.3); body text is wrapped (the
 * space is dropped).
 */
static void
dsn_break(struct strbuf *out, size_t col, const char *s, size_t n, bool header)
{
	while (col + n > DSN_FOLD_WIDTH) {
		size_t cut = 0;
		/* s[0] is the space a previous fold left in front: never cut before it */
		for (size_t i = 1; i < n && col + i <= DSN_LINE_MAX; i++) {
			if (s[i] == ' ' && (cut == 0 || col + i <= DSN_FOLD_WIDTH))
				cut = i;
			if (cut != 0 && col + i >= DSN_FOLD_WIDTH)
				break;
		}
		if (cut == 0 && col + n <= DSN_LINE_MAX)
			break;
		if (cut == 0) {
			cut = DSN_LINE_MAX - col;
			strbuf_append(out, s, cut);
			strbuf_append(out, "\r\n ", 3);
			col = 1;
		} else {
			strbuf_append(out, s, cut);
			strbuf_append(out, "\r\n", 2);
			col = 0;
			if (!header) {
				cut++; /* the space the line was broken at */
			}
		}
		s += cut;
		n -= cut;
	}
	strbuf_append(out, s, n);
	strbuf_append(out, "\r\n", 2);
}

static void
dsn_fold(struct strbuf *out, size_t col, const char *s, size_t n)
{
	dsn_break(out, col, s, n, true);
}

static void
dsn_wrap(struct strbuf *out, const char *s, size_t n)
{
	dsn_break(out, 0, s, n, false);
}

/* "Name: value" folded; value has no CR or LF. */
static void
dsn_field(struct strbuf *out, const char *name, const char *value)
{
	size_t start = out->len;

	strbuf_printf(out, "%s: ", name);
	dsn_fold(out, out->len - start, value, strlen(value));
}

/* "Name: rfc822; addr", or "Name: utf-8; \x{..}" for a non-ASCII address (RFC 6533). */
static void
dsn_field_address(struct strbuf *out, const char *name, const char *addr)
{
	char value[DSN_ENCODED_MAX + sizeof("utf-8; ")];
	bool utf8;

	dsn_address_valid(addr, &utf8);
	if (utf8) {
		memcpy(value, "utf-8; ", 7);
		dsn_address_encode(addr, value + 7);
	} else {
		snprintf(value, sizeof(value), "rfc822; %s", addr);
	}
	dsn_field(out, name, value);
}

/*
 * Copies original text as CRLF lines of at most DSN_LINE_MAX octets: bare LF and bare CR
 * end a line; a longer line is broken (as a folded header when header is set).
 */
static void
dsn_copy_lines(struct strbuf *out, const char *s, size_t n, bool header)
{
	size_t col = 0, run = 0;

	for (size_t i = 0; i < n; i++) {
		bool eol = s[i] == '\n' || s[i] == '\r';
		if (!eol && col == DSN_LINE_MAX) {
			strbuf_append(out, s + run, i - run);
			strbuf_append(out, header ? "\r\n " : "\r\n", header ? 3 : 2);
			run = i;
			col = header ? 1 : 0;
		}
		if (!eol) {
			col++;
			continue;
		}
		strbuf_append(out, s + run, i - run);
		strbuf_append(out, "\r\n", 2);
		if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
			i++;
		run = i + 1;
		col = 0;
	}
	strbuf_append(out, s + run, n - run);
	if (col > 0)
		strbuf_append(out, "\r\n", 2);
}

static bool
dsn_has_8bit(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

/* "class.subject.detail" of RFC 3463: class 2, 4 or 5; then 1-3 and 1-3 digits. */
static bool
dsn_status_valid(const char *s)
{
	size_t i = 0;

	if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	s += 2;
	for (int field = 0; field < 2; field++) {
		for (i = 0; s[i] >= '0' && s[i] <= '9'; i++)
			;
		if (i == 0 || i > 3 || s[i] != (field == 0 ? '.' : '\0'))
			return false;
		s += i + 1;
	}
	return true;
}

/* Letters, digits and "-" only, 1..max octets: queue ids, diagnostic types. */
static bool
dsn_token_valid(const char *s, size_t max, bool dash)
{
	size_t len = strlen(s);

	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++) {
		bool alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		             (s[i] >= '0' && s[i] <= '9');
		if (!alnum && !(dash && s[i] == '-'))
			return false;
	}
	return true;
}

/* A host name of ours: printable ASCII without spaces, 1..DSN_HOST_MAX octets. */
static bool
dsn_hostname_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > DSN_HOST_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] <= 0x20 || s[i] >= 0x7f)
			return false;
	return true;
}

static bool
dsn_rcpt_valid(const struct dsn_rcpt *rc)
{
	char date[DSN_DATE_LEN];
	bool utf8;

	assert(rc->final_recipient);
	if (!dsn_address_valid(rc->final_recipient, &utf8) || !dsn_status_valid(rc->status))
		return false;
	if ((unsigned)rc->action > DSN_ACTION_EXPANDED)
		return false;
	if (rc->diagnostic_type && !dsn_token_valid(rc->diagnostic_type, DSN_TYPE_MAX, true))
		return false;
	return dsn_date_format(rc->last_attempt, date) &&
	       dsn_date_format(rc->will_retry_until, date);
}

static int
dsn_report_check(const struct dsn_report *r)
{
	char date[DSN_DATE_LEN];
	bool utf8;

	assert(r->hostname);
	assert(r->queue_id);
	assert(r->sender);
	assert(r->rcpts || r->rcpt_count == 0);
	assert(r->message || r->message_len == 0);
	if (r->rcpt_count > DSN_RECIPIENTS_MAX)
		return -E2BIG;
	if (r->rcpt_count == 0 || !dsn_hostname_valid(r->hostname) ||
	    !dsn_token_valid(r->queue_id, DSN_QUEUE_ID_MAX, false) ||
	    !dsn_address_valid(r->sender, &utf8) || (unsigned)r->ret > DSN_RET_FULL)
		return -EINVAL;
	if (!dsn_date_format(r->arrival, date) || !dsn_date_format(r->date, date))
		return -EINVAL;
	for (size_t i = 0; i < r->rcpt_count; i++)
		if (!dsn_rcpt_valid(&r->rcpts[i]))
			return -EINVAL;
	return 0;
}

enum dsn_return {
	DSN_RETURN_NONE,        /* even the header section is over DSN_RETURN_MAX */
	DSN_RETURN_HEADERS,     /* RET=HDRS or absent */
	DSN_RETURN_HEADERS_CUT, /* RET=FULL, but the message is over DSN_RETURN_MAX */
	DSN_RETURN_FULL,
};

struct dsn_plan {
	const struct dsn_report *r;
	enum dsn_return ret;
	size_t header_len; /* of the original */
	size_t return_len; /* octets of the original returned */
	bool return_8bit;
	bool utf8_addresses; /* the sender or a final recipient: the human part is 8-bit */
	size_t parts;
	char boundary[DSN_BOUNDARY_LEN + 1];
};

static void
dsn_plan_make(const struct dsn_report *r, struct dsn_plan *p)
{
	*p = (struct dsn_plan){.r = r, .parts = DSN_PARTS_MAX};
	p->header_len = dsn_header_section_len(r->message, r->message_len);
	if (r->ret == DSN_RET_FULL && r->message_len <= DSN_RETURN_MAX) {
		p->ret = DSN_RETURN_FULL;
		p->return_len = r->message_len;
	} else if (p->header_len <= DSN_RETURN_MAX) {
		p->ret = r->ret == DSN_RET_FULL ? DSN_RETURN_HEADERS_CUT : DSN_RETURN_HEADERS;
		p->return_len = p->header_len;
	} else {
		p->ret = DSN_RETURN_NONE;
		p->parts = DSN_PARTS_MAX - 1;
	}
	p->return_8bit = dsn_has_8bit(r->message, p->return_len);
	dsn_address_valid(r->sender, &p->utf8_addresses);
	for (size_t i = 0; i < r->rcpt_count && !p->utf8_addresses; i++)
		dsn_address_valid(r->rcpts[i].final_recipient, &p->utf8_addresses);
}

/* Candidate k: the same inputs always give the same boundaries. */
static void
dsn_boundary_make(const struct dsn_report *r, unsigned k, char out[DSN_BOUNDARY_LEN + 1])
{
	snprintf(out, DSN_BOUNDARY_LEN + 1, "=_dsn-%s-%llx-%02x", r->queue_id,
	         (unsigned long long)r->date, k);
}

static const char *
dsn_subject(const struct dsn_report *r)
{
	bool delayed = false;

	for (size_t i = 0; i < r->rcpt_count; i++) {
		if (r->rcpts[i].action == DSN_ACTION_FAILED)
			return "Undelivered Mail Returned to Sender";
		delayed |= r->rcpts[i].action == DSN_ACTION_DELAYED;
	}
	return delayed ? "Delayed Mail (still being retried)" : "Successful Mail Delivery Report";
}

static void
dsn_write_headers(struct strbuf *out, const struct dsn_plan *p)
{
	const struct dsn_report *r = p->r;
	char date[DSN_DATE_LEN];

	dsn_date_format(r->date, date);
	strbuf_printf(out, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", r->hostname);
	strbuf_printf(out, "To: <%s>\r\n", r->sender);
	strbuf_printf(out, "Subject: %s\r\n", dsn_subject(r));
	strbuf_printf(out, "Date: %s\r\n", date);
	/* date and seq keep a delay report and a later bounce of one message apart */
	strbuf_printf(out, "Message-ID: <%s.%llx.%u.dsn@%s>\r\n", r->queue_id,
	              (unsigned long long)r->date, r->seq, r->hostname);
	strbuf_puts(out, "Auto-Submitted: auto-replied\r\n"
	                 "MIME-Version: 1.0\r\n"
	                 "Content-Type: multipart/report; report-type=delivery-status;\r\n");
	strbuf_printf(out, "\tboundary=\"%s\"\r\n", p->boundary);
	if (p->utf8_addresses || p->return_8bit)
		strbuf_puts(out, "Content-Transfer-Encoding: 8bit\r\n");
	strbuf_puts(out, "\r\nThis is a MIME-encapsulated message.\r\n");
}

static void
dsn_write_part_start(struct strbuf *out, const struct dsn_plan *p, const char *description,
                     const char *type, bool eightbit)
{
	strbuf_printf(out, "\r\n--%s\r\nContent-Description: %s\r\nContent-Type: %s\r\n",
	              p->boundary, description, type);
	if (eightbit)
		strbuf_puts(out, "Content-Transfer-Encoding: 8bit\r\n");
	strbuf_puts(out, "\r\n");
}

static void
dsn_write_human_rcpt(struct strbuf *out, const struct dsn_rcpt *rc)
{
	char host[DSN_HOST_MAX + 1], diag[DSN_DIAG_MAX + 1], date[DSN_DATE_LEN];
	char line[DSN_ADDRESS_MAX + DSN_HOST_MAX + DSN_DIAG_MAX + DSN_DATE_LEN + 64];
	size_t host_len = rc->remote_mta ? dsn_text_clean(rc->remote_mta, host, sizeof(host)) : 0;
	size_t diag_len = rc->diagnostic ? dsn_text_clean(rc->diagnostic, diag, sizeof(diag)) : 0;
	int n = snprintf(line, sizeof(line), "<%s>: ", rc->final_recipient);

	if (diag_len > 0 && host_len > 0)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "host %s said: %s", host, diag);
	else if (diag_len > 0)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "%s", diag);
	else if (host_len > 0)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "status %s at host %s",
		              rc->status, host);
	else
		n += snprintf(line + n, sizeof(line) - (size_t)n, "status %s", rc->status);
	if (rc->action == DSN_ACTION_DELAYED && rc->will_retry_until != 0) {
		dsn_date_format(rc->will_retry_until, date);
		n += snprintf(line + n, sizeof(line) - (size_t)n, " (retrying until %s)", date);
	}
	assert((size_t)n < sizeof(line));
	dsn_fold(out, 0, line, (size_t)n);
}

static size_t
dsn_action_group(enum dsn_action a)
{
	return a == DSN_ACTION_FAILED ? 0 : a == DSN_ACTION_DELAYED ? 1 : 2;
}

#define DSN_STR_(x)     #x
#define DSN_STR(x)      DSN_STR_(x)
#define DSN_RETURN_TEXT DSN_STR(DSN_RETURN_MAX) " octets"

static void
dsn_write_return_note(struct strbuf *out, const struct dsn_plan *p)
{
	static const char *const notes[] = {
	    [DSN_RETURN_NONE] = "The header section of your message is larger than " DSN_RETURN_TEXT
	                        " and is not attached.",
	    [DSN_RETURN_HEADERS] = "The header section of your message is attached.",
	    [DSN_RETURN_HEADERS_CUT] = "Your message is larger than " DSN_RETURN_TEXT
	                               ", so only its header section is attached.",
	    [DSN_RETURN_FULL] = "Your message is attached.",
	};

	strbuf_puts(out, "\r\n");
	dsn_wrap(out, notes[p->ret], strlen(notes[p->ret]));
}

static void
dsn_write_human(struct strbuf *out, const struct dsn_plan *p)
{
	static const char *const intro[] = {
	    "Your message could not be delivered to these recipients; no further attempts will "
	    "be made:",
	    "Delivery to these recipients has been delayed; attempts continue and there is no "
	    "need to resend the message:",
	    "Your message was delivered to these recipients, or relayed to systems that do not "
	    "report delivery:",
	};
	const struct dsn_report *r = p->r;

	dsn_write_part_start(out, p, "Notification", "text/plain; charset=utf-8",
	                     p->utf8_addresses);
	strbuf_printf(out, "This is the mail delivery system at %s.\r\n", r->hostname);
	for (size_t g = 0; g < sizeof(intro) / sizeof(intro[0]); g++) {
		bool any = false;
		for (size_t i = 0; i < r->rcpt_count; i++) {
			if (dsn_action_group(r->rcpts[i].action) != g)
				continue;
			if (!any) {
				strbuf_puts(out, "\r\n");
				dsn_wrap(out, intro[g], strlen(intro[g]));
				strbuf_puts(out, "\r\n");
			}
			any = true;
			dsn_write_human_rcpt(out, &r->rcpts[i]);
		}
	}
	dsn_write_return_note(out, p);
}

/* Original-Recipient from a printable ASCII "type;addr" within DSN_ORCPT_MAX, else none. */
static void
dsn_write_orcpt(struct strbuf *out, const char *orcpt)
{
	char type[DSN_TYPE_MAX + 1], value[DSN_ORCPT_MAX + 2];
	size_t len = strlen(orcpt), type_len = strcspn(orcpt, ";");

	if (len > DSN_ORCPT_MAX || type_len == len || type_len > DSN_TYPE_MAX)
		return;
	for (size_t i = 0; i < len; i++)
		if (orcpt[i] < 0x20 || orcpt[i] >= 0x7f)
			return;
	memcpy(type, orcpt, type_len);
	type[type_len] = '\0';
	const char *addr = orcpt + type_len + 1;
	while (*addr == ' ')
		addr++;
	if (!dsn_token_valid(type, DSN_TYPE_MAX, true) || *addr == '\0')
		return;
	snprintf(value, sizeof(value), "%s; %s", type, addr);
	dsn_field(out, "Original-Recipient", value);
}

static void
dsn_write_status_rcpt(struct strbuf *out, const struct dsn_rcpt *rc)
{
	char text[DSN_TYPE_MAX + DSN_DIAG_MAX + 8], date[DSN_DATE_LEN];
	const char *type = rc->diagnostic_type ? rc->diagnostic_type : "smtp";
	size_t n;

	strbuf_puts(out, "\r\n");
	if (rc->original_recipient)
		dsn_write_orcpt(out, rc->original_recipient);
	dsn_field_address(out, "Final-Recipient", rc->final_recipient);
	strbuf_printf(out, "Action: %s\r\nStatus: %s\r\n", dsn_action_names[rc->action],
	              rc->status);
	n = (size_t)snprintf(text, sizeof(text), "dns; ");
	if (rc->remote_mta && dsn_text_clean(rc->remote_mta, text + n, DSN_HOST_MAX + 1) > 0)
		dsn_field(out, "Remote-MTA", text);
	n = (size_t)snprintf(text, sizeof(text), "%s; ", type);
	if (rc->diagnostic && dsn_text_clean(rc->diagnostic, text + n, DSN_DIAG_MAX + 1) > 0)
		dsn_field(out, "Diagnostic-Code", text);
	if (rc->last_attempt != 0 && dsn_date_format(rc->last_attempt, date))
		strbuf_printf(out, "Last-Attempt-Date: %s\r\n", date);
	if (rc->action == DSN_ACTION_DELAYED && rc->will_retry_until != 0 &&
	    dsn_date_format(rc->will_retry_until, date))
		strbuf_printf(out, "Will-Retry-Until: %s\r\n", date);
}

static void
dsn_write_status(struct strbuf *out, const struct dsn_plan *p)
{
	const struct dsn_report *r = p->r;
	char envid[DSN_ENVID_MAX + 1], date[DSN_DATE_LEN];

	dsn_write_part_start(out, p, "Delivery report", "message/delivery-status", false);
	strbuf_printf(out, "Reporting-MTA: dns; %s\r\nX-Ringmx-Queue-ID: %s\r\n", r->hostname,
	              r->queue_id);
	if (r->envid && dsn_text_clean(r->envid, envid, sizeof(envid)) > 0)
		strbuf_printf(out, "Original-Envelope-Id: %s\r\n", envid);
	dsn_date_format(r->arrival, date);
	strbuf_printf(out, "Arrival-Date: %s\r\n", date);
	for (size_t i = 0; i < r->rcpt_count; i++)
		dsn_write_status_rcpt(out, &r->rcpts[i]);
}

static void
dsn_write_original(struct strbuf *out, const struct dsn_plan *p)
{
	const char *msg = p->r->message;

	switch (p->ret) {
	case DSN_RETURN_NONE:
		return;
	case DSN_RETURN_FULL:
		dsn_write_part_start(out, p, "Original message", "message/rfc822", p->return_8bit);
		dsn_copy_lines(out, msg, p->header_len, true);
		dsn_copy_lines(out, msg + p->header_len, p->return_len - p->header_len, false);
		return;
	case DSN_RETURN_HEADERS:
	case DSN_RETURN_HEADERS_CUT:
		dsn_write_part_start(out, p, "Original message headers", "text/rfc822-headers",
		                     p->return_8bit);
		dsn_copy_lines(out, msg, p->header_len, true);
		return;
	}
}

/*
 * Occurrences of the boundary in out from offset from: one per delimiter when it is free.
 * Stricter than RFC 2046 asks (anywhere, not only after "--" at a line start).
 */
static size_t
dsn_boundary_count(const struct strbuf *out, size_t from, const char *boundary)
{
	size_t n = strlen(boundary), count = 0;
	const char *p = out->data + from, *end = out->data + out->len;

	while ((p = memmem(p, (size_t)(end - p), boundary, n)) != NULL) {
		count++;
		p += n;
	}
	return count;
}

static void
dsn_truncate(struct strbuf *out, size_t len)
{
	out->len = len;
	if (out->data)
		out->data[len] = '\0';
}

int
dsn_build(struct strbuf *out, const struct dsn_report *r)
{
	struct dsn_plan p;

	assert(out);
	assert(r);
	size_t start = out->len;
	int err = dsn_report_check(r);
	if (err != 0)
		return err;
	dsn_plan_make(r, &p);
	/* remote text and the original may hold any string: retry until the boundary is free */
	for (unsigned k = 0; k < DSN_BOUNDARY_TRIES_MAX; k++) {
		dsn_boundary_make(r, k, p.boundary);
		dsn_write_headers(out, &p);
		size_t body = out->len;
		dsn_write_human(out, &p);
		dsn_write_status(out, &p);
		dsn_write_original(out, &p);
		strbuf_printf(out, "\r\n--%s--\r\n", p.boundary);
		if (out->overflow) {
			dsn_truncate(out, start);
			return -ENOBUFS;
		}
		if (dsn_boundary_count(out, body, p.boundary) == p.parts + 1)
			return 0;
		dsn_truncate(out, start);
	}
	return -EEXIST;
}

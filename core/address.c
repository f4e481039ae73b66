/*
 * address.c -- RFC 5321 §4.1.2 paths, with RFC 6531 UTF-8, and ESMTP parameters.
 *
 * This parser stands between the network and the relay policy, so it is strict:
 * whatever it accepts must mean one thing only. Errors split in two, and the server
 * maps them to distinct replies:
 *   ADDRESS_ESYNTAX  -- the text is not a path at all (no '<' or '>', a control
 *                       character, a space outside a quoted string): 501 5.5.4.
 *   ADDRESS_EMAILBOX -- a path whose mailbox is malformed: 501 5.1.3, and so is
 *   ADDRESS_ETOOLONG -- a local part, domain, label or path over its limit.
 *   ADDRESS_EUTF8    -- non-ASCII without SMTPUTF8, or ill-formed UTF-8: 553 5.6.7.
 */
#include "core/address.h"

#include <arpa/inet.h>
#include <assert.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

#define ADDRESS_LABEL_MAX 63 /* RFC 1035 §2.3.4, octets as written (U-labels too) */

struct cursor {
	const unsigned char *s;
	size_t pos;
	size_t end;
};

static bool
char_is_let_dig(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* atext of RFC 5322 §3.2.3; UTF-8 octets are handled by the callers (RFC 6531). */
static bool
char_is_atext(unsigned char c)
{
	return char_is_let_dig(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * Length of the well-formed UTF-8 sequence at s[0..n), or 0 (RFC 3629 §4): refuses
 * overlong forms, surrogates and code points past U+10FFFF, which could otherwise
 * smuggle an ASCII '@' or '>' past a later decoder.
 */
static size_t
utf8_sequence_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80;
	unsigned char hi = 0xbf;
	size_t len;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	}
	return len;
}

static enum address_error
utf8_check(const unsigned char *s, size_t len, bool allow_utf8)
{
	size_t i = 0;

	while (i < len) {
		size_t n = utf8_sequence_len(s + i, len - i);

		if (n == 0 || (n > 1 && !allow_utf8))
			return ADDRESS_EUTF8;
		i += n;
	}
	return ADDRESS_OK;
}

static bool
text_has_utf8(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s >= 0x80)
			return true;
	}
	return false;
}

/* Dot-string = Atom *("." Atom); octets >= 0x80 are taken as checked UTF-8. */
static bool
dot_string_valid(const unsigned char *s, size_t len)
{
	if (len == 0 || s[0] == '.' || s[len - 1] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.' ? s[i - 1] == '.' : !(char_is_atext(s[i]) || s[i] >= 0x80))
			return false;
	}
	return true;
}

/*
 * Finds the '>' that closes the path and refuses what makes the text not a path
 * (501 5.5.4). Also checks all non-ASCII here, so the mailbox parser may take any
 * octet >= 0x80 as part of a well-formed, permitted UTF-8 character.
 */
static enum address_error
path_scan(const unsigned char *s, size_t len, bool allow_utf8, size_t *close)
{
	size_t limit = len < ADDRESS_PATH_MAX ? len : ADDRESS_PATH_MAX;
	bool quoted = false;
	size_t i = 1;

	while (i < limit) {
		unsigned char c = s[i];

		if (c < 0x20 || c == 0x7f)
			return ADDRESS_ESYNTAX;
		if (c >= 0x80) {
			size_t n = utf8_sequence_len(s + i, len - i);

			if (n == 0 || !allow_utf8)
				return ADDRESS_EUTF8;
			i += n;
			continue;
		}
		if (c == '"') {
			quoted = !quoted;
		} else if (c == '\\' && quoted && i + 1 < len && s[i + 1] >= 0x20 &&
		           s[i + 1] < 0x7f) {
			i++; /* quoted-pairSMTP: the next octet is data, even '"' or '>' */
		} else if (c == ' ' && !quoted) {
			return ADDRESS_ESYNTAX;
		} else if (c == '>' && !quoted) {
			*close = i;
			return ADDRESS_OK;
		}
		i++;
	}
	return len > ADDRESS_PATH_MAX ? ADDRESS_ETOOLONG : ADDRESS_ESYNTAX;
}

/* sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]; U-labels with allow_utf8. */
static enum address_error
domain_name_check(const unsigned char *s, size_t len, bool allow_utf8)
{
	size_t label = 0;

	if (len == 0)
		return ADDRESS_EMAILBOX;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];

		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return ADDRESS_EMAILBOX;
			label = 0;
			continue;
		}
		if (c >= 0x80 ? !allow_utf8 : !(char_is_let_dig(c) || c == '-'))
			return ADDRESS_EMAILBOX;
		if (c == '-' && label == 0)
			return ADDRESS_EMAILBOX;
		if (++label > ADDRESS_LABEL_MAX)
			return ADDRESS_ETOOLONG;
	}
	if (label == 0 || s[len - 1] == '-')
		return ADDRESS_EMAILBOX;
	return ADDRESS_OK;
}

/*
 * "[1.2.3.4]" or "[IPv6:...]", checked by inet_pton, which takes no leading zeros,
 * short forms or scope ids. General literals ("[tag:content]") name nothing we can
 * route to, so they are refused.
 */
static enum address_error
domain_literal_check(const unsigned char *s, size_t len)
{
	char text[ADDRESS_DOMAIN_MAX + 1];
	unsigned char bin[sizeof(struct in6_addr)];
	const char *inner = (const char *)s + 1;
	size_t inner_len;
	int family = AF_INET;

	assert(len <= ADDRESS_DOMAIN_MAX);
	if (len < 3 || s[0] != '[' || s[len - 1] != ']')
		return ADDRESS_EMAILBOX;
	inner_len = len - 2;
	if (inner_len > 5 && strncasecmp(inner, "IPv6:", 5) == 0) {
		family = AF_INET6;
		inner += 5;
		inner_len -= 5;
	}
	memcpy(text, inner, inner_len);
	text[inner_len] = '\0';
	if (inet_pton(family, text, bin) != 1)
		return ADDRESS_EMAILBOX;
	return ADDRESS_OK;
}

/* A mailbox's domain; non-ASCII must have been checked by the caller. */
static enum address_error
domain_check(const unsigned char *s, size_t len, bool allow_utf8)
{
	if (len > ADDRESS_DOMAIN_MAX)
		return ADDRESS_ETOOLONG;
	if (len > 0 && s[0] == '[')
		return domain_literal_check(s, len);
	/* "user@example.org." is the same mailbox; Postfix takes it too. */
	if (len > 1 && s[len - 1] == '.')
		len--;
	return domain_name_check(s, len, allow_utf8);
}

enum address_error
address_parse_domain(const char *text, size_t len, bool allow_utf8)
{
	const unsigned char *s = (const unsigned char *)text;
	enum address_error e;

	assert(text != NULL || len == 0);
	e = utf8_check(s, len, allow_utf8);
	if (e != ADDRESS_OK)
		return e;
	return domain_check(s, len, allow_utf8);
}

/* A-d-l = At-domain *("," At-domain) ":"; each At-domain is checked, then the route dropped. */
static enum address_error
parse_source_route(struct cursor *c, bool allow_utf8)
{
	for (;;) {
		size_t start;
		enum address_error e;

		if (c->pos == c->end || c->s[c->pos] != '@')
			return ADDRESS_EMAILBOX;
		start = ++c->pos;
		while (c->pos < c->end && c->s[c->pos] != ',' && c->s[c->pos] != ':')
			c->pos++;
		if (c->pos == c->end)
			return ADDRESS_EMAILBOX;
		/* At-domain is "@" Domain: a name, no literal and no trailing dot. */
		if (c->pos - start > ADDRESS_DOMAIN_MAX)
			return ADDRESS_ETOOLONG;
		e = domain_name_check(c->s + start, c->pos - start, allow_utf8);
		if (e != ADDRESS_OK)
			return e;
		if (c->s[c->pos++] == ':')
			return ADDRESS_OK;
	}
}

/* Quoted-string of qtextSMTP / quoted-pairSMTP, stored unquoted with escapes resolved. */
static enum address_error
parse_quoted_local(struct cursor *c, struct address *out)
{
	size_t n = 0;

	assert(c->s[c->pos] == '"');
	c->pos++;
	while (c->pos < c->end) {
		unsigned char ch = c->s[c->pos++];

		if (ch == '"') {
			/* An empty local part names no mailbox; downstream software mishandles it.
			 */
			if (n == 0)
				return ADDRESS_EMAILBOX;
			out->local[n] = '\0';
			return ADDRESS_OK;
		}
		if (ch == '\\') {
			if (c->pos == c->end || c->s[c->pos] < 0x20 || c->s[c->pos] > 0x7e)
				return ADDRESS_EMAILBOX;
			ch = c->s[c->pos++];
		} else if (ch < 0x20 || ch == 0x7f) {
			return ADDRESS_EMAILBOX;
		}
		/* The unquoted form is never longer than the quoted one, which is checked later. */
		if (n == ADDRESS_LOCAL_MAX)
			return ADDRESS_ETOOLONG;
		out->local[n++] = (char)ch;
	}
	return ADDRESS_EMAILBOX;
}

/* Local-part = Dot-string / Quoted-string; its length is counted as written. */
static enum address_error
parse_local(struct cursor *c, struct address *out)
{
	size_t start = c->pos;
	enum address_error e;

	if (c->pos < c->end && c->s[c->pos] == '"') {
		out->quoted = true;
		e = parse_quoted_local(c, out);
		if (e != ADDRESS_OK)
			return e;
	} else {
		while (c->pos < c->end && c->s[c->pos] != '@')
			c->pos++;
		if (c->pos - start > ADDRESS_LOCAL_MAX)
			return ADDRESS_ETOOLONG;
		if (!dot_string_valid(c->s + start, c->pos - start))
			return ADDRESS_EMAILBOX;
		memcpy(out->local, c->s + start, c->pos - start);
		out->local[c->pos - start] = '\0';
	}
	if (c->pos - start > ADDRESS_LOCAL_MAX)
		return ADDRESS_ETOOLONG;
	return ADDRESS_OK;
}

/* [ A-d-l ":" ] Mailbox, or the bare "postmaster" of RFC 5321 §4.1.1.3, in s[1..close). */
static enum address_error
parse_mailbox(const unsigned char *s, size_t close, bool allow_utf8, struct address *out)
{
	struct cursor c = {.s = s, .pos = 1, .end = close};
	enum address_error e;

	if (s[1] == '@') {
		e = parse_source_route(&c, allow_utf8);
		if (e != ADDRESS_OK)
			return e;
		out->source_route = true;
	}
	e = parse_local(&c, out);
	if (e != ADDRESS_OK)
		return e;
	if (c.pos == c.end) {
		if (out->source_route || out->quoted || strcasecmp(out->local, "postmaster") != 0)
			return ADDRESS_EMAILBOX;
		return ADDRESS_OK;
	}
	if (s[c.pos] != '@')
		return ADDRESS_EMAILBOX;
	c.pos++;
	e = domain_check(s + c.pos, c.end - c.pos, allow_utf8);
	if (e != ADDRESS_OK)
		return e;
	out->domain_literal = s[c.pos] == '[';
	memcpy(out->domain, s + c.pos, c.end - c.pos);
	out->domain[c.end - c.pos] = '\0';
	return ADDRESS_OK;
}

enum address_error
address_parse_path(const char *text, size_t len, bool allow_null, bool allow_utf8,
                   struct address *out, size_t *end)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t close = 0;
	enum address_error e;

	assert(text != NULL || len == 0);
	assert(out != NULL);
	assert(end != NULL);
	memset(out, 0, sizeof(*out));
	if (len == 0 || s[0] != '<')
		return ADDRESS_ESYNTAX;
	e = path_scan(s, len, allow_utf8, &close);
	if (e != ADDRESS_OK)
		return e;
	assert(close < ADDRESS_PATH_MAX);
	if (close == 1) {
		if (!allow_null)
			return ADDRESS_EMAILBOX;
		out->null = true;
	} else {
		e = parse_mailbox(s, close, allow_utf8, out);
		if (e != ADDRESS_OK) {
			memset(out, 0, sizeof(*out));
			return e;
		}
		out->utf8 = text_has_utf8(out->local) || text_has_utf8(out->domain);
	}
	*end = close + 1;
	return ADDRESS_OK;
}

/* One esmtp-param: esmtp-keyword ["=" esmtp-value], the value restricted to printable ASCII. */
static enum address_error
param_parse(const char *s, size_t len, struct address_param *p)
{
	size_t i = 0;

	assert(len > 0);
	if (len > ADDRESS_PARAM_LEN || !char_is_let_dig((unsigned char)s[0]))
		return ADDRESS_EPARAMS;
	while (i < len && s[i] != '=') {
		if (!char_is_let_dig((unsigned char)s[i]) && s[i] != '-')
			return ADDRESS_EPARAMS;
		if (i == sizeof(p->keyword) - 1)
			return ADDRESS_EPARAMS;
		p->keyword[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 'a' + 'A' : s[i]);
		i++;
	}
	p->keyword[i] = '\0';
	p->value = NULL;
	p->value_len = 0;
	if (i == len)
		return ADDRESS_OK;
	if (++i == len)
		return ADDRESS_EPARAMS; /* esmtp-value is 1*(...): "KEY=" is malformed */
	p->value = s + i;
	p->value_len = len - i;
	for (; i < len; i++) {
		if (s[i] < 33 || s[i] > 126 || s[i] == '=')
			return ADDRESS_EPARAMS;
	}
	return ADDRESS_OK;
}

enum address_error
address_parse_params(const char *text, size_t len, struct address_param *params, size_t *count)
{
	size_t i = 0;
	size_t n = 0;

	assert(text != NULL || len == 0);
	assert(params != NULL);
	assert(count != NULL);
	*count = 0;
	while (i < len) {
		size_t start;

		if (text[i] != ' ')
			return ADDRESS_EPARAMS;
		while (i < len && text[i] == ' ')
			i++;
		if (i == len)
			break;
		if (n == ADDRESS_PARAMS_MAX)
			return ADDRESS_EPARAMS;
		start = i;
		while (i < len && text[i] != ' ')
			i++;
		if (param_parse(text + start, i - start, &params[n]) != ADDRESS_OK)
			return ADDRESS_EPARAMS;
		for (size_t j = 0; j < n; j++) {
			if (strcmp(params[j].keyword, params[n].keyword) == 0)
				return ADDRESS_EPARAMS;
		}
		n++;
	}
	*count = n;
	return ADDRESS_OK;
}

bool
address_is_postmaster(const struct address *a)
{
	assert(a != NULL);
	return !a->null && strcasecmp(a->local, "postmaster") == 0;
}

struct out_buf {
	char *buf;
	size_t size;
	size_t len;
};

static void
out_put(struct out_buf *o, char c)
{
	if (o->len < o->size)
		o->buf[o->len] = c;
	o->len++;
}

int
address_format(const struct address *a, char *buf, size_t size)
{
	struct out_buf o = {.buf = buf, .size = size, .len = 0};
	size_t local_len;
	bool quote;

	assert(a != NULL);
	assert(buf != NULL || size == 0);
	local_len = strlen(a->local);
	quote = !a->null && !dot_string_valid((const unsigned char *)a->local, local_len);
	if (quote)
		out_put(&o, '"');
	for (size_t i = 0; !a->null && i < local_len; i++) {
		if (quote && (a->local[i] == '"' || a->local[i] == '\\'))
			out_put(&o, '\\');
		out_put(&o, a->local[i]);
	}
	if (quote)
		out_put(&o, '"');
	if (!a->null && a->domain[0] != '\0') {
		out_put(&o, '@');
		for (const char *d = a->domain; *d != '\0'; d++)
			out_put(&o, *d);
	}
	if (o.len >= size)
		return -1;
	buf[o.len] = '\0';
	return (int)o.len;
}

bool
address_atom_valid(const char *text, size_t len)
{
	assert(text != NULL || len == 0);
	for (size_t i = 0; i < len; i++) {
		if (!char_is_atext((unsigned char)text[i]))
			return false;
	}
	return len > 0;
}

static const char xtext_hex[] = "0123456789ABCDEF";

static bool
xtext_is_xchar(unsigned char c)
{
	return c >= '!' && c <= '~' && c != '+' && c != '=';
}

/*
 * Upper-case only: RFC 3461 §4 writes hexchar with upper-case digits, and one spelling
 * per octet keeps a stored ENVID or ORCPT comparable byte for byte.
 */
static int
xtext_hex_value(unsigned char c)
{
	const char *p = c != '\0' ? strchr(xtext_hex, c) : NULL;

	return p != NULL ? (int)(p - xtext_hex) : -1;
}

int
address_xtext_decode(const char *text, size_t len, char *out, size_t size)
{
	const unsigned char *s = (const unsigned char *)text;
	struct out_buf o = {.buf = out, .size = size, .len = 0};

	assert(text != NULL || len == 0);
	assert(out != NULL || size == 0);
	assert(len <= INT_MAX);
	for (size_t i = 0; i < len; i++) {
		int hi, lo;

		if (xtext_is_xchar(s[i])) {
			out_put(&o, (char)s[i]);
			continue;
		}
		if (s[i] != '+' || len - i < 3)
			return -1;
		hi = xtext_hex_value(s[i + 1]);
		lo = xtext_hex_value(s[i + 2]);
		if (hi < 0 || lo < 0)
			return -1;
		out_put(&o, (char)(hi << 4 | lo));
		i += 2;
	}
	if (size > 0)
		out[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

int
address_xtext_encode(const char *in, size_t len, char *out, size_t size)
{
	struct out_buf o = {.buf = out, .size = size, .len = 0};

	assert(in != NULL || len == 0);
	assert(out != NULL || size == 0);
	assert(len <= INT_MAX / 3);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];

		if (xtext_is_xchar(c)) {
			out_put(&o, (char)c);
			continue;
		}
		out_put(&o, '+');
		out_put(&o, xtext_hex[c >> 4]);
		out_put(&o, xtext_hex[c & 0xf]);
	}
	if (size > 0)
		out[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

bool
address_domain_equal(const char *a, const char *b)
{
	size_t la;
	size_t lb;

	assert(a != NULL);
	assert(b != NULL);
	la = strlen(a);
	lb = strlen(b);
	if (la > 0 && a[la - 1] == '.')
		la--;
	if (lb > 0 && b[lb - 1] == '.')
		lb--;
	return la == lb && strncasecmp(a, b, la) == 0;
}

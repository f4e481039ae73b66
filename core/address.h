/*
 * address.h -- RFC 5321 §4.1.2 paths and mailboxes (with RFC 6531 UTF-8), and ESMTP
 * parameters. Pure parsing: no allocation, fixed-size results.
 */
#ifndef RINGMX_CORE_ADDRESS_H
#define RINGMX_CORE_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

#define ADDRESS_LOCAL_MAX  64   /* RFC 5321 §4.5.3.1.1, octets */
#define ADDRESS_DOMAIN_MAX 255  /* §4.5.3.1.2 */
#define ADDRESS_PATH_MAX   256  /* §4.5.3.1.3, including the angle brackets */
#define ADDRESS_PARAMS_MAX 16   /* ESMTP parameters on one MAIL or RCPT */
#define ADDRESS_PARAM_LEN  1000 /* one keyword=value: at most an extended command line */

enum address_error {
	ADDRESS_OK = 0,
	ADDRESS_ESYNTAX,  /* not a path at all: 501 5.5.4 */
	ADDRESS_EMAILBOX, /* a path with a bad mailbox: 501 5.1.3 */
	ADDRESS_ETOOLONG, /* local part, domain or path over its limit: 501 5.1.3 */
	ADDRESS_EUTF8,    /* non-ASCII without SMTPUTF8, or invalid UTF-8: 553 5.6.7 */
	ADDRESS_EPARAMS,  /* bad or too many parameters: 501 5.5.4 */
};

struct address {
	bool null;           /* "<>" (only valid as a reverse-path) */
	bool utf8;           /* has non-ASCII octets */
	bool quoted;         /* the local part was a quoted string */
	bool source_route;   /* an obsolete "@a,@b:" prefix was present (and dropped) */
	bool domain_literal; /* "[1.2.3.4]" or "[IPv6:...]" */
	char local[ADDRESS_LOCAL_MAX + 1];   /* as written, quotes removed, escapes resolved */
	char domain[ADDRESS_DOMAIN_MAX + 1]; /* as written (literal keeps its brackets) */
};

struct address_param {
	char keyword[32];  /* upper-cased */
	const char *value; /* points into the caller's line; NULL if no "=" */
	size_t value_len;
};

/*
 * Parses "<path>" (with optional source route) from text[0..len). allow_null
 * permits "<>"; allow_utf8 permits RFC 6531 UTF-8 (checked for validity). On
 * success returns ADDRESS_OK, fills out and sets *end to the first octet after
 * the closing '>'. Accepts no surrounding spaces; the caller strips them. Lengths
 * are counted as written: a quoted local part with its quotes and backslashes. A
 * source route is checked, flagged and dropped; "<postmaster>" gets domain "".
 * On failure out is zeroed and *end untouched.
 */
enum address_error address_parse_path(const char *text, size_t len, bool allow_null,
                                      bool allow_utf8, struct address *out, size_t *end);

/*
 * Splits " KEY=VALUE KEY2" following a path into params[] (room for
 * ADDRESS_PARAMS_MAX). Each parameter is preceded by one or more spaces; keywords
 * are esmtp-keywords, values printable ASCII without '=' or space (decoding xtext is
 * the caller's job). Returns ADDRESS_OK with *count set, or ADDRESS_EPARAMS (bad
 * syntax, a parameter over ADDRESS_PARAM_LEN, more than ADDRESS_PARAMS_MAX, or the
 * same keyword twice) with *count 0.
 */
enum address_error address_parse_params(const char *text, size_t len, struct address_param *params,
                                        size_t *count);

/*
 * Checks a domain as it may stand after the '@' of a mailbox: a host name (one
 * trailing dot allowed), or an address literal "[1.2.3.4]" / "[IPv6:...]". With
 * allow_utf8, U-labels are allowed. Returns ADDRESS_OK, ADDRESS_EMAILBOX,
 * ADDRESS_ETOOLONG (domain over ADDRESS_DOMAIN_MAX or a label over 63) or ADDRESS_EUTF8.
 */
enum address_error address_parse_domain(const char *text, size_t len, bool allow_utf8);

/*
 * True when the local part is "postmaster" (any case, quoted or not). With an empty
 * domain this is the bare <postmaster> of RFC 5321 §4.1.1.3; at a domain, whether the
 * domain is ours is the caller's question.
 */
bool address_is_postmaster(const struct address *a);

/*
 * Formats the mailbox as "local@domain" (quoting the local part again when it
 * needs it; "postmaster" alone when the domain is empty; "" for the null path) into
 * buf, NUL-terminated; returns the length, or -1 if it does not fit.
 */
int address_format(const struct address *a, char *buf, size_t size);

/* True when text[0..len) is an RFC 5322 atom: one or more atext characters, ASCII only. */
bool address_atom_valid(const char *text, size_t len);

/*
 * RFC 3461 §4 xtext, the encoding of the DSN parameters ENVID and ORCPT: an xchar is
 * '!'..'~' except '+' and '='; any other octet is "+HH" with two upper-case hex digits.
 *
 * address_xtext_decode() decodes text[0..len) into out (size octets, NUL-terminated
 * when size > 0; out may be NULL with size 0 to validate and measure only). Returns
 * the decoded length even when it did not fit in size (as snprintf), or -1 when the
 * text is not xtext ("+" not followed by two upper-case hex digits, or an octet
 * outside '!'..'~', or '='). The decoded octets may be any value, NUL included.
 *
 * address_xtext_encode() encodes in[0..len) into out the same way and returns the
 * encoded length (up to 3 * len, so len is at most INT_MAX / 3), even when it did not fit.
 */
int address_xtext_decode(const char *text, size_t len, char *out, size_t size);
int address_xtext_encode(const char *in, size_t len, char *out, size_t size);

/* ASCII case-insensitive domain comparison, ignoring one trailing dot on either side. */
bool address_domain_equal(const char *a, const char *b);

#endif

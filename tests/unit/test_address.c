/* test_address.c -- RFC 5321 path and ESMTP parameter parsing. */
#include "core/address.h"

#include "tests/unit/check.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define A_NULL 1u /* allow_null */
#define A_UTF8 2u /* allow_utf8 */

#define OK       ADDRESS_OK
#define ESYNTAX  ADDRESS_ESYNTAX
#define EMAILBOX ADDRESS_EMAILBOX
#define ETOOLONG ADDRESS_ETOOLONG
#define EUTF8    ADDRESS_EUTF8

struct path_case {
	const char *text;
	unsigned allow;
	enum address_error want;
	const char *local; /* on success: expected local part and domain */
	const char *domain;
};

static const struct path_case path_cases[] = {
    /* plain mailboxes */
    {"<user@example.org>", 0, OK, "user", "example.org"},
    {"<User.Name+tag@Example.ORG>", 0, OK, "User.Name+tag", "Example.ORG"},
    {"<a!#$%&'*+-/=?^_`{|}~z@x.y>", 0, OK, "a!#$%&'*+-/=?^_`{|}~z", "x.y"},
    {"<user@example.org.>", 0, OK, "user", "example.org."},
    {"<u@a-b.c0-9.d>", 0, OK, "u", "a-b.c0-9.d"},
    {"<u@1.2.3.4>", 0, OK, "u", "1.2.3.4"},
    {"<u@localhost>", 0, OK, "u", "localhost"},
    /* postmaster and the null path */
    {"<postmaster>", 0, OK, "postmaster", ""},
    {"<PostMaster>", 0, OK, "PostMaster", ""},
    {"<\"postmaster\">", 0, EMAILBOX, NULL, NULL},
    {"<@a:postmaster>", 0, EMAILBOX, NULL, NULL},
    {"<user>", 0, EMAILBOX, NULL, NULL},
    {"<>", A_NULL, OK, "", ""},
    {"<>", 0, EMAILBOX, NULL, NULL},
    /* quoted local parts */
    {"<\"john doe\"@example.org>", 0, OK, "john doe", "example.org"},
    {"<\"a\\\"b\"@x.y>", 0, OK, "a\"b", "x.y"},
    {"<\"a\\\\b\"@x.y>", 0, OK, "a\\b", "x.y"},
    {"<\"\\a\\b\"@x.y>", 0, OK, "ab", "x.y"},
    {"<\"a>b\"@x.y>", 0, OK, "a>b", "x.y"},
    {"<\"user@other.example\"@x.y>", 0, OK, "user@other.example", "x.y"},
    {"<\"a..b\"@x.y>", 0, OK, "a..b", "x.y"},
    {"<\"\"@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<\"abc\"def@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<\"user@other.example\">", 0, EMAILBOX, NULL, NULL},
    {"<\"a\\\x01\"@x.y>", 0, ESYNTAX, NULL, NULL},
    {"<\"a\x7f\"@x.y>", 0, ESYNTAX, NULL, NULL},
    {"<\"abc@x.y>", 0, ESYNTAX, NULL, NULL},
    {"<a\"b\"@x.y>", 0, EMAILBOX, NULL, NULL},
    /* dot-string rules */
    {"<.a@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a.@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a..b@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a(b)@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a,b@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a\\b@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a@b@x.y>", 0, EMAILBOX, NULL, NULL},
    {"<<a@x.y>>", 0, EMAILBOX, NULL, NULL},
    /* domains */
    {"<a@>", 0, EMAILBOX, NULL, NULL},
    {"<a@.>", 0, EMAILBOX, NULL, NULL},
    {"<a@x..y>", 0, EMAILBOX, NULL, NULL},
    {"<a@.x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a@x.y..>", 0, EMAILBOX, NULL, NULL},
    {"<a@-x.y>", 0, EMAILBOX, NULL, NULL},
    {"<a@x-.y>", 0, EMAILBOX, NULL, NULL},
    {"<a@x.y->", 0, EMAILBOX, NULL, NULL},
    {"<a@x_y.z>", 0, EMAILBOX, NULL, NULL},
    {"<a@x.y:25>", 0, EMAILBOX, NULL, NULL},
    /* address literals */
    {"<a@[192.0.2.1]>", 0, OK, "a", "[192.0.2.1]"},
    {"<a@[IPv6:2001:db8::1]>", 0, OK, "a", "[IPv6:2001:db8::1]"},
    {"<a@[ipv6:::1]>", 0, OK, "a", "[ipv6:::1]"},
    {"<a@[IPv6:::ffff:192.0.2.1]>", 0, OK, "a", "[IPv6:::ffff:192.0.2.1]"},
    {"<a@[192.0.2.256]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[192.0.2]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[192.0.2.01]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[2001:db8::1]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[IPv6:192.0.2.1]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[IPv6:fe80::1%eth0]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[IPv6:2001:db8:::1]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[tag:content]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[]>", 0, EMAILBOX, NULL, NULL},
    {"<a@[192.0.2.1]x>", 0, EMAILBOX, NULL, NULL},
    {"<a@[192.0.2.1].>", 0, EMAILBOX, NULL, NULL},
    {"<a@x[192.0.2.1]>", 0, EMAILBOX, NULL, NULL},
    /* source routes: checked, flagged, dropped */
    {"<@a.example:user@c.example>", 0, OK, "user", "c.example"},
    {"<@a.example,@b.example:user@c.example>", 0, OK, "user", "c.example"},
    {"<@a.example,b.example:user@c.example>", 0, EMAILBOX, NULL, NULL},
    {"<@a..example:user@c.example>", 0, EMAILBOX, NULL, NULL},
    {"<@:user@c.example>", 0, EMAILBOX, NULL, NULL},
    {"<@a.example:>", 0, EMAILBOX, NULL, NULL},
    {"<@a.example>", 0, EMAILBOX, NULL, NULL},
    {"<@a.example,:u@c.example>", 0, EMAILBOX, NULL, NULL},
    {"<@[192.0.2.1]:u@c.example>", 0, EMAILBOX, NULL, NULL},
    /* not a path at all: 501 5.5.4 */
    {"", 0, ESYNTAX, NULL, NULL},
    {"user@example.org", 0, ESYNTAX, NULL, NULL},
    {" <user@example.org>", 0, ESYNTAX, NULL, NULL},
    {"<user@example.org", 0, ESYNTAX, NULL, NULL},
    {"<", 0, ESYNTAX, NULL, NULL},
    {"<us er@example.org>", 0, ESYNTAX, NULL, NULL},
    {"<user@exam ple.org>", 0, ESYNTAX, NULL, NULL},
    {"< user@example.org>", 0, ESYNTAX, NULL, NULL},
    {"<user@example.org >", 0, ESYNTAX, NULL, NULL},
    {"<user\t@example.org>", 0, ESYNTAX, NULL, NULL},
    {"<user@example.org\r\n>", 0, ESYNTAX, NULL, NULL},
    {"<user@exa\x7fmple.org>", 0, ESYNTAX, NULL, NULL},
    /* UTF-8 (RFC 6531) */
    {"<j\xc3\xb6rg@example.org>", A_UTF8, OK, "j\xc3\xb6rg", "example.org"},
    {"<j\xc3\xb6rg@example.org>", 0, EUTF8, NULL, NULL},
    {"<a@b\xc3\xbc"
     "cher.example>",
     A_UTF8, OK, "a",
     "b\xc3\xbc"
     "cher.example"},
    {"<a@b\xc3\xbc"
     "cher.example>",
     0, EUTF8, NULL, NULL},
    {"<\"\xe4\xbd\xa0 \xe5\xa5\xbd\"@x.y>", A_UTF8, OK, "\xe4\xbd\xa0 \xe5\xa5\xbd", "x.y"},
    {"<\"a\\\xc3\xb6\"@x.y>", A_UTF8, EMAILBOX, NULL, NULL},
    {"<\xf0\x9f\x98\x80@x.y>", A_UTF8, OK, "\xf0\x9f\x98\x80", "x.y"},
    {"<\xf4\x8f\xbf\xbf@x.y>", A_UTF8, OK, "\xf4\x8f\xbf\xbf", "x.y"},
    {"<\xc0\xafx@x.y>", A_UTF8, EUTF8, NULL, NULL},        /* overlong '/' */
    {"<\xc1\xbe@x.y>", A_UTF8, EUTF8, NULL, NULL},         /* overlong '>' */
    {"<\xe0\x80\xbe@x.y>", A_UTF8, EUTF8, NULL, NULL},     /* overlong '>', 3 octets */
    {"<\xf0\x80\x81\x80@x.y>", A_UTF8, EUTF8, NULL, NULL}, /* overlong, 4 octets */
    {"<\xed\xa0\x80@x.y>", A_UTF8, EUTF8, NULL, NULL},     /* surrogate U+D800 */
    {"<\xf4\x90\x80\x80@x.y>", A_UTF8, EUTF8, NULL, NULL}, /* U+110000 */
    {"<\xf5\x80\x80\x80@x.y>", A_UTF8, EUTF8, NULL, NULL},
    {"<\xff@x.y>", A_UTF8, EUTF8, NULL, NULL},
    {"<\x80@x.y>", A_UTF8, EUTF8, NULL, NULL}, /* lone continuation */
    {"<\xc3@x.y>", A_UTF8, EUTF8, NULL, NULL}, /* truncated sequence */
    {"<a@x.y\xc3>", A_UTF8, EUTF8, NULL, NULL},
    {"<\xe4\xbd@x.y>", A_UTF8, EUTF8, NULL, NULL},
    {"<a@[IPv6:\xc3\xb6]>", A_UTF8, EMAILBOX, NULL, NULL},
    {"<a@b\xc2\xa0.example>", A_UTF8, OK, "a", "b\xc2\xa0.example"},
};

static bool
has_high_octet(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s >= 0x80)
			return true;
	}
	return false;
}

static void
test_path_table(void)
{
	for (size_t i = 0; i < sizeof(path_cases) / sizeof(path_cases[0]); i++) {
		const struct path_case *t = &path_cases[i];
		struct address a;
		size_t end = 0;
		enum address_error e;

		e = address_parse_path(t->text, strlen(t->text), t->allow & A_NULL,
		                       t->allow & A_UTF8, &a, &end);
		if (e != t->want) {
			printf("%s:%d: case %zu \"%s\": got %d, want %d\n", __FILE__, __LINE__, i,
			       t->text, e, t->want);
			failed++;
			continue;
		}
		passed++;
		if (e != ADDRESS_OK)
			continue;
		CHECK(end == strlen(t->text));
		CHECK(strcmp(a.local, t->local) == 0);
		CHECK(strcmp(a.domain, t->domain) == 0);
		CHECK(a.utf8 == has_high_octet(t->text));
	}
}

static void
test_path_flags(void)
{
	struct address a;
	size_t end = 0;

	CHECK(address_parse_path("<>", 2, true, false, &a, &end) == OK);
	CHECK(a.null && !a.quoted && !a.source_route && end == 2);
	CHECK(address_parse_path("<\"a b\"@x.y>", 11, false, false, &a, &end) == OK);
	CHECK(a.quoted && !a.null && !a.domain_literal);
	CHECK(address_parse_path("<@r.example:u@x.y>", 18, false, false, &a, &end) == OK);
	CHECK(a.source_route && !a.quoted && strcmp(a.local, "u") == 0);
	CHECK(address_parse_path("<u@[192.0.2.1]>", 15, false, false, &a, &end) == OK);
	CHECK(a.domain_literal && !a.source_route);
	CHECK(address_parse_path("<u@x.y>", 7, false, false, &a, &end) == OK);
	CHECK(!a.domain_literal && !a.quoted && !a.null && !a.utf8);
	/* The path ends at its '>'; what follows (parameters) is the caller's. */
	CHECK(address_parse_path("<u@x.y> SIZE=10", 15, false, false, &a, &end) == OK);
	CHECK(end == 7);
	CHECK(address_parse_path("<\"u>\"@x.y>junk", 14, false, false, &a, &end) == OK);
	CHECK(end == 10);
	/* len bounds the input: the text is not NUL-terminated for the parser */
	CHECK(address_parse_path("<u@x.y>", 6, false, false, &a, &end) == ESYNTAX);
	CHECK(address_parse_path("<u@x\0y>", 7, false, false, &a, &end) == ESYNTAX);
	/* failure leaves no half-parsed mailbox behind */
	CHECK(address_parse_path("<u@x..y>", 8, false, false, &a, &end) == EMAILBOX);
	CHECK(a.local[0] == '\0' && a.domain[0] == '\0');
}

/* Builds "<" local "@" domain ">" with the given lengths of filler. */
static enum address_error
parse_built(size_t local_len, const char *domain, struct address *a)
{
	char text[1024];
	size_t n = 0;
	size_t end;

	text[n++] = '<';
	memset(text + n, 'l', local_len);
	n += local_len;
	n += (size_t)snprintf(text + n, sizeof(text) - n, "@%s>", domain);
	return address_parse_path(text, n, false, false, a, &end);
}

/* A domain of total length len made of labels of at most 63 octets. */
static void
make_domain(char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (i % 64 == 63) ? '.' : 'd';
	if (buf[len - 1] == '.')
		buf[len - 1] = 'd';
	buf[len] = '\0';
}

static void
test_limits(void)
{
	char domain[300];
	char label[70];
	char quoted[80];
	struct address a;
	size_t end;

	CHECK(parse_built(ADDRESS_LOCAL_MAX, "x.y", &a) == OK);
	CHECK(strlen(a.local) == ADDRESS_LOCAL_MAX);
	CHECK(parse_built(ADDRESS_LOCAL_MAX + 1, "x.y", &a) == ETOOLONG);
	/* A quoted local part counts as written, quotes and escapes included. */
	quoted[0] = '<';
	quoted[1] = '"';
	memset(quoted + 2, 'q', ADDRESS_LOCAL_MAX - 2);
	memcpy(quoted + ADDRESS_LOCAL_MAX, "\"@x>", 4);
	CHECK(address_parse_path(quoted, ADDRESS_LOCAL_MAX + 4, false, false, &a, &end) == OK);
	CHECK(strlen(a.local) == ADDRESS_LOCAL_MAX - 2);
	quoted[2] = '\\';
	CHECK(address_parse_path(quoted, ADDRESS_LOCAL_MAX + 4, false, false, &a, &end) == OK);
	memmove(quoted + 3, quoted + 2, ADDRESS_LOCAL_MAX + 2);
	CHECK(address_parse_path(quoted, ADDRESS_LOCAL_MAX + 5, false, false, &a, &end) ==
	      ETOOLONG);

	memset(label, 'l', 63);
	strcpy(label + 63, ".x");
	CHECK(parse_built(1, label, &a) == OK);
	memset(label, 'l', 64);
	strcpy(label + 64, ".x");
	CHECK(parse_built(1, label, &a) == ETOOLONG);

	/* "<" 1 "@" domain ">" is at most 256: the domain limit is reached first at 252 */
	make_domain(domain, 252);
	CHECK(parse_built(1, domain, &a) == OK);
	CHECK(strlen(a.domain) == 252);
	make_domain(domain, 253);
	CHECK(parse_built(1, domain, &a) == ETOOLONG); /* path 257 */
	CHECK(parse_built(0, domain, &a) == EMAILBOX); /* path 256: empty local part */
	make_domain(domain, 200);
	CHECK(parse_built(ADDRESS_LOCAL_MAX - 11, domain, &a) == OK); /* path 256 */
	CHECK(parse_built(ADDRESS_LOCAL_MAX - 10, domain, &a) == ETOOLONG);
	/* domain limit on its own, through address_parse_domain */
	make_domain(domain, ADDRESS_DOMAIN_MAX);
	CHECK(address_parse_domain(domain, ADDRESS_DOMAIN_MAX, false) == OK);
	make_domain(domain, ADDRESS_DOMAIN_MAX + 1);
	CHECK(address_parse_domain(domain, ADDRESS_DOMAIN_MAX + 1, false) == ETOOLONG);
}

static void
test_long_input(void)
{
	char text[2048];
	struct address a;
	size_t end;

	/* No '>' within ADDRESS_PATH_MAX: refused without reading the rest. */
	text[0] = '<';
	memset(text + 1, 'a', sizeof(text) - 2);
	text[sizeof(text) - 1] = '>';
	CHECK(address_parse_path(text, sizeof(text), false, false, &a, &end) == ETOOLONG);
	CHECK(address_parse_path(text, ADDRESS_PATH_MAX, false, false, &a, &end) == ESYNTAX);
	/* A source route counts toward the path length. */
	text[0] = '<';
	text[1] = '@';
	make_domain(text + 2, 240);
	memcpy(text + 242, ":user@x.example>", 16);
	CHECK(address_parse_path(text, 258, false, false, &a, &end) == ETOOLONG);
	memcpy(text + 242, ":u@x.example>", 13);
	CHECK(address_parse_path(text, 255, false, false, &a, &end) == OK);
	CHECK(a.source_route && strcmp(a.domain, "x.example") == 0);
}

static void
test_parse_domain(void)
{
	CHECK(address_parse_domain("example.org", 11, false) == OK);
	CHECK(address_parse_domain("example.org.", 12, false) == OK);
	CHECK(address_parse_domain("[192.0.2.1]", 11, false) == OK);
	CHECK(address_parse_domain("", 0, false) == EMAILBOX);
	CHECK(address_parse_domain(".", 1, false) == EMAILBOX);
	CHECK(address_parse_domain("exa mple.org", 12, false) == EMAILBOX);
	CHECK(address_parse_domain("b\xc3\xbc.example", 11, false) == EUTF8);
	CHECK(address_parse_domain("b\xc3\xbc.example", 11, true) == OK);
	CHECK(address_parse_domain("b\xc3.example", 10, true) == EUTF8);
}

struct param_case {
	const char *text;
	enum address_error want;
	size_t count;
};

static const struct param_case param_cases[] = {
    {"", OK, 0},
    {" ", OK, 0},
    {" SIZE=1000", OK, 1},
    {" size=1000 body=8BITMIME", OK, 2},
    {"  SIZE=1000   BODY=8BITMIME  ", OK, 2},
    {" SMTPUTF8", OK, 1},
    {" X-Vendor-1=a+2Bb", OK, 1},
    {" ENVID=<id@x>", OK, 1},
    {"SIZE=1000", ADDRESS_EPARAMS, 0},
    {" SIZE=", ADDRESS_EPARAMS, 0},
    {" =1000", ADDRESS_EPARAMS, 0},
    {" -X=1", ADDRESS_EPARAMS, 0},
    {" SI_ZE=1", ADDRESS_EPARAMS, 0},
    {" SIZE=1=2", ADDRESS_EPARAMS, 0},
    {" SIZE=1\t", ADDRESS_EPARAMS, 0},
    {" SIZE=\x7f", ADDRESS_EPARAMS, 0},
    {" SIZE=\xc3\xb6", ADDRESS_EPARAMS, 0},
    {"\tSIZE=1", ADDRESS_EPARAMS, 0},
    {" SIZE=1 size=2", ADDRESS_EPARAMS, 0},
    {" SMTPUTF8 smtputf8", ADDRESS_EPARAMS, 0},
    {" ABCDEFGHIJKLMNOPQRSTUVWXYZ012345=1", ADDRESS_EPARAMS, 0},
    {" ABCDEFGHIJKLMNOPQRSTUVWXYZ01234=1", OK, 1},
};

static void
test_params_table(void)
{
	for (size_t i = 0; i < sizeof(param_cases) / sizeof(param_cases[0]); i++) {
		const struct param_case *t = &param_cases[i];
		struct address_param p[ADDRESS_PARAMS_MAX];
		size_t count = 99;
		enum address_error e = address_parse_params(t->text, strlen(t->text), p, &count);

		if (e != t->want || count != t->count) {
			printf("%s:%d: params case %zu \"%s\": got %d/%zu\n", __FILE__, __LINE__, i,
			       t->text, e, count);
			failed++;
		} else {
			passed++;
		}
	}
}

static void
test_params_values(void)
{
	struct address_param p[ADDRESS_PARAMS_MAX];
	const char *line = " size=1000 SMTPUTF8 body=8BITMIME";
	char many[1024];
	char big[ADDRESS_PARAM_LEN + 8];
	size_t count;
	size_t n = 0;

	CHECK(address_parse_params(line, strlen(line), p, &count) == OK);
	CHECK(count == 3);
	CHECK(strcmp(p[0].keyword, "SIZE") == 0);
	CHECK(p[0].value == line + 6 && p[0].value_len == 4);
	CHECK(strcmp(p[1].keyword, "SMTPUTF8") == 0 && p[1].value == NULL);
	CHECK(strcmp(p[2].keyword, "BODY") == 0 && p[2].value_len == 8);
	CHECK(memcmp(p[2].value, "8BITMIME", 8) == 0);

	for (int i = 0; i < ADDRESS_PARAMS_MAX; i++)
		n += (size_t)snprintf(many + n, sizeof(many) - n, " P%d=v", i);
	CHECK(address_parse_params(many, n, p, &count) == OK);
	CHECK(count == ADDRESS_PARAMS_MAX);
	n += (size_t)snprintf(many + n, sizeof(many) - n, " EXTRA");
	CHECK(address_parse_params(many, n, p, &count) == ADDRESS_EPARAMS);
	CHECK(count == 0);

	big[0] = ' ';
	memcpy(big + 1, "X=", 2);
	memset(big + 3, 'v', ADDRESS_PARAM_LEN - 2);
	CHECK(address_parse_params(big, ADDRESS_PARAM_LEN + 1, p, &count) == OK);
	CHECK(p[0].value_len == ADDRESS_PARAM_LEN - 2);
	big[ADDRESS_PARAM_LEN + 1] = 'v';
	CHECK(address_parse_params(big, ADDRESS_PARAM_LEN + 2, p, &count) == ADDRESS_EPARAMS);
}

static void
test_postmaster(void)
{
	struct address a;
	size_t end;

	CHECK(address_parse_path("<POSTMASTER>", 12, false, false, &a, &end) == OK);
	CHECK(address_is_postmaster(&a));
	CHECK(address_parse_path("<Postmaster@x.y>", 16, false, false, &a, &end) == OK);
	CHECK(address_is_postmaster(&a));
	CHECK(address_parse_path("<\"postmaster\"@x.y>", 18, false, false, &a, &end) == OK);
	CHECK(address_is_postmaster(&a));
	CHECK(address_parse_path("<postmasters@x.y>", 17, false, false, &a, &end) == OK);
	CHECK(!address_is_postmaster(&a));
	CHECK(address_parse_path("<>", 2, true, false, &a, &end) == OK);
	CHECK(!address_is_postmaster(&a));
}

/* Formats, then parses the result again: the mailbox must come back the same. */
static void
check_format(const char *path, bool utf8, const char *want)
{
	struct address a;
	struct address b;
	char buf[ADDRESS_PATH_MAX + 8];
	char wrapped[ADDRESS_PATH_MAX + 16];
	size_t end;
	int n;

	CHECK(address_parse_path(path, strlen(path), true, utf8, &a, &end) == OK);
	n = address_format(&a, buf, sizeof(buf));
	CHECK(n >= 0 && strcmp(buf, want) == 0);
	if (n < 0 || strcmp(buf, want) != 0) {
		printf("  formatted %s as \"%s\", want \"%s\"\n", path, n < 0 ? "" : buf, want);
		return;
	}
	snprintf(wrapped, sizeof(wrapped), "<%s>", buf);
	CHECK(address_parse_path(wrapped, strlen(wrapped), true, utf8, &b, &end) == OK);
	CHECK(strcmp(a.local, b.local) == 0 && strcmp(a.domain, b.domain) == 0);
}

static void
test_format(void)
{
	struct address a;
	char small[8];
	size_t end;

	check_format("<user@example.org>", false, "user@example.org");
	check_format("<\"user\"@example.org>", false, "user@example.org");
	check_format("<\"john doe\"@x.y>", false, "\"john doe\"@x.y");
	check_format("<\"a\\\"b\\\\c\"@x.y>", false, "\"a\\\"b\\\\c\"@x.y");
	check_format("<\"a..b\"@x.y>", false, "\"a..b\"@x.y");
	check_format("<\".a\"@x.y>", false, "\".a\"@x.y");
	check_format("<\"user@other\"@x.y>", false, "\"user@other\"@x.y");
	check_format("<@r.example:u@x.y>", false, "u@x.y");
	check_format("<postmaster>", false, "postmaster");
	check_format("<>", false, "");
	check_format("<j\xc3\xb6rg@[IPv6:::1]>", true, "j\xc3\xb6rg@[IPv6:::1]");

	CHECK(address_parse_path("<abc@x.y>", 9, false, false, &a, &end) == OK);
	CHECK(address_format(&a, small, 8) == 7);
	CHECK(address_format(&a, small, 7) == -1);
	CHECK(address_format(&a, NULL, 0) == -1);
}

static void
test_domain_equal(void)
{
	CHECK(address_domain_equal("example.org", "EXAMPLE.org"));
	CHECK(address_domain_equal("example.org.", "example.org"));
	CHECK(address_domain_equal("example.org", "Example.Org."));
	CHECK(!address_domain_equal("example.org..", "example.org"));
	CHECK(!address_domain_equal("example.org", "example.or"));
	CHECK(!address_domain_equal("example.org", "xexample.org"));
	CHECK(address_domain_equal("", "."));
	CHECK(!address_domain_equal("a", ""));
}

int
main(void)
{
	test_path_table();
	test_path_flags();
	test_limits();
	test_long_input();
	test_parse_domain();
	test_params_table();
	test_params_values();
	test_postmaster();
	test_format();
	test_domain_equal();
	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}

/*
 * fuzz_address.c -- libFuzzer target for address_parse_path, address_parse_params and
 * the xtext codec.
 *
 * The first octet picks allow_null/allow_utf8; the rest is a MAIL/RCPT argument. Beyond
 * memory safety it checks what the server relies on: accepted mailboxes respect their
 * limits, and formatting a mailbox then parsing it again gives the same mailbox.
 */
#include "core/address.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_roundtrip(const struct address *a, bool allow_utf8)
{
	char text[ADDRESS_PATH_MAX + 1];
	char wrapped[ADDRESS_PATH_MAX + 3];
	struct address b;
	size_t end = 0;
	int n = address_format(a, text, sizeof(text));

	/* Re-quoting is minimal, so the mailbox never grows past the path it came from. */
	assert(n >= 0);
	assert(n <= ADDRESS_PATH_MAX - 2);
	wrapped[0] = '<';
	memcpy(wrapped + 1, text, (size_t)n);
	wrapped[n + 1] = '>';
	assert(address_parse_path(wrapped, (size_t)n + 2, true, allow_utf8, &b, &end) ==
	       ADDRESS_OK);
	assert(end == (size_t)n + 2);
	assert(b.null == a->null);
	assert(b.utf8 == a->utf8);
	assert(!b.source_route);
	assert(strcmp(a->local, b.local) == 0);
	assert(strcmp(a->domain, b.domain) == 0);
}

static void
check_params(const char *text, size_t len)
{
	struct address_param p[ADDRESS_PARAMS_MAX];
	size_t count = 0;

	if (address_parse_params(text, len, p, &count) != ADDRESS_OK) {
		assert(count == 0);
		return;
	}
	assert(count <= ADDRESS_PARAMS_MAX);
	for (size_t i = 0; i < count; i++) {
		assert(p[i].keyword[0] != '\0');
		if (p[i].value == NULL)
			continue;
		assert(p[i].value > text && p[i].value + p[i].value_len <= text + len);
		assert(p[i].value_len > 0);
		assert(memchr(p[i].value, '=', p[i].value_len) == NULL);
		assert(memchr(p[i].value, ' ', p[i].value_len) == NULL);
	}
}

/*
 * RFC 3461 xtext: a valid text never decodes longer, and encoding what it decoded to
 * decodes back to the same octets.
 */
static void
check_xtext(const char *text, size_t len)
{
	static char dec[4096], enc[3 * sizeof(dec)], again[sizeof(dec)];
	int n = address_xtext_decode(text, len, dec, sizeof(dec));
	int e;

	assert(n >= -1);
	assert(n <= (int)len);
	if (n < 0 || (size_t)n >= sizeof(dec))
		return;
	e = address_xtext_encode(dec, (size_t)n, enc, sizeof(enc));
	assert(e >= n);
	assert((size_t)e < sizeof(enc));
	assert(address_xtext_decode(enc, (size_t)e, again, sizeof(again)) == n);
	assert(memcmp(dec, again, (size_t)n) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct address a;
	size_t end = 0;
	bool allow_null;
	bool allow_utf8;
	const char *text;

	if (size == 0)
		return 0;
	allow_null = data[0] & 1;
	allow_utf8 = data[0] & 2;
	text = (const char *)data + 1;
	size--;
	check_params(text, size);
	check_xtext(text, size);
	if (address_parse_path(text, size, allow_null, allow_utf8, &a, &end) != ADDRESS_OK)
		return 0;
	assert(end >= 2 && end <= size && end <= ADDRESS_PATH_MAX);
	assert(text[0] == '<' && text[end - 1] == '>');
	assert(strlen(a.local) <= ADDRESS_LOCAL_MAX);
	assert(strlen(a.domain) <= ADDRESS_DOMAIN_MAX);
	assert(allow_null || !a.null);
	assert(allow_utf8 || !a.utf8);
	assert(a.null || a.local[0] != '\0');
	assert(a.domain[0] != '\0' || a.null || address_is_postmaster(&a));
	assert(address_parse_domain(a.domain, strlen(a.domain), allow_utf8) == ADDRESS_OK ||
	       a.domain[0] == '\0');
	check_roundtrip(&a, allow_utf8);
	check_params(text + end, size - end);
	return 0;
}

/* fuzz_dns_answer.c -- dnswire over arbitrary packets: parse, iterate, decode every MX. */
#include "dns/dnswire.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_text_name(const char *name)
{
	size_t len = strlen(name);

	assert(len <= DNSWIRE_TEXT_MAX);
	for (size_t i = 0; i < len; i++)
		assert(name[i] == '.' || dnswire_char_ok((uint8_t)name[i]));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dnswire_msg m;
	struct dnswire_rr rr;
	char name[DNSWIRE_TEXT_MAX + 1];
	unsigned seen = 0;
	size_t pos = 0;
	uint16_t pref;
	int rc;

	if (dnswire_parse(&m, data, size) != 0)
		return 0;
	check_text_name(m.qname);
	assert(m.cname_hops <= DNSWIRE_CNAME_MAX);
	assert(m.name_len >= 1 && m.name_len <= DNSWIRE_NAME_MAX);
	assert(m.answer_off <= m.answer_end && m.answer_end <= size);
	while ((rc = dnswire_next(&m, &pos, &rr)) == 1) {
		seen++;
		assert(rr.type == m.qtype);
		assert(rr.rdata_off + rr.rdlen <= size);
		if (rr.type == DNSWIRE_MX && dnswire_mx(&m, &rr, &pref, name) == 0)
			check_text_name(name);
	}
	/* parse already walked every record: iteration cannot fail afterwards */
	assert(rc == 0);
	assert(seen == m.count);
	return 0;
}

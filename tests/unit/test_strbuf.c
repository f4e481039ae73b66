/* test_strbuf.c -- the bounded string buffer: growth, its limit, JSON strings. */
#include "core/strbuf.h"

#include <string.h>

#include "tests/unit/check.h"

static void
test_growth_and_limit(void)
{
	struct strbuf sb;

	strbuf_init(&sb, 1000);
	for (int i = 0; i < 99; i++)
		strbuf_puts(&sb, "0123456789");
	CHECK(sb.len == 990);
	CHECK(!sb.overflow);
	CHECK(strlen(sb.data) == 990);
	strbuf_printf(&sb, "%s", "0123456789"); /* exactly at the limit */
	CHECK(sb.len == 1000);
	CHECK(!sb.overflow);
	strbuf_puts(&sb, "x"); /* one over: dropped and marked */
	CHECK(sb.len == 1000);
	CHECK(sb.overflow);
	strbuf_puts(&sb, ""); /* and stays marked */
	CHECK(sb.overflow);
	strbuf_free(&sb);
	CHECK(sb.data == NULL && sb.len == 0 && !sb.overflow && sb.limit == 1000);
}

static void
test_json(void)
{
	struct strbuf sb;

	strbuf_init(&sb, 4096);
	strbuf_json_string(&sb, "a\"b\\c\r\n\x01\x7f"
	                        "é");
	CHECK(strcmp(sb.data, "\"a\\\"b\\\\c\\u000d\\u000a\\u0001\\u007fé\"") == 0);
	strbuf_free(&sb);
	strbuf_json_string(&sb, "");
	CHECK(strcmp(sb.data, "\"\"") == 0);
	strbuf_free(&sb);
}

int
main(void)
{
	test_growth_and_limit();
	test_json();
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}

/* Unit tests of ringmx-bench's pure parts: reply parser, message generator, histogram. */
#include "bench/hist.h"
#include "bench/msggen.h"
#include "bench/reply.h"

#include "tests/unit/check.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Feeds s in pieces of step bytes; returns the statuses seen, as a string of digits
 * (1 line, 2 end, E error) and leaves the parser for inspection. */
static void
feed_all(struct reply_parser *p, const char *s, size_t step, char *out, size_t cap)
{
	size_t off = 0, len = strlen(s), o = 0, used;

	while (off < len && o + 1 < cap) {
		size_t n = len - off < step ? len - off : step;
		int rc = reply_parser_feed(p, (const uint8_t *)s + off, n, &used);

		off += used;
		if (rc < 0) {
			out[o++] = 'E';
			break;
		}
		if (rc != REPLY_NEED_MORE)
			out[o++] = (char)('0' + rc);
	}
	out[o] = '\0';
}

static void
test_reply(void)
{
	struct reply_parser p;
	char st[64], *big;
	size_t step;

	for (step = 1; step <= 64; step *= 4) {
		reply_parser_init(&p);
		feed_all(&p, "250-a\r\n250-PIPELINING\r\n250 OK\r\n354 go\r\n", step, st,
		         sizeof(st));
		CHECK(strcmp(st, "1122") == 0);
		CHECK(p.code == 354);
		CHECK(strcmp(reply_parser_text(&p), "go") == 0);
	}
	reply_parser_init(&p);
	feed_all(&p, "250\n", 100, st, sizeof(st)); /* bare code, bare LF */
	CHECK(strcmp(st, "2") == 0 && p.code == 250);
	reply_parser_init(&p);
	feed_all(&p, "250-a\r\n451 b\r\n", 100, st, sizeof(st)); /* code changed mid-reply */
	CHECK(strcmp(st, "1E") == 0);
	reply_parser_init(&p);
	feed_all(&p, "hello\r\n", 100, st, sizeof(st));
	CHECK(strcmp(st, "E") == 0);
	reply_parser_init(&p);
	feed_all(&p, "250x\r\n", 100, st, sizeof(st));
	CHECK(strcmp(st, "E") == 0);
	reply_parser_init(&p);
	feed_all(&p, "650 no\r\n", 100, st, sizeof(st));
	CHECK(strcmp(st, "E") == 0);
	/* Exactly at the limit passes; one byte more fails, fed whole or in pieces. */
	big = malloc(REPLY_LINE_MAX + 16);
	memset(big, 'x', REPLY_LINE_MAX + 8);
	memcpy(big, "250 ", 4);
	strcpy(big + REPLY_LINE_MAX, "\r\n");
	reply_parser_init(&p);
	feed_all(&p, big, 7, st, sizeof(st));
	CHECK(strcmp(st, "2") == 0 && p.len == REPLY_LINE_MAX);
	strcpy(big + REPLY_LINE_MAX, "y\r\n");
	reply_parser_init(&p);
	feed_all(&p, big, 7, st, sizeof(st));
	CHECK(strcmp(st, "E") == 0);
	reply_parser_init(&p);
	feed_all(&p, big, REPLY_LINE_MAX + 8, st, sizeof(st));
	CHECK(strcmp(st, "E") == 0);
	free(big);
}

static void
test_msggen(void)
{
	static const size_t sizes[] = {1, 300, 1024, 20000};
	struct msggen g;
	char hdr[MSGGEN_HEADER_MAX], date[64];
	size_t i, h, line = 0;

	msggen_date(date, sizeof(date));
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		CHECK(msggen_init(&g, sizes[i], "a@example.test", "b@example.test") == 0);
		h = msggen_header(&g, hdr, 42, date);
		CHECK(strstr(hdr, "Message-ID: <") != NULL && strstr(hdr, ".42@ringmx-bench>\r\n"));
		CHECK(h > 4 && memcmp(hdr + h - 4, "\r\n\r\n", 4) == 0);
		if (sizes[i] >= 1024)
			CHECK(h + g.body_len >= sizes[i] - 80 && h + g.body_len <= sizes[i] + 80);
		CHECK(g.body_len >= 5 && memcmp(g.body + g.body_len - 5, "\r\n.\r\n", 5) == 0);
		for (size_t j = 0, start = 0; j + 3 < g.body_len; j++) {
			if (g.body[j] != '\n')
				continue;
			line = j - start - 1;
			CHECK(line <= MSGGEN_LINE_MAX);
			CHECK(g.body[j - 1] == '\r');
			CHECK(g.body[start] != '.');
			start = j + 1;
		}
		msggen_free(&g);
	}
	CHECK(msggen_init(&g, 100, "a@example.test", "b@example.test") == 0);
	msggen_header(&g, hdr, 1, date);
	{
		char hdr2[MSGGEN_HEADER_MAX];

		msggen_header(&g, hdr2, 2, date);
		CHECK(strcmp(hdr, hdr2) != 0);
	}
	msggen_free(&g);
	memset(hdr, 'a', MSGGEN_ADDR_MAX);
	hdr[MSGGEN_ADDR_MAX] = '\0';
	CHECK(msggen_init(&g, 100, hdr, "b@example.test") < 0); /* address limit */
}

static void
test_hist(void)
{
	struct hist *h = malloc(sizeof(*h)), *h2 = malloc(sizeof(*h2));
	uint64_t v;

	hist_init(h);
	CHECK(hist_quantile(h, 0.5) == 0);
	for (v = 1; v <= 10000; v++)
		hist_record(h, v);
	CHECK(h->count == 10000 && h->max == 10000);
	v = hist_quantile(h, 0.5);
	CHECK(v >= 5000 && v <= 5000 * 102 / 100);
	v = hist_quantile(h, 0.99);
	CHECK(v >= 9900 && v <= 9900 * 102 / 100);
	CHECK(hist_quantile(h, 1.0) == 10000);
	hist_init(h2);
	hist_record(h2, UINT64_MAX); /* clamped, still counted */
	CHECK(h2->count == 1 && h2->max == HIST_VALUE_MAX);
	hist_merge(h, h2);
	CHECK(h->count == 10001 && h->max == HIST_VALUE_MAX);
	CHECK(hist_quantile(h, 0.5) <= 5000 * 102 / 100);
	free(h);
	free(h2);
}

int
main(void)
{
	test_reply();
	test_msggen();
	test_hist();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

#include "bench/msggen.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Header bytes we budget for when sizing the body; the real block differs by a few bytes
 * per message (digits of SEQ), which "about size_total" allows. */
#define MSGGEN_HEADER_ESTIMATE 200
#define MSGGEN_BODY_MIN        80

static_assert(MSGGEN_HEADER_MAX > 2 * MSGGEN_ADDR_MAX + 256, "header block must fit addresses");

static void
msggen_fill_line(char *p, size_t n, size_t lineno)
{
	static const char alphabet[] =
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	size_t i;

	/* Lines start with a letter, never '.', so the body needs no dot-stuffing. */
	for (i = 0; i < n; i++)
		p[i] = alphabet[(lineno * 7 + i) % (sizeof(alphabet) - 1)];
}

int
msggen_init(struct msggen *g, size_t size_total, const char *from, const char *to)
{
	size_t want, off = 0, lineno = 0;
	struct timespec ts;

	assert(g);
	assert(from);
	assert(to);
	if (strlen(from) >= MSGGEN_ADDR_MAX || strlen(to) >= MSGGEN_ADDR_MAX)
		return -EINVAL;
	memset(g, 0, sizeof(*g));
	want = size_total > MSGGEN_HEADER_ESTIMATE + MSGGEN_BODY_MIN
	           ? size_total - MSGGEN_HEADER_ESTIMATE
	           : MSGGEN_BODY_MIN;
	g->body = malloc(want + 8);
	if (!g->body)
		return -ENOMEM;
	while (off < want) {
		size_t rem = want - off;
		/* A short tail still becomes a whole line (the buffer has room for it). */
		size_t n = rem < 3 ? 1 : rem - 2 < MSGGEN_LINE_MAX ? rem - 2 : MSGGEN_LINE_MAX;

		msggen_fill_line(g->body + off, n, lineno++);
		off += n;
		memcpy(g->body + off, "\r\n", 2);
		off += 2;
	}
	memcpy(g->body + off, ".\r\n", 3);
	g->body_len = off + 3;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(g->run_id, sizeof(g->run_id), "%llx.%x",
	         (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000,
	         (unsigned)getpid());
	g->from = from;
	g->to = to;
	return 0;
}

void
msggen_free(struct msggen *g)
{
	assert(g);
	free(g->body);
	g->body = NULL;
}

void
msggen_date(char *buf, size_t cap)
{
	time_t now = time(NULL);
	struct tm tm;

	assert(cap >= 64);
	gmtime_r(&now, &tm);
	strftime(buf, cap, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

size_t
msggen_header(const struct msggen *g, char *buf, uint64_t seq, const char *date)
{
	int n;

	assert(g);
	assert(buf);
	n = snprintf(buf, MSGGEN_HEADER_MAX,
	             "From: <%s>\r\nTo: <%s>\r\nSubject: ringmx-bench message %llu\r\n"
	             "Date: %s\r\nMessage-ID: <%s.%llu@ringmx-bench>\r\n\r\n",
	             g->from, g->to, (unsigned long long)seq, date, g->run_id,
	             (unsigned long long)seq);
	assert(n > 0);
	assert(n < MSGGEN_HEADER_MAX);
	return (size_t)n;
}

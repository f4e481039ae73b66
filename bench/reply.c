#include "bench/reply.h"

#include <assert.h>
#include <string.h>

void
reply_parser_init(struct reply_parser *p)
{
	assert(p);
	memset(p, 0, sizeof(*p));
}

const char *
reply_parser_text(const struct reply_parser *p)
{
	assert(p);
	return p->len > 4 ? p->line + 4 : "";
}

static int
reply_line_check(struct reply_parser *p)
{
	const char *l = p->line;
	int code;

	if (p->len < 3 || l[0] < '1' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' ||
	    l[2] > '9')
		return -REPLY_EMALFORMED;
	if (p->len > 3 && l[3] != ' ' && l[3] != '-')
		return -REPLY_EMALFORMED;
	code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
	if (p->in_reply && code != p->code)
		return -REPLY_EMALFORMED;
	p->code = code;
	p->in_reply = p->len > 3 && l[3] == '-';
	return p->in_reply ? REPLY_LINE : REPLY_END;
}

int
reply_parser_feed(struct reply_parser *p, const uint8_t *in, size_t len, size_t *used)
{
	const uint8_t *nl;
	size_t take;

	assert(p);
	assert(used);
	assert(in || len == 0);
	if (p->complete) {
		p->complete = 0;
		p->len = 0;
	}
	nl = memchr(in, '\n', len);
	take = nl ? (size_t)(nl - in) : len;
	/* Check the limit before the line ends, so a peer can't make us buffer forever. */
	if (p->len + take > REPLY_LINE_MAX + 1)
		return -REPLY_ETOOLONG;
	memcpy(p->line + p->len, in, take);
	p->len += take;
	if (!nl) {
		*used = len;
		if (p->len > REPLY_LINE_MAX)
			return -REPLY_ETOOLONG;
		return REPLY_NEED_MORE;
	}
	*used = take + 1;
	if (p->len > 0 && p->line[p->len - 1] == '\r')
		p->len--;
	if (p->len > REPLY_LINE_MAX)
		return -REPLY_ETOOLONG;
	p->line[p->len] = '\0';
	p->complete = 1;
	return reply_line_check(p);
}
